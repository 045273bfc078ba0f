// Model answers as Markdown, safely. marked parses, highlight.js colours code blocks and
// DOMPurify keeps only what Markdown itself makes: raw HTML in an answer is shown as text,
// images become links (no request leaves the page for an answer), and links open in a new
// tab without an opener. Nothing here runs model text; the result is a sanitised fragment.

import { button } from "./dom.js";
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import hljs from "./vendor/highlight.min.js";

const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escape = (text) => String(text).replace(/[&<>"']/g, (c) => ENTITIES[c]);

const marked = new Marked({
  gfm: true,
  renderer: {
    html: ({ text }) => escape(text), // raw HTML is text, block or inline
    checkbox: ({ checked }) => (checked ? "☑ " : "☐ "),
    image: ({ href, text }) => `<a href="${escape(href)}">${escape(text || href)}</a>`,
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s/)[0].toLowerCase();
      const known = language && hljs.getLanguage(language) ? language : "";
      const html = known ? hljs.highlight(text, { language: known, ignoreIllegals: true }).value : escape(text);
      return `<pre><code class="hljs${known ? ` language-${known}` : ""}">${html}</code></pre>\n`;
    },
  },
});

const PURIFY = {
  ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
    "ol", "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"],
  ALLOWED_ATTR: ["href", "title", "class", "start", "align"],
  RETURN_DOM_FRAGMENT: true,
};

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// A sanitised fragment of `text` rendered as Markdown, each code block with a copy button.
export function renderMarkdown(text) {
  const fragment = DOMPurify.sanitize(marked.parse(text).trim(), PURIFY);
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    pre.prepend(copyButton(() => (code ? code.textContent : pre.textContent), "Copy code"));
  }
  return fragment;
}

// A button that puts what `text()` returns on the clipboard (data-testid "copy").
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

const RENDER_EVERY_MS = 150; // a few renders a second while an answer streams

// An answer being written: deltas are kept as text and rendered at most every 150 ms.
// What lies before the last blank line outside a code fence is rendered once and kept;
// only the paragraph being written is parsed again, so a long answer costs no more per
// render than a short one. `finish` renders the whole answer once, as history shows it.
export class StreamingMarkdown {
  constructor(element, onRender = () => {}) {
    this.element = element;
    this.onRender = onRender; // after each rendering (the page keeps the newest line in view)
    this.text = "";
    this.frozen = 0; // text[0:frozen] is rendered for good
    this.live = null; // the element holding the rendering of the rest
    this.timer = null;
  }

  append(delta) {
    this.text += delta;
    this.timer ??= setTimeout(() => this.flush(), RENDER_EVERY_MS);
  }

  flush() {
    clearTimeout(this.timer);
    this.timer = null;
    const tail = this.text.slice(this.frozen);
    const cut = lastBreak(tail);
    if (cut > 0) {
      const part = document.createElement("div");
      part.append(renderMarkdown(tail.slice(0, cut)));
      if (this.live) this.live.before(part);
      else this.element.append(part);
      this.frozen += cut;
    }
    if (!this.live) {
      this.live = document.createElement("div");
      this.element.append(this.live);
    }
    this.live.replaceChildren(renderMarkdown(this.text.slice(this.frozen)));
    this.onRender();
  }

  finish(text = this.text) {
    clearTimeout(this.timer);
    this.timer = null;
    this.text = text;
    this.element.replaceChildren(renderMarkdown(text));
    this.onRender();
  }
}

// The end of the last blank line of `text` outside a code fence (0: none), `text` starting
// outside one.
function lastBreak(text) {
  let fence = null;
  let cut = 0;
  let at = 0;
  for (const line of text.split("\n")) {
    const next = at + line.length + 1;
    const marker = /^ {0,3}(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence === null && marker) fence = marker;
    else if (fence !== null && marker && marker[0] === fence[0] && marker.length >= fence.length
             && !line.trim().slice(marker.length)) fence = null;
    else if (fence === null && !line.trim() && next <= text.length) cut = next;
    at = next;
  }
  return cut;
}
