# `make run` and `make test` work on a fresh Debian machine with Python 3.11:
# each builds .venv from nothing when it is missing or stale.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# System parts the end-to-end tests drive for real (docs/semantics.md §8).
TEST_DEBS := docker-registry skopeo nginx nftables iproute2 squid haproxy libnginx-mod-stream systemd \
             podman runc debootstrap containerd
BENCH_DEBS := squid tinyproxy nginx curl haproxy

.PHONY: setup run test lint typecheck sysdeps bench bench-policy fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/portcullis serve $(ARGS)

# Installs the Debian packages the tests need when run as root; as another
# user it only says which are missing (the tests that need them then fail loudly).
sysdeps:
	@missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages (run as root to install):$$missing"; fi; \
	fi

lint: setup
	$(BIN)/ruff check src tests bench

typecheck: setup
	$(BIN)/mypy --strict src

test: setup sysdeps lint typecheck
	$(BIN)/pytest -q

# Not part of `make test`: the full comparison (docs/semantics.md §9), about 5 minutes.
# BENCH_ARGS passes options to bench/run.py, e.g. BENCH_ARGS="--only bulk".
bench: setup
	@missing=""; for p in $(BENCH_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing:$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages (run as root to install):$$missing"; exit 1; fi; \
	fi
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# Coverage-guided fuzzing of the wire parsers and the keep-alive loop (atheris;
# not in `make test`):
# FUZZ_SECONDS per harness, or FUZZ_RUNS inputs each with FUZZ_SECONDS as a cap;
# FUZZ_HARNESSES="oci proxy_auth" runs only those (tests/fuzz/run_atheris.py);
# the figures go into docs/security.md.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?= 0
FUZZ_HARNESSES ?=
fuzz: setup
	$(BIN)/pip install -q atheris
	$(BIN)/python tests/fuzz/run_atheris.py --seconds $(FUZZ_SECONDS) --runs $(FUZZ_RUNS) $(FUZZ_HARNESSES)

bench-policy: setup
	$(BIN)/python bench/policy_bench.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .mypy_cache .ruff_cache .pytest_cache
