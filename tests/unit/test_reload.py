"""Which keys a reload applies, which need a restart, and the TURN core taking new settings."""

from __future__ import annotations

import dataclasses

from flaskrtc.config import Config, GeneralConfig, TurnConfig, load_config
from flaskrtc.reload import RELOADABLE, changed, merge, restart_needed, settings
from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.core import Limits
from flaskrtc.turn.policy import PeerPolicy
from flaskrtc.turn.stun import Attr, Class, Method
from tests.unit.test_turn_core import Client, error, make_core


def five_tuple(port: int) -> FiveTuple:
    return FiveTuple("udp", ("198.51.100.1", port), ("0.0.0.0", 3478))


def config(**turn: object) -> Config:
    return Config(GeneralConfig(), TurnConfig(**turn))  # type: ignore[arg-type]


def test_every_reloadable_key_is_a_key_of_the_config() -> None:
    assert RELOADABLE <= set(settings(config()))


def test_changed_names_the_keys_that_differ() -> None:
    old = config()
    new = dataclasses.replace(config(ttl=600, port=4000), log_level="DEBUG")
    assert changed(old, new) == ["log_level", "turn.port", "turn.ttl"]
    assert changed(old, old) == []


def test_restart_needed_names_only_the_keys_a_reload_cannot_apply() -> None:
    old = config()
    new = Config(GeneralConfig(port=9000, tls=False), TurnConfig(ttl=600, min_port=50000))
    assert restart_needed(old, new) == ["general.port", "general.tls", "turn.min_port"]


def test_merge_takes_the_reloadable_keys_and_keeps_the_running_rest() -> None:
    running = config(port=19302, user_quota=10)
    new = dataclasses.replace(
        Config(GeneralConfig(port=9000), TurnConfig(port=0, user_quota=2, ttl=600)),
        log_level="DEBUG",
    )
    merged = merge(running, new)
    assert merged.turn.user_quota == 2 and merged.turn.ttl == 600
    assert merged.log_level == "DEBUG"
    assert merged.turn.port == 19302 and merged.general.port == 8086  # not applied


def test_a_new_config_key_needs_a_restart_unless_listed() -> None:
    # Every key load_config knows is either reloadable or named by restart_needed.
    keys = set(settings(load_config(None, {}, {})))
    assert keys - RELOADABLE  # ports and the like are not reloadable
    assert "turn.secret" not in RELOADABLE and "turn.realm" not in RELOADABLE


def test_the_core_takes_new_limits_for_the_next_allocation_and_keeps_live_ones() -> None:
    core, _ = make_core(user_quota=2)
    first = Client(core, five_tuple(40000))
    assert first.allocate().cls == Class.SUCCESS
    core.configure(limits=Limits(user_quota=1))
    second = Client(core, five_tuple(40001))
    assert error(second.allocate()) == 486  # over the new quota
    assert first.request(Method.REFRESH, {Attr.LIFETIME: 600}).cls == Class.SUCCESS
    core.configure(limits=Limits(user_quota=3))
    assert second.allocate().cls == Class.SUCCESS


def test_the_core_takes_a_new_peer_policy_for_new_permissions() -> None:
    core, _ = make_core()
    client = Client(core, five_tuple(40000))
    assert client.allocate().cls == Class.SUCCESS
    peer = ("203.0.113.9", 5000)
    attrs = {Attr.XOR_PEER_ADDRESS: peer}
    assert client.request(Method.CREATE_PERMISSION, attrs).cls == Class.SUCCESS
    core.configure(policy=PeerPolicy(denied=["203.0.113.0/24"]))
    # The permission exists, but its refresh is checked against the new rules.
    assert error(client.request(Method.CREATE_PERMISSION, attrs)) == 403
