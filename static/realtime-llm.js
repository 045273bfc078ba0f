// realtime-llm.js: a browser client for one conversation's WebSocket (docs/protocol.md).
// An ES module with no dependencies; the bundled page uses it, and so can any other UI:
//
//   import { ConversationClient } from "/static/realtime-llm.js";
//   const chat = new ConversationClient({ conversationId: 42, token: jwt });
//   chat.on("message", (event) => answer.append(event.data));
//   chat.on("full_response", (event) => console.log("saved", event.message_id));
//   chat.connect();
//   chat.send("Hello!");
//
// It authenticates (an auth frame with the token, or a single-use ticket in the URL when
// `ticket` is given), reconnects with backoff and jitter when the socket drops, and resumes
// from the last event id it saw: the server replays what was missed, the client drops
// what it already had, so callbacks see every event once, in order. A silent socket (a
// laptop that slept, a dead proxy) is noticed by a ping every 25 s and replaced.
//
// Events (callbacks get the event object as the server sent it, docs/protocol.md):
//   ready, user_message, message, reasoning, done, full_response, error, truncate, branch,
//   title, resync; and of the client itself:
//   status    {status: "connecting" | "open" | "reconnecting" | "closed"}
//   gone      the conversation does not exist (or is not yours): no reconnecting
//   unauthorized  the token is refused (logged out, expired): no reconnecting
// An `error` event without an `id` concerns one frame this socket sent (a refused message,
// say); with an `id` it ends a generation, for every watcher.

const PING_EVERY_MS = 25000;
const PONG_WITHIN_MS = 10000;
const CLOSE_AUTH = 4401;
const CLOSE_NOT_FOUND = 4404;

export class ConversationClient {
  // conversationId: the conversation to watch.
  // token: a JWT or API token, or a function giving one (sent in the first frame).
  // ticket: instead of token, an async function giving a single-use ticket
  //   (POST /api/tickets), asked anew for each connection; an error it throws with
  //   `status` 401 or 404 ends the client as "unauthorized" or "gone".
  // lastEventId: resume after this id on the first connection (0: the whole buffer).
  // url: the server's http(s) origin; the page's own by default.
  constructor({ conversationId, token = null, ticket = null, lastEventId = null, url = location.origin }) {
    if (!token && !ticket) throw new TypeError("ConversationClient needs a token or a ticket function");
    this.conversationId = conversationId;
    this.lastEventId = lastEventId;
    this.generating = false;
    this.status = "closed";
    this._token = token;
    this._ticket = ticket;
    this._base = url.replace(/^http/, "ws").replace(/\/$/, "");
    this._handlers = new Map();
    this._socket = null;
    this._retries = 0;
    this._timer = null; // a reconnect waiting
    this._ping = null; // the heartbeat
    this._pong = null; // waiting for its answer
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

  connect() {
    this._stopped = false;
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
    this._retries = 0;
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
    const attempt = ++this._attempt;
    this._setStatus(this._retries ? "reconnecting" : "connecting");
    let url = `${this._base}/ws/conversations/${encodeURIComponent(this.conversationId)}`;
    let first = null;
    try {
      if (this._ticket) {
        const ticket = await this._ticket();
        const resume = this.lastEventId == null ? "" : `&last_event_id=${this.lastEventId}`;
        url += `?ticket=${encodeURIComponent(ticket)}${resume}`;
      } else {
        const token = typeof this._token === "function" ? await this._token() : this._token;
        first = { type: "auth", token };
        if (this.lastEventId != null) first.last_event_id = this.lastEventId;
      }
    } catch (error) {
      if (attempt !== this._attempt || this._stopped) return;
      if (error?.status === 401) return this._end("unauthorized");
      if (error?.status === 404) return this._end("gone");
      return this._later();
    }
    if (attempt !== this._attempt || this._stopped) return; // closed or replaced meanwhile
    const socket = new WebSocket(url);
    this._socket = socket;
    socket.addEventListener("open", () => {
      if (first) socket.send(JSON.stringify(first));
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
      this._stopHeartbeat();
      if (this._stopped) return;
      if (closed.code === CLOSE_NOT_FOUND) return this._end("gone");
      // With a ticket, a refusal may be the ticket alone (a tab frozen past its minute):
      // the next ticket request tells (a 401 there ends the client).
      if (closed.code === CLOSE_AUTH && !this._ticket) return this._end("unauthorized");
      this._later();
    });
  }

  _receive(event) {
    if (typeof event.id === "number") {
      if (this.lastEventId != null && event.id <= this.lastEventId) return; // a resume overlaps
      this.lastEventId = event.id;
    }
    clearTimeout(this._pong);
    switch (event.event) {
      case "ready":
        this._retries = 0;
        this.generating = Boolean(event.generating);
        this._setStatus("open");
        this._startHeartbeat();
        break;
      case "user_message":
      case "truncate":
        this.generating = true;
        break;
      case "full_response":
      case "branch":
      case "resync":
        this.generating = false;
        break;
      case "error":
        if (typeof event.id === "number") this.generating = false;
        break;
      case "pong":
        return;
      default:
        break;
    }
    this._emit(event.event, event);
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

  _later() {
    // A blip or a restart: come back with exponential backoff (0.3 s to 10 s) and jitter.
    const delay = Math.min(10000, 300 * 2 ** this._retries) * (0.75 + Math.random() / 2);
    this._retries += 1;
    this._setStatus("reconnecting");
    clearTimeout(this._timer);
    this._timer = setTimeout(() => this._open(), delay);
  }

  _end(why) {
    this._stopped = true;
    this._drop(1000);
    this._setStatus("closed");
    this._emit(why, { event: why });
  }

  _drop(code) {
    clearTimeout(this._timer);
    this._attempt += 1; // a ticket or token on its way is for nothing now
    this._stopHeartbeat();
    const socket = this._socket;
    this._socket = null;
    if (socket) socket.close(code);
  }

  _startHeartbeat() {
    this._stopHeartbeat();
    this._ping = setInterval(() => {
      if (!this._send({ type: "ping" })) return;
      clearTimeout(this._pong);
      this._pong = setTimeout(() => this.reconnect(), PONG_WITHIN_MS); // any event will do as an answer
    }, PING_EVERY_MS);
  }

  _stopHeartbeat() {
    clearInterval(this._ping);
    clearTimeout(this._pong);
  }
}
