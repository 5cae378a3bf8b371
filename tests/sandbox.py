"""The seccomp side of the service unit, rebuilt with libseccomp the way systemd builds it, and
the child process that runs a command under it (`python -c "from tests.sandbox import
sandbox_exec; ..."`). Kept apart from the tests so that the child imports only this module:
no onnxruntime and no daemon before the exec."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import TypedDict

import pytest

ANALYZE = shutil.which("systemd-analyze")
LIBSECCOMP = ctypes.util.find_library("seccomp")


def directives(text: str) -> dict[str, list[str]]:
    """Key -> values in file order, ignoring sections and comments (our units repeat no key across sections)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;[" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        found.setdefault(key.strip(), []).append(value.strip())
    return found


# -- the unit's seccomp sandbox ---------------------------------------------------
# systemd is not running here, so the daemon cannot be started as the unit. What would break a
# Python daemon in this unit is its seccomp side: SystemCallFilter=, MemoryDenyWriteExecute=
# (a JIT or W+X trampoline in a native library) and RestrictAddressFamilies=. Those are
# rebuilt from the installed unit with libseccomp, the way systemd builds them, and the real
# ExecStart= runs under them.

PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 4, 7
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
FAMILIES = {"AF_UNIX": socket.AF_UNIX, "AF_INET": socket.AF_INET, "AF_INET6": socket.AF_INET6}


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def syscall_groups() -> dict[str, list[str]]:
    """systemd's own syscall groups (@system-service, ...), from `systemd-analyze syscall-filter`."""
    assert ANALYZE is not None
    out = subprocess.run([ANALYZE, "syscall-filter"], capture_output=True, text=True, check=True, timeout=60).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#"):
            current.append(line.strip())
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    found: set[str] = set()
    for name in names:
        found |= expand(groups[name], groups) if name.startswith("@") else {name}
    return found


class SandboxSpec(TypedDict):
    """The seccomp side of the unit: allowed syscalls, W^X, socket families, errno."""

    allow: list[str]
    mdwe: bool
    families: list[int]
    errno: int


def sandbox_spec(service_text: str) -> SandboxSpec:
    """SystemCallFilter= (allow list minus ~ lists), MemoryDenyWriteExecute=, RestrictAddressFamilies=."""
    settings = directives(service_text)
    groups = syscall_groups()
    allowed: set[str] = set()
    for value in settings["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= expand(value[1:].split(), groups)
        else:
            allowed |= expand(value.split(), groups)
    return {
        "allow": sorted(allowed),
        "mdwe": settings.get("MemoryDenyWriteExecute") == ["yes"],
        "families": [FAMILIES[f] for f in " ".join(settings["RestrictAddressFamilies"]).split()],
        "errno": getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[-1]),
    }


def _load_seccomp(spec: SandboxSpec) -> None:
    lib = ctypes.CDLL(LIBSECCOMP or "libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    ctx = lib.seccomp_init(0x00050000 | spec["errno"])  # SCMP_ACT_ERRNO(errno)

    def allow(name: str, *conditions: _ArgCmp) -> None:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:
            return  # not a syscall of this architecture
        array = (_ArgCmp * max(1, len(conditions)))(*conditions)
        if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, len(conditions), array) < 0:
            raise OSError(f"seccomp rule for {name}")

    allowed = set(spec["allow"])
    conditional = {"mmap", "mmap2", "mprotect", "pkey_mprotect", "shmat", "socket"}
    for name in allowed - conditional:
        allow(name)
    for family in spec["families"]:
        allow("socket", _ArgCmp(0, SCMP_CMP_EQ, family, 0))
    wx = PROT_WRITE | PROT_EXEC
    w_x = (0, PROT_WRITE, PROT_EXEC) if spec["mdwe"] else (0, PROT_WRITE, PROT_EXEC, wx)
    for name in {"mmap", "mmap2"} & allowed:
        for prot in w_x:  # with MemoryDenyWriteExecute: never writable and executable at once
            allow(name, _ArgCmp(2, SCMP_CMP_MASKED_EQ, wx, prot))
    for name in {"mprotect", "pkey_mprotect"} & allowed:  # ... and never made executable later
        for prot in (0,) if spec["mdwe"] else (0, PROT_EXEC):
            allow(name, _ArgCmp(2, SCMP_CMP_MASKED_EQ, PROT_EXEC, prot))
    if "shmat" in allowed:
        allow("shmat", _ArgCmp(2, SCMP_CMP_MASKED_EQ, SHM_EXEC, 0))
    if lib.seccomp_load(ctx) < 0:
        raise OSError("seccomp_load failed")


def _probe(spec: SandboxSpec) -> None:
    """Prove the filter is in force, then use what the daemon's telemetry and ctypes use."""
    import mmap

    if spec["mdwe"]:
        with pytest.raises(OSError):
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    if socket.AF_INET not in spec["families"]:
        with pytest.raises(OSError):
            socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    compare = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)(
        lambda a, b: ctypes.c_int.from_address(a).value - ctypes.c_int.from_address(b).value
    )
    numbers = (ctypes.c_int * 4)(3, 1, 4, 2)
    ctypes.CDLL(None).qsort(numbers, 4, ctypes.sizeof(ctypes.c_int), compare)  # a libffi closure
    assert list(numbers) == [1, 2, 3, 4]
    import psutil

    for read in (psutil.cpu_percent, psutil.getloadavg, psutil.sensors_temperatures, psutil.sensors_battery):
        read()


def sandbox_exec(argv: list[str]) -> None:
    """Child process: load the unit's seccomp side, probe it, then exec the command in argv
    (after `--`). With EDGE_TEST_LISTEN_FD set ("fd" or "fd,fd"), pass those sockets as fds 3, 4
    like systemd does."""
    spec: SandboxSpec = json.loads(Path(argv[0]).read_text())
    command = argv[argv.index("--") + 1 :]
    listen_fd = os.environ.pop("EDGE_TEST_LISTEN_FD", None)
    if spec["mdwe"]:  # systemd >= 254 also sets the kernel's own W^X flag (Linux >= 6.3; fails harmlessly before)
        ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0)
    _load_seccomp(spec)
    _probe(spec)
    if listen_fd is not None:
        # "fd[,fd...]" become fds 3, 4, ... as systemd passes them (moved out of the way first,
        # so a source that is itself 3 or 4 is not overwritten before it is copied).
        high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 100) for fd in listen_fd.split(",")]
        for target, fd in enumerate(high, start=3):
            os.dup2(fd, target)
            os.close(fd)
        os.environ.update(LISTEN_FDS=str(len(high)), LISTEN_PID=str(os.getpid()))
    os.execv(command[0], command)
