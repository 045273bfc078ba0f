// Small DOM helpers the page's modules share. Text only.

// A secondary button labelled `text` (often a symbol: `title` names it for screen readers
// too); disabled when there is no `onClick`.
export function button(testid, text, title, onClick = null) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = "secondary";
  element.dataset.testid = testid;
  element.textContent = text;
  element.title = title;
  element.setAttribute("aria-label", title);
  element.disabled = !onClick;
  if (onClick) element.addEventListener("click", onClick);
  return element;
}

// A message in the element `where` (an error line), shown while there is one.
export function showError(where, message) {
  const element = document.getElementById(where);
  element.textContent = message;
  element.hidden = !message;
}
