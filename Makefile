# `make run` and `make test` set up the virtualenv they need, then run.
PYTHON ?= python3
VENV := .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# Rules call `python -m a2d`: put the virtualenv first on PATH for them.
export PATH := $(BIN):$(PATH)

.PHONY: run test bench venv dry-run clean deepspeed-ops gpu-wheels gpu-check

run: $(STAMP)
	snakemake --profile workflow/profiles/local

test: $(STAMP)
	python -m pytest -q

# Speed and memory against fairseq (set up in its own venv under benchmarks/work) and the hardware.
DATA ?= ../shared/data
bench: $(STAMP)
	python -m benchmarks --data "$(DATA)"

# The GPU check (docs/speed.md#the-gpu-check): `make gpu-wheels` where pip works, then on the GPU
# machine, with .whl/ beside the working tree, `make gpu-check` (it needs no virtualenv there).
gpu-wheels: $(STAMP)
	python -m benchmarks.wheels --out .whl

gpu-check:
	bash benchmarks/gpu_check.sh .whl

dry-run: $(STAMP)
	snakemake --profile workflow/profiles/local --dry-run

venv: $(STAMP)

# Order matters: torch first (pinned, so pip takes the CPU wheel where one is cached locally and
# never resolves an unpinned CUDA build), then the pinned requirements, then deepspeed without
# build isolation so that it builds against this torch, then COMET without its stale pins
# (requirements-comet.txt says why).
$(STAMP): requirements.txt requirements-comet.txt constraints.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet pip==25.3
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-build-isolation deepspeed==0.19.8 -c constraints.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-comet.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(MAKE) --no-print-directory deepspeed-ops
	touch $(STAMP)

# DeepSpeed compiles its CPU shared-memory op the first time a process starts on CPU (about a minute,
# two compilers of 1.5 GB each; kept in the virtualenv): done here, not by the first training job
# (where it would also show in that job's Snakemake benchmark file).
deepspeed-ops:
	$(BIN)/python -W ignore -c "from a2d.launch import build_cpu_ops; build_cpu_ops()"

clean:
	rm -rf $(VENV) .snakemake
