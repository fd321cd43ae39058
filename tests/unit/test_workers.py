"""[general] workers without processes: port and quota shares, the parent's restart rules
with a fake clock and fake children, the shared table of live relay ports, and a sibling
worker's relay let through by the peer policy."""

from __future__ import annotations

import itertools
import signal
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest

from flaskrtc.config import Config, ConfigError, GeneralConfig, TurnConfig, _check_workers
from flaskrtc.turn.allocation import FiveTuple
from flaskrtc.turn.siblings import RelayTable, SiblingRelays
from flaskrtc.turn.stun import Attr, Class, Method
from flaskrtc.workers import (
    MAX_RESTART_DELAY,
    PARENT_KEYS,
    RESTART_DELAY,
    Supervisor,
    parse_role,
    port_shares,
    worker_command,
    worker_settings,
    worker_share,
)
from tests.unit.test_turn_core import Client, error, make_core


@pytest.mark.parametrize(
    ("low", "high", "count"), [(49152, 65535, 2), (40000, 40010, 3), (10, 13, 4)]
)
def test_port_shares_cover_the_range_without_overlap(low: int, high: int, count: int) -> None:
    shares = port_shares(low, high, count)
    assert len(shares) == count
    assert shares[0][0] == low and shares[-1][1] == high
    for (_, end), (start, _) in itertools.pairwise(shares):
        assert start == end + 1
    sizes = [end - start + 1 for start, end in shares]
    assert max(sizes) - min(sizes) <= 1


def test_worker_settings_keep_the_ports_and_share_the_relay_range() -> None:
    config = Config(
        GeneralConfig(workers=3),
        TurnConfig(min_port=40000, max_port=40299, user_quota=10, ip_quota=2, total_quota=0),
    )
    ports = {"general.port": 8086, "turn.port": 19302, "turn.tls_port": 5349}
    settings = worker_settings(config, ports)
    assert [s["turn.min_port"] for s in settings] == ["40000", "40100", "40200"]
    assert [s["turn.max_port"] for s in settings] == ["40099", "40199", "40299"]
    for s in settings:
        assert (s["general.port"], s["turn.port"], s["turn.tls_port"]) == ("8086", "19302", "5349")
        assert s["general.workers"] == "1"  # a worker supervises nothing itself
        # Quotas are not fixed by flags: a worker divides them on each (re)load of the config.
        assert not any(key.endswith("_quota") for key in s)
        assert set(s) <= set(PARENT_KEYS)  # the keys only the parent can say need a restart


def test_worker_share_divides_the_quotas() -> None:
    config = Config(GeneralConfig(), TurnConfig(user_quota=10, ip_quota=2, total_quota=0))
    turn = worker_share(config, 3).turn
    # 10 // 3 = 3 each (9 in all, never more than 10); 2 // 3 = 0 -> at least 1; 0 = off.
    assert (turn.user_quota, turn.ip_quota, turn.total_quota) == (3, 1, 0)
    assert worker_share(config, 1).turn == config.turn


def test_worker_command_carries_the_parents_flags_role_and_settings() -> None:
    cmd = worker_command(["--config", "c.ini"], "2/3", "/dev/shm/t", {"turn.port": "19302"})
    assert cmd[1:3] == ["-m", "flaskrtc"]
    assert cmd[3:] == [
        "--config",
        "c.ini",
        "--worker",
        "2/3",
        "--worker-table",
        "/dev/shm/t",
        "--set",
        "turn.port=19302",
    ]


@pytest.mark.parametrize(
    ("text", "table"), [("0/2", "t"), ("3/2", "t"), ("x/2", "t"), ("1", "t"), ("1/2", "")]
)
def test_bad_worker_roles_are_refused(text: str, table: str) -> None:
    with pytest.raises(ValueError):
        parse_role(text, table)
    assert parse_role("2/2", "t").index == 2


def test_workers_need_linux_the_cluster_and_room_in_the_relay_range() -> None:
    raw = {"general.workers": ("4", "general.workers", "")}
    redis = {"cluster.redis_url": "redis://127.0.0.1:6379/0"}
    with pytest.raises(ConfigError, match="only Linux"):
        _check_workers({"general.workers": 4, **redis}, raw, "darwin")
    with pytest.raises(ConfigError, match="only Linux"):
        _check_workers({"general.workers": 4, **redis}, raw, "win32")
    _check_workers({"general.workers": 4, **redis}, raw, "linux")
    with pytest.raises(ConfigError, match=r"set \[cluster\] redis_url"):
        _check_workers({"general.workers": 4}, raw, "linux")
    tight = {"general.workers": 4, "turn.min_port": 40000, "turn.max_port": 40006, **redis}
    with pytest.raises(ConfigError, match="at most 3"):
        _check_workers(tight, raw, "linux")
    _check_workers({"general.workers": 1}, {}, "darwin")  # one worker: anywhere


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None
        self.signals: list[int] = []
        self.ignores_term = False

    def poll(self) -> int | None:
        return self.code

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGTERM and not self.ignores_term:
            self.code = 0

    def wait(self, timeout: float | None = None) -> int:
        if self.code is None:
            raise subprocess.TimeoutExpired("worker", timeout or 0)
        return self.code

    def kill(self) -> None:
        self.code = -9


class Fakes:
    def __init__(self) -> None:
        self.now = 0.0
        self.procs: list[FakeProc] = []

    def clock(self) -> float:
        return self.now

    def popen(self, command: list[str], **_: Any) -> FakeProc:
        proc = FakeProc(1000 + len(self.procs))
        self.procs.append(proc)
        return proc


def supervisor(count: int = 2) -> tuple[Supervisor, Fakes]:
    fakes = Fakes()
    commands = [["w", str(i)] for i in range(count)]
    sup = Supervisor(commands, clock=fakes.clock, popen=cast(Any, fakes.popen))
    return sup, fakes


def test_supervisor_starts_every_worker_and_restarts_one_that_exits() -> None:
    sup, fakes = supervisor()
    sup.step()
    assert len(fakes.procs) == 2
    fakes.now = 100.0  # it ran long: the next start comes after the base delay
    fakes.procs[0].code = -9
    sup.step()
    assert sup.restarts == 1 and len(fakes.procs) == 2
    fakes.now += RESTART_DELAY - 0.01
    sup.step()
    assert len(fakes.procs) == 2  # not yet
    fakes.now += 0.02
    sup.step()
    assert len(fakes.procs) == 3 and sup.workers[0].proc is cast(Any, fakes.procs[2])
    assert sup.workers[1].proc is cast(Any, fakes.procs[1])  # the other one untouched


def test_a_worker_dying_young_waits_longer_each_time_up_to_the_cap() -> None:
    sup, fakes = supervisor(1)
    sup.step()
    waits = []
    for _ in range(8):
        fakes.procs[-1].code = 1  # dies at once
        sup.step()
        waits.append(sup.workers[0].due - fakes.now)
        fakes.now = sup.workers[0].due
        sup.step()
    assert waits[:3] == [2 * RESTART_DELAY, 4 * RESTART_DELAY, 8 * RESTART_DELAY]
    assert max(waits) == MAX_RESTART_DELAY == waits[-1]


def test_stop_terms_every_worker_then_kills_the_stubborn_and_restarts_none() -> None:
    sup, fakes = supervisor()
    sup.step()
    fakes.procs[1].ignores_term = True
    sup.stop(timeout=0)
    assert fakes.procs[0].signals == [signal.SIGTERM] and fakes.procs[0].code == 0
    assert fakes.procs[1].code == -9  # killed after the timeout
    sup.step()
    assert len(fakes.procs) == 2  # stopping: nothing is started again


def test_reload_runs_the_parents_part_then_sends_sighup_to_each_running_worker() -> None:
    order: list[str] = []
    fakes = Fakes()
    sup = Supervisor(
        [["w", "1"], ["w", "2"], ["w", "3"]],
        clock=fakes.clock,
        popen=cast(Any, fakes.popen),
        on_reload=lambda: order.append("parent"),
    )
    sup.step()
    fakes.procs[2].code = 1  # exited, not yet restarted: nobody to tell
    assert sup.reload() == 2
    assert order == ["parent"]
    assert fakes.procs[0].signals == fakes.procs[1].signals == [signal.SIGHUP]
    assert fakes.procs[2].signals == []


def test_a_failing_parent_reload_still_reaches_the_workers() -> None:
    def broken() -> None:
        raise RuntimeError("bug")

    fakes = Fakes()
    popen = cast(Any, fakes.popen)
    sup = Supervisor([["w", "1"]], clock=fakes.clock, popen=popen, on_reload=broken)
    sup.step()
    assert sup.reload() == 1 and fakes.procs[0].signals == [signal.SIGHUP]


def test_relay_table_is_shared_between_mappings(tmp_path: Path) -> None:
    parent = RelayTable.create(str(tmp_path))
    a, b = RelayTable(parent.path), RelayTable(parent.path)
    try:
        a.mark(50000, 4, True)
        b.mark(50000, 6, True)
        assert parent.is_live(50000, 4) and parent.is_live(50000, 6)
        a.mark(50000, 4, False)
        assert not b.is_live(50000, 4) and b.is_live(50000, 6)
        assert not b.is_live(70000, 4)  # not a port
        b.mark(50001, 4, True)
        b.mark(50003, 4, True)
        a.clear(50000, 50002)  # a restarted worker's share
        assert not parent.is_live(50000, 6) and not parent.is_live(50001, 4)
        assert parent.is_live(50003, 4)
    finally:
        a.close()
        b.close()
        parent.close(unlink=True)
    assert not parent.path.exists()


def test_sibling_relays_need_a_live_port_at_a_host_address(tmp_path: Path) -> None:
    table = RelayTable.create(str(tmp_path))
    try:
        siblings = SiblingRelays(table, {"192.0.2.1"})
        table.mark(50001, 4, True)
        assert ("192.0.2.1", 50001) in siblings
        assert ("192.0.2.1", 50002) not in siblings  # no relay there
        assert ("198.51.100.1", 50001) not in siblings  # not this host
        assert ("2001:db8::1", 50001) not in siblings and "x" not in siblings
    finally:
        table.close(unlink=True)


def test_a_sibling_workers_relay_is_a_permitted_peer_and_nothing_else_of_the_host(
    tmp_path: Path,
) -> None:
    """RFC 8656 §9: a relay of this server is let through; with workers, another worker's
    relay is one too (found in the shared table), the host's other ports are not."""
    table = RelayTable.create(str(tmp_path))
    try:
        siblings = SiblingRelays(table)
        core, _ = make_core(host_addresses=("192.0.2.1",))
        core.allocations.live._others = siblings  # as build_turn wires it
        siblings.hosts = core.host_addresses
        client = Client(core, FiveTuple("udp", ("198.51.100.7", 40000), ("192.0.2.1", 3478)))
        assert client.allocate().cls == Class.SUCCESS
        table.mark(61000, 4, True)  # another worker's live relay
        sibling = {Attr.XOR_PEER_ADDRESS: ("192.0.2.1", 61000)}
        assert client.request(Method.CREATE_PERMISSION, sibling).cls == Class.SUCCESS
        other_port = {Attr.XOR_PEER_ADDRESS: ("192.0.2.1", 22)}
        assert error(client.request(Method.CREATE_PERMISSION, other_port)) == 403
        allocation = next(iter(core.allocations))
        assert core.permitted(allocation, ("192.0.2.1", 61000))
        assert not core.permitted(allocation, ("192.0.2.1", 61001))  # relays only
        table.mark(61000, 4, False)  # that relay closed: its port is the host's again
        assert not core.permitted(allocation, ("192.0.2.1", 61000))
    finally:
        table.close(unlink=True)
