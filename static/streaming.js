// An answer being written, rendered as Markdown (markdown.js) at most every 150 ms. What
// lies before the last blank line between top-level blocks (as marked's lexer sees them,
// code fences included) is rendered once, coloured, and kept; only the block being written
// is parsed again, uncoloured, so a long answer costs no more per render than a short one.
// A block being written that grows past 16 KiB is shown as text until it ends. `finish`
// renders the whole answer once, as history shows it.

import { blankLineBreaks, marked, plainText, renderMarkdown } from "./markdown.js";

const RENDER_EVERY_MS = 150;
const LIVE_MAX = 16 * 1024;

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
    this.text += delta.replace(/\r\n?/g, "\n");
    this.timer ??= setTimeout(() => this.flush(), RENDER_EVERY_MS);
  }

  flush() {
    clearTimeout(this.timer);
    this.timer = null;
    const tail = this.text.slice(this.frozen);
    const cut = tail.length > LIVE_MAX ? blankLineBreaks(tail).pop() ?? 0 : blockBreak(tail);
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
    const rest = this.text.slice(this.frozen);
    this.live.replaceChildren(rest.length > LIVE_MAX ? plainText(rest) : renderMarkdown(rest, { highlight: false }));
    this.onRender();
  }

  finish(text = this.text) {
    clearTimeout(this.timer);
    this.timer = null;
    this.text = text;
    this.frozen = 0;
    this.live = null;
    this.element.replaceChildren(renderMarkdown(text));
    this.onRender();
  }
}

// Where the last blank line between two of `text`'s top-level blocks ends (0: none yet).
function blockBreak(text) {
  let tokens;
  try {
    tokens = marked.lexer(text);
  } catch {
    return 0;
  }
  let at = 0;
  let cut = 0;
  tokens.forEach((token, index) => {
    at += token.raw.length;
    if (token.type === "space" && index < tokens.length - 1) cut = at;
  });
  return at === text.length ? cut : 0; // the lexer's pieces are the text, or nothing is cut
}
