// Signaling over flaskrtc's /ws (../docs/protocol.md): connect, register, reconnect with
// backoff keeping the same id, and queue what is sent while the socket is down.

const MAX_QUEUE = 200; // messages kept while reconnecting; older ones are dropped first
const MAX_DELAY_MS = 10000;
const TAKEN_OVER = 4409; // the server gave our id to a newer connection: do not fight it
const UNAUTHORIZED = 4401; // the server refused our token ([auth] secret): retrying cannot help

/**
 * The access token of a page opened as /?id=ID&token=TOKEN (servers with [auth] secret):
 * {id, token}, both "" when the URL has none.
 */
export function authFromUrl(search) {
  const params = new URLSearchParams(search || "");
  return { id: params.get("id") || "", token: params.get("token") || "" };
}

/** ``url`` (absolute) with ?id=&token= added when ``auth`` has a token; else unchanged. */
export function withAuth(url, auth) {
  if (!auth || !auth.token) return url;
  const withQuery = new URL(url);
  withQuery.searchParams.set("id", auth.id);
  withQuery.searchParams.set("token", auth.token);
  return withQuery.toString();
}

/**
 * Where a "server" setting points: the WebSocket URL and the HTTP(S) base for /api/turn.
 * Accepts "", "host[:port]", "http(s)://host[:port][/...]" or "ws(s)://host[:port]/ws";
 * the empty value means the server that served this page.
 */
export function resolveServer(input, page) {
  const text = (input || "").trim();
  const secure = page.protocol === "https:";
  if (!text) {
    return {
      wsUrl: `${secure ? "wss" : "ws"}://${page.host}/ws`,
      httpBase: `${page.protocol}//${page.host}`,
    };
  }
  const withScheme = /^[a-z]+:\/\//i.test(text) ? text : `${secure ? "https" : "http"}://${text}`;
  const url = new URL(withScheme);
  const tls = url.protocol === "https:" || url.protocol === "wss:";
  if (!["http:", "https:", "ws:", "wss:"].includes(url.protocol)) {
    throw new Error(`unsupported scheme ${url.protocol}`);
  }
  const path = url.protocol.startsWith("ws") && url.pathname !== "/" ? url.pathname : "/ws";
  return {
    wsUrl: `${tls ? "wss" : "ws"}://${url.host}${path}`,
    httpBase: `${tls ? "https" : "http"}://${url.host}`,
  };
}

/** Backoff before reconnect attempt ``attempt`` (0-based): 0.5 s doubling to 10 s, ±25 %. */
export function backoffDelay(attempt, random = Math.random) {
  const base = Math.min(MAX_DELAY_MS, 500 * 2 ** attempt);
  return Math.round(base * (0.75 + random() * 0.5));
}

/**
 * One signaling connection. Events: "state" ({state, retryIn, reason}) with state one of
 * connecting | open | reconnecting | stopped, and "message" (the parsed envelope).
 */
export class Signaling extends EventTarget {
  constructor({ url, id, name, userAgent }) {
    super();
    this.url = url;
    this.id = id;
    this.name = name;
    this.userAgent = userAgent;
    this.state = "stopped";
    this.ws = null;
    this.queue = [];
    this.attempt = 0;
    this.timer = null;
    this.stopped = true; // until connect(); close() sets it again to end reconnecting
  }

  connect() {
    clearTimeout(this.timer);
    this.stopped = false;
    this._setState("connecting");
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch (err) {
      this._retry(`bad server address: ${err.message}`);
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this._register();
      this._setState("open");
      const pending = this.queue.splice(0);
      for (const text of pending) ws.send(text);
    };
    ws.onmessage = (event) => {
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return; // the server only sends JSON; ignore anything else
      }
      if (!msg || typeof msg.type !== "string") return; // "{}" keepalives
      if (msg.type === "peers") this.attempt = 0; // registered: the connection is healthy
      this.dispatchEvent(new CustomEvent("message", { detail: msg }));
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (event.code === TAKEN_OVER) {
        this.stopped = true;
        this._setState("stopped", { reason: "another connection took over this id" });
        return;
      }
      if (event.code === UNAUTHORIZED) {
        this.stopped = true;
        this._setState("stopped", { reason: "the server refused this page's access token" });
        return;
      }
      this._retry(event.reason || (event.code === 1006 ? "connection lost" : `closed (${event.code})`));
    };
  }

  _retry(reason) {
    const delay = backoffDelay(this.attempt++);
    this._setState("reconnecting", { retryIn: delay, reason });
    this.timer = setTimeout(() => this.connect(), delay);
  }

  _register() {
    this.ws.send(
      JSON.stringify({
        type: "new",
        data: { id: this.id, name: this.name, user_agent: this.userAgent },
      }),
    );
  }

  _setState(state, extra = {}) {
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state, ...extra } }));
  }

  /** Send ``{type, data}``; while the socket is down the message waits (bounded queue). */
  send(type, data) {
    const text = JSON.stringify({ type, data });
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(text);
      return true;
    }
    this.queue.push(text);
    if (this.queue.length > MAX_QUEUE) this.queue.shift();
    return false;
  }

  /** Change the name: the server replaces this connection's registration (same id). */
  rename(name) {
    this.name = name;
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this._register();
  }

  /** Point at another server: drop the socket and connect there. */
  retarget(url) {
    this.url = url;
    this.attempt = 0;
    this.queue = [];
    this.close();
    this.connect();
  }

  close() {
    this.stopped = true;
    clearTimeout(this.timer);
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000);
    this._setState("stopped");
  }
}
