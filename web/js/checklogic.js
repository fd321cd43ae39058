// Pure decisions for the connection check (check.html) and for a call that cannot connect
// (app.js): no DOM, no network, no clock. Each function takes plain data and returns plain data,
// so the browser tests can feed every case.

/** How long one URI may take to give a relay candidate in the check. */
export const GATHER_TIMEOUT_MS = 8000;
/** How long two in-page connections may take to carry a message there and back via a relay. */
export const RELAY_TIMEOUT_MS = 10000;
/** How long a call may stay "connecting" before the page says why it does not connect. */
export const CALL_DEADLINE_MS = 10000;

const DEFAULT_PORTS = { turn: 3478, turns: 5349 }; // RFC 7065 §3

/**
 * A TURN URI (RFC 7065): {uri, scheme, host, port, transport, label} with transport "udp",
 * "tcp" or "tls" (a turns: URI is TLS over TCP), or null when it is not a TURN URI.
 */
export function parseTurnUri(uri) {
  const m = /^(turns?):(\[[^\]]+\]|[^:?]+)(?::(\d+))?(?:\?transport=(udp|tcp))?$/i.exec(String(uri || "").trim());
  if (!m) return null;
  const scheme = m[1].toLowerCase();
  const port = m[3] ? Number(m[3]) : DEFAULT_PORTS[scheme];
  // Without ?transport a turn: URI is UDP (RFC 7065 §3); turns: always runs over TCP.
  const transport = scheme === "turns" ? "tls" : (m[4] || "udp").toLowerCase();
  return { uri, scheme, host: m[2], port, transport, label: transport.toUpperCase() };
}

/**
 * The fields of an ICE candidate line (RFC 8839 §5.1), with or without "a=" and
 * "candidate:": {protocol, address, port, type, relatedAddress, relatedPort}; null if unreadable.
 */
export function parseCandidate(line) {
  const text = String(line || "").replace(/^a=/, "").replace(/^candidate:/, "");
  const f = text.trim().split(/\s+/);
  if (f.length < 8 || f[6] !== "typ") return null;
  const out = {
    protocol: f[2].toLowerCase(),
    address: f[4],
    port: Number(f[5]),
    type: f[7],
    relatedAddress: null,
    relatedPort: null,
  };
  for (let i = 8; i + 1 < f.length; i += 2) {
    if (f[i] === "raddr") out.relatedAddress = f[i + 1];
    if (f[i] === "rport") out.relatedPort = Number(f[i + 1]);
  }
  return out;
}

/** The number of candidates inside an SDP (the "a=candidate:" lines, RFC 8839 §5.1). */
export function sdpCandidateCount(sdp) {
  return (String(sdp || "").match(/^a=candidate:/gm) || []).length;
}

/** "ip:port", with brackets around an IPv6 address. */
export function hostPort(address, port) {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

/** One gathering error (an RTCPeerConnectionIceErrorEvent's fields) as words. */
export function describeIceError(error) {
  const code = error && error.code ? `${error.code}` : "";
  const text = (error && error.text) || "";
  if (code === "701") return text ? `no answer (${text})` : "no answer";
  if (code === "401") return "credentials refused (401)";
  if (code === "486") return "too many allocations (486)";
  return [code, text].filter(Boolean).join(" ") || "error";
}

/**
 * Why one row of the check failed, or null when it is fine:
 * "api" (no credentials for it), "auth" (401), "quota" (486), "unreachable" (no relay
 * candidate), "relay-unreachable" (a relay candidate, but nothing went through it).
 * ``row`` is {api?: string, gather: {ok, errors: [{code}]}, relay: {ok} | null}.
 */
export function rowCause(row) {
  if (row.api) return "api";
  if (!row.gather || !row.gather.ok) {
    const codes = ((row.gather && row.gather.errors) || []).map((e) => Number(e.code));
    if (codes.includes(401)) return "auth";
    if (codes.includes(486)) return "quota";
    return "unreachable";
  }
  if (!row.relay || !row.relay.ok) return "relay-unreachable";
  return null;
}

function list(items) {
  if (items.length <= 1) return items.join("");
  return `${items.slice(0, -1).join(", ")} and ${items[items.length - 1]}`;
}

/**
 * The check's verdict from every row: {verdict: "udp" | "tcp-only" | "none", cause, title,
 * text, notes: [{code, text}]}. ``cause`` is set when verdict is "none": "api", "no-uris",
 * "relay-unreachable", "auth", "quota" or "unreachable".
 * ``result`` is {apiError?: string, server?: string, rows: [{uri, transport, host, port,
 * api?, gather: {ok, relay, errors}, relay: {ok} | null}]}.
 */
export function checkVerdict(result) {
  const server = result.server || "the server";
  if (result.apiError) {
    return {
      verdict: "none",
      cause: "api",
      title: "No relay can be tried: /api/turn failed",
      text:
        `Asking ${server}/api/turn for TURN credentials failed (${result.apiError}). ` +
        "Without them no relay works: check that the Server setting points at a running flaskrtc.",
      notes: [],
    };
  }
  const rows = result.rows || [];
  if (!rows.length) {
    return {
      verdict: "none",
      cause: "no-uris",
      title: "No TURN URI to check",
      text: `${server}/api/turn returned no TURN URIs.`,
      notes: [],
    };
  }
  const works = (t) => rows.some((r) => r.transport === t && rowCause(r) === null);
  const gathers = (t) => rows.some((r) => r.transport === t && r.gather && r.gather.ok);
  const notes = [];
  const tlsRow = rows.find((r) => r.transport === "tls");
  if (tlsRow && !(tlsRow.gather && tlsRow.gather.ok) && !tlsRow.api && gathers("tcp")) {
    // Same server, same TCP path, only TLS added: the handshake is what failed, and a
    // browser refuses a TURN server's certificate silently (there is no prompt for it).
    notes.push({
      code: "tls-cert",
      text:
        `TURN over TLS (${tlsRow.uri}) fails while TCP works: the browser most likely refused ` +
        "the server's certificate. Use a certificate browsers trust ([general] cert and key) " +
        "whose name is the turns: host ([general] domain).",
    });
  }
  const working = ["udp", "tcp", "tls"].filter(works).map((t) => t.toUpperCase());
  if (working.length) {
    const covered = new Set(notes.length ? [tlsRow.uri] : []);
    const failing = rows.filter((r) => rowCause(r) !== null && !covered.has(r.uri));
    if (failing.length) {
      notes.push({ code: "partial", text: `Not working from here: ${list(failing.map((r) => r.uri))}.` });
    }
  }
  if (works("udp")) {
    return {
      verdict: "udp",
      cause: null,
      title: "Calls from other networks will work over UDP",
      text: `The UDP relay works from this browser (${list(working)} relayed a message there and back).`,
      notes,
    };
  }
  if (working.length) {
    return {
      verdict: "tcp-only",
      cause: null,
      title: "UDP is blocked here, but TCP/TLS works",
      text:
        `Calls will connect, over ${list(working)} (TURN over TCP adds some delay). ` +
        `UDP to ${udpTarget(rows)} does not get through from this network: a firewall here, ` +
        "or the server's UDP port is closed.",
      notes,
    };
  }
  const relayless = rows.filter((r) => rowCause(r) === "relay-unreachable");
  if (relayless.length) {
    const addresses = [...new Set(relayless.map((r) => r.gather.relay).filter(Boolean))];
    return {
      verdict: "none",
      cause: "relay-unreachable",
      title: "No relay works: the relay address is not reachable",
      text:
        `The TURN server answers and hands out the relay address ${list(addresses)}, ` +
        "but nothing sent to it arrives. The advertised relay address is wrong (check " +
        "[turn] public_ip: it must be the address clients reach this host at), or a " +
        "firewall blocks the relay ports ([turn] min_port to max_port, UDP).",
      notes,
    };
  }
  const causes = rows.map(rowCause);
  if (causes.includes("auth")) {
    return {
      verdict: "none",
      cause: "auth",
      title: "No relay works: the TURN server refuses the credentials",
      text:
        "The TURN server answers 401 to the credentials of /api/turn: it does not share " +
        "[turn] secret and realm with the server that issued them.",
      notes,
    };
  }
  if (causes.includes("quota")) {
    return {
      verdict: "none",
      cause: "quota",
      title: "No relay works: the TURN server is full",
      text: "The TURN server refuses new allocations (486): raise [turn] user_quota or total_quota.",
      notes,
    };
  }
  if (causes.every((c) => c === "api")) {
    return {
      verdict: "none",
      cause: "api",
      title: "No relay can be tried: /api/turn failed",
      text: `Asking ${server}/api/turn for TURN credentials failed (${rows[0].api}).`,
      notes,
    };
  }
  const targets = [...new Set(rows.map((r) => (r.host ? `${r.host}:${r.port}` : r.uri)))];
  return {
    verdict: "none",
    cause: "unreachable",
    title: "No relay works: the TURN server does not answer",
    text:
      `Nothing answers at ${list(targets)} (${rows.map((r) => r.transport.toUpperCase()).join(", ")}): ` +
      "the port is closed, a firewall blocks it, or the server's address in the URIs is " +
      "wrong (check [turn] public_ip).",
    notes,
  };
}

function udpTarget(rows) {
  const udp = rows.find((r) => r.transport === "udp");
  return udp && udp.host ? `${udp.host}:${udp.port}` : "the TURN server";
}

/**
 * Why a call does not connect, or null while there is nothing to say yet.
 * ``s`` is {peer, relayOnly, uris: [TURN URIs], gathering ("new" | "gathering" | "complete"),
 * localCandidates, localRelays, remoteCandidates, errors: [{url, code, text}], ice
 * (iceConnectionState), dtls (the DTLS transport's state), connected, failed (connectionState
 * "failed"), elapsedMs (since the call started to connect)}.
 * Returns {reason: "ice-failed" | "failed" | "no-relay" | "no-remote" | "no-path", text};
 * "ice-failed" and "failed" are final, the others can still change.
 */
export function diagnoseCall(s) {
  if (s.connected) return null;
  const late = s.elapsedMs >= CALL_DEADLINE_MS;
  const peer = s.peer || "the other side";
  const noRelay = s.localRelays === 0 && (s.gathering === "complete" || late);
  // connectionState "failed" without a failed DTLS transport is ICE failing (Chromium's
  // iceConnectionState can lag at "disconnected"; its connectionState follows the ICE transport).
  if (s.ice === "failed" || (s.failed && s.dtls !== "failed")) {
    // W3C WebRTC, RTCIceConnectionState "failed": every candidate pair was checked and none
    // works; only an ICE restart (which neither this page nor the Flutter apps do) recovers.
    const why =
      s.remoteCandidates === 0
        ? `none of ${peer}'s candidates arrived`
        : noRelay
          ? "no relay candidate came from the TURN server"
          : `no candidate pair between you and ${peer} answered`;
    const hint = s.relayOnly
      ? " With relay only, the TURN server must be reachable from both sides."
      : " A firewall may be in the way: check the connection on both sides.";
    return { reason: "ice-failed", text: `The connection failed (ICE failed: ${why}).${hint}` };
  }
  if (s.failed) {
    // connectionState "failed" and the DTLS transport failed: the DTLS handshake that every WebRTC connection runs (RFC 8827).
    return {
      reason: "failed",
      text: "The connection failed: ICE found a path, but the encrypted (DTLS) handshake did not complete.",
    };
  }
  // Relay only and gathering complete without a relay: nothing can ever be sent, say so now.
  if (noRelay && ((s.relayOnly && s.gathering === "complete") || late)) {
    return { reason: "no-relay", text: noRelayText(s) };
  }
  if (!late) return null;
  if (s.remoteCandidates === 0) {
    return {
      reason: "no-remote",
      text:
        `${peer}'s candidates never arrived: neither signaling nor their description carried ` +
        "any, so there is no address to send to. Their TURN server may give them no relay.",
    };
  }
  return {
    reason: "no-path",
    text:
      `Not connected after ${Math.round(s.elapsedMs / 1000)} s: ${s.localCandidates} local and ` +
      `${s.remoteCandidates} remote candidates, but no pair answers yet (ICE ${s.ice}).`,
  };
}

function noRelayText(s) {
  const uris = s.uris || [];
  if (!uris.length) {
    return "No relay candidate: there is no TURN server, because the TURN credentials (/api/turn) could not be fetched.";
  }
  const errors = s.errors || [];
  const each = uris.map((uri) => {
    const own = errors.filter((e) => e.url === uri);
    const words = own.length ? describeIceError(own[own.length - 1]) : "no answer";
    return `${uri}: ${words}`;
  });
  const start = s.relayOnly ? "Relay only, but no" : "No";
  return (
    `${start} relay candidate from any TURN URI (${each.join("; ")}). The TURN server does ` +
    "not answer at that address: check [turn] public_ip and the firewall."
  );
}
