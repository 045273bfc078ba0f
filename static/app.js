// realtime-llm chat page: plain JavaScript modules, no build step.
// Model output is untrusted: answers reach the page as sanitised Markdown (markdown.js),
// everything else through textContent. This module: logging in and out, the user's token
// totals, and wiring the parts (chat.js: the open conversation; sidebar.js, header.js,
// tokens.js, theme.js).

import { closeConversation, currentId, initChat, openConversation } from "./chat.js";
import { showError } from "./dom.js";
import { initHeader, showModels } from "./header.js";
import { clearSidebar, initSidebar, reload as loadConversations } from "./sidebar.js";
import { initTheme } from "./theme.js";
import { initTokens } from "./tokens.js";

const $ = (id) => document.getElementById(id);

const state = {
  token: sessionStorage.getItem("token"),
  usageReads: 0, // reads of the user's totals: only the newest one's answer counts
};

// A call to the API with the session's token: its JSON (or, `raw`, the response itself);
// an error in words when it fails, and a 401 ends the session.
async function api(path, { raw = false, ...options } = {}) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  let response;
  try {
    response = await fetch(path, { ...options, headers });
  } catch {
    throw new Error("Cannot reach the server. Check your connection.");
  }
  if (response.status === 401 && state.token) {
    logout("Your session has ended. Please log in again.");
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    const error = new Error(body.error || `The server answered ${response.status}.`);
    error.status = response.status;
    throw error;
  }
  return raw ? response : response.json().catch(() => ({}));
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
  closeConversation();
  clearSidebar();
  state.token = null;
  sessionStorage.removeItem("token");
  $("app").hidden = true;
  $("auth").hidden = false;
  showError("auth-error", message);
}

async function showApp() {
  $("auth").hidden = true;
  $("app").hidden = false;
  showError("auth-error", "");
  const [me, models] = await Promise.all([api("/api/users/me"), api("/api/models"), loadConversations()]);
  $("me").textContent = me.username;
  showUsage(me.usage);
  showModels(models);
  const saved = Number(sessionStorage.getItem("conversation"));
  if (saved) await openConversation({ conversation_id: saved }).catch(() => sessionStorage.removeItem("conversation"));
}

// The user's tokens, all conversations together (GET /api/users/me).
function showUsage(usage) {
  $("usage").textContent = `Tokens used: ${usage.prompt_tokens.toLocaleString()} in, `
    + `${usage.completion_tokens.toLocaleString()} out`;
}

async function rereadUsage() {
  const read = ++state.usageReads;
  const me = await api("/api/users/me");
  if (read === state.usageReads) showUsage(me.usage);
}

// --- conversations ----------------------------------------------------------------------

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
  await Promise.all([loadConversations(), openConversation(created)]);
}

// --- wiring -------------------------------------------------------------------------------

function guard(where, action) {
  return (event) => {
    event?.preventDefault();
    action().catch((error) => showError(where, error.message));
  };
}

const chatError = (message) => showError("chat-error", message);

$("auth-form").addEventListener("submit", guard("auth-error", login));
$("register").addEventListener("click", guard("auth-error", register));
$("logout").addEventListener("click", () => logout());
$("new-conversation").addEventListener("click", () => { $("create-form").hidden = !$("create-form").hidden; });
$("create-form").addEventListener("submit", guard("chat-error", createConversation));
$("show-sidebar").addEventListener("click", () => $("app").classList.toggle("sidebar-open"));
document.addEventListener("keydown", (event) => {
  if (event.key === "k" && (event.ctrlKey || event.metaKey) && !event.isComposing && !$("app").hidden) {
    event.preventDefault();
    $("app").classList.add("sidebar-open"); // (at phone width the sidebar is folded away)
    $("search").focus();
  }
});
initTheme($("theme"));
initTokens({ api, onError: chatError });
initHeader({ api, current: currentId, onError: chatError });
initSidebar({
  api,
  onOpen: (conversation) => openConversation(conversation).catch((e) => chatError(e.message)),
  onDeleted: (id) => { if (currentId() === id) closeConversation(); },
  onError: chatError,
});
initChat({ api, token: () => state.token, onTurn: () => rereadUsage().catch(() => {}) });

if (state.token) showApp().catch(() => logout());
