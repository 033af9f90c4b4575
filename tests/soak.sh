#!/usr/bin/env bash
# Soak the test suite: run it N times from a fresh clone and print the failures per test.
#
#   tests/soak.sh 30            # 30 runs on a quiet machine
#   tests/soak.sh 30 --hog 10   # 30 runs, the last 10 with a busy loop pinned to another CPU
#
# A flaky test is a bug with a root cause: this script finds them, it never retries one.
# The clone is of HEAD (commit first); it gets its own .venv, set up once with `make venv`.
# Exit status: 0 when every run was green, 1 otherwise.
set -euo pipefail

usage() { echo "usage: tests/soak.sh N [--hog K] [--keep]" >&2; exit 2; }
[ $# -ge 1 ] || usage
runs=$1; shift
hog_runs=0
keep=0
while [ $# -gt 0 ]; do
  case $1 in
    --hog) [ $# -ge 2 ] || usage; hog_runs=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) usage ;;
  esac
done
[[ $runs =~ ^[0-9]+$ && $hog_runs =~ ^[0-9]+$ && $runs -ge 1 && $hog_runs -le $runs ]] || usage

top=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d /tmp/udskit-soak.XXXXXX)
hog_pid=""
run_pid=""
cleanup() {
  # The run is in its own session: stop it by its group. Its tests' peers sit in their
  # own sessions and are stopped by the tests' teardown, so that gets up to 30 s
  # before the KILL (after 2 s, a soak stopped mid-run had left a redis-server behind).
  if [ -n "$run_pid" ]; then
    kill -INT -- "-$run_pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 -- "-$run_pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$run_pid" 2>/dev/null || true
  fi
  if [ -n "$hog_pid" ]; then kill "$hog_pid" 2>/dev/null || true; wait "$hog_pid" 2>/dev/null || true; fi
  if [ "$keep" = 0 ]; then rm -rf "$work"; else echo "kept: $work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Each failing test of one run: its name, then the end of its report (the assertion and
# what the test printed), indented; the end of the log if the run wrote no report.
show_failures() {
  python3 - "$1" "$2" <<'PY'
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

report, log = Path(sys.argv[1]), Path(sys.argv[2])
if not report.exists():
    lines = log.read_text(errors="replace").splitlines()[-40:]
    print("\n".join("    | " + line for line in lines))
    sys.exit(0)
for case in ET.parse(report).iter("testcase"):
    for kind in ("failure", "error"):
        found = case.find(kind)
        if found is None:
            continue
        print(f"  {kind}: {case.get('classname')}::{case.get('name')}")
        text = (found.text or found.get("message") or "").splitlines()[-60:]
        for stream in ("system-out", "system-err"):
            extra = case.find(stream)
            if extra is not None and extra.text:
                text += [f"-- {stream}"] + extra.text.splitlines()[-20:]
        print("\n".join("    | " + line for line in text))
PY
}

git clone -q "$top" "$work/udskit"
cd "$work/udskit"
echo "soak: $runs runs of $(git log -1 --format='%h %s') in $work/udskit"
make -s venv peers >"$work/setup.log" 2>&1 || { cat "$work/setup.log"; exit 1; }

# The busy loop sits on the last CPU; the suite may run anywhere.
hog_cpu=$(( $(nproc) - 1 ))
green=0
for i in $(seq 1 "$runs"); do
  hog=""
  if [ "$i" -gt $(( runs - hog_runs )) ]; then
    taskset -c "$hog_cpu" sh -c 'while :; do :; done' &
    hog_pid=$!
    hog=" (busy loop on CPU $hog_cpu)"
  fi
  start=$(date +%s)
  # In the background and waited for, so that Ctrl-C or SIGTERM reach the traps at once.
  # `make unit` is what `make test` runs (same processes, same options).
  setsid make -s unit PYTEST_ARGS="-p no:cacheprovider -o junit_logging=out-err --junitxml=$work/run-$i.xml" >"$work/run-$i.log" 2>&1 &
  run_pid=$!
  if wait "$run_pid"; then
    green=$(( green + 1 )); verdict=green
  else
    verdict=FAILED
  fi
  run_pid=""
  if [ -n "$hog_pid" ]; then kill "$hog_pid"; wait "$hog_pid" 2>/dev/null || true; hog_pid=""; fi
  echo "run $i/$runs: $verdict in $(( $(date +%s) - start )) s$hog: $(tail -n 1 "$work/run-$i.log")"
  # What failed, and why, goes in this script's output: the clone (and its logs) is
  # removed at the end unless --keep.
  if [ "$verdict" = FAILED ]; then show_failures "$work/run-$i.xml" "$work/run-$i.log"; fi
done

echo "soak: $green of $runs runs green"
python3 - "$work" "$runs" <<'PY'
import collections
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

work, runs = Path(sys.argv[1]), int(sys.argv[2])
failures: collections.Counter[str] = collections.Counter()
for i in range(1, runs + 1):
    path = work / f"run-{i}.xml"
    if not path.exists():
        failures["(the run wrote no report)"] += 1
        continue
    for case in ET.parse(path).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failures[f"{case.get('classname')}::{case.get('name')}"] += 1
for name, count in failures.most_common():
    print(f"  {count:3d} of {runs}  {name}")
PY
[ "$green" -eq "$runs" ]
