// realtime-llm chat page: plain JavaScript, no build step.
// Model output is untrusted: it only ever reaches the page through textContent.

import { renderControls } from "./branches.js";
import { addFiles, initAttachments, resetAttachments, showAttachments, takePending } from "./files.js";
import { initTokens } from "./tokens.js";

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("token"),
  conversations: [],
  current: null, // {id, title}
  socket: null,
  lastEventId: null, // the last conversation event id seen: resume point
  retries: 0,
  reconnectTimer: null,
  generating: false,
  assistantBubble: null,
  thinking: null, // the "Thinking" block of the answer being written, if its model thinks
  replay: null, // while replaying: {lastId, lastRole} of the history already shown
  skipping: false, // replayed events of an answer that history already shows
  tree: new Map(), // message id -> {sibling_ids} of the branch shown, as history last gave it
  editing: null, // the id of the user message the composer is writing a new version of
  branchSeen: 0, // the newest branch event acted on (a reopen replays it: not again)
  connecting: 0, // connection attempts: only the newest one's ticket opens a socket
  reads: 0, // history reads for the versions: only the newest one's answer counts
};

const FRIENDLY = {
  conflict: "An answer is still being written. Wait for it, or press Stop.",
  payload_too_large: "That message is too long.",
  unavailable: "The server cannot stream right now. Retrying…",
};

function showError(where, message) {
  const el = $(where);
  el.textContent = message;
  el.hidden = !message;
}

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new Error("Cannot reach the server. Check your connection.");
  }
  const body = await response.json().catch(() => ({}));
  if (response.status === 401 && state.token) {
    logout("Your session has ended. Please log in again.");
  }
  if (!response.ok) {
    const error = new Error(body.error || `The server answered ${response.status}.`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// --- auth -----------------------------------------------------------------------------

async function login() {
  const username = $("username").value.trim();
  const password = $("password").value;
  const body = await api("/api/users/login", { method: "POST", body: JSON.stringify({ username, password }) });
  state.token = body.token;
  sessionStorage.setItem("token", body.token);
  await showApp();
}

async function register() {
  const username = $("username").value.trim();
  const password = $("password").value;
  await api("/api/users/register", { method: "POST", body: JSON.stringify({ username, password }) });
  await login();
}

function logout(message = "") {
  if (state.token) api("/api/users/logout", { method: "POST" }).catch(() => {});
  closeSocket();
  resetAttachments();
  state.token = null;
  state.current = null;
  sessionStorage.removeItem("token");
  $("app").hidden = true;
  $("auth").hidden = false;
  showError("auth-error", message);
}

// --- conversations ----------------------------------------------------------------------

async function showApp() {
  const me = await api("/api/users/me");
  $("me").textContent = me.username;
  $("auth").hidden = true;
  $("app").hidden = false;
  showError("auth-error", "");
  await Promise.all([loadModels(), loadConversations()]);
  const saved = Number(sessionStorage.getItem("conversation"));
  const again = state.conversations.find((c) => c.conversation_id === saved);
  if (again) await openConversation(again);
}

async function loadModels() {
  const body = await api("/api/models");
  const select = $("model-select");
  select.replaceChildren();
  for (const model of body.models.filter((m) => !m.pattern)) {
    const option = new Option(model.id, model.id, false, model.id === body.default);
    select.append(option);
  }
}

async function loadConversations() {
  state.conversations = await api("/api/conversations/list");
  const list = $("conversations");
  list.replaceChildren();
  for (const conversation of state.conversations) {
    const item = document.createElement("li");
    item.dataset.testid = "conversation-item";
    item.dataset.id = conversation.conversation_id;
    item.classList.toggle("active", state.current?.id === conversation.conversation_id);
    const title = document.createElement("span");
    title.textContent = conversation.title || `Conversation ${conversation.conversation_id}`;
    const remove = document.createElement("button");
    remove.dataset.testid = "delete-conversation";
    remove.className = "secondary";
    remove.textContent = "✕";
    remove.title = "Delete";
    remove.addEventListener("click", (event) => {
      event.stopPropagation();
      deleteConversation(conversation.conversation_id).catch((e) => showError("chat-error", e.message));
    });
    item.append(title, remove);
    item.addEventListener("click", () => openConversation(conversation).catch((e) => showError("chat-error", e.message)));
    list.append(item);
  }
}

async function createConversation() {
  const body = { model: $("model-select").value };
  const title = $("conversation-title").value.trim();
  const key = $("conversation-key").value.trim();
  if (title) body.title = title;
  if (key) body.api_key = key;
  const created = await api("/api/conversations/create", { method: "POST", body: JSON.stringify(body) });
  $("create-form").hidden = true;
  $("conversation-title").value = "";
  $("conversation-key").value = "";
  await loadConversations();
  await openConversation(created);
}

async function deleteConversation(id) {
  await api(`/api/conversations/del/${id}`, { method: "POST" });
  if (state.current?.id === id) {
    closeSocket();
    state.current = null;
    sessionStorage.removeItem("conversation");
    $("messages").replaceChildren();
    $("chat-title").textContent = "No conversation open";
    setComposer(false);
  }
  await loadConversations();
}

let opening = 0;

async function openConversation(conversation) {
  closeSocket();
  const attempt = ++opening;
  const id = conversation.conversation_id;
  if (state.current?.id !== id) {
    state.branchSeen = 0;
    resetAttachments();
    $("share-panel").hidden = true;
  }
  const history = await api(`/api/conversations/history/${id}`);
  if (attempt !== opening) return; // another conversation was opened meanwhile
  closeSocket();
  state.current = { id, title: history.title };
  sessionStorage.setItem("conversation", String(id));
  $("chat-title").textContent = history.title || `Conversation ${id}`;
  $("app").classList.remove("sidebar-open");
  showError("chat-error", "");
  showMessages(history);
  showParams(history.params || {});
  const last = history.messages[history.messages.length - 1];
  // Replaying the buffer from the start, skip what history already shows; an answer still
  // being written (its user message is history's last) is rebuilt from its deltas.
  state.replay = { lastId: last ? last.message_id : 0, lastRole: last ? last.role : null };
  state.skipping = true;
  state.assistantBubble = null;
  state.thinking = null;
  state.lastEventId = 0;
  for (const item of document.querySelectorAll("#conversations li")) {
    item.classList.toggle("active", Number(item.dataset.id) === id);
  }
  connect();
}

function showMessages(history) {
  $("messages").replaceChildren();
  for (const message of history.messages) {
    if (message.reasoning) addThinking(message.reasoning, false, message.message_id);
    // An answer stopped while its model was still thinking has no text: its block alone.
    if (message.content || !message.reasoning) {
      const bubble = addBubble(message.role, message.content, false, message.message_id);
      showAttachments(bubble, message.message_id, message.attachments);
    }
  }
  showVersions(history);
  if (!state.tree.has(state.editing)) setEditing(null); // no longer shown: nothing to edit
}

// Each message's versions, from history: the controls under the messages follow them.
function showVersions(history) {
  state.tree = new Map(history.messages.map((m) => [m.message_id, m]));
  renderControls($("messages"), state.tree, BRANCH_ACTIONS);
}

// After a turn: the new messages' versions, as history says now.
async function rereadVersions() {
  const id = state.current?.id;
  const read = ++state.reads;
  if (!id) return;
  const history = await api(`/api/conversations/history/${id}`);
  if (state.current?.id !== id || read !== state.reads || state.generating) return; // moved on meanwhile
  showVersions(history);
}

const BRANCH_ACTIONS = {
  edit(id) {
    const bubble = document.querySelector(`#messages li.user[data-message-id="${id}"]`);
    setEditing(id);
    $("message-input").value = bubble ? bubble.textContent : "";
    $("message-input").focus();
  },
  regenerate: () => sendFrame({ type: "regenerate" }),
  switchTo: (id) => sendFrame({ type: "branch", message_id: id }),
  fork(id) {
    guard("chat-error", async () => {
      const forked = await api(`/api/conversations/fork/${state.current.id}`, {
        method: "POST", body: JSON.stringify({ message_id: id }),
      });
      await loadConversations();
      await openConversation(forked);
    })();
  },
};

function setEditing(id) {
  state.editing = id;
  $("editing").hidden = id === null;
}

function sendFrame(frame) {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN) return;
  showError("chat-error", "");
  state.socket.send(JSON.stringify(frame));
}

// --- the conversation socket --------------------------------------------------------------

function connect() {
  if (!state.current) return;
  const id = state.current.id;
  const attempt = ++state.connecting;
  setStatus("connecting…");
  // A single-use ticket in the URL: the long-lived token goes neither into a URL nor a frame.
  api("/api/tickets", { method: "POST", body: JSON.stringify({ conversation_id: id }) }).then(({ ticket }) => {
    if (attempt === state.connecting && state.current?.id === id) openSocket(id, ticket);
  }).catch((error) => {
    if (attempt !== state.connecting || !state.token) return;
    if (error.status === 404) conversationGone();
    else reconnectLater();
  });
}

function conversationGone() {
  showError("chat-error", "This conversation no longer exists.");
  state.current = null;
  loadConversations().catch(() => {});
}

function reconnectLater() {
  // A blip or a restart: come back, with backoff, and resume.
  const delay = Math.min(10000, 300 * 2 ** state.retries) * (0.75 + Math.random() / 2);
  state.retries += 1;
  setStatus("reconnecting…");
  state.reconnectTimer = setTimeout(connect, delay);
}

function openSocket(id, ticket) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const resume = typeof state.lastEventId === "number" ? `&last_event_id=${state.lastEventId}` : "";
  const socket = new WebSocket(
    `${scheme}://${location.host}/ws/conversations/${id}?ticket=${encodeURIComponent(ticket)}${resume}`);
  state.socket = socket;
  socket.addEventListener("message", (message) => {
    if (socket !== state.socket) return;
    let frame;
    try { frame = JSON.parse(message.data); } catch { return; }
    handleEvent(frame);
  });
  socket.addEventListener("close", (event) => {
    if (socket !== state.socket) return;
    state.socket = null;
    setComposer(false);
    if (event.code === 4401) {
      // The session ended, or only the ticket was refused (a tab frozen past its minute):
      // asking who we are tells them apart (a 401 there logs out).
      api("/api/users/me").then(reconnectLater).catch(() => { if (state.token) reconnectLater(); });
      return;
    }
    if (event.code === 4404) return conversationGone();
    reconnectLater();
  });
}

function closeSocket() {
  clearTimeout(state.reconnectTimer);
  state.connecting += 1; // a ticket on its way is for nothing now
  const socket = state.socket;
  state.socket = null;
  setComposer(false); // nothing typed now could be sent: wait for the next socket's "ready"
  if (socket) socket.close(1000);
}

function handleEvent(frame) {
  if (typeof frame.id === "number") {
    if (frame.id <= state.lastEventId) return; // already seen (a resume overlaps)
    state.lastEventId = frame.id;
  }
  switch (frame.event) {
    case "ready":
      state.retries = 0;
      if (state.generating && !frame.generating) {
        // The answer we were reading ended while we were away (and the server may have no
        // record of its last events, e.g. a restart without Redis): show what was saved.
        state.generating = false;
        openConversation({ conversation_id: state.current.id }).catch((e) => showError("chat-error", e.message));
        return;
      }
      state.generating = frame.generating;
      setStatus(frame.generating ? "answering…" : "");
      setComposer(true);
      break;
    case "user_message":
      if (state.replay && frame.message_id <= state.replay.lastId) {
        // Known from history: skip its answer, unless history shows it still unanswered.
        state.skipping = !(frame.message_id === state.replay.lastId && state.replay.lastRole === "user");
        if (!state.skipping) state.assistantBubble = null;
        break;
      }
      state.skipping = false;
      showAttachments(addBubble("user", frame.data, false, frame.message_id), frame.message_id, frame.attachments);
      state.assistantBubble = null;
      state.thinking = null;
      state.generating = true;
      setComposer(true);
      setStatus("answering…");
      break;
    case "reasoning": // the model's thinking: its own block, open while it streams
      if (state.skipping) break;
      if (!state.thinking) state.thinking = addThinking("", true);
      state.thinking.querySelector(".thought").textContent += frame.data;
      scrollDown();
      break;
    case "message":
      if (state.skipping) break;
      if (state.thinking && !state.assistantBubble) state.thinking.querySelector("details").open = false;
      if (!state.assistantBubble) state.assistantBubble = addBubble("assistant", "", true);
      state.assistantBubble.textContent += frame.data;
      scrollDown();
      break;
    case "done":
      break;
    case "full_response":
      if (!state.skipping) finishAnswer(frame.data, frame.message_id);
      state.skipping = false;
      rereadVersions().catch(() => {});
      break;
    case "branch": // another branch is the active one (here or in another tab): read it and resume
      if (frame.id <= state.branchSeen) break; // replayed after the reopen it caused
      state.branchSeen = frame.id;
      state.generating = false;
      openConversation({ conversation_id: state.current.id }).catch((e) => showError("chat-error", e.message));
      break;
    case "resync": // we resumed from events the server no longer holds: read the history again
      state.generating = false;
      openConversation({ conversation_id: state.current.id }).catch((e) => showError("chat-error", e.message));
      break;
    case "truncate": // edit or regenerate: these messages are gone; the new turn follows
      dropBubbles(frame.from_message_id, frame.through_message_id); // harmless if already gone
      state.assistantBubble = null;
      state.thinking = null;
      // History read after this truncate already shows the new turn (its ids are higher):
      // skip its replay. Otherwise the new turn is being written now.
      state.skipping = Boolean(state.replay) && state.replay.lastId > frame.through_message_id;
      if (!state.skipping) {
        state.generating = true;
        setStatus("answering…");
      }
      break;
    case "title":
      state.current.title = frame.data;
      $("chat-title").textContent = frame.data;
      loadConversations().catch(() => {});
      break;
    case "error":
      if (typeof frame.id !== "number") { // for this socket only
        showError("chat-error", FRIENDLY[frame.code] || frame.data);
        break;
      }
      if (!state.skipping) {
        finishAnswer(state.assistantBubble ? state.assistantBubble.textContent : null);
        showError("chat-error", `The answer failed: ${frame.data}`);
      }
      state.skipping = false;
      rereadVersions().catch(() => {});
      break;
    default:
      break; // pong, and events of later versions
  }
}

function finishAnswer(text, messageId) {
  if (state.thinking) {
    state.thinking.classList.remove("streaming");
    state.thinking.querySelector("details").open = false;
    if (messageId) state.thinking.dataset.messageId = String(messageId);
  }
  state.thinking = null;
  if (state.assistantBubble) {
    if (text !== null) state.assistantBubble.textContent = text;
    state.assistantBubble.classList.remove("streaming");
    if (messageId) state.assistantBubble.dataset.messageId = String(messageId);
  } else if (text) {
    addBubble("assistant", text, false, messageId);
  }
  state.assistantBubble = null;
  state.generating = false;
  setStatus("");
  setComposer(true);
}

function addBubble(role, text, streaming = false, messageId = null) {
  const bubble = document.createElement("li");
  bubble.className = role + (streaming ? " streaming" : "");
  bubble.dataset.testid = role === "user" ? "message-user" : "message-assistant";
  if (messageId) bubble.dataset.messageId = String(messageId);
  bubble.textContent = text; // never innerHTML: model output is untrusted
  $("messages").append(bubble);
  scrollDown();
  return bubble;
}

function addThinking(text, streaming = false, messageId = null) {
  // A block of its own above the answer (the answer's bubble stays the answer alone).
  const block = document.createElement("li");
  block.className = "reasoning" + (streaming ? " streaming" : "");
  block.dataset.testid = "reasoning";
  if (messageId) block.dataset.messageId = String(messageId);
  const details = document.createElement("details");
  details.open = streaming;
  const summary = document.createElement("summary");
  summary.textContent = "Thinking";
  const thought = document.createElement("div");
  thought.className = "thought";
  thought.textContent = text; // never innerHTML: model output is untrusted
  details.append(summary, thought);
  block.append(details);
  $("messages").append(block);
  scrollDown();
  return block;
}

// --- the conversation's generation settings --------------------------------------------------

const PARAMS = ["temperature", "top_p", "max_tokens", "reasoning_effort"];

function showParams(params) {
  for (const name of PARAMS) $(`param-${name}`).value = params[name] ?? "";
}

async function saveParams() {
  if (!state.current) return;
  const params = {};
  for (const name of PARAMS) {
    const raw = $(`param-${name}`).value.trim();
    const value = raw === "" ? null : name === "reasoning_effort" ? raw : Number(raw);
    if (typeof value === "number" && !Number.isFinite(value)) throw new Error(`${name} must be a number`);
    params[name] = value;
  }
  const updated = await api(`/api/conversations/update/${state.current.id}`, {
    method: "POST", body: JSON.stringify({ params }),
  });
  showParams(updated.params);
  $("params-form").hidden = true;
}

function dropBubbles(from, through) {
  for (const bubble of [...$("messages").children]) {
    const id = Number(bubble.dataset.messageId);
    if (id >= from && id <= through) bubble.remove();
  }
}

function scrollDown() {
  const messages = $("messages");
  messages.scrollTop = messages.scrollHeight;
}

function setStatus(text) {
  $("status").textContent = text;
}

function setComposer(connected) {
  const open = connected && state.socket && state.socket.readyState === WebSocket.OPEN;
  $("messages").classList.toggle("busy", !open || state.generating); // versions wait for the answer
  $("message-input").disabled = !open;
  $("send").disabled = !open || state.generating;
  $("stop").disabled = !open || !state.generating;
}

function sendMessage() {
  const input = $("message-input");
  const content = input.value;
  if (!content.trim() || !state.socket || state.socket.readyState !== WebSocket.OPEN) return;
  const frame = { type: "message", content };
  if (state.editing !== null) frame.edit_message_id = state.editing; // a new version of that one
  const attachments = takePending();
  if (attachments.length) frame.attachments = attachments; // (an edit sent without keeps the old ones)
  sendFrame(frame);
  input.value = "";
  setEditing(null);
}

// --- wiring -------------------------------------------------------------------------------

function guard(where, action) {
  return (event) => {
    event?.preventDefault();
    action().catch((error) => showError(where, error.message));
  };
}

$("auth-form").addEventListener("submit", guard("auth-error", login));
$("register").addEventListener("click", guard("auth-error", register));
$("logout").addEventListener("click", () => logout());
$("new-conversation").addEventListener("click", () => { $("create-form").hidden = !$("create-form").hidden; });
$("create-form").addEventListener("submit", guard("chat-error", createConversation));
$("composer").addEventListener("submit", (event) => { event.preventDefault(); sendMessage(); });
$("message-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});
$("stop").addEventListener("click", () => state.socket?.send(JSON.stringify({ type: "stop" })));
$("cancel-edit").addEventListener("click", () => { setEditing(null); $("message-input").value = ""; });
initAttachments({ token: () => state.token, onError: (message) => showError("chat-error", message) });
initTokens({ api, onError: (message) => showError("chat-error", message) });
$("attach-button").addEventListener("click", () => $("attach").click());
$("attach").addEventListener("change", () => {
  const files = [...$("attach").files];
  $("attach").value = "";
  addFiles(files);
});
$("message-input").addEventListener("paste", (event) => {
  const files = [...(event.clipboardData?.files || [])];
  if (files.length) {
    event.preventDefault();
    addFiles(files);
  }
});
$("chat").addEventListener("dragover", (event) => event.preventDefault());
$("chat").addEventListener("drop", (event) => {
  event.preventDefault();
  addFiles([...(event.dataTransfer?.files || [])]);
});
$("show-sidebar").addEventListener("click", () => $("app").classList.toggle("sidebar-open"));
$("show-params").addEventListener("click", () => { if (state.current) $("params-form").hidden = !$("params-form").hidden; });
$("params-form").addEventListener("submit", guard("chat-error", saveParams));
$("share").addEventListener("click", guard("chat-error", async () => {
  if (!state.current) return;
  const shared = await api(`/api/conversations/share/${state.current.id}`, { method: "POST" });
  $("share-link").href = shared.url;
  $("share-link").textContent = new URL(shared.url, location.href).href;
  $("share-panel").hidden = false;
}));
$("unshare").addEventListener("click", guard("chat-error", async () => {
  if (!state.current) return;
  await api(`/api/conversations/unshare/${state.current.id}`, { method: "POST" });
  $("share-panel").hidden = true;
}));

if (state.token) showApp().catch(() => logout());
