// The controls under each message (DESIGN.md, Branches): edit a question, regenerate the
// last answer, step through a message's versions "‹ k/n ›", fork from it; an answer's
// token usage and a copy button. Plain DOM, text only.

import { button } from "./dom.js";
import { copyButton } from "./copy.js";

// Rebuild the controls of every message shown in `list`. `tree` maps a message id to the
// message as history gave it ({content, usage, sibling_ids}; one it lacks has no other version yet);
// `actions` are {edit(id), regenerate(), switchTo(id), fork(id)}.
export function renderControls(list, tree, actions) {
  for (const old of list.querySelectorAll(":scope > li.controls")) old.remove();
  const bubbles = [...list.querySelectorAll(":scope > li.user[data-message-id], :scope > li.assistant[data-message-id]")];
  bubbles.forEach((bubble, at) => {
    const id = Number(bubble.dataset.messageId);
    const role = bubble.classList.contains("user") ? "user" : "assistant";
    const message = tree.get(id);
    const siblings = message?.sibling_ids ?? [id];
    const files = bubble.nextElementSibling; // its attachments, if any, come first
    const anchor = files?.classList.contains("files") && files.dataset.messageId === bubble.dataset.messageId
      ? files : bubble;
    const row = controls(id, role, siblings, at === bubbles.length - 1, actions);
    if (role === "assistant" && message) row.append(...answerExtras(message));
    anchor.after(row);
  });
}

function controls(id, role, siblings, last, actions) {
  const row = document.createElement("li");
  row.className = `controls for-${role}`;
  row.dataset.messageId = String(id);
  const at = siblings.indexOf(id);
  if (siblings.length > 1) {
    row.append(
      button("branch-prev", "‹", "Previous version", at > 0 ? () => actions.switchTo(siblings[at - 1]) : null),
      label("branch-position", `${at + 1}/${siblings.length}`),
      button("branch-next", "›", "Next version",
        at < siblings.length - 1 ? () => actions.switchTo(siblings[at + 1]) : null),
    );
  }
  if (role === "user") row.append(button("edit-message", "✎", "Edit and send again", () => actions.edit(id)));
  // The last message: a new version of its answer (or, after a failed one, an answer at last).
  if (last) row.append(button("regenerate", "↻", "Regenerate", () => actions.regenerate()));
  row.append(button("fork", "Fork", "A new conversation with this branch up to here", () => actions.fork(id)));
  return row;
}

// An answer's copy button and, where history has it, its token usage.
function answerExtras(message) {
  const extras = [copyButton(() => message.content, "Copy the answer (Markdown)")];
  const usage = message.usage;
  if (usage) {
    const estimated = usage.estimated ? " (estimated)" : "";
    const element = label("answer-usage", `${usage.prompt_tokens} → ${usage.completion_tokens} tokens${estimated}`);
    element.title = `${usage.prompt_tokens} prompt tokens, ${usage.completion_tokens} completion tokens`
      + (usage.reasoning_tokens ? ` (${usage.reasoning_tokens} of them thinking)` : "") + estimated;
    extras.push(element);
  }
  return extras;
}

function label(testid, text) {
  const element = document.createElement("span");
  element.dataset.testid = testid;
  element.textContent = text;
  return element;
}
