"""I/O: `udskit doctor`: explain why a unix socket address does not work.

`doctor(address)` gathers the facts (`udskit.doctor.gather`, I/O) and hands them to
`diagnose` (`udskit.doctor.diagnose`, pure), which returns an ordered list of checks,
each with a verdict (ok, problem, note, skipped) and the fix. The address works when
the final real connect did (`Diagnosis.connected`).
"""

from __future__ import annotations

from udskit.address import UnixAddress
from udskit.doctor.diagnose import diagnose, may_access, show
from udskit.doctor.facts import (
    CHECK_NAMES,
    Check,
    ConnectFacts,
    Diagnosis,
    Facts,
    FileFacts,
    LsmFacts,
    MountNsFacts,
    NetNsFacts,
    OwnerFacts,
    SocketFacts,
    UserFacts,
    Verdict,
)
from udskit.doctor.gather import gather_facts, real_connect, user_facts
from udskit.doctor.render import diagnosis_lines, diagnosis_to_json
from udskit.socktype import SocketType

__all__ = [
    "CHECK_NAMES",
    "Check",
    "ConnectFacts",
    "Diagnosis",
    "Facts",
    "FileFacts",
    "LsmFacts",
    "MountNsFacts",
    "NetNsFacts",
    "OwnerFacts",
    "SocketFacts",
    "UserFacts",
    "Verdict",
    "diagnose",
    "diagnosis_lines",
    "diagnosis_to_json",
    "doctor",
    "gather_facts",
    "may_access",
    "real_connect",
    "show",
    "user_facts",
]


def doctor(
    address: UnixAddress | str,
    *,
    wanted: SocketType | None = None,
    as_user: str | int | None = None,
    send_test: bool = False,
    timeout: float = 1.0,
) -> Diagnosis:
    """Diagnose `address`: every check in order, ending with one real connect."""
    facts = gather_facts(
        address, wanted=wanted, as_user=as_user, send_test=send_test, timeout=timeout
    )
    return diagnose(facts)
