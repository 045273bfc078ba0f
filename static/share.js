// The read-only page of a shared conversation (/s/<share_id>): its history, then its
// answers live over /ws/shared/<share_id>. No login; answers as sanitised Markdown
// (markdown.js), everything else as text.

import { showError } from "./dom.js";
import { addBubble, clearMessages, dropBubbles, finishBubble } from "./messages.js";
import { initTheme } from "./theme.js";

const $ = (id) => document.getElementById(id);
const shareId = decodeURIComponent(location.pathname.split("/").pop());
let answer = null; // the bubble of the answer being written
let retries = 0;

function ended(message) {
  $("status").textContent = "";
  showError("chat-error", message);
}

async function load() {
  const response = await fetch(`/api/shared/${encodeURIComponent(shareId)}`);
  if (response.status === 404) return ended("This conversation is not shared (any more).");
  if (!response.ok) throw new Error(`the server answered ${response.status}`);
  const history = await response.json();
  $("chat-title").textContent = history.title || "Shared conversation";
  clearMessages();
  answer = null;
  for (const message of history.messages) {
    if (message.content) addBubble(message.role, message.content, false, message.message_id);
  }
  connect();
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/shared/${encodeURIComponent(shareId)}`);
  $("status").textContent = "connecting…";
  socket.addEventListener("message", (message) => {
    let frame;
    try { frame = JSON.parse(message.data); } catch { return; }
    show(frame, socket);
  });
  socket.addEventListener("close", (event) => {
    if (event.code === 4404) return ended("This conversation is no longer shared.");
    const delay = Math.min(10000, 300 * 2 ** retries++);
    $("status").textContent = "reconnecting…";
    setTimeout(() => load().catch((e) => ended(e.message)), delay);
  });
}

function show(frame, socket) {
  switch (frame.event) {
    case "ready":
      retries = 0;
      $("status").textContent = frame.generating ? "answering…" : "live";
      break;
    case "user_message":
      addBubble("user", frame.data, false, frame.message_id);
      answer = null;
      $("status").textContent = "answering…";
      break;
    case "message":
      if (!answer) answer = addBubble("assistant", "", true);
      answer.answer.append(frame.data);
      break;
    case "full_response":
      if (answer) finishBubble(answer, frame.data, frame.message_id);
      else if (frame.data) addBubble("assistant", frame.data, false, frame.message_id);
      answer = null;
      $("status").textContent = "live";
      break;
    case "truncate":
      dropBubbles(frame.from_message_id, frame.through_message_id);
      break;
    case "branch": // the owner switched versions: read it again
    case "resync": // resumed from events the server no longer holds: read it again
      socket.close(1000);
      break;
    case "title":
      $("chat-title").textContent = frame.data;
      break;
    default:
      break;
  }
}

initTheme(null);
load().catch((error) => ended(error.message));
