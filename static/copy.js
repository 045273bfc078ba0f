// Copy to the clipboard: under each answer and in each code block (data-testid "copy").

import { button } from "./dom.js";

// A button that puts what `text()` returns on the clipboard.
export function copyButton(text, title = "Copy") {
  const copy = button("copy", "Copy", title, async () => {
    const done = await copyText(text());
    copy.textContent = done ? "Copied" : "Copy failed";
    setTimeout(() => { copy.textContent = "Copy"; }, 1500);
  });
  copy.classList.add("copy");
  return copy;
}

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text); // a secure context (https, localhost)
    return true;
  } catch {
    const area = document.createElement("textarea"); // plain http elsewhere: the old way
    area.value = text;
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.append(area);
    area.select();
    const done = document.execCommand("copy");
    area.remove();
    return done;
  }
}
