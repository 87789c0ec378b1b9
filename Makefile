# trainfleet: `make demo` and `make test` do all set-up on a fresh machine (idempotent).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_PKGS := pciutils dmidecode procps iproute2 nftables iputils-ping slurmctld slurmd slurm-client munge postgresql chromium

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

# The main job: train the GPT demo on 2 logical nodes, then go on from its checkpoint (resume), then the doctor.
# The venv goes first on PATH so the job's `python` is the one with torch.
RUNENV := PATH="$(CURDIR)/$(BIN):$$PATH"
demo: sysdeps venv
	rm -rf runs/gpt-demo/ckpt
	$(RUNENV) $(BIN)/trainfleet run examples/gpt/job.yaml
	@echo "--- again, 100 more steps: it resumes from the newest checkpoint ---"
	$(RUNENV) $(BIN)/trainfleet run examples/gpt/job.yaml \
	  --set 'command=[python, examples/gpt/train.py, --steps, "500", --ckpt-every, "50", --eval-every, "100"]'
	$(RUNENV) $(BIN)/trainfleet list
	@echo "--- the fleet doctor on the sample fleet (one planted fault; exit 1 means it found it) ---"
	$(RUNENV) $(BIN)/trainfleet doctor examples/fleet || [ $$? -eq 1 ]

test: sysdeps venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

bench: sysdeps venv
	$(BIN)/python benchmarks/doctor_fleet.py --nodes 12500
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/launch.py
	$(BIN)/python benchmarks/ui_load.py

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples || true

clean:
	rm -rf $(VENV) build dist src/*.egg-info
