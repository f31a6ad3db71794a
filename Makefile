# whitebox: two commands do all set-up on a machine with Python >= 3.11 and pip.
#   make train   -- create .venv, install the library alone, train the default ToST on the digits
#   make test    -- create .venv, install the library with [dev], run pytest, nbval and ruff,
#                   then build the book and read every page in headless Chromium
# Each target installs only what it needs; a stamp file per extra remembers what is installed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
NOTEBOOKS := $(sort $(wildcard notebooks/*.ipynb))
SOLUTIONS := $(sort $(wildcard exercises/solutions/*.ipynb))
# exercises/solutions, not the learner copies: those hold a learner's answers, which make test
# never judges (the copies the build generates are linted by tests/test_build_exercises.py).
LINT_PATHS := whitebox tests scripts benchmarks notebooks exercises/solutions book

.PHONY: all venv venv-lib venv-notebooks venv-book train test lint pytest nbval lab notebooks exercises grade results results-long bench torch demo clean nbval-other-cpu book book-test diagrams

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

$(VENV)/.installed-book: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[book]"
	touch $@ $(VENV)/.installed-lib

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@ $(VENV)/.installed-notebooks $(VENV)/.installed-book $(VENV)/.installed-lib

venv-lib: $(VENV)/.installed-lib
venv-notebooks: $(VENV)/.installed-notebooks
venv-book: $(VENV)/.installed-book
venv: $(STAMP)

# TRAIN_ARGS passes flags on, e.g. make train TRAIN_ARGS=--overwrite (a second run into the same
# folder is refused otherwise: a trained model is never replaced silently)
train: venv-lib
	$(BIN)/python -m whitebox.train $(TRAIN_ARGS)

demo: venv-lib
	$(BIN)/python -m whitebox.demo

test: venv lint pytest nbval book-test

lint: venv
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

pytest: venv
	$(BIN)/python -m pytest -q tests --ignore=tests/test_book.py

# Notebooks draw inline whatever MPLBACKEND the caller has set (Agg would drop every figure).
nbval: venv
	MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/python -m pytest -q -p no:cacheprovider --nbval --nbval-current-env \
		--nbval-sanitize-with notebooks/sanitize.cfg $(NOTEBOOKS) $(SOLUTIONS)

# The course as a static web site in _build/html (index.html): the committed notebooks with their
# stored outputs, nothing executed, nothing downloaded. MATHJAX=cdn loads MathJax from its CDN
# (for a published site); the default serves the local copy, so the site reads offline.
MATHJAX ?= local
book: venv-book
	BOOK_MATHJAX=$(MATHJAX) $(BIN)/python scripts/build_book.py

# Build the book once, then open every page in headless Chromium (tests/test_book.py).
book-test: venv book
	BOOK_HTML=$(CURDIR)/_build/html $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_book.py

# Redraw the diagrams of notebooks/figures/ (scripts/diagrams.py; commit the PNGs).
diagrams: venv-lib
	$(BIN)/python scripts/diagrams.py

# JupyterLab at the repository root, opened on the notebooks' index, so that notebooks/ and
# exercises/ are both reachable. scripts/lab_settings.py first writes the environment's settings
# overrides: Markdown opens rendered (the index shows its tables, formulas and links), no
# "Jupyter news" pop-up. Jupyter refuses to start as root (common in containers and cloud
# notebooks) unless told --allow-root: pass it only when we are root.
lab: venv-notebooks
	$(BIN)/python scripts/lab_settings.py
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/README.md \
		$(if $(filter 0,$(shell id -u)),--allow-root)

# Re-execute every notebook top to bottom in a fresh kernel and commit-ready clean metadata.
notebooks: venv
	MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/python scripts/run_notebooks.py $(NOTEBOOKS) $(SOLUTIONS)

# Regenerate the learner copies of the exercises from the instructor sources. A copy that holds
# a learner's work (answers, outputs) is kept as it is, and said; FORCE=1 moves it to
# exercises/backups/ first and writes the new copy.
exercises: venv
	$(BIN)/python scripts/build_exercises.py $(if $(FORCE),--force)

# Grade learner notebooks: make grade SUBMISSIONS=folder/ [GRADES=grades.csv] [TIMEOUT=60]
# writes the gradebook and one feedback text per notebook in $(GRADES stem)-feedback/.
GRADES ?= grades.csv
grade:
	@if [ -z "$(SUBMISSIONS)" ]; then \
		echo "make grade: SUBMISSIONS is not set; expected a folder of notebooks (make grade SUBMISSIONS=folder/)" >&2; exit 2; fi
	@$(MAKE) --no-print-directory venv-lib
	$(BIN)/python -m whitebox.grade "$(SUBMISSIONS)" --out "$(GRADES)" $(if $(TIMEOUT),--timeout $(TIMEOUT))

# Regenerate every results file and the results table in README.md: every seed is trained
# again. The tuning (results/tuning.json, results/long-tuning.json, the synthetic task's search
# in results/text-mechanism.json) is kept when it was made by the current procedure, grids and
# seeds; RETUNE=1 tunes everything again (about 130 minutes on 2 cores instead of 57).
results: venv results-long
	$(BIN)/python scripts/results.py $(if $(RETUNE),,--reuse-tuning)
	$(BIN)/python scripts/mechanism.py $(if $(RETUNE),,--reuse-tuning)

# The long-sequence experiments of chapter 13 (results/long-*.json; 37 minutes on 2 cores
# with the tuning, 27 without).
results-long: venv
	$(BIN)/python scripts/long_results.py $(if $(RETUNE),,--reuse-tuning)

bench: venv
	$(BIN)/python -m whitebox.bench
	$(BIN)/python scripts/readme_tables.py

# Optional: PyTorch CPU build for the parity tests and the benchmark (never a library dependency).
torch: venv
	$(BIN)/python -m pip install --quiet torch==2.13.0

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build _build *.egg-info

# nbval once more under an OpenBLAS kernel other than this CPU's own (see scripts/other_cpu.py):
# what nbval compares must not depend on the CPU (float32 products round differently per kernel).
nbval-other-cpu: venv
	@kernel=$$($(BIN)/python scripts/other_cpu.py); rc=$$?; \
	if [ $$rc -eq 3 ]; then echo "nbval-other-cpu: skipped (see above)"; exit 0; fi; \
	[ $$rc -eq 0 ] || exit 1; \
	OPENBLAS_CORETYPE=$$kernel $(BIN)/python scripts/other_cpu.py --check $$kernel || exit 1; \
	OPENBLAS_CORETYPE=$$kernel $(MAKE) --no-print-directory nbval
