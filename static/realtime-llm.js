// realtime-llm.js: a browser client for one conversation's WebSocket (docs/protocol.md).
// An ES module with no dependencies; the bundled page uses it, and so can any other UI:
//
//   import { ConversationClient } from "/static/realtime-llm.js";
//   const chat = new ConversationClient({ conversationId: 42, token: jwt });
//   chat.on("message", (event) => answer.append(event.data));
//   chat.on("full_response", (event) => console.log("saved", event.message_id));
//   chat.connect();
//   chat.on("ready", () => chat.send("Hello!"));
//
// It authenticates (an auth frame with the token, or a single-use ticket in the URL when
// `ticket` is given), reconnects with backoff and jitter when the socket drops, and resumes
// from the last event id it saw: the server replays what was missed, the client drops
// what it already had, so callbacks see every event once, in order. A silent socket (a
// laptop that slept, a dead proxy) is noticed by a ping every 25 s and replaced; an
// attempt that is not ready within 15 s is given up and retried.
//
// Events (callbacks get the event object as the server sent it, docs/protocol.md):
//   ready, user_message, message, reasoning, done, full_response, error, truncate, branch,
//   title, resync; and of the client itself:
//   status    {status: "connecting" | "open" | "reconnecting" | "closed"}
//   gone      the conversation does not exist (or is not yours): no reconnecting
//   unauthorized  the token is refused (logged out, expired): no reconnecting
// An `error` event with an `id` ends a generation, for every watcher; one without concerns
// this socket: a frame it sent was refused (`code`: conflict, payload_too_large, ...).

const PING_EVERY_MS = 25000;
const PONG_WITHIN_MS = 10000;
const READY_WITHIN_MS = 15000;
const REFUSALS = 3; // 4401s in a row, before any "ready", that end a client whose credentials are asked anew
const CLOSE_AUTH = 4401;
const CLOSE_NOT_FOUND = 4404;
const CLOSE_TOO_LARGE = 1009;

export class ConversationClient {
  // conversationId: the conversation to watch.
  // token: a JWT or API token, or a function giving one, sync or async (sent in the first
  //   frame); a function is asked again for each connection.
  // ticket: instead of token, an async function giving a single-use ticket
  //   (POST /api/tickets), asked anew for each connection; an error it throws with
  //   `status` 401 or 404 ends the client as "unauthorized" or "gone".
  // lastEventId: resume after this id on the first connection (0: the whole buffer).
  // url: the server's http(s) origin; the page's own by default. (Another origin must be
  //   in the server's `server.allowed_origins`.)
  constructor({ conversationId, token = null, ticket = null, lastEventId = null, url = location.origin }) {
    if (!token && !ticket) throw new TypeError("ConversationClient needs a token or a ticket function");
    const origin = new URL(url); // throws on a malformed url, here rather than at each attempt
    origin.protocol = origin.protocol === "https:" ? "wss:" : "ws:";
    this.conversationId = conversationId;
    this.lastEventId = lastEventId; // the newest event id delivered (null: none yet)
    this.generating = false;
    this.status = "closed";
    this._token = token;
    this._ticket = ticket;
    this._base = origin.href.replace(/\/+$/, "");
    this._handlers = new Map();
    this._socket = null;
    this._floor = null; // before any event id: where "ready" said the conversation was
    this._retries = 0;
    this._refusals = 0;
    this._timers = {}; // retry, ready, ping, pong: at most one of each
    this._attempt = 0; // connection attempts: only the newest may open a socket
    this._stopped = true;
  }

  // Call `handler(event)` for events of type `type`; returns a function that unsubscribes.
  on(type, handler) {
    if (!this._handlers.has(type)) this._handlers.set(type, new Set());
    this._handlers.get(type).add(handler);
    return () => this._handlers.get(type).delete(handler);
  }

  get open() {
    return this._socket?.readyState === WebSocket.OPEN && this.status === "open";
  }

  // Start (again, after close()); a client already running is left as it is.
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._retries = 0;
    this._open();
    return this;
  }

  // Close for good (no reconnecting). Nothing more is delivered.
  close() {
    this._stopped = true;
    this._drop(1000);
    this._setStatus("closed");
  }

  // Drop the socket now and connect again at once, resuming (after a network change, say).
  reconnect() {
    if (this._stopped) return;
    this._drop(4000);
    this._open();
  }

  // The commands (docs/protocol.md): each returns false when the socket is not open.
  send(content, { attachments, editMessageId } = {}) {
    const frame = { type: "message", content };
    if (attachments?.length) frame.attachments = attachments;
    if (editMessageId != null) frame.edit_message_id = editMessageId;
    return this._send(frame);
  }

  stop() { return this._send({ type: "stop" }); }

  regenerate() { return this._send({ type: "regenerate" }); }

  edit(messageId, content, options = {}) { return this.send(content, { ...options, editMessageId: messageId }); }

  branch(messageId) { return this._send({ type: "branch", message_id: messageId }); }

  _send(frame) {
    if (!this.open) return false;
    this._socket.send(JSON.stringify(frame));
    return true;
  }

  async _open() {
    if (this._stopped) return;
    const attempt = ++this._attempt;
    this._setStatus(this._retries ? "reconnecting" : "connecting");
    this._timer("ready", READY_WITHIN_MS, () => this._retry()); // a ticket, a handshake or a "ready" that never comes
    const resume = this.lastEventId ?? this._floor;
    let url = `${this._base}/ws/conversations/${encodeURIComponent(this.conversationId)}`;
    let first = null;
    try {
      if (this._ticket) {
        const ticket = await this._ticket();
        url += `?ticket=${encodeURIComponent(ticket)}${resume == null ? "" : `&last_event_id=${resume}`}`;
      } else {
        const token = typeof this._token === "function" ? await this._token() : this._token;
        first = { type: "auth", token };
        if (resume != null) first.last_event_id = resume;
      }
    } catch (error) {
      if (attempt !== this._attempt || this._stopped) return;
      if (error?.status === 401) return this._end("unauthorized");
      if (error?.status === 404) return this._end("gone");
      return this._retry();
    }
    if (attempt !== this._attempt || this._stopped) return; // closed or replaced meanwhile
    this._watch(new WebSocket(url), first);
  }

  _watch(socket, first) {
    this._socket = socket;
    socket.addEventListener("open", () => {
      if (first && socket === this._socket) socket.send(JSON.stringify(first));
    });
    socket.addEventListener("message", (message) => {
      if (socket !== this._socket) return;
      let event;
      try { event = JSON.parse(message.data); } catch { return; }
      this._receive(event);
    });
    socket.addEventListener("close", (closed) => {
      if (socket !== this._socket) return;
      this._socket = null;
      this._cancel("ping", "pong");
      if (this._stopped) return;
      if (closed.code === CLOSE_NOT_FOUND) return this._end("gone");
      if (closed.code === CLOSE_AUTH) {
        // A static token refused is final. Asked anew (a ticket, a token function), one
        // refusal may be the old credential alone (a tab frozen past a ticket's minute);
        // refusals in a row, with no "ready" between, are not.
        this._refusals += 1;
        const asked = this._ticket || typeof this._token === "function";
        if (!asked || this._refusals >= REFUSALS) return this._end("unauthorized");
      }
      if (closed.code === CLOSE_TOO_LARGE) {
        this._emit("error", { event: "error", data: "That frame was too large for the server.", code: "payload_too_large" });
      }
      this._retry();
    });
  }

  _receive(event) {
    this._cancel("pong"); // anything at all answers a ping
    if (typeof event.id === "number") {
      const seen = this.lastEventId ?? -1;
      if (event.id <= seen) return; // a resume overlaps
      this.lastEventId = event.id;
    }
    switch (event.event) {
      case "ready":
        this._retries = 0;
        this._refusals = 0;
        if (this.lastEventId == null && typeof event.last_event_id === "number") this._floor = event.last_event_id;
        this.generating = Boolean(event.generating);
        this._cancel("ready");
        this._heartbeat();
        this._setStatus("open");
        break;
      case "user_message":
      case "truncate":
        this.generating = true;
        break;
      case "full_response":
      case "branch":
        this.generating = false;
        break;
      case "error":
        if (typeof event.id === "number") this.generating = false;
        else if (event.code === "stream_ended") return; // the close follows: reconnecting is ours
        break;
      case "pong":
        return;
      default:
        break;
    }
    if (!this._stopped) this._emit(event.event, event);
  }

  _emit(type, event) {
    for (const handler of [...(this._handlers.get(type) ?? [])]) {
      try { handler(event); } catch (error) { console.error(error); } // one handler's bug stops no other
    }
  }

  _setStatus(status) {
    if (status === this.status) return;
    this.status = status;
    this._emit("status", { event: "status", status });
  }

  _retry() {
    // A blip or a restart: come back with exponential backoff (0.3 s to 10 s) and jitter.
    this._drop(4000);
    if (this._stopped) return;
    const delay = Math.min(10000, 300 * 2 ** this._retries) * (0.75 + Math.random() / 2);
    this._retries += 1;
    this._timer("retry", delay, () => this._open());
    this._setStatus("reconnecting");
  }

  _end(why) {
    this.close();
    this._emit(why, { event: why });
  }

  _drop(code) {
    this._cancel("retry", "ready", "ping", "pong");
    this._attempt += 1; // a ticket or token on its way is for nothing now
    const socket = this._socket;
    this._socket = null;
    if (socket) socket.close(code);
  }

  _heartbeat() {
    this._timer("ping", PING_EVERY_MS, () => {
      if (!this._send({ type: "ping" })) return;
      this._timer("pong", PONG_WITHIN_MS, () => this.reconnect());
      this._heartbeat();
    });
  }

  _timer(name, delay, action) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(action, delay);
  }

  _cancel(...names) {
    for (const name of names) clearTimeout(this._timers[name]);
  }
}
