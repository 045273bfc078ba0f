// The messages shown (of the open conversation, or of a share link): the user's as text,
// the model's answers as Markdown (streaming.js, markdown.js: sanitised, rendered a few
// times a second while they stream), its thinking as text in a block above the answer.

import { StreamingMarkdown } from "./streaming.js";

const list = () => document.getElementById("messages");

export function clearMessages() {
  list().replaceChildren();
}

// A message's bubble. An answer's bubble keeps its text as `bubble.answer.text`; while it
// streams, `bubble.answer.append(delta)` adds to it.
export function addBubble(role, text, streaming = false, messageId = null) {
  const bubble = document.createElement("li");
  bubble.className = role + (streaming ? " streaming" : "");
  bubble.dataset.testid = role === "user" ? "message-user" : "message-assistant";
  if (messageId) bubble.dataset.messageId = String(messageId);
  if (role === "assistant") {
    bubble.answer = new StreamingMarkdown(bubble, scrollDown);
    if (text) bubble.answer.finish(text);
  } else {
    bubble.textContent = text; // the user's words as typed
  }
  list().append(bubble);
  scrollDown();
  return bubble;
}

// The answer is complete: rendered whole, once, as history will show it.
export function finishBubble(bubble, text, messageId) {
  bubble.answer.finish(text ?? bubble.answer.text);
  bubble.classList.remove("streaming");
  if (messageId) bubble.dataset.messageId = String(messageId);
}

export function addThinking(text, streaming = false, messageId = null) {
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
  list().append(block);
  scrollDown();
  return block;
}

export function finishThinking(block, messageId) {
  block.classList.remove("streaming");
  block.querySelector("details").open = false;
  if (messageId) block.dataset.messageId = String(messageId);
}

export function dropBubbles(from, through) {
  for (const bubble of [...list().children]) {
    const id = Number(bubble.dataset.messageId);
    if (id >= from && id <= through) bubble.remove();
  }
}

// Keep the newest line in view, unless the reader scrolled up to read: `following` is
// whether they were at the bottom when they last scrolled (our own scrolling aside).
let following = true;
let ownScroll = -1; // the scrollTop our last scrollDown left

list().addEventListener("scroll", () => {
  const messages = list();
  if (messages.scrollTop === ownScroll) return;
  following = messages.scrollHeight - messages.scrollTop - messages.clientHeight < 120;
});

export function scrollDown(force = false) {
  if (force) following = true;
  if (!following) return;
  const messages = list();
  messages.scrollTop = messages.scrollHeight;
  ownScroll = messages.scrollTop;
}
