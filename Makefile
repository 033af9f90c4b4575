# Everything a fresh Debian machine with python3 needs, from nothing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The real programs the tests talk to; nobody here wrote them.
PEERS_DEB := socat netcat-openbsd curl redis-server redis-tools tshark tcpdump postgresql iproute2 lsof util-linux gcc strace systemd zsh fish dbus-daemon dbus-bin jq clang llvm libbpf-dev
PEER_BINS := socat nc curl redis-server redis-cli redis-benchmark tshark tcpdump psql ss lsof setpriv unshare chroot gcc systemd-socket-activate zsh fish dbus-daemon dbus-send jq clang

.PHONY: demo test lint typecheck unit peers venv clean docs

demo: venv
	$(BIN)/udskit demo

test: venv peers lint typecheck unit

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev,charts]'
	touch $(STAMP)

# Installs missing peers with apt-get when root; otherwise says what is missing.
peers:
	@missing=""; for b in $(PEER_BINS); do command -v $$b >/dev/null 2>&1 || missing="$$missing $$b"; done; \
	ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing="$$missing postgres"; \
	ldconfig -p 2>/dev/null | grep -q 'libbpf\.so\.1 ' || missing="$$missing libbpf"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing test peers (missing:$$missing)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(PEERS_DEB) >/dev/null; \
	  else echo "missing test peers:$$missing (install: $(PEERS_DEB))"; fi; \
	fi

lint: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: venv
	$(BIN)/mypy

# Four test processes on two cores (pytest-xdist), each taking the next test as it frees
# up (worksteal): most tests wait on real peers, so four keep both cores busy (3 min 09 s
# with two processes, 2 min 38 s with four). Bytecode is written even where the caller's
# environment says not to (PYTHONDONTWRITEBYTECODE): each of the suite's hundreds of
# `udskit` processes would otherwise compile its modules again (0.47 s for a dump start
# instead of 0.20 s). PYTEST_ARGS adds options (tests/soak.sh uses it).
PYTEST_ARGS ?=
unit: venv
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -q -n 4 --dist worksteal $(PYTEST_ARGS)

# The man page and completions are generated from the parsers; a test fails when these
# files lag behind them (run `make docs` after changing an option).
docs: venv
	mkdir -p share/man/man1 share/bash-completion/completions share/zsh/site-functions share/fish/vendor_completions.d
	$(BIN)/udskit manpage > share/man/man1/udskit.1
	$(BIN)/udskit completion bash > share/bash-completion/completions/udskit
	$(BIN)/udskit completion zsh > share/zsh/site-functions/_udskit
	$(BIN)/udskit completion fish > share/fish/vendor_completions.d/udskit.fish

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
