"""Run a command under the kernel restrictions deploy/flaskrtc.service asks systemd for.

PID 1 here is not systemd, so the unit itself cannot start; this applies its settings with the
same kernel mechanisms systemd uses, then execs the command (tests/release/test_deploy.py runs
it behind ``setpriv``, which sets the user, no_new_privs and the capabilities):

- ``--nofile N``: LimitNOFILE= (setrlimit RLIMIT_NOFILE, soft and hard).
- ``--mdwe``: MemoryDenyWriteExecute=. systemd 253+ uses prctl(PR_SET_MDWE,
  PR_MDWE_REFUSE_EXEC_GAIN) where the kernel has it (6.3+), as here; older ones a seccomp
  filter on mmap/mprotect with PROT_WRITE|PROT_EXEC. Both refuse the same mappings.
- ``--allow SYSCALL`` (repeated) and ``--family AF``: SystemCallFilter= as an allow list
  (the names ``systemd-analyze syscall-filter`` expands the groups to) and
  RestrictAddressFamilies= (socket() allowed for those families only), in one seccomp filter.
  Anything else KILLS the process: stricter than the unit, which returns EPERM
  (SystemCallErrorNumber=) and EAFNOSUPPORT, so a call the filter misses cannot hide behind a
  handled OSError in the test.

Usage: python sandbox_exec.py [--nofile N] [--mdwe] [--allow NAME]... [--family AF_X]... -- CMD
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import resource
import socket
import sys

PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
NR_SCMP_ERROR = -1


class ArgCmp(ctypes.Structure):
    """libseccomp's ``struct scmp_arg_cmp``."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def apply_mdwe() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SystemExit(f"sandbox_exec: prctl(PR_SET_MDWE) failed: {os.strerror(err)}")


def apply_seccomp(allowed: list[str], families: list[str]) -> None:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        raise SystemExit("sandbox_exec: libseccomp not found (Debian package libseccomp2)")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(SCMP_ACT_KILL_PROCESS)
    if not ctx:
        raise SystemExit("sandbox_exec: seccomp_init failed")
    socket_nr = lib.seccomp_syscall_resolve_name(b"socket")
    for syscall in allowed:
        nr = lib.seccomp_syscall_resolve_name(syscall.encode())
        if nr == NR_SCMP_ERROR or (families and nr == socket_nr):
            continue  # not a syscall of this architecture (systemd skips those too)
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None) != 0:
            raise SystemExit(f"sandbox_exec: cannot allow {syscall}")
    for family in families:
        cmp = ArgCmp(0, SCMP_CMP_EQ, int(getattr(socket, family)), 0)
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, socket_nr, 1, ctypes.byref(cmp)):
            raise SystemExit(f"sandbox_exec: cannot allow socket({family})")
    if lib.seccomp_load(ctx) != 0:
        raise SystemExit("sandbox_exec: seccomp_load failed (no_new_privs not set?)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="sandbox_exec")
    parser.add_argument("--nofile", type=int)
    parser.add_argument("--mdwe", action="store_true")
    parser.add_argument("--allow", action="append", default=[])
    parser.add_argument("--family", action="append", default=[])
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    if args.nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
    if args.mdwe:
        apply_mdwe()
    if args.allow:
        apply_seccomp(args.allow, args.family)
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    main(sys.argv[1:])
