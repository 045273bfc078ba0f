// The version controls under each message (DESIGN.md, Branches): edit a question,
// regenerate the last answer, step through a message's versions "‹ k/n ›", fork from it.
// Plain DOM, text only.

// Rebuild the controls of every message shown in `list`. `tree` maps a message id to
// {sibling_ids} as history gave it (a message it lacks has no other version yet);
// `actions` are {edit(id), regenerate(), switchTo(id), fork(id)}.
export function renderControls(list, tree, actions) {
  for (const old of list.querySelectorAll("li.controls")) old.remove();
  const bubbles = [...list.querySelectorAll("li.user[data-message-id], li.assistant[data-message-id]")];
  bubbles.forEach((bubble, at) => {
    const id = Number(bubble.dataset.messageId);
    const role = bubble.classList.contains("user") ? "user" : "assistant";
    const siblings = tree.get(id)?.sibling_ids ?? [id];
    const files = bubble.nextElementSibling; // its attachments, if any, come first
    const anchor = files?.classList.contains("files") && files.dataset.messageId === bubble.dataset.messageId
      ? files : bubble;
    anchor.after(controls(id, role, siblings, at === bubbles.length - 1, actions));
  });
}

function controls(id, role, siblings, last, actions) {
  const row = document.createElement("li");
  row.className = `controls for-${role}`;
  row.dataset.messageId = String(id);
  const at = siblings.indexOf(id);
  if (siblings.length > 1) {
    row.append(
      button("branch-prev", "‹", "Previous version", at > 0 && (() => actions.switchTo(siblings[at - 1]))),
      label("branch-position", `${at + 1}/${siblings.length}`),
      button("branch-next", "›", "Next version",
        at < siblings.length - 1 && (() => actions.switchTo(siblings[at + 1]))),
    );
  }
  if (role === "user") row.append(button("edit-message", "✎", "Edit and send again", () => actions.edit(id)));
  // The last message: a new version of its answer (or, after a failed one, an answer at last).
  if (last) row.append(button("regenerate", "↻", "Regenerate", () => actions.regenerate()));
  row.append(button("fork", "Fork", "A new conversation with this branch up to here", () => actions.fork(id)));
  return row;
}

function button(testid, text, title, action) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = "secondary";
  element.dataset.testid = testid;
  element.textContent = text;
  element.title = title;
  element.disabled = !action;
  if (action) element.addEventListener("click", action);
  return element;
}

function label(testid, text) {
  const element = document.createElement("span");
  element.dataset.testid = testid;
  element.textContent = text;
  return element;
}
