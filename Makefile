# whitebox: two commands do all set-up on a machine with Python >= 3.11 and pip.
#   make train   -- create .venv, install the library alone, train the default ToST on the digits
#   make test    -- create .venv, install the library with [dev], run pytest, nbval and ruff
# Each target installs only what it needs; a stamp file per extra remembers what is installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
SOLUTIONS := $(sort $(wildcard exercises/solutions/*.ipynb))
LINT_PATHS := whitebox tests scripts benchmarks notebooks exercises

.PHONY: all venv venv-lib venv-notebooks train test lint pytest nbval lab notebooks exercises results results-long bench torch demo clean nbval-other-cpu

all: test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# the library alone (what it imports), then with the notebooks' extra, then with the dev tools
$(VENV)/.installed-lib: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-notebooks: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[notebooks]"
	touch $@ $(VENV)/.installed-lib

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-notebooks $(VENV)/.installed-lib

venv-lib: $(VENV)/.installed-lib
venv-notebooks: $(VENV)/.installed-notebooks
venv: $(STAMP)

train: venv-lib
	$(BIN)/python -m whitebox.train

demo: venv-lib
	$(BIN)/python -m whitebox.demo

test: venv lint pytest nbval

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

pytest: venv
	$(BIN)/python -m pytest -q tests

# Notebooks draw inline whatever MPLBACKEND the caller has set (Agg would drop every figure).
nbval: venv
	MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/python -m pytest -q -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg $(NOTEBOOKS) $(SOLUTIONS)

# JupyterLab at the repository root, opened on the notebooks' index, so that notebooks/ and
# exercises/ are both reachable. Jupyter refuses to start as root (common in containers and
# cloud notebooks) unless told --allow-root: pass it only when we are root.
lab: venv-notebooks
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/README.md \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# Re-execute every notebook top to bottom in a fresh kernel and commit-ready clean metadata.
notebooks: venv
	MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/python scripts/run_notebooks.py $(NOTEBOOKS) $(SOLUTIONS)

# Regenerate the learner copies of the exercises from the instructor sources.
exercises: venv
	$(BIN)/python scripts/build_exercises.py

# Regenerate the results table in README.md (trains every configuration; takes a while).
results: venv results-long
	$(BIN)/python scripts/results.py

# The long-sequence experiments of chapter 13 (results/long-*.json; about 11 minutes on 2 idle cores).
results-long: venv
	$(BIN)/python scripts/long_results.py

bench: venv
	$(BIN)/python -m whitebox.bench
	$(BIN)/python scripts/readme_tables.py

# Optional: PyTorch CPU build for the parity tests and the benchmark (never a library dependency).
torch: venv
	$(BIN)/python -m pip install --quiet torch==2.13.0

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info

# nbval once more under an OpenBLAS kernel other than this CPU's own (see scripts/other_cpu.py):
# what nbval compares must not depend on the CPU (float32 products round differently per kernel).
nbval-other-cpu: venv
	@kernel=$$($(BIN)/python scripts/other_cpu.py); rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "nbval-other-cpu: skipped (see above)"; exit 0; fi; \
	[ $$rc -eq 0 ] || exit 1; \
	OPENBLAS_CORETYPE=$$kernel $(BIN)/python scripts/other_cpu.py --check $$kernel || exit 1; \
	OPENBLAS_CORETYPE=$$kernel $(MAKE) --no-print-directory nbval
