"""Capturing unix socket traffic: `Capture` (session.py) is the library's way in.

Imported lazily, so that `udskit dump -r` and the pure modules here do not pull in
the engines."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from udskit.capture.session import Capture, CaptureStats

__all__ = ["Capture", "CaptureStats"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from udskit.capture import session

        return getattr(session, name)
    raise AttributeError(f"module 'udskit.capture' has no attribute {name!r}")
