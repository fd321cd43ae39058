"""The sans-I/O TURN client (flaskrtc.turn.client) against flaskrtc's own sans-I/O TurnCore."""

from __future__ import annotations

from typing import Any

import pytest

from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.client import (
    MAX_NONCE_RETRIES,
    DataIndication,
    Request,
    Retry,
    Success,
    TurnClient,
    TurnClientError,
)
from flaskrtc.turn.core import ToClient, ToPeer, TurnCore
from flaskrtc.turn.credentials import make_credential
from flaskrtc.turn.stun import (
    Attr,
    Class,
    Message,
    Method,
    check_integrity,
    decode_channel_data,
    encode_channel_data,
    long_term_key,
    parse,
    serialize,
)
from tests.unit.test_turn_core import CLIENT, NOW, REALM, SECRET, make_core

OTHER = FiveTuple("udp", ("198.51.100.8", 40001), CLIENT.server)


def credential(user: str = "doctor") -> tuple[str, str]:
    cred = make_credential(SECRET, user, now=NOW, ttl=86400)
    return cred.username, cred.password


def deliver(core: TurnCore, request: Request, ft: FiveTuple = CLIENT, now: float = NOW) -> bytes:
    """The server's one reply to ``request``."""
    effects = core.handle(request.data, ft, now)
    assert len(effects) == 1 and isinstance(effects[0], ToClient), effects
    return effects[0].data


def complete(
    core: TurnCore,
    client: TurnClient,
    request: Request,
    ft: FiveTuple = CLIENT,
    now: float = NOW,
) -> Success:
    """Run ``request`` to its success, answering challenges as a caller would."""
    for _ in range(5):
        event = client.receive(deliver(core, request, ft, now))
        if isinstance(event, Retry):
            request = event.request
            continue
        assert isinstance(event, Success), event
        return event
    raise AssertionError("no success after 5 retries")


def test_allocate_starts_unsigned_then_retries_signed_after_the_401() -> None:
    core, _ = make_core()
    username, password = credential()
    client = TurnClient(username, password)
    first = client.allocate()
    sent = parse(first.data)
    # RFC 8489 §9.2.3.1: no credentials until the server has named realm and nonce.
    assert Attr.MESSAGE_INTEGRITY not in sent.attributes and Attr.USERNAME not in sent.attributes
    assert sent.attributes[Attr.REQUESTED_TRANSPORT] == 17

    event = client.receive(deliver(core, first))
    assert isinstance(event, Retry) and event.code == 401 and event.original == first
    retry = parse(event.request.data)
    assert retry.transaction_id != sent.transaction_id
    assert retry.attributes[Attr.USERNAME] == username
    assert retry.attributes[Attr.REALM] == REALM
    assert retry.attributes[Attr.NONCE] == client.nonce
    assert check_integrity(retry, long_term_key(username, REALM, password))

    done = client.receive(deliver(core, event.request))
    assert isinstance(done, Success) and done.request == event.request
    assert client.relayed == ("192.0.2.1", 50000)
    assert client.mapped == CLIENT.client
    assert client.lifetime == 600
    assert len(core.allocations) == 1


def test_wrong_password_raises_401() -> None:
    core, _ = make_core()
    username, _ = credential()
    client = TurnClient(username, "not-the-password")
    event = client.receive(deliver(core, client.allocate()))
    assert isinstance(event, Retry)
    with pytest.raises(TurnClientError) as caught:
        client.receive(deliver(core, event.request))
    assert caught.value.code == 401 and caught.value.method == Method.ALLOCATE
    assert "ALLOCATE: 401" in str(caught.value)
    assert len(core.allocations) == 0


def test_error_responses_carry_the_stun_error_code() -> None:
    core, _ = make_core(user_quota=1)
    username, password = credential()
    first = TurnClient(username, password)
    complete(core, first, first.allocate())
    second = TurnClient(username, password)
    request = second.allocate()
    event = second.receive(deliver(core, request, OTHER))
    assert isinstance(event, Retry)
    with pytest.raises(TurnClientError) as caught:
        second.receive(deliver(core, event.request, OTHER))
    assert caught.value.code == 486  # RFC 8656 §7.2: quota reached


def test_stale_nonce_is_retried_with_the_new_one() -> None:
    core, _ = make_core()
    client = TurnClient(*credential())
    complete(core, client, client.allocate())
    old_nonce = client.nonce
    later = NOW + 601  # past the nonce's lifetime (auth.NONCE_LIFETIME)
    event = client.receive(deliver(core, client.refresh(600), now=later))
    assert isinstance(event, Retry) and event.code == 438
    assert client.nonce != old_nonce
    assert parse(event.request.data).attributes[Attr.NONCE] == client.nonce
    assert isinstance(client.receive(deliver(core, event.request, now=later)), Success)


def test_stale_nonce_retries_are_bounded() -> None:
    client = TurnClient("user", "pw")
    client.realm, client.nonce = REALM, "n0"
    client.key = long_term_key("user", REALM, "pw")
    request = client.refresh(600)
    for attempt in range(MAX_NONCE_RETRIES + 1):
        stale = parse(request.data).response(
            Class.ERROR, {Attr.ERROR_CODE: (438, "Stale Nonce"), Attr.NONCE: f"n{attempt + 1}"}
        )
        if attempt < MAX_NONCE_RETRIES:
            event = client.receive(serialize(stale))
            assert isinstance(event, Retry)
            request = event.request
        else:
            with pytest.raises(TurnClientError) as caught:
                client.receive(serialize(stale))
            assert caught.value.code == 438


def test_permissions_and_indications_relay_between_two_allocations() -> None:
    core, _ = make_core()
    a, b = TurnClient(*credential()), TurnClient(*credential())
    complete(core, a, a.allocate())
    complete(core, b, b.allocate(), OTHER)
    assert a.relayed is not None and b.relayed is not None and a.relayed != b.relayed
    complete(core, a, a.create_permission(b.relayed))
    complete(core, b, b.create_permission(a.relayed), OTHER)

    effects = core.handle(a.send_indication(b.relayed, b"ping"), CLIENT, NOW)
    assert len(effects) == 1 and isinstance(effects[0], ToPeer)
    assert (effects[0].peer, effects[0].data) == (b.relayed, b"ping")
    # The datagram reaches B's relay from A's relay address: B gets a Data indication.
    target = core.allocations.relay_addresses()[b.relayed]
    indication = core.data_indication(target, a.relayed, b"ping")
    assert indication is not None
    assert b.receive(indication) == DataIndication(a.relayed, b"ping")


def test_create_permission_keeps_every_peer_through_the_signed_retry() -> None:
    core, _ = make_core()
    client = TurnClient(*credential())
    peers = [("192.0.2.10", 1000), ("192.0.2.11", 2000)]
    request = client.create_permission(*peers)
    assert parse(request.data).get_all(Attr.XOR_PEER_ADDRESS) == peers
    event = client.receive(deliver(core, request))
    assert isinstance(event, Retry)
    assert parse(event.request.data).get_all(Attr.XOR_PEER_ADDRESS) == peers
    with pytest.raises(ValueError):
        client.create_permission()


def test_refresh_zero_deletes_the_allocation() -> None:
    core, ports = make_core()
    client = TurnClient(*credential())
    complete(core, client, client.allocate())
    done = complete(core, client, client.refresh(0))
    assert done.message.get(Attr.LIFETIME) == 0
    assert client.relayed is None and len(core.allocations) == 0 and not ports.open_ports


def test_binding_is_never_signed() -> None:
    core, _ = make_core()
    client = TurnClient("", "")
    request = client.binding()
    assert Attr.MESSAGE_INTEGRITY not in parse(request.data).attributes
    event = client.receive(deliver(core, request))
    assert isinstance(event, Success)
    assert event.message.get(Attr.XOR_MAPPED_ADDRESS) == CLIENT.client


def test_a_success_with_a_bad_integrity_is_refused() -> None:
    core, _ = make_core()
    client = TurnClient(*credential())
    event = client.receive(deliver(core, client.allocate()))
    assert isinstance(event, Retry)
    reply = parse(deliver(core, event.request))
    forged = serialize(
        Message(reply.method, reply.cls, reply.transaction_id, dict(reply.attributes)),
        integrity_key=b"x" * 16,
    )
    with pytest.raises(TurnClientError) as caught:
        client.receive(forged)
    assert caught.value.code is None and "MESSAGE-INTEGRITY" in str(caught.value)


def test_unrelated_input_is_ignored() -> None:
    core, _ = make_core()
    client = TurnClient(*credential())
    request = client.allocate()
    reply = deliver(core, request)
    assert client.receive(b"not stun at all") is None
    assert isinstance(client.receive(reply), Retry)
    assert client.receive(reply) is None  # the same response again: no open transaction
    # A Data indication without DATA is discarded (RFC 8656 §11.6).
    bare: dict[int, Any] = {Attr.XOR_PEER_ADDRESS: ("192.0.2.1", 1)}
    assert (
        client.receive(serialize(Message(Method.DATA, Class.INDICATION, attributes=bare))) is None
    )


def test_channel_bind_then_channel_data_relays_between_two_allocations() -> None:
    core, _ = make_core()
    a, b = TurnClient(*credential()), TurnClient(*credential())
    complete(core, a, a.allocate())
    complete(core, b, b.allocate(), OTHER)
    assert a.relayed is not None and b.relayed is not None
    complete(core, b, b.create_permission(a.relayed), OTHER)
    request = a.channel_bind(0x4001, b.relayed)
    assert parse(request.data).get(Attr.CHANNEL_NUMBER) == 0x4001
    complete(core, a, request)  # signed after the 401, like every request
    effects = core.handle(encode_channel_data(0x4001, b"over a channel"), CLIENT, NOW)
    assert [(e.peer, e.data) for e in effects if isinstance(e, ToPeer)] == [
        (b.relayed, b"over a channel")
    ]
    assert decode_channel_data(encode_channel_data(0x4001, b"x")) == (0x4001, b"x")
    for bad in (0x3FFF, 0x5000):
        with pytest.raises(ValueError):
            a.channel_bind(bad, b.relayed)
