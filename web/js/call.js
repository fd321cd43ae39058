// One call: an RTCPeerConnection with the flutter-webrtc-demo's conventions (offer with
// "media", trickled candidates as {sdpMLineIndex, sdpMid, candidate}, a data channel the
// caller opens, session_id "<caller>-<callee>").

import { parseCandidate, sdpCandidateCount } from "./checklogic.js";

const CHANNEL_LABEL = "fileTransfer"; // the Flutter demo's label; any label works for it
const MAX_ERRORS = 20; // gathering errors kept for the diagnosis (a few per TURN URI)

/** A sentence a user can act on for a getUserMedia failure. */
export function describeMediaError(err) {
  switch (err && err.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Camera and microphone access was denied: allow it in the browser's site settings.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera or microphone was found.";
    case "NotReadableError":
    case "AbortError":
      return "The camera or microphone is in use by another application.";
    case "InsecureContext":
      return "The browser only allows the camera on HTTPS pages (or localhost).";
    default:
      return `Camera and microphone unavailable (${(err && err.message) || err}).`;
  }
}

/** Ask for camera and microphone, falling back to the microphone alone, then to nothing. */
export async function openMedia(media) {
  if (media !== "video") return { stream: null, problem: null };
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    return { stream: null, problem: describeMediaError({ name: "InsecureContext" }) };
  }
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    return { stream, problem: null };
  } catch (err) {
    const problem = describeMediaError(err);
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      return { stream, problem: `${problem} Calling with audio only.` };
    } catch {
      return { stream: null, problem: `${problem} You can still see and hear the other side.` };
    }
  }
}

/**
 * The selected candidate pair from getStats(): {local, remote, protocol, relayProtocol}
 * or null. Chromium names it on the transport; Firefox flags the pair as selected.
 */
export function selectedPair(stats) {
  let pair = null;
  stats.forEach((report) => {
    if (report.type === "transport" && report.selectedCandidatePairId) {
      pair = stats.get(report.selectedCandidatePairId) || pair;
    }
  });
  if (!pair) {
    stats.forEach((report) => {
      if (report.type === "candidate-pair" && report.selected) pair = report;
    });
  }
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  if (!local || !remote) return null;
  return {
    local: local.candidateType,
    remote: remote.candidateType,
    protocol: local.protocol,
    relayProtocol: local.relayProtocol || null,
  };
}

/**
 * A call with one peer. Events: "state" (RTCPeerConnection.connectionState), "pair" (the
 * selectedPair() result), "local" / "remote" (MediaStream), "channel" ("open" | "closed"),
 * "chat" (text), "problem" (a sentence for the user), "diagnostics" (a copy of ``diag``
 * whenever a candidate, a gathering error or the ICE state comes in).
 */
export class Call extends EventTarget {
  constructor({ selfId, peerId, sessionId, media, iceServers, relayOnly, send }) {
    super();
    this.selfId = selfId;
    this.peerId = peerId;
    this.sessionId = sessionId;
    this.media = media;
    this.send = send;
    this.closed = false;
    this.pending = []; // remote candidates that arrived before the remote description
    this.localStream = null;
    this.remoteStream = null;
    this.channel = null;
    this.statsTimer = null;
    // What diagnoseCall() needs to say why a call does not connect.
    this.diag = {
      gathering: "new",
      localCandidates: 0,
      localRelays: 0,
      remoteCandidates: 0,
      errors: [], // {url, code, text} from icecandidateerror, the newest MAX_ERRORS
      ice: "new",
      dtls: "new", // the DTLS transport's state, read when the connection state changes
    };
    this.pc = new RTCPeerConnection({
      iceServers,
      iceTransportPolicy: relayOnly ? "relay" : "all",
    });
    this.pc.onicecandidate = ({ candidate }) => {
      if (!candidate) {
        this.diag.gathering = "complete";
        this._diagnostics();
      }
      if (!candidate || !candidate.candidate) return; // end of candidates: nothing to send
      this.diag.localCandidates += 1;
      const parsed = parseCandidate(candidate.candidate);
      if ((candidate.type || (parsed && parsed.type)) === "relay") this.diag.localRelays += 1;
      this._diagnostics();
      this._signal("candidate", {
        candidate: {
          sdpMLineIndex: candidate.sdpMLineIndex,
          sdpMid: candidate.sdpMid,
          candidate: candidate.candidate,
        },
      });
    };
    this.pc.onicegatheringstatechange = () => {
      this.diag.gathering = this.pc.iceGatheringState;
      this._diagnostics();
    };
    // Says which TURN URI failed and how (701: no answer, 401: credentials refused, ...).
    this.pc.onicecandidateerror = (event) => {
      this.diag.errors.push({ url: event.url, code: event.errorCode, text: event.errorText });
      if (this.diag.errors.length > MAX_ERRORS) this.diag.errors.shift();
      this._diagnostics();
    };
    this.pc.oniceconnectionstatechange = () => {
      this.diag.ice = this.pc.iceConnectionState;
      this._diagnostics();
    };
    this.pc.ontrack = (event) => {
      if (!this.remoteStream) this.remoteStream = event.streams[0] || new MediaStream();
      if (!this.remoteStream.getTracks().includes(event.track)) {
        this.remoteStream.addTrack(event.track);
      }
      this._emit("remote", this.remoteStream);
    };
    this.pc.ondatachannel = (event) => this._useChannel(event.channel);
    this.pc.onconnectionstatechange = () => {
      const state = this.pc.connectionState;
      // Chromium may fire this before iceconnectionstatechange: read the ICE state now.
      this.diag.ice = this.pc.iceConnectionState;
      this.diag.dtls = this._dtlsState();
      this._emit("state", state);
      if (state === "connected") this._watchStats();
    };
  }

  // "failed" when any DTLS transport failed. Chromium's connectionState follows the standard
  // ICE transport state, which may say "failed" while iceConnectionState still says
  // "disconnected"; the DTLS state tells an ICE failure from a DTLS one.
  _dtlsState() {
    try {
      const transports = [this.pc.sctp && this.pc.sctp.transport];
      for (const t of this.pc.getTransceivers()) transports.push(t.sender.transport);
      const states = transports.filter(Boolean).map((t) => t.state);
      return states.includes("failed") ? "failed" : states[0] || "new";
    } catch {
      return "new"; // a browser without RTCDtlsTransport
    }
  }

  _diagnostics() {
    this._emit("diagnostics", { ...this.diag, errors: [...this.diag.errors] });
  }

  _emit(type, detail) {
    if (!this.closed) this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _signal(type, fields) {
    this.send(type, { to: this.peerId, from: this.selfId, session_id: this.sessionId, ...fields });
  }

  async _addLocalMedia() {
    const { stream, problem } = await openMedia(this.media);
    if (this.closed) {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      return;
    }
    if (problem) this._emit("problem", problem);
    this.localStream = stream;
    if (stream) {
      for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
      this._emit("local", stream);
    }
    if (this.media === "video") {
      // Receive what we cannot send, so a call without a camera still shows the peer.
      for (const kind of ["audio", "video"]) {
        const used = this.pc.getTransceivers().some((t) => t.receiver.track.kind === kind);
        if (!used) this.pc.addTransceiver(kind, { direction: "recvonly" });
      }
    }
  }

  _useChannel(channel) {
    this.channel = channel;
    channel.onopen = () => this._emit("channel", "open");
    channel.onclose = () => this._emit("channel", "closed");
    channel.onmessage = (event) => {
      if (typeof event.data === "string") this._emit("chat", event.data);
    };
    if (channel.readyState === "open") this._emit("channel", "open");
  }

  /** Caller: media, data channel, offer. */
  async start() {
    await this._addLocalMedia();
    if (this.closed) return;
    this._useChannel(this.pc.createDataChannel(CHANNEL_LABEL));
    const offer = await this.pc.createOffer();
    await this.pc.setLocalDescription(offer);
    this._signal("offer", {
      description: { sdp: this.pc.localDescription.sdp, type: this.pc.localDescription.type },
      media: this.media,
    });
  }

  /** Callee: the offer, then media, then the answer. */
  async accept(description) {
    this._countRemote(description);
    await this.pc.setRemoteDescription(description);
    await this._flushCandidates();
    await this._addLocalMedia();
    if (this.closed) return;
    const answer = await this.pc.createAnswer();
    await this.pc.setLocalDescription(answer);
    this._signal("answer", {
      description: { sdp: this.pc.localDescription.sdp, type: this.pc.localDescription.type },
    });
  }

  /** Caller: the callee's answer. */
  async answered(description) {
    if (this.pc.signalingState !== "have-local-offer") return; // a duplicate or late answer
    this._countRemote(description);
    await this.pc.setRemoteDescription(description);
    await this._flushCandidates();
  }

  /** A trickled candidate from the peer; held until the remote description is set. */
  async addCandidate(candidate, held = false) {
    if (!candidate || !candidate.candidate) return;
    if (!held) {
      this.diag.remoteCandidates += 1;
      this._diagnostics();
    }
    if (!this.pc.remoteDescription) {
      this.pending.push(candidate);
      return;
    }
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (err) {
      console.warn("ignored a candidate the browser refused", candidate, err);
    }
  }

  async _flushCandidates() {
    const held = this.pending.splice(0);
    for (const candidate of held) await this.addCandidate(candidate, true);
  }

  // A peer that does not trickle (the Flutter apps, aiortc) puts its candidates in the SDP.
  _countRemote(description) {
    this.diag.remoteCandidates += sdpCandidateCount(description && description.sdp);
    this._diagnostics();
  }

  /** Send a chat line over the data channel; false when it is not open. */
  sendChat(text) {
    if (!this.channel || this.channel.readyState !== "open") return false;
    this.channel.send(text);
    return true;
  }

  /** Flip the microphone (or camera) on or off; returns whether it is now on. */
  toggle(kind) {
    const tracks = this.localStream ? this.localStream.getTracks().filter((t) => t.kind === kind) : [];
    if (!tracks.length) return false;
    const on = !tracks[0].enabled;
    tracks.forEach((t) => (t.enabled = on));
    return on;
  }

  /** Move to the next camera, when there is more than one; returns its label. */
  async switchCamera() {
    const cameras = (await navigator.mediaDevices.enumerateDevices()).filter(
      (d) => d.kind === "videoinput",
    );
    const current = this.localStream && this.localStream.getVideoTracks()[0];
    if (cameras.length < 2 || !current) return null;
    const now = current.getSettings().deviceId;
    const index = cameras.findIndex((d) => d.deviceId === now);
    const next = cameras[(index + 1) % cameras.length];
    const fresh = await navigator.mediaDevices.getUserMedia({
      video: { deviceId: { exact: next.deviceId } },
    });
    const track = fresh.getVideoTracks()[0];
    track.enabled = current.enabled;
    const sender = this.pc.getSenders().find((s) => s.track === current);
    if (sender) await sender.replaceTrack(track);
    this.localStream.removeTrack(current);
    current.stop();
    this.localStream.addTrack(track);
    this._emit("local", this.localStream);
    return next.label || "next camera";
  }

  _watchStats() {
    if (this.statsTimer) return;
    const poll = async () => {
      if (this.closed) return;
      try {
        const pair = selectedPair(await this.pc.getStats());
        if (pair) this._emit("pair", pair);
      } catch {
        // the connection closed under us; the next state event says so
      }
    };
    poll();
    this.statsTimer = setInterval(poll, 1000);
  }

  /** Release everything; the caller of close() sends the bye. */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.statsTimer);
    if (this.localStream) this.localStream.getTracks().forEach((t) => t.stop());
    if (this.channel) this.channel.close();
    this.pc.close();
  }
}
