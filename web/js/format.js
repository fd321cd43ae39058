// Small pure helpers for the page (no DOM, no network).

/** "Flutter · android", "Chrome · Linux", … from a peer's user_agent. */
export function describeAgent(ua) {
  if (!ua) return "unknown device";
  const flutter = /^flutter-webrtc\/(\w+)/.exec(ua);
  if (flutter) return `Flutter · ${flutter[1]}`;
  const browser = /Edg\//.test(ua)
    ? "Edge"
    : /OPR\//.test(ua)
      ? "Opera"
      : /Firefox\//.test(ua)
        ? "Firefox"
        : /Chrom(e|ium)\//.test(ua)
          ? "Chrome"
          : /Safari\//.test(ua)
            ? "Safari"
            : null;
  const os = /Android/.test(ua)
    ? "Android"
    : /iPhone|iPad|iPod/.test(ua)
      ? "iOS"
      : /Windows/.test(ua)
        ? "Windows"
        : /Mac OS X/.test(ua)
          ? "macOS"
          : /CrOS/.test(ua)
            ? "ChromeOS"
            : /Linux/.test(ua)
              ? "Linux"
              : null;
  if (browser) return os ? `${browser} · ${os}` : browser;
  return ua.length > 40 ? `${ua.slice(0, 40)}…` : ua;
}

/** A random 6-digit id, as the Flutter apps use. */
export function randomId(random = () => crypto.getRandomValues(new Uint32Array(1))[0]) {
  return String(100000 + (random() % 900000));
}

/** The text for a selected candidate pair: "relay ↔ relay · udp (via TURN)". */
export function describePair(pair) {
  if (!pair) return "";
  const transport = pair.relayProtocol ? `${pair.protocol}, TURN over ${pair.relayProtocol}` : pair.protocol;
  const via = pair.local === "relay" || pair.remote === "relay" ? " — via TURN" : "";
  return `${pair.local} ↔ ${pair.remote} · ${transport}${via}`;
}
