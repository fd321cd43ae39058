"""A small TURN client, sans-I/O (RFC 8656 on RFC 8489 long-term credentials).

:class:`TurnClient` builds requests with the codec and turns what the server sends back into
events; it never touches a socket or a clock. The caller moves the bytes, keeps the time and,
on UDP, retransmits: a :class:`Request` resent unchanged is the same transaction (RFC 8489
§6.2.1), which a TURN server answers again (RFC 8656 §7.2 for Allocate).

Authentication follows RFC 8489 §9.2.3: the first request goes out without credentials, the
401 it earns names the realm and a nonce, and from then on every request carries USERNAME,
REALM, NONCE and MESSAGE-INTEGRITY with the key MD5(username:realm:password). A 438 (stale
nonce) is retried with the new nonce. Errors are raised as :class:`TurnClientError` with the
STUN error code.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from flaskrtc.turn.stun import (
    Attr,
    Class,
    Message,
    Method,
    StunError,
    check_integrity,
    long_term_key,
    parse,
    serialize,
)

__all__ = [
    "DataIndication",
    "Event",
    "Request",
    "Retry",
    "Success",
    "TurnClient",
    "TurnClientError",
]

Address = tuple[str, int]

UDP = 17  # REQUESTED-TRANSPORT: the protocol number of UDP (RFC 8656 §18.8)
# How often one request may be re-signed after a 438 before giving up: a server that keeps
# calling fresh nonces stale is broken, and the loop must end.
MAX_NONCE_RETRIES = 2


class TurnClientError(Exception):
    """A request failed. ``code`` is the STUN error code of the server's error response, or
    None when the reply itself was unusable (no ERROR-CODE, no relayed address, a bad
    MESSAGE-INTEGRITY)."""

    def __init__(self, method: int, code: int | None, reason: str) -> None:
        try:
            name = Method(method).name
        except ValueError:
            name = f"method {method:#05x}"
        text = f"{name}: {code} {reason}" if code is not None else f"{name}: {reason}"
        super().__init__(text.strip())
        self.method = method
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Request:
    """One request to send: ``data`` is what goes on the wire (resend it as is on UDP)."""

    method: int
    transaction_id: bytes
    data: bytes


@dataclass(frozen=True)
class Success:
    """A success response to ``request``; ``message`` holds its attributes."""

    request: Request
    message: Message


@dataclass(frozen=True)
class Retry:
    """The server challenged ``original`` (401 before credentials, or 438): send ``request``,
    the signed retry, instead."""

    original: Request
    request: Request
    code: int


@dataclass(frozen=True)
class DataIndication:
    """Data a peer sent to this client's relayed address (RFC 8656 §11.4)."""

    peer: Address
    data: bytes


Event = Success | Retry | DataIndication


@dataclass
class _Pending:
    """An open transaction: what to re-sign if the server challenges it."""

    request: Request
    attributes: dict[int, Any]
    repeated: list[tuple[int, Any]]
    signed: bool
    nonce_retries: int = 0


class TurnClient:
    """One client's TURN state: credentials, realm and nonce, open transactions, and what the
    last Allocate returned (``relayed``, ``mapped``, ``lifetime``)."""

    def __init__(self, username: str, password: str) -> None:
        self.username = username
        self.password = password
        self.realm: str | None = None
        self.nonce: str | None = None
        self.key: bytes | None = None
        self.relayed: Address | None = None
        self.mapped: Address | None = None
        self.lifetime: int | None = None
        self._pending: dict[bytes, _Pending] = {}

    # -- requests ------------------------------------------------------------------------

    def binding(self) -> Request:
        """A Binding request: never authenticated (RFC 8489 §6.3.1)."""
        return self._request(Method.BINDING, {}, sign=False)

    def allocate(self, lifetime: int | None = None) -> Request:
        """An Allocate for a UDP relay (RFC 8656 §7.1)."""
        attributes: dict[int, Any] = {Attr.REQUESTED_TRANSPORT: UDP}
        if lifetime is not None:
            attributes[Attr.LIFETIME] = lifetime
        return self._request(Method.ALLOCATE, attributes)

    def refresh(self, lifetime: int) -> Request:
        """A Refresh; ``lifetime`` 0 deletes the allocation (RFC 8656 §8)."""
        return self._request(Method.REFRESH, {Attr.LIFETIME: lifetime})

    def create_permission(self, *peers: Address) -> Request:
        """A CreatePermission for the IP addresses of ``peers`` (RFC 8656 §10.1)."""
        if not peers:
            raise ValueError("CreatePermission needs at least one peer")
        first, *rest = peers
        # Several XOR-PEER-ADDRESS attributes, one per peer (RFC 8656 §10.1).
        more = [(int(Attr.XOR_PEER_ADDRESS), peer) for peer in rest]
        return self._request(
            Method.CREATE_PERMISSION, {Attr.XOR_PEER_ADDRESS: first}, repeated=more
        )

    def channel_bind(self, channel: int, peer: Address) -> Request:
        """A ChannelBind of ``channel`` (0x4000-0x4FFF) to ``peer`` (RFC 8656 §12.1); after
        its success, ChannelData with that number goes to ``peer`` (see
        :func:`flaskrtc.turn.stun.encode_channel_data`)."""
        if not 0x4000 <= channel <= 0x4FFF:
            raise ValueError(f"channel numbers are 0x4000-0x4FFF, not {channel:#x}")
        return self._request(
            Method.CHANNEL_BIND, {Attr.CHANNEL_NUMBER: channel, Attr.XOR_PEER_ADDRESS: peer}
        )

    @staticmethod
    def send_indication(peer: Address, data: bytes) -> bytes:
        """A Send indication carrying ``data`` to ``peer`` (RFC 8656 §11.1). Indications are
        never authenticated: the allocation's five-tuple is what the server trusts, so no
        client state is needed (``TurnClient.send_indication(peer, data)``)."""
        msg = Message(
            Method.SEND,
            Class.INDICATION,
            secrets.token_bytes(12),
            {Attr.XOR_PEER_ADDRESS: peer, Attr.DATA: data},
        )
        return serialize(msg, fingerprint=True)

    def _request(
        self,
        method: int,
        attributes: dict[int, Any],
        *,
        sign: bool = True,
        repeated: list[tuple[int, Any]] | None = None,
        nonce_retries: int = 0,
    ) -> Request:
        signed = sign and self.key is not None
        attrs = dict(attributes)
        if signed:
            # RFC 8489 §9.2.3.2: every request after the 401 carries the credentials it asked
            # for, signed with the long-term key.
            assert self.realm is not None and self.nonce is not None
            attrs[Attr.USERNAME] = self.username
            attrs[Attr.REALM] = self.realm
            attrs[Attr.NONCE] = self.nonce
        msg = Message(method, Class.REQUEST, secrets.token_bytes(12), attrs, list(repeated or []))
        data = serialize(msg, integrity_key=self.key if signed else None, fingerprint=True)
        request = Request(method, msg.transaction_id, data)
        self._pending[msg.transaction_id] = _Pending(
            request, dict(attributes), list(repeated or []), signed, nonce_retries
        )
        return request

    # -- what the server sends -----------------------------------------------------------

    def receive(self, data: bytes) -> Event | None:
        """Handle one datagram or stream frame from the server.

        Returns the event it makes, or None for anything that is not for this client (not
        STUN, a response to no open transaction such as a retransmitted one). Raises
        :class:`TurnClientError` for an error response or an unusable success response.
        """
        try:
            msg = parse(data)
        except StunError:
            return None
        if msg.cls == Class.INDICATION:
            return self._indication(msg)
        if msg.cls not in (Class.SUCCESS, Class.ERROR):
            return None
        tid = msg.transaction_id
        pending = self._pending.pop(tid, None)
        if pending is None or pending.request.method != msg.method:
            return None
        if msg.cls == Class.SUCCESS:
            return self._success(msg, pending)
        return self._error(msg, pending)

    def _indication(self, msg: Message) -> DataIndication | None:
        if msg.method != Method.DATA:
            return None
        peer = msg.get(Attr.XOR_PEER_ADDRESS)
        payload = msg.get(Attr.DATA)
        if not isinstance(peer, tuple) or not isinstance(payload, bytes):
            return None  # RFC 8656 §11.6: a Data indication without both is discarded
        return DataIndication((str(peer[0]), int(peer[1])), payload)

    def _success(self, msg: Message, pending: _Pending) -> Success:
        if pending.signed:
            # RFC 8489 §9.2.5: a response to a signed request must be signed with the same key;
            # one that is not did not come from the server that knows the password.
            assert self.key is not None
            if not check_integrity(msg, self.key):
                raise TurnClientError(
                    msg.method, None, "the response's MESSAGE-INTEGRITY does not match the key"
                )
        if msg.method == Method.ALLOCATE:
            relayed = msg.get(Attr.XOR_RELAYED_ADDRESS)
            if not isinstance(relayed, tuple):
                raise TurnClientError(msg.method, None, "no XOR-RELAYED-ADDRESS in the response")
            self.relayed = (str(relayed[0]), int(relayed[1]))
            mapped = msg.get(Attr.XOR_MAPPED_ADDRESS)
            self.mapped = (str(mapped[0]), int(mapped[1])) if isinstance(mapped, tuple) else None
            lifetime = msg.get(Attr.LIFETIME)
            self.lifetime = lifetime if isinstance(lifetime, int) else None
        elif msg.method == Method.REFRESH and msg.get(Attr.LIFETIME) == 0:
            self.relayed = None  # deleted (RFC 8656 §8.3)
        return Success(pending.request, msg)

    def _error(self, msg: Message, pending: _Pending) -> Retry:
        error = msg.get(Attr.ERROR_CODE)
        if not isinstance(error, tuple):
            raise TurnClientError(msg.method, None, "an error response without ERROR-CODE")
        code, reason = int(error[0]), str(error[1])
        realm, nonce = msg.get(Attr.REALM), msg.get(Attr.NONCE)
        original = pending.request
        if code == 401 and not pending.signed and original.method != Method.BINDING:
            # RFC 8489 §9.2.5: the challenge to a request without credentials; retry with them.
            if not isinstance(realm, str) or not isinstance(nonce, str):
                raise TurnClientError(msg.method, code, reason + " (no REALM or NONCE)")
            self.realm, self.nonce = realm, nonce
            self.key = long_term_key(self.username, realm, self.password)
            retry = self._request(original.method, pending.attributes, repeated=pending.repeated)
            return Retry(original, retry, code)
        if (
            code == 438
            and pending.signed
            and isinstance(nonce, str)
            and pending.nonce_retries < MAX_NONCE_RETRIES
        ):
            # §9.2.5: a stale nonce; the response carries a fresh one to retry with.
            self.nonce = nonce
            if isinstance(realm, str) and realm != self.realm:
                self.realm = realm
                self.key = long_term_key(self.username, realm, self.password)
            retry = self._request(
                original.method,
                pending.attributes,
                repeated=pending.repeated,
                nonce_retries=pending.nonce_retries + 1,
            )
            return Retry(original, retry, code)
        raise TurnClientError(msg.method, code, reason)
