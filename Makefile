# trainfleet: `make demo` and `make test` do all set-up on a fresh machine (idempotent).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PKGS := pciutils procps iproute2 nftables iputils-ping slurmctld slurmd slurm-client munge postgresql chromium

.PHONY: demo test bench lint sysdeps venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	# torch pinned exactly: a CPU build is on disk here; a looser range downloads a multi-GB CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" numpy 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q -e ".[torch,web,dev]" 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import trainfleet, torch, typer, sqlalchemy, hypothesis"
	touch $(STAMP)

# System packages from Debian, only what is missing; needs root (CI and these machines run as root).
sysdeps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "not root: please install$$missing" >&2; fi; \
	fi

demo: sysdeps venv
	$(BIN)/trainfleet doctor examples/fleet

test: sysdeps venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: sysdeps venv
	$(BIN)/python benchmarks/doctor_fleet.py --nodes 12500

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples || true

clean:
	rm -rf $(VENV) build dist src/*.egg-info
