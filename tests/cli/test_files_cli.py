"""The file commands in-process: output formats, progress bar only on a terminal, usage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from udskit.cli import main
from udskit.cli.env import Env, ExitStatus
from udskit.endpoints import open_listener
from udskit.files import FileServer


@pytest.fixture
def served(tmp_path: Path, abstract_name: str) -> Iterator[Path]:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "a.txt").write_bytes(b"alpha\n")
    (root / "odd\x1bname").write_bytes(b"")
    with FileServer(open_listener(abstract_name), root).start():
        yield root


def test_get_json_and_no_bar_without_a_terminal(
    served: Path, tmp_path: Path, abstract_name: str
) -> None:
    env = Env.in_memory()
    out = tmp_path / "a.txt"
    assert main(["get", abstract_name, "dir/a.txt", str(out), "--json"], env) == ExitStatus.OK
    record = json.loads(env.stdout.getvalue())  # type: ignore[attr-defined]
    assert record == {
        "remote": "dir/a.txt",
        "local": str(out),
        "size": 6,
        "sha256": hashlib.sha256(b"alpha\n").hexdigest(),
    }
    assert env.stderr.getvalue() == ""  # type: ignore[attr-defined]


def test_a_bar_on_a_terminal(served: Path, tmp_path: Path, abstract_name: str) -> None:
    env = Env.in_memory()
    env.stderr_isatty = True
    assert main(["get", abstract_name, "dir/a.txt", str(tmp_path / "x")], env) == ExitStatus.OK
    assert "get dir/a.txt" in env.stderr.getvalue()  # type: ignore[attr-defined]


def test_put_then_list_as_table_and_json(served: Path, tmp_path: Path, abstract_name: str) -> None:
    (tmp_path / "up").write_bytes(b"12345")
    assert main(["put", abstract_name, str(tmp_path / "up"), "dir/up"], Env.in_memory()) == 0
    env = Env.in_memory()
    assert main(["files", abstract_name, "dir"], env) == ExitStatus.OK
    lines = env.stdout.getvalue().decode().splitlines()  # type: ignore[attr-defined]
    assert [line.split()[-1] for line in lines] == ["a.txt", "up"]
    assert lines[1].startswith("-rw") and " 5 " in lines[1]
    env = Env.in_memory()
    assert main(["files", abstract_name, "--json"], env) == ExitStatus.OK
    objects = [json.loads(x) for x in env.stdout.getvalue().splitlines()]  # type: ignore[attr-defined]
    assert {o["name"]: o["kind"] for o in objects} == {"dir": "directory", "odd\\x1bname": "file"}


def test_a_refusal_is_one_line_and_exit_1(served: Path, abstract_name: str) -> None:
    env = Env.in_memory()
    assert main(["get", abstract_name, "../etc/passwd"], env) == ExitStatus.FAILED
    assert env.stderr.getvalue() == (  # type: ignore[attr-defined]
        f"udskit get: {abstract_name}: ../etc/passwd: `..` is refused; "
        "the server never leaves its root\n"
    )


def test_bad_sizes_and_missing_roots_are_usage_errors(tmp_path: Path, abstract_name: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve-files", abstract_name, "--root", str(tmp_path), "--max-size", "lots"])
    assert info.value.code == ExitStatus.USAGE
    env = Env.in_memory()
    status = main(["serve-files", abstract_name, "--root", str(tmp_path / "nope")], env)
    assert status == ExitStatus.USAGE
    assert "give an existing directory" in env.stderr.getvalue()  # type: ignore[attr-defined]
