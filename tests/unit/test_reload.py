"""Which keys a reload applies, which need a restart, and the TURN core taking new settings."""

from __future__ import annotations

import dataclasses
import os

from flaskrtc.config import Config, ConfigError, GeneralConfig, TurnConfig, load_config
from flaskrtc.reload import RELOADABLE, FileWatch, changed, merge, restart_needed, settings
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


# --- [general] reload_watch: FileWatch --------------------------------------------------------


class FakeFiles:
    """``stat`` over a dict: path -> (mtime_ns, size, inode); a missing path raises."""

    def __init__(self, **files: tuple[int, int, int]) -> None:
        self.files = {name.replace("_", "."): sig for name, sig in files.items()}

    def stat(self, path: str) -> os.stat_result:
        if path not in self.files:
            raise FileNotFoundError(path)
        mtime, size, inode = self.files[path]
        # st_mode, st_ino, st_dev, st_nlink, st_uid, st_gid, st_size, then the times
        return os.stat_result((0o100644, inode, 0, 1, 0, 0, size, 0, 0, 0, 0, 0, mtime, 0))


def test_a_watch_is_due_once_a_change_has_settled() -> None:
    files = FakeFiles(cert_pem=(1, 100, 7), key_pem=(1, 50, 8))
    watch = FileWatch(["cert.pem", "key.pem"], stat=files.stat)
    assert watch.due() == []  # nothing changed
    files.files["cert.pem"] = (2, 120, 9)  # the certificate is renewed ...
    assert watch.due() == []  # ... seen once: it may still be being written
    files.files["key.pem"] = (2, 60, 10)  # ... and then its key
    assert watch.due() == []  # changed since the last look: not settled yet
    assert watch.due() == ["cert.pem", "key.pem"]  # settled: one reload for both
    assert watch.due() == []  # and only once


def test_a_watch_sees_a_rename_within_one_timestamp_and_a_file_coming_back() -> None:
    files = FakeFiles(config_ini=(5, 10, 1))
    watch = FileWatch(["config.ini"], stat=files.stat)
    files.files["config.ini"] = (5, 10, 2)  # same time and size, another inode (os.replace)
    watch.due()
    assert watch.due() == ["config.ini"]
    del files.files["config.ini"]  # deleted: a change too (the reload then says what is wrong)
    watch.due()
    assert watch.due() == ["config.ini"]
    files.files["config.ini"] = (6, 10, 3)
    watch.due()
    assert watch.due() == ["config.ini"]


def test_retarget_watches_new_paths_from_their_state_now() -> None:
    files = FakeFiles(a=(1, 1, 1), b=(1, 1, 2))
    watch = FileWatch(["a"], stat=files.stat)
    watch.retarget(["b", "b"])
    assert watch.paths == ("b",)
    files.files["a"] = (9, 9, 9)  # no longer watched
    watch.due()
    assert watch.due() == []


def test_reload_watch_is_seconds_or_off() -> None:
    assert load_config(None, {}, {"general.reload_watch": "30"}).general.reload_watch == 30
    assert load_config(None, {}, {"general.reload_watch": "0"}).general.reload_watch == 0
    assert GeneralConfig().reload_watch == 0  # off unless asked for
    for bad in ("0.5", "-1", "nan", "soon", "100000"):
        try:
            load_config(None, {}, {"general.reload_watch": bad})
        except ConfigError as err:
            assert "reload_watch" in str(err) and "from 1 to 86400" in str(err)
        else:
            raise AssertionError(f"{bad!r} accepted")
    assert "general.reload_watch" not in RELOADABLE  # the watcher is started once


def test_retarget_to_the_same_paths_keeps_a_pending_change() -> None:
    files = FakeFiles(a=(1, 1, 1))
    watch = FileWatch(["a"], stat=files.stat)
    files.files["a"] = (2, 2, 2)
    watch.due()  # seen once, not settled yet
    watch.retarget(["a"])  # what the watcher does after every reload
    assert watch.due() == ["a"]
