"""Every relay endpoint pair passes the same conformance check (tests/io/relay_conformance.py):
unix, abstract, tcp (127.0.0.1), seqpacket, dgram, exec and stdio, spliced and copied."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Peers
from tests.io.relay_conformance import Pair, check_relay

NO_SPLICE = ("--no-splice",)
TCP_FRONT = "tcp-listen:127.0.0.1:{port}"
TCP_BACK = "tcp:127.0.0.1:{back_port}"

PAIRS = [
    Pair("unix-unix", "stream", "unix-listen:{front}", "unix:{back}"),
    Pair("unix-unix-copy", "stream", "unix-listen:{front}", "unix:{back}", options=NO_SPLICE),
    Pair("abstract-abstract", "stream", "abstract-listen:{name}", "abstract:{name}"),
    Pair("tcp-tcp", "stream", TCP_FRONT, TCP_BACK, judge_kind="tcp"),
    Pair("unix-tcp", "stream", "unix-listen:{front}", TCP_BACK, judge_kind="tcp"),
    Pair("tcp-unix-copy", "stream", TCP_FRONT, "unix:{back}", options=NO_SPLICE),
    Pair(
        "seqpacket",
        "records",
        "seqpacket:unix-listen:{front}",
        "seqpacket:unix:{back}",
        judge_kind="seqpacket",
    ),
    Pair("dgram", "datagrams", "unix-recvfrom:{front}", "unix-sendto:{back}", far="dgram-echo"),
    Pair("unix-exec", "stream", "unix-listen:{front}", "exec:cat", far="exec", resets=False),
    Pair(
        "unix-socat-nc",
        "stream",
        "unix-listen:{front}",
        "unix:{back}",
        far="socat-echo",
        client="nc",
    ),
    Pair("tcp-socat-nc", "stream", TCP_FRONT, "unix:{back}", far="socat-echo", client="nc"),
    Pair("stdio-unix", "stream", "-", "unix:{back}"),
    Pair("unix-stdio", "stream", "unix:{back}", "-"),
    Pair("exec-unix", "stream", "exec:CLIENT", "unix:{back}"),
]


@pytest.mark.parametrize("pair", PAIRS, ids=lambda p: p.name)
def test_relay_conformance(pair: Pair, peers: Peers, sockdir: Path) -> None:
    check_relay(pair, peers, sockdir)
