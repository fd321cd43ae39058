// Minimal presence page: registers with a random 6-digit id and lists peers (docs/protocol.md).
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
const url = `${scheme}//${location.host}/ws`;
const selfId = String(Math.floor(100000 + Math.random() * 900000));
document.getElementById("ws-url").textContent = url;
document.getElementById("self-id").textContent = selfId;

const status = document.getElementById("status");
const list = document.getElementById("peers");
const ws = new WebSocket(url);
ws.onopen = () => {
  status.textContent = "connected";
  ws.send(JSON.stringify({ type: "new", data: { id: selfId, name: "browser", user_agent: navigator.userAgent } }));
};
ws.onclose = () => { status.textContent = "disconnected"; };
ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  if (msg.type !== "peers") return;
  list.replaceChildren(...msg.data.map((peer) => {
    const li = document.createElement("li");
    li.textContent = `${peer.name || "(no name)"} — ${peer.id}${peer.id === selfId ? " [Your self]" : ""}`;
    if (peer.id === selfId) li.className = "self";
    return li;
  }));
};
