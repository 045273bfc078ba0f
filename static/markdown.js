// Model answers as Markdown, safely. marked parses, highlight.js colours code blocks and
// DOMPurify keeps only what Markdown itself makes: raw HTML in an answer is shown as text
// (tags marked knows and text inside tags it does not alike), images become links (no
// request leaves the page for an answer), links are http(s), mailto, in-page or on this
// site and open in a new tab without an opener; the only classes kept are highlight.js's.
// Nothing here runs model text; the result is a sanitised fragment.
//
// Bounded, as answers are the model's to choose: marked is quadratic on some input and
// highlight.js on some code, so one parse takes at most 64 KiB (a longer answer is
// rendered in parts cut at blank lines; a part longer still is shown as text), code
// blocks over 10 KiB are not coloured, and input the parser cannot take (too deep for
// its stack) is shown as text.

import { copyButton } from "./copy.js";
import { Marked } from "./vendor/marked.esm.js";
import DOMPurify from "./vendor/purify.es.mjs";
import hljs from "./vendor/highlight.min.js";

const MARKDOWN_MAX = 64 * 1024;
const HIGHLIGHT_MAX = 10 * 1024;

const ENTITIES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escape = (text) => String(text).replace(/[&<>"']/g, (c) => ENTITIES[c]);
// Raw text from the source: an entity written in it (`&amp;`) stays one.
const escapeSource = (text) => String(text).replace(/&(?!#?\w+;)|[<>"']/g, (c) => ENTITIES[c]);

let highlighting = true; // off for the part of an answer still being written

export const marked = new Marked({
  gfm: true,
  renderer: {
    html: ({ text }) => escape(text), // raw HTML is text, block or inline
    // Text marked passes through raw (after a tag it takes for the start of raw HTML) is
    // escaped too; any other text is marked's own (false: its default rendering).
    text(token) { return !token.tokens && token.escaped ? escapeSource(token.text) : false; },
    checkbox: ({ checked }) => (checked ? "☑ " : "☐ "),
    image: ({ href, text }) => `<a href="${escape(href)}">${escape(text || href)}</a>`,
    code({ text, lang }) {
      const language = (lang || "").trim().split(/\s/)[0].toLowerCase();
      const known = highlighting && text.length <= HIGHLIGHT_MAX && language && hljs.getLanguage(language);
      const html = known ? hljs.highlight(text, { language, ignoreIllegals: true }).value : escape(text);
      return `<pre><code class="hljs${known ? ` language-${language}` : ""}">${html}</code></pre>\n`;
    },
  },
});

const PURIFY = {
  ALLOWED_TAGS: ["a", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "li",
    "ol", "p", "pre", "span", "strong", "table", "tbody", "td", "th", "thead", "tr", "ul"],
  ALLOWED_ATTR: ["href", "title", "class", "start", "align"],
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#|\/(?![/\\]))/i, // not //host, nor /\host (the same to a browser)
  ADD_URI_SAFE_ATTR: ["start", "align"], // not URLs: kept as they are (list numbers, column alignment)
  RETURN_DOM_FRAGMENT: true,
};
const HIGHLIGHT_CLASS = /^(?:hljs(?:-[\w-]+)?|language-[\w+#.-]+|[a-z]+_+)$/;

DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class") {
    const ours = (node.tagName === "CODE" || node.tagName === "SPAN")
      && data.attrValue.split(" ").every((name) => HIGHLIGHT_CLASS.test(name));
    if (!ours) data.keepAttr = false;
  }
});
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    node.setAttribute("target", "_blank");
    node.setAttribute("rel", "noopener noreferrer nofollow");
  }
});

// A sanitised fragment of `text` rendered as Markdown, each code block with a copy button.
export function renderMarkdown(text, { highlight = true } = {}) {
  const fragment = document.createDocumentFragment();
  for (const part of parts(text)) fragment.append(renderPart(part, highlight));
  return fragment;
}

// `text` as it is, for what cannot be rendered as Markdown.
export function plainText(text) {
  const element = document.createElement("div");
  element.className = "plain";
  element.textContent = text;
  return element;
}

function renderPart(text, highlight) {
  if (text.length > MARKDOWN_MAX) return plainText(text);
  highlighting = highlight;
  try {
    const fragment = DOMPurify.sanitize(marked.parse(text).trim(), PURIFY);
    for (const pre of fragment.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      pre.prepend(copyButton(() => (code ? code.textContent : pre.textContent), "Copy code"));
    }
    return fragment;
  } catch {
    return plainText(text);
  } finally {
    highlighting = true;
  }
}

// `text` cut at blank lines outside code fences into parts of at most MARKDOWN_MAX where it
// can be (a longer stretch without a blank line is a part of its own).
function parts(text) {
  if (text.length <= MARKDOWN_MAX) return [text];
  const found = [];
  let start = 0;
  let last = 0;
  for (const cut of [...blankLineBreaks(text), text.length]) {
    if (cut - start > MARKDOWN_MAX && last > start) {
      found.push(text.slice(start, last));
      start = last;
    }
    last = cut;
  }
  if (last > start) found.push(text.slice(start, last));
  return found;
}

// Where each blank line outside a ``` or ~~~ fence ends (a fence inside a list item is not
// seen: a cut there only splits the rendering, it loses nothing).
export function blankLineBreaks(text) {
  const breaks = [];
  let fence = null;
  let at = 0;
  for (const line of text.split("\n")) {
    const next = at + line.length + 1;
    const marker = /^ {0,3}(`{3,}|~{3,})/.exec(line)?.[1];
    if (fence === null && marker) fence = marker;
    else if (fence !== null && marker && marker[0] === fence[0] && marker.length >= fence.length
             && !line.trim().slice(marker.length)) fence = null;
    else if (fence === null && !line.trim() && next <= text.length) breaks.push(next);
    at = next;
  }
  return breaks;
}
