// The connection check (check.html): from this browser, for each TURN URI of /api/turn on its
// own, (1) gather with only that URI and relay only, (2) connect two RTCPeerConnections of this
// page to each other through that relay and send a message there and back. The decisions are
// in checklogic.js; this file only runs the steps and shows them.
//
// For tests and scripts: each #rows li has data-uri, data-transport, data-state
// (running | ok | fail), data-cause; #verdict gets data-verdict (udp | tcp-only | none) and
// data-cause when the whole check is over.
import {
  GATHER_TIMEOUT_MS,
  RELAY_TIMEOUT_MS,
  checkVerdict,
  describeIceError,
  hostPort,
  parseCandidate,
  parseTurnUri,
  rowCause,
} from "./checklogic.js";
import { randomId } from "./format.js";
import { authFromUrl, resolveServer, withAuth } from "./signaling.js";

const $ = (id) => document.getElementById(id);
const API_TIMEOUT_MS = 5000;

function serverSetting() {
  try {
    return localStorage.getItem("flaskrtc.server") || "";
  } catch {
    return ""; // storage blocked: the page's own server, as app.js does
  }
}

// The server the call page uses: its remembered Server setting, else this page's server.
function pickServer() {
  try {
    return resolveServer(serverSetting(), location);
  } catch {
    return resolveServer("", location);
  }
}

const target = pickServer();
// Opened from a page with an access token (check.html?id=ID&token=TOKEN): /api/turn needs it.
const auth = authFromUrl(location.search);

async function credentials(username) {
  const url = withAuth(`${target.httpBase}/api/turn?service=turn&username=${encodeURIComponent(username)}`, auth);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), API_TIMEOUT_MS);
  try {
    const response = await fetch(url, { signal: abort.signal });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    if (!Array.isArray(body.uris)) throw new Error("no uris in the answer");
    return body;
  } catch (err) {
    throw new Error(err.name === "AbortError" ? `no answer in ${API_TIMEOUT_MS / 1000} s` : err.message);
  } finally {
    clearTimeout(timer);
  }
}

function config(uri, creds) {
  return {
    iceServers: [{ urls: [uri], username: creds.username, credential: creds.password }],
    iceTransportPolicy: "relay",
  };
}

const since = (t0) => Math.round(performance.now() - t0);

/**
 * Step 1: the first relay candidate of a relay-only connection with only ``uri``. Rejects only
 * when the browser refuses the configuration (new RTCPeerConnection throws).
 */
function gather(uri, creds) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const errors = [];
    const pc = new RTCPeerConnection(config(uri, creds));
    let done = false;
    let timer = 0;
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      pc.close();
      resolve({ errors, ...result });
    };
    const failure = (fallback) => (errors.length ? errors.map(describeIceError).join("; ") : fallback);
    timer = setTimeout(
      () => finish({ ok: false, error: failure(`no relay candidate in ${GATHER_TIMEOUT_MS / 1000} s`) }),
      GATHER_TIMEOUT_MS,
    );
    pc.onicecandidateerror = (event) => {
      errors.push({ url: event.url, code: event.errorCode, text: event.errorText });
    };
    pc.onicecandidate = ({ candidate }) => {
      if (!candidate) {
        finish({ ok: false, error: failure("gathering ended without a relay candidate") });
        return;
      }
      const parsed = parseCandidate(candidate.candidate);
      if (parsed && parsed.type === "relay") {
        finish({ ok: true, ms: since(t0), relay: hostPort(parsed.address, parsed.port) });
      }
    };
    pc.createDataChannel("check"); // something to negotiate, so that gathering starts
    pc.createOffer()
      .then((offer) => pc.setLocalDescription(offer))
      .catch((err) => finish({ ok: false, error: err.message }));
  });
}

/** Step 2: two relay-only connections through ``uri``, a message there and back (rejects as gather). */
function relay(uri, creds) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const a = new RTCPeerConnection(config(uri, creds));
    const b = new RTCPeerConnection(config(uri, creds));
    let done = false;
    let timer = 0;
    const finish = (result) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      for (const pc of [a, b]) pc.close();
      resolve(result);
    };
    timer = setTimeout(
      () =>
        finish({
          ok: false,
          error: `no message through the relay in ${RELAY_TIMEOUT_MS / 1000} s (ICE ${a.iceConnectionState})`,
        }),
      RELAY_TIMEOUT_MS,
    );
    // Candidates go straight to the other connection, held until it has a description.
    const wire = (from, to) => {
      const held = [];
      from.onicecandidate = ({ candidate }) => {
        if (!candidate || !candidate.candidate) return;
        if (to.remoteDescription) to.addIceCandidate(candidate).catch(() => {});
        else held.push(candidate);
      };
      return () => held.splice(0).forEach((c) => to.addIceCandidate(c).catch(() => {}));
    };
    const flushToB = wire(a, b);
    const flushToA = wire(b, a);
    a.oniceconnectionstatechange = () => {
      if (a.iceConnectionState === "failed") finish({ ok: false, error: "ICE failed: no path through the relay" });
    };
    b.ondatachannel = ({ channel }) => {
      // A late message may arrive after a timeout closed both connections.
      channel.onmessage = ({ data }) => {
        if (channel.readyState === "open") channel.send(`echo ${data}`);
      };
    };
    const channel = a.createDataChannel("check");
    let sent = 0;
    channel.onopen = () => {
      sent = performance.now();
      channel.send("ping");
    };
    channel.onmessage = ({ data }) => {
      if (data === "echo ping") finish({ ok: true, ms: since(t0), rtt: since(sent) });
    };
    (async () => {
      await a.setLocalDescription(await a.createOffer());
      await b.setRemoteDescription(a.localDescription);
      flushToB();
      await b.setLocalDescription(await b.createAnswer());
      await a.setRemoteDescription(b.localDescription);
      flushToA();
    })().catch((err) => finish({ ok: false, error: err.message }));
  });
}

/* ---------- rows ---------- */

function makeRow(uri) {
  const parsed = parseTurnUri(uri);
  const li = document.createElement("li");
  li.className = "check-row";
  li.dataset.uri = uri;
  li.dataset.transport = parsed ? parsed.transport : "unknown";
  li.dataset.state = "running";
  const head = document.createElement("div");
  head.className = "row-head";
  const transport = document.createElement("span");
  transport.className = "transport";
  transport.textContent = parsed ? parsed.label : "?";
  const code = document.createElement("code");
  code.className = "uri";
  code.textContent = uri;
  const badge = document.createElement("span");
  badge.className = "state-badge";
  head.append(transport, code, badge);
  const steps = document.createElement("dl");
  steps.className = "steps";
  for (const [key, label] of [
    ["gather", "Relay candidate"],
    ["relay", "Message through the relay"],
  ]) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.className = `step-${key}`;
    dd.dataset.state = key === "gather" ? "running" : "waiting";
    dd.textContent = key === "gather" ? "asking…" : "waiting";
    steps.append(dt, dd);
  }
  li.append(head, steps);
  renderBadge(li);
  return { li, parsed };
}

function renderBadge(li) {
  const words = { running: "checking…", ok: "works", fail: "fails" };
  li.querySelector(".state-badge").textContent = words[li.dataset.state];
}

function setStep(li, key, state, text) {
  const dd = li.querySelector(`.step-${key}`);
  dd.dataset.state = state;
  dd.textContent = text;
}

async function checkUri(uri, index, id, first) {
  const { li, parsed } = makeRow(uri);
  $("rows").append(li);
  const row = {
    uri,
    transport: parsed ? parsed.transport : "unknown",
    host: parsed ? parsed.host : "",
    port: parsed ? parsed.port : 0,
    api: null,
    gather: null,
    relay: null,
  };
  let creds = first;
  if (index > 0) {
    // Credentials of its own for each URI: every connection allocates one relay per local
    // network, and [turn] user_quota counts allocations per username (10 by default).
    try {
      creds = await credentials(`check-${id}-${index}`);
    } catch (err) {
      row.api = err.message;
    }
  }
  if (row.api) {
    setStep(li, "gather", "fail", `no credentials: ${row.api}`);
    setStep(li, "relay", "skipped", "not tried");
  } else {
    row.gather = await gather(uri, creds).catch((err) => ({ ok: false, error: err.message, errors: [] }));
    if (row.gather.ok) {
      li.dataset.relay = row.gather.relay;
      li.dataset.gatherMs = String(row.gather.ms);
      setStep(li, "gather", "ok", `${row.gather.relay} in ${row.gather.ms} ms`);
      setStep(li, "relay", "running", "connecting two connections of this page through it…");
      row.relay = await relay(uri, creds).catch((err) => ({ ok: false, error: err.message }));
      if (row.relay.ok) {
        li.dataset.relayMs = String(row.relay.ms);
        setStep(li, "relay", "ok", `there and back in ${row.relay.rtt} ms (connected and answered after ${row.relay.ms} ms)`);
      } else {
        setStep(li, "relay", "fail", `${row.relay.error}: nothing arrives at ${row.gather.relay}`);
      }
    } else {
      setStep(li, "gather", "fail", row.gather.error);
      setStep(li, "relay", "skipped", "not tried");
    }
  }
  const cause = rowCause(row);
  li.dataset.state = cause ? "fail" : "ok";
  li.dataset.cause = cause || "";
  renderBadge(li);
  return row;
}

/* ---------- the whole check ---------- */

function showVerdict(result) {
  const v = checkVerdict({ ...result, server: target.httpBase });
  const box = $("verdict");
  box.dataset.state = "done";
  box.dataset.cause = v.cause || "";
  box.dataset.notes = v.notes.map((n) => n.code).join(" ");
  $("verdict-title").textContent = v.title;
  $("verdict-text").textContent = v.text;
  $("verdict-text").classList.remove("muted");
  $("verdict-notes").replaceChildren(
    ...v.notes.map((note) => {
      const li = document.createElement("li");
      li.dataset.code = note.code;
      li.textContent = note.text;
      return li;
    }),
  );
  box.dataset.verdict = v.verdict; // last: tests and scripts wait for it
  $("rerun").disabled = false;
}

async function run() {
  $("rerun").disabled = true;
  $("rows").replaceChildren();
  const box = $("verdict");
  for (const key of ["verdict", "cause", "notes"]) delete box.dataset[key];
  box.dataset.state = "running";
  $("verdict-title").textContent = "Checking…";
  $("verdict-text").textContent = "Each step stops after at most 10 seconds.";
  $("verdict-text").classList.add("muted");
  $("verdict-notes").replaceChildren();
  const id = randomId();
  let first;
  try {
    first = await credentials(`check-${id}-0`);
  } catch (err) {
    showVerdict({ apiError: err.message, rows: [] });
    return;
  }
  // The URIs run side by side, so the check takes as long as its slowest URI (at most ~25 s).
  const rows = await Promise.all(first.uris.map((uri, i) => checkUri(uri, i, id, first)));
  showVerdict({ rows });
}

$("check-server").textContent = target.httpBase;
$("rerun").addEventListener("click", run);
run();
