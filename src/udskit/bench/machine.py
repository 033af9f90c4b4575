"""I/O: the facts about this machine that bench numbers depend on.

Numbers without their machine mean little: the kernel, the CPU, how busy the
machine was when the run started, and the socket limits that decide which message
sizes a datagram can carry (read from /proc/sys and measured, see
`transports.message_cap`).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from contextlib import suppress

from udskit.bench.results import Transport


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _read_int(path: str) -> int | None:
    text = _read(path)
    if text is None:
        return None
    with suppress(ValueError):
        return int(text)
    return None


def cpu_model() -> str | None:
    text = _read("/proc/cpuinfo") or ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Processor", "cpu model"):
            return value.strip()
    return platform.processor() or None


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("udskit")
    except PackageNotFoundError:
        return "unknown"


def machine_facts(caps: Mapping[Transport, int], sndbuf: int) -> dict[str, object]:
    """The `machine` object of the JSON report."""
    uname = os.uname()
    load = os.getloadavg()
    return {
        "kernel": f"{uname.sysname} {uname.release}",
        "arch": uname.machine,
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "udskit": _version(),
        "so_sndbuf_default": sndbuf,
        "wmem_default": _read_int("/proc/sys/net/core/wmem_default"),
        "wmem_max": _read_int("/proc/sys/net/core/wmem_max"),
        "max_dgram_qlen": _read_int("/proc/sys/net/unix/max_dgram_qlen"),
        "message_caps": {t.value: cap for t, cap in caps.items()},
    }
