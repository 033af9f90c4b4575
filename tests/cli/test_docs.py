"""The man page and the completions: current with the parsers, and working in the real
programs (man, bash)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, UDSKIT

GENERATED = {
    "share/man/man1/udskit.1": ["manpage"],
    "share/bash-completion/completions/udskit": ["completion", "bash"],
    "share/zsh/site-functions/_udskit": ["completion", "zsh"],
    "share/fish/vendor_completions.d/udskit.fish": ["completion", "fish"],
}


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_the_shipped_file_is_what_the_parsers_say(path: str) -> None:
    made = subprocess.run([*UDSKIT, *GENERATED[path]], capture_output=True, check=False)
    assert made.returncode == 0, made.stderr.decode()
    shipped = (ROOT / path).read_bytes()
    assert shipped == made.stdout, f"{path} is stale: run `make docs`"


def test_man_renders_every_command_without_warnings() -> None:
    if shutil.which("man") is None:
        pytest.skip("man (man-db) is not installed")
    page = ROOT / "share/man/man1/udskit.1"
    shown = subprocess.run(
        ["man", "--warnings", "-l", str(page)],
        capture_output=True,
        check=False,
        env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"},
    )
    assert shown.returncode == 0 and shown.stderr == b"", shown.stderr.decode()
    text = shown.stdout.decode()
    for command in ("listen", "connect", "send", "relay", "dump", "ls", "doctor", "bench"):
        assert f"\n   {command}\n" in text, command
    assert "--allow-uid" in text and "exit statuses" in text


def _complete(words: list[str]) -> list[str]:
    script = ROOT / "share/bash-completion/completions/udskit"
    quoted = " ".join(f"'{w}'" for w in words)
    program = (
        f"source {script}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
        '_udskit; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", program], capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().split()


def test_bash_completes_commands_options_and_choices() -> None:
    assert _complete(["udskit", "re"]) == ["relay"]
    assert "--allow-uid" in _complete(["udskit", "listen", "--al"])
    assert _complete(["udskit", "listen", "--type", "seq"]) == ["seqpacket"]
    assert _complete(["udskit", "completion", "fi"]) == ["fish"]


def test_syntax_of_zsh_and_fish_scripts(tmp_path: Path) -> None:
    checked = 0
    for shell, path in (("zsh", "_udskit"), ("fish", "udskit.fish")):
        if shutil.which(shell) is None:
            continue
        found = next((ROOT / "share").rglob(path))
        result = subprocess.run([shell, "-n", str(found)], capture_output=True, check=False)
        assert result.returncode == 0, result.stderr.decode()
        checked += 1
    if not checked:
        pytest.skip("neither zsh nor fish is installed to check their scripts' syntax")
