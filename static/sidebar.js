// The list of conversations: newest first, a page at a time ("More"), searched as you
// type (titles and message text, GET /api/conversations/list?q=), renamed in place and
// deleted. Text only (textContent).

import { button } from "./dom.js";

const $ = (id) => document.getElementById(id);
const PAGE = 30;
const SEARCH_AFTER_MS = 250; // a pause in typing

const list = {
  api: null,
  onOpen: null, // (conversation) => the page opens it
  onDeleted: null, // (id) => the page forgets it if open
  onError: null, // (message) => the page shows it
  current: null, // the id of the open conversation
  query: "",
  items: [],
  more: false,
  reads: 0, // only the newest read's answer is shown
  timer: null,
};

export function initSidebar({ api, onOpen, onDeleted, onError }) {
  Object.assign(list, { api, onOpen, onDeleted, onError });
  $("search").addEventListener("input", () => {
    clearTimeout(list.timer);
    list.timer = setTimeout(() => reload().catch((error) => list.onError(error.message)), SEARCH_AFTER_MS);
  });
  $("search").addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !event.isComposing && $("search").value) {
      event.preventDefault(); // clears the search, stops nothing
      clearTimeout(list.timer);
      $("search").value = "";
      reload().catch((error) => list.onError(error.message));
    }
  });
  $("more-conversations").addEventListener("click", () => loadMore().catch((error) => list.onError(error.message)));
}

// Read the first page again (for the query typed), in place of the list shown.
export async function reload() {
  list.query = $("search").value.trim();
  await loadMore(true);
}

// Logged out: nothing of this user's list stays, nor their search.
export function clearSidebar() {
  clearTimeout(list.timer);
  list.reads += 1;
  $("search").value = "";
  Object.assign(list, { query: "", items: [], more: false, current: null });
  $("conversations").replaceChildren();
}

export function markActive(id) {
  list.current = id;
  for (const item of $("conversations").children) item.classList.toggle("active", Number(item.dataset.id) === id);
}

// A title changed (a rename, or an automatic title): the item shows it.
export function showTitle(id, title) {
  const item = list.items.find((c) => c.conversation_id === id);
  if (item) item.title = title;
  const span = document.querySelector(`#conversations li[data-id="${id}"] .title`);
  if (span) span.textContent = title || `Conversation ${id}`;
}

async function loadMore(fresh = false) {
  const read = ++list.reads;
  const params = new URLSearchParams({ limit: String(PAGE) });
  if (list.query) params.set("q", list.query);
  const last = list.items[list.items.length - 1];
  if (!fresh && last) params.set("before", String(last.conversation_id));
  const page = await list.api(`/api/conversations/list?${params}`);
  if (read !== list.reads) return; // typed on meanwhile
  list.items = fresh ? page : [...list.items, ...page];
  list.more = page.length === PAGE;
  show();
}

function show() {
  const items = list.items.map(item);
  $("conversations").replaceChildren(...items);
  $("more-conversations").hidden = !list.more;
  $("no-conversations").hidden = items.length > 0;
  $("no-conversations").textContent = list.query ? "Nothing matches." : "No conversations yet.";
}

function item(conversation) {
  const id = conversation.conversation_id;
  const element = document.createElement("li");
  element.dataset.testid = "conversation-item";
  element.dataset.id = String(id);
  element.classList.toggle("active", list.current === id);
  const title = document.createElement("span");
  title.className = "title";
  title.textContent = conversation.title || `Conversation ${id}`;
  const rename = small("rename", "✎", "Rename", () => startRename(element, conversation));
  const remove = small("delete-conversation", "✕", "Delete", async () => {
    await list.api(`/api/conversations/del/${id}`, { method: "POST" });
    list.items = list.items.filter((c) => c.conversation_id !== id);
    show();
    list.onDeleted(id);
  });
  element.append(title, rename, remove);
  element.addEventListener("click", () => list.onOpen(conversation));
  return element;
}

// A focused text field in place of the title: Enter saves, Escape (or leaving it) cancels.
function startRename(element, conversation) {
  const field = document.createElement("input");
  field.dataset.testid = "rename-input";
  field.maxLength = 200;
  field.value = conversation.title;
  field.setAttribute("aria-label", "New title");
  let done = false;
  const finish = async (save) => {
    if (done) return;
    done = true;
    const title = field.value.trim();
    if (save && title && title !== conversation.title) {
      const updated = await list.api(`/api/conversations/update/${conversation.conversation_id}`, {
        method: "POST", body: JSON.stringify({ title }),
      }).catch((error) => { done = false; throw error; });
      showTitle(conversation.conversation_id, updated.title);
    }
    show();
  };
  field.addEventListener("click", (event) => event.stopPropagation());
  field.addEventListener("keydown", (event) => {
    event.stopPropagation(); // Escape here cancels the rename, nothing else
    if (event.isComposing) return;
    if (event.key === "Enter") {
      event.preventDefault();
      finish(true).catch((error) => list.onError(error.message));
    } else if (event.key === "Escape") {
      finish(false);
    }
  });
  field.addEventListener("blur", () => finish(false));
  element.replaceChildren(field);
  field.focus();
  field.select();
}

// A button of an item: its click opens nothing else; a failure is shown.
function small(testid, text, title, action) {
  return button(testid, text, title, (event) => {
    event.stopPropagation();
    action().catch((error) => list.onError(error.message));
  });
}
