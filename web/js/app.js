// The flaskrtc web demo: presence, video and data calls, chat. Speaks ../docs/protocol.md
// exactly as the flutter-webrtc demo apps do, so a browser and a Flutter app can call each other.
import { Call } from "./call.js";
import { CALL_DEADLINE_MS, diagnoseCall } from "./checklogic.js";
import { describeAgent, describePair, randomId } from "./format.js";
import { Signaling, authFromUrl, resolveServer, withAuth } from "./signaling.js";

const $ = (id) => document.getElementById(id);
const store = {
  get(key, fallback) {
    try {
      return localStorage.getItem(key) ?? fallback;
    } catch {
      return fallback; // storage blocked (private mode): settings just are not remembered
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, value);
    } catch {
      /* see get() */
    }
  },
};

// Opened as /?id=ID&token=TOKEN (a server with [auth] secret): register as ID, with the token
// on /ws and /api/turn. Otherwise a random id, and no token.
const auth = authFromUrl(location.search);
const selfId = auth.id || randomId();
let name = store.get("flaskrtc.name", "") || describeAgent(navigator.userAgent);
let target = pickServer(store.get("flaskrtc.server", ""));
let peers = [];
// The call in progress, from the first click or offer to the end:
// {peerId, sessionId, media, direction: "out"|"in", phase, call: Call|null, held: [candidates],
//  description (incoming offer), connectingAt, problem: why it does not connect (diagnoseCall)}.
// phase: calling | ringing | connecting | connected.
let current = null;
const byesSent = new Map(); // session_id -> copies of our own bye still to come back
let lastEnd = "Not in a call";
let lastProblem = null; // why the last call failed, shown with the link to the check

const signaling = new Signaling({
  url: withAuth(target.wsUrl, auth),
  id: selfId,
  name,
  userAgent: navigator.userAgent,
});

function pickServer(value) {
  try {
    return resolveServer(value, location);
  } catch (err) {
    notify(`Server "${value}" is not an address (${err.message}); using this page's server.`, "error");
    return resolveServer("", location);
  }
}

/* ---------- messages to the user ---------- */

function notify(text, kind = "info") {
  const box = $("messages");
  const item = document.createElement("div");
  item.className = `message ${kind}`;
  item.textContent = text;
  box.append(item);
  while (box.children.length > 4) box.firstElementChild.remove();
  setTimeout(() => item.remove(), kind === "error" ? 12000 : 7000);
}

function peerName(id) {
  const peer = peers.find((p) => p.id === id);
  return peer && peer.name ? `${peer.name} (${id})` : id;
}

/* ---------- signaling state and peers ---------- */

signaling.addEventListener("state", ({ detail }) => {
  const conn = $("conn");
  conn.dataset.state = detail.state;
  const host = new URL(target.httpBase).host;
  let text;
  if (detail.state === "connecting") text = `Connecting to ${host}…`;
  else if (detail.state === "open") text = `Online on ${host}`;
  else if (detail.state === "reconnecting") {
    text = `Disconnected (${detail.reason}), retrying in ${Math.ceil(detail.retryIn / 1000)} s`;
    $("peers").classList.add("stale");
  } else text = detail.reason ? `Disconnected: ${detail.reason}` : "Disconnected";
  $("conn-text").textContent = text;
  if (detail.state === "reconnecting" && !conn.dataset.warned) {
    conn.dataset.warned = "1";
    notify(`Lost the connection to ${host}. Reconnecting with the same id…`, "error");
  }
  if (detail.state === "open") delete conn.dataset.warned;
  if (detail.state === "stopped" && detail.reason) notify(`Disconnected: ${detail.reason}.`, "error");
  renderPeers();
});

signaling.addEventListener("message", ({ detail: msg }) => {
  const data = msg.data;
  switch (msg.type) {
    case "peers":
      peers = Array.isArray(data) ? data : [];
      $("peers").classList.remove("stale");
      renderPeers();
      break;
    case "offer":
      onOffer(data);
      break;
    case "answer":
      if (mine(data) && current.call && current.direction === "out") {
        current.phase = "connecting";
        startConnecting(current);
        current.call.answered(data.description).catch((err) => fail(err));
        renderCall();
      }
      break;
    case "candidate":
      if (mine(data)) {
        if (current.call) current.call.addCandidate(data.candidate);
        else current.held.push(data.candidate);
      }
      break;
    case "bye":
      onBye(data && data.session_id);
      break;
    case "leave":
      if (current && current.peerId === data) endCall(`${peerName(data)} left.`);
      break;
    case "error":
      onError(data || {});
      break;
    default:
      break; // keepalive echoes and anything newer than this page
  }
});

function mine(data) {
  return Boolean(current && data && data.session_id === current.sessionId);
}

function renderPeers() {
  const list = $("peers");
  const online = signaling.state === "open";
  const items = peers.map((peer) => {
    const li = document.createElement("li");
    li.className = "peer";
    li.dataset.peerId = peer.id;
    const self = peer.id === selfId;
    if (self) li.classList.add("self");
    if (current && current.peerId === peer.id) li.classList.add("in-call");
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.textContent = (peer.name || peer.id).trim().charAt(0).toUpperCase() || "?";
    const info = document.createElement("div");
    info.className = "peer-info";
    const title = document.createElement("span");
    title.className = "peer-name";
    title.textContent = peer.name || "(no name)";
    if (self) {
      const you = document.createElement("span");
      you.className = "badge";
      you.textContent = "you";
      title.append(" ", you);
    }
    const sub = document.createElement("span");
    sub.className = "peer-sub";
    sub.textContent = `${peer.id} · ${describeAgent(peer.user_agent)}`;
    info.append(title, sub);
    li.append(avatar, info);
    if (!self) {
      const actions = document.createElement("div");
      actions.className = "peer-actions";
      for (const [media, label] of [
        ["video", "Video"],
        ["data", "Data"],
      ]) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = `btn small call-${media}`;
        button.textContent = label;
        button.title = `${media === "video" ? "Video" : "Data-only"} call with ${peer.name || peer.id}`;
        button.disabled = !online || Boolean(current);
        button.addEventListener("click", () => placeCall(peer.id, media));
        actions.append(button);
      }
      li.append(actions);
    }
    return li;
  });
  list.replaceChildren(...items);
  $("peer-count").textContent = peers.length ? String(peers.length) : "";
  $("peers-empty").hidden = peers.some((p) => p.id !== selfId);
}

/* ---------- calls ---------- */

async function iceServers() {
  const url = withAuth(`${target.httpBase}/api/turn?service=turn&username=${encodeURIComponent(selfId)}`, auth);
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), 5000);
  try {
    const response = await fetch(url, { signal: abort.signal });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const body = await response.json();
    return [{ urls: body.uris, username: body.username, credential: body.password }];
  } catch (err) {
    const relay = $("relay-only").checked ? " Relay only cannot work without them." : "";
    notify(`Could not get TURN credentials (${err.message}); trying direct connections.${relay}`, "error");
    return [];
  } finally {
    clearTimeout(timer);
  }
}

function placeCall(peerId, media) {
  if (current || signaling.state !== "open") return;
  lastProblem = null;
  current = {
    peerId,
    sessionId: `${selfId}-${peerId}`,
    media,
    direction: "out",
    phase: "calling",
    call: null,
    held: [],
  };
  startCall(current);
}

function onOffer(data) {
  if (!data || typeof data.session_id !== "string" || !data.description) return;
  if (current) {
    if (current.sessionId !== data.session_id) {
      // One call at a time: refuse the second as the Flutter apps' reject does (bye).
      sendBye(data.session_id);
      notify(`${peerName(data.from)} called while you were busy.`);
    }
    return;
  }
  lastProblem = null;
  current = {
    peerId: data.from,
    sessionId: data.session_id,
    media: data.media === "data" ? "data" : "video",
    direction: "in",
    phase: "ringing",
    call: null,
    held: [],
    description: data.description,
  };
  const kind = current.media === "video" ? "a video call" : "a data call (chat only)";
  $("incoming-text").textContent = `${peerName(data.from)} is calling you: ${kind}.`;
  document.title = "Incoming call — flaskrtc";
  const dialog = $("incoming");
  if (!dialog.open) dialog.showModal();
  renderCall();
}

$("incoming").addEventListener("close", () => {
  document.title = "flaskrtc — video calls";
  if (!current || current.phase !== "ringing") return; // closed because the caller gave up
  if ($("incoming").returnValue === "accept") {
    current.phase = "connecting";
    startCall(current);
  } else {
    sendBye(current.sessionId);
    endCall("You declined the call.", { bye: false });
  }
});

async function startCall(entry) {
  renderCall();
  // The Flutter demo opens a data channel only in data calls: its video offers have no
  // m=application section, and then this call can have no chat.
  const chat = entry.direction === "out" || /^m=application /m.test(entry.description.sdp || "");
  clearChat(chat ? "Message" : "No chat in this call: the other app opened no data channel");
  const servers = await iceServers();
  if (current !== entry) return; // ended while we waited
  entry.relayOnly = $("relay-only").checked;
  entry.uris = servers.flatMap((server) => server.urls);
  const call = new Call({
    selfId,
    peerId: entry.peerId,
    sessionId: entry.sessionId,
    media: entry.media,
    iceServers: servers,
    relayOnly: entry.relayOnly,
    send: (type, data) => signaling.send(type, data),
  });
  entry.call = call;
  watch(call, entry);
  if (entry.direction === "in") startConnecting(entry); // accepted: connecting from now on
  for (const candidate of entry.held.splice(0)) call.addCandidate(candidate);
  try {
    if (entry.direction === "out") await call.start();
    else await call.accept(entry.description);
  } catch (err) {
    if (current === entry) fail(err);
  }
  renderCall();
}

/* ---------- why a call does not connect ---------- */

// The clock for "within 15 s the page says what failed" starts here: the caller when the
// answer comes, the callee when it accepts (ringing is not connecting).
function startConnecting(entry) {
  if (entry.connectingAt) return;
  entry.connectingAt = performance.now();
  entry.deadline = setTimeout(() => diagnose(entry, true), CALL_DEADLINE_MS);
}

function diagnose(entry, deadline = false, failed = false) {
  if (current !== entry || !entry.call) return;
  const elapsed = entry.connectingAt ? performance.now() - entry.connectingAt : 0;
  const problem = diagnoseCall({
    ...entry.call.diag,
    peer: peerName(entry.peerId),
    relayOnly: entry.relayOnly,
    uris: entry.uris,
    connected: entry.phase === "connected" && !failed, // a connected call can still fail
    failed,
    // A timer may fire a hair early by the page's clock; the deadline has passed all the same.
    elapsedMs: deadline ? Math.max(elapsed, CALL_DEADLINE_MS) : elapsed,
  });
  if (problem && (problem.reason === "ice-failed" || problem.reason === "failed")) {
    // Final without an ICE restart: end the call and say why, once, right now.
    endCall(`Could not connect to ${peerName(entry.peerId)}.`, { bye: true, kind: "error", problem });
    return;
  }
  // Before connecting (still calling) only a failure counts; the rest waits for the answer.
  entry.problem = entry.connectingAt ? problem : null;
  renderCall();
}

function watch(call, entry) {
  call.addEventListener("state", ({ detail: state }) => {
    if (current !== entry) return;
    if (state === "connected") entry.phase = "connected";
    if (state === "failed") {
      diagnose(entry, false, true);
      return;
    }
    entry.ice = state;
    diagnose(entry); // connected: the problem, if any, goes away
  });
  call.addEventListener("diagnostics", () => diagnose(entry));
  call.addEventListener("pair", ({ detail: pair }) => {
    const el = $("pair");
    el.dataset.local = pair.local;
    el.dataset.remote = pair.remote;
    el.textContent = describePair(pair);
  });
  call.addEventListener("local", async ({ detail: stream }) => {
    $("local-video").srcObject = stream;
    const cams = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    $("switch").hidden = cams.length < 2 || !stream.getVideoTracks().length;
    renderCall();
  });
  call.addEventListener("remote", ({ detail: stream }) => {
    const video = $("remote-video");
    if (video.srcObject !== stream) video.srcObject = stream;
    video.play().catch((err) => {
      // AbortError: a newer srcObject or track replaced this load; only a refusal matters.
      if (err.name === "NotAllowedError") notify("Tap the video to start playback.", "info");
    });
  });
  call.addEventListener("channel", ({ detail: state }) => {
    const open = state === "open";
    $("chat-input").disabled = !open;
    $("chat-send").disabled = !open;
    if (open) $("chat-input").focus({ preventScroll: true });
  });
  call.addEventListener("chat", ({ detail: text }) => addChat(peerName(entry.peerId), text, "theirs"));
  call.addEventListener("problem", ({ detail: text }) => notify(text, "error"));
}

function fail(err) {
  console.error(err);
  endCall(`The call could not be set up: ${err.message || err}`, { bye: true, kind: "error" });
}

function sendBye(sessionId) {
  byesSent.set(sessionId, (byesSent.get(sessionId) || 0) + 1);
  signaling.send("bye", { session_id: sessionId, from: selfId });
}

function onBye(sessionId) {
  const echoes = byesSent.get(sessionId) || 0;
  if (echoes) {
    // The server hands the sender its own bye back; that one ends nothing.
    if (echoes === 1) byesSent.delete(sessionId);
    else byesSent.set(sessionId, echoes - 1);
    return;
  }
  if (!current || current.sessionId !== sessionId) return;
  const who = peerName(current.peerId);
  const reason =
    current.phase === "ringing"
      ? `${who} cancelled the call.`
      : current.phase === "calling"
        ? `${who} declined the call.`
        : `${who} hung up.`;
  endCall(reason);
}

function onError(data) {
  const reason = String(data.reason || "unknown error");
  const request = String(data.request || "");
  if (current && ["offer", "answer", "candidate"].includes(request) && reason.includes(`'${current.peerId}'`)) {
    endCall(`${peerName(current.peerId)} is no longer online.`, { kind: "error" });
    return;
  }
  if (request === "bye" || request === "candidate") return; // after a call ended: nothing to fix
  if (!request && reason.startsWith("unauthorized")) {
    notify(`The server refused this page's access token (${reason}): ask for a new link.`, "error");
    return;
  }
  notify(`The server refused "${request || "a message"}": ${reason}.`, "error");
}

function endCall(reason, { bye = false, kind = "info", problem = null } = {}) {
  if (!current) return;
  const entry = current;
  current = null;
  clearTimeout(entry.deadline);
  if (bye) sendBye(entry.sessionId);
  if (entry.call) entry.call.close();
  const dialog = $("incoming");
  if (dialog.open) dialog.close("gone");
  for (const id of ["remote-video", "local-video"]) $(id).srcObject = null;
  $("switch").hidden = true;
  const pair = $("pair");
  pair.textContent = "";
  pair.dataset.local = "";
  pair.dataset.remote = "";
  $("chat-input").disabled = true;
  $("chat-send").disabled = true;
  lastEnd = reason;
  lastProblem = problem;
  notify(problem ? `${reason} ${problem.text}` : reason, kind);
  renderCall(); // renders the peers list too
}

function renderCall() {
  const status = $("call-status");
  const phase = current ? current.phase : "idle";
  status.dataset.state = phase;
  document.body.dataset.call = phase;
  const who = current ? peerName(current.peerId) : "";
  const kind = current && current.media === "data" ? "data call" : "video call";
  const texts = {
    idle: lastEnd,
    calling: `Calling ${who}…`,
    ringing: `${who} is calling…`,
    connecting: `Connecting to ${who}…`,
    connected: `In a ${kind} with ${who}`,
  };
  let text = texts[phase];
  if (current && current.ice === "disconnected") text = `Connection to ${who} interrupted, waiting…`;
  $("call-text").textContent = text;
  const problem = current ? current.problem : lastProblem;
  const box = $("call-problem");
  box.hidden = !problem;
  box.dataset.reason = problem ? problem.reason : "";
  $("call-problem-text").textContent = problem ? problem.text : "";
  $("videos").dataset.media = current && current.phase !== "ringing" ? current.media : "none";
  $("idle").hidden = Boolean(current && current.phase !== "ringing");
  $("data-only").hidden = !(current && current.media === "data" && current.phase !== "ringing");
  $("data-peer").textContent = who;
  const inCall = Boolean(current && current.call);
  const local = inCall ? current.call.localStream : null;
  const hasAudio = Boolean(local && local.getAudioTracks().length);
  const hasVideo = Boolean(local && local.getVideoTracks().length);
  $("hangup").disabled = !current || phase === "ringing";
  $("mute").disabled = !hasAudio;
  $("camera").disabled = !hasVideo;
  if (!current) {
    setPressed("mute", false, "Mute", "Unmute");
    setPressed("camera", false, "Camera off", "Camera on");
  }
  $("relay-only").disabled = Boolean(current);
  $("server").disabled = Boolean(current);
  renderPeers();
}

function setPressed(id, pressed, offText, onText) {
  const button = $(id);
  button.setAttribute("aria-pressed", String(pressed));
  button.textContent = pressed ? onText : offText;
}

/* ---------- chat ---------- */

function clearChat(placeholder) {
  $("chat-log").replaceChildren();
  $("chat-input").placeholder = placeholder;
}

function addChat(who, text, side) {
  const li = document.createElement("li");
  li.className = `chat-line ${side}`;
  const from = document.createElement("span");
  from.className = "from";
  from.textContent = who;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(from, body);
  const log = $("chat-log");
  log.append(li);
  log.scrollTop = log.scrollHeight;
}

$("chat-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("chat-input");
  const text = input.value.trim();
  if (!text || !current || !current.call) return;
  if (current.call.sendChat(text)) {
    addChat("You", text, "mine");
    input.value = "";
  } else {
    notify("The chat channel is not open yet.", "error");
  }
});

/* ---------- controls and settings ---------- */

// Where autoplay with sound is refused, a tap on the video is the gesture that allows it.
$("remote-video").addEventListener("click", () => $("remote-video").play().catch(() => {}));
$("hangup").addEventListener("click", () => endCall("You hung up.", { bye: true }));
$("mute").addEventListener("click", () => {
  if (!current || !current.call) return;
  setPressed("mute", !current.call.toggle("audio"), "Mute", "Unmute");
});
$("camera").addEventListener("click", () => {
  if (!current || !current.call) return;
  setPressed("camera", !current.call.toggle("video"), "Camera off", "Camera on");
});
$("switch").addEventListener("click", async () => {
  if (!current || !current.call) return;
  try {
    const label = await current.call.switchCamera();
    if (label) notify(`Camera: ${label}`);
  } catch (err) {
    notify(`Could not switch camera: ${err.message}`, "error");
  }
});

$("self-id").textContent = selfId;
$("name").value = name;
$("name").addEventListener("change", () => {
  const value = $("name").value.trim() || describeAgent(navigator.userAgent);
  $("name").value = value;
  name = value;
  store.set("flaskrtc.name", value);
  signaling.rename(value);
});

$("relay-only").checked = store.get("flaskrtc.relayOnly", "") === "1";
$("relay-only").addEventListener("change", () => {
  store.set("flaskrtc.relayOnly", $("relay-only").checked ? "1" : "");
});

$("server").value = store.get("flaskrtc.server", "");
$("server-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (current) return;
  const value = $("server").value.trim();
  target = pickServer(value);
  store.set("flaskrtc.server", value);
  peers = [];
  signaling.retarget(withAuth(target.wsUrl, auth)); // its state events render the (now empty) list
});

// The connection check needs the token too, for /api/turn.
if (auth.token) {
  for (const link of document.querySelectorAll("a.check-link")) {
    link.href = withAuth(new URL("check.html", location.href).href, auth);
  }
}

renderCall();
signaling.connect();
