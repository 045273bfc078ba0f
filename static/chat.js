// The open conversation: its messages, its socket (realtime-llm.js) and the composer.
// Answers stream into Markdown bubbles (messages.js); a reopen (another branch, a resync,
// an answer that ended while away) reads history again and replays the buffer from 0,
// skipping what history already shows.

import { renderControls } from "./branches.js";
import { showError } from "./dom.js";
import { initAttachments, resetAttachments, showAttachments, takePending } from "./files.js";
import { showConversation } from "./header.js";
import { addBubble, addThinking, clearMessages, dropBubbles, finishBubble, finishThinking, scrollDown } from "./messages.js";
import { ConversationClient } from "./realtime-llm.js";
import { markActive, reload as loadConversations, showTitle } from "./sidebar.js";

const $ = (id) => document.getElementById(id);

const state = {
  api: null, // the page's api(path, options)
  onTurn: () => {}, // a turn ended (the page reads the user's totals again)
  current: null, // {id, title}
  client: null, // the open conversation's ConversationClient
  generating: false,
  assistantBubble: null,
  thinking: null, // the "Thinking" block of the answer being written, if its model thinks
  replay: null, // while replaying: {lastId, lastRole} of the history already shown
  skipping: false, // replayed events of an answer that history already shows
  tree: new Map(), // message id -> the message as history last gave it (content, usage, sibling_ids)
  editing: null, // the id of the user message the composer is writing a new version of
  branchSeen: 0, // the newest branch event acted on (a reopen replays it: not again)
  reads: 0, // history reads for the versions: only the newest one's answer counts
  unsent: null, // {content, editing} of the message sent, until the server accepts it
};

const FRIENDLY = {
  conflict: "An answer is still being written. Wait for it, or press Stop.",
  payload_too_large: "That message is too long.",
  unavailable: "The server cannot stream right now. Retrying…",
};

const api = (...args) => state.api(...args);

// The id of the open conversation, or null.
export function currentId() {
  return state.current?.id ?? null;
}

let opening = 0;

export async function openConversation(conversation) {
  disconnect();
  const attempt = ++opening;
  const id = conversation.conversation_id;
  const changed = state.current?.id !== id;
  if (changed) {
    state.branchSeen = 0;
    resetAttachments();
  }
  const history = await api(`/api/conversations/history/${id}`);
  if (attempt !== opening) return; // another conversation was opened meanwhile
  disconnect();
  state.current = { id, title: history.title };
  sessionStorage.setItem("conversation", String(id));
  $("chat-title").textContent = history.title || `Conversation ${id}`;
  $("app").classList.remove("sidebar-open");
  showError("chat-error", "");
  showMessages(history);
  showConversation(history, changed);
  markActive(id);
  const last = history.messages[history.messages.length - 1];
  // Replaying the buffer from the start, skip what history already shows; an answer still
  // being written (its user message is history's last) is rebuilt from its deltas.
  state.replay = { lastId: last ? last.message_id : 0, lastRole: last ? last.role : null };
  state.skipping = true;
  state.assistantBubble = null;
  state.thinking = null;
  connect(id);
}

// No conversation open (deleted, or logged out).
export function closeConversation() {
  disconnect();
  resetAttachments();
  state.current = null;
  sessionStorage.removeItem("conversation");
  clearMessages();
  $("chat-title").textContent = "No conversation open";
  showConversation(null);
  markActive(null);
}

function showMessages(history) {
  clearMessages();
  for (const message of history.messages) {
    if (message.reasoning) addThinking(message.reasoning, false, message.message_id);
    // An answer stopped while its model was still thinking has no text: its block alone.
    if (message.content || !message.reasoning) {
      const bubble = addBubble(message.role, message.content, false, message.message_id);
      showAttachments(bubble, message.message_id, message.attachments);
    }
  }
  showVersions(history);
  scrollDown(true);
  if (!state.tree.has(state.editing)) setEditing(null); // no longer shown: nothing to edit
}

// Each message's versions and usage, from history: the controls under the messages follow them.
function showVersions(history) {
  state.tree = new Map(history.messages.map((m) => [m.message_id, m]));
  renderControls($("messages"), state.tree, BRANCH_ACTIONS);
  scrollDown();
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
    setEditing(id);
    $("message-input").value = state.tree.get(id)?.content ?? "";
    $("message-input").focus();
  },
  regenerate() {
    showError("chat-error", "");
    state.client?.regenerate();
  },
  switchTo(id) {
    showError("chat-error", "");
    state.client?.branch(id);
  },
  async fork(id) {
    try {
      const forked = await api(`/api/conversations/fork/${state.current.id}`, {
        method: "POST", body: JSON.stringify({ message_id: id }),
      });
      await Promise.all([loadConversations(), openConversation(forked)]);
    } catch (error) {
      showError("chat-error", error.message);
    }
  },
};

function setEditing(id) {
  state.editing = id;
  $("editing").hidden = id === null;
}

// --- the conversation socket (realtime-llm.js) ----------------------------------------------

const EVENTS = ["ready", "user_message", "reasoning", "message", "full_response", "error", "branch", "resync",
  "truncate", "title"];

function connect(id) {
  const client = new ConversationClient({
    conversationId: id,
    lastEventId: 0, // the whole buffer: an answer being written is rebuilt from its deltas
    // A single-use ticket in the URL: the long-lived token goes neither into a URL nor a frame.
    ticket: async () => (await api("/api/tickets", {
      method: "POST", body: JSON.stringify({ conversation_id: id }),
    })).ticket,
  });
  state.client = client;
  const mine = (handler) => (event) => { if (state.client === client) handler(event); };
  for (const type of EVENTS) client.on(type, mine(handleEvent));
  client.on("status", mine(({ status }) => {
    if (status === "open") return; // "ready" follows
    setStatus(status === "closed" ? "" : `${status}…`);
    setComposer();
  }));
  client.on("gone", mine(() => {
    closeConversation();
    showError("chat-error", "This conversation no longer exists.");
    loadConversations().catch(() => {});
  }));
  client.connect();
}

function disconnect() {
  const client = state.client;
  state.client = null;
  client?.close();
  setComposer(); // nothing typed now could be sent: wait for the next socket's "ready"
}

function reopen() {
  state.generating = false;
  openConversation({ conversation_id: state.current.id }).catch((e) => showError("chat-error", e.message));
}

function handleEvent(frame) {
  switch (frame.event) {
    case "ready":
      // The answer we were reading ended while we were away (and the server may have no
      // record of its last events, e.g. a restart without Redis): show what was saved.
      if (state.generating && !frame.generating) return reopen();
      state.generating = frame.generating;
      setStatus(frame.generating ? "answering…" : "");
      setComposer();
      break;
    case "user_message":
      if (state.replay && frame.message_id <= state.replay.lastId) {
        // Known from history: skip its answer, unless history shows it still unanswered.
        state.skipping = !(frame.message_id === state.replay.lastId && state.replay.lastRole === "user");
        if (!state.skipping) state.assistantBubble = null;
        break;
      }
      state.skipping = false;
      state.unsent = null; // accepted (this tab's, or another's: either way nothing waits)
      showAttachments(addBubble("user", frame.data, false, frame.message_id), frame.message_id, frame.attachments);
      scrollDown(true); // a new turn: follow it (until the reader scrolls up)
      state.assistantBubble = null;
      state.thinking = null;
      startAnswering();
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
      state.assistantBubble.answer.append(frame.data);
      break;
    case "full_response":
      if (!state.skipping) {
        finishAnswer(frame.data, frame.message_id);
        afterTurn();
      }
      state.skipping = false;
      break;
    case "branch": // another branch is the active one (here or in another tab): read it and resume
      if (frame.id <= state.branchSeen) break; // replayed after the reopen it caused
      state.branchSeen = frame.id;
      reopen();
      break;
    case "resync": // we resumed from events the server no longer holds: read the history again
      reopen();
      break;
    case "truncate": // edit or regenerate: these messages are gone; the new turn follows
      dropBubbles(frame.from_message_id, frame.through_message_id); // harmless if already gone
      state.assistantBubble = null;
      state.thinking = null;
      // History read after this truncate already shows the new turn (its ids are higher):
      // skip its replay. Otherwise the new turn is being written now.
      state.skipping = Boolean(state.replay) && state.replay.lastId > frame.through_message_id;
      if (!state.skipping) startAnswering();
      break;
    case "title":
      state.current.title = frame.data;
      $("chat-title").textContent = frame.data;
      showTitle(state.current.id, frame.data);
      break;
    case "error":
      if (typeof frame.id !== "number") { // a frame of this socket's refused
        showError("chat-error", FRIENDLY[frame.code] || frame.data);
        restoreUnsent();
        break;
      }
      if (!state.skipping) {
        finishAnswer(null);
        showError("chat-error", `The answer failed: ${frame.data}`);
        afterTurn();
      }
      state.skipping = false;
      break;
    default:
      break;
  }
}

function startAnswering() {
  state.generating = true;
  setComposer();
  setStatus("answering…");
}

function afterTurn() {
  rereadVersions().catch(() => {});
  state.onTurn();
}

function finishAnswer(text, messageId) {
  if (state.thinking) finishThinking(state.thinking, messageId);
  state.thinking = null;
  if (state.assistantBubble) finishBubble(state.assistantBubble, text, messageId);
  else if (text) addBubble("assistant", text, false, messageId);
  state.assistantBubble = null;
  state.generating = false;
  setStatus("");
  setComposer();
}

function setStatus(text) {
  $("status").textContent = text;
}

function setComposer() {
  const open = Boolean(state.client?.open);
  $("messages").setAttribute("aria-busy", String(state.generating)); // read the answer once it is whole
  $("messages").classList.toggle("busy", !open || state.generating); // versions wait for the answer
  $("message-input").disabled = !open;
  $("send").disabled = !open || state.generating;
  $("stop").disabled = !open || !state.generating;
}

function sendMessage() {
  const input = $("message-input");
  const content = input.value;
  if (!content.trim() || !state.client?.open) return;
  const attachments = takePending(); // (an edit sent without keeps the old ones)
  showError("chat-error", "");
  state.client.send(content, { attachments, editMessageId: state.editing });
  state.unsent = { content, editing: state.editing };
  input.value = "";
  setEditing(null);
}

// The message sent was refused (too long, an answer still running): back in the composer,
// unless something else was typed since.
function restoreUnsent() {
  const unsent = state.unsent;
  state.unsent = null;
  if (!unsent || $("message-input").value) return;
  $("message-input").value = unsent.content;
  if (unsent.editing !== null && state.tree.has(unsent.editing)) setEditing(unsent.editing);
}

function stop() {
  if (state.generating) state.client?.stop();
}

export function initChat({ api: call, token, onTurn }) {
  state.api = call;
  state.onTurn = onTurn;
  $("composer").addEventListener("submit", (event) => { event.preventDefault(); sendMessage(); });
  $("message-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.isComposing || event.defaultPrevented || $("app").hidden) return;
    const field = event.target.closest?.("input, select, textarea");
    if (event.key === "Escape" && (!field || field.id === "message-input")) { // stops the answer; else drops an edit
      if (state.generating) stop();
      else if (state.editing !== null) cancelEdit();
    }
  });
  $("stop").addEventListener("click", stop);
  $("cancel-edit").addEventListener("click", cancelEdit);
  initAttachments({ token, onError: (message) => showError("chat-error", message) });
  showConversation(null);
}

function cancelEdit() {
  setEditing(null);
  $("message-input").value = "";
}
