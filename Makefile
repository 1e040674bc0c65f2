# The two commands a newcomer needs (see README.md):
#   make lab    create/update .venv and open JupyterLab on notebooks/ (token authentication on)
#   make test   create/update the environments and run everything CI runs
# Environments are (re)installed only when pyproject.toml (or the Colab pins) changed since the
# last install, so a second run goes straight to the work. Nothing is registered globally.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.NOTPARALLEL:

PYTHON ?= python3
VENV ?= .venv
COLAB_VENV ?= .venv-colab
COLAB_CONSTRAINTS := tools/colab-constraints.txt
# The reference implementation for the parity tests (tests_reference/): PyTorch's CPU build and
# Hugging Face transformers, in an environment of their own so the course never needs them.
REF_VENV ?= .venv-ref
REF_REQUIREMENTS := tools/reference-requirements.txt
# Extra pip options for the PyTorch install only, e.g. an index that serves CPU-only wheels on a
# machine where pip would otherwise pick a CUDA build.
TORCH_PIP_ARGS ?=
NOTEBOOKS ?= notebooks

# Notebooks run top to bottom in the environment's own kernel: in full mode (what learners run)
# on the newest versions, in smoke mode (COURSE_FAST=1: same code, tiny sizes) on Colab's pinned
# versions and for the student copies. Two notebooks at a time, one per core.
NBVAL_FLAGS := --nbval-lax --nbval-current-env --nbval-cell-timeout=900 -n 2 --dist loadscope
# Tests spread over both cores (pytest-xdist); XLA compilations are cached on disk per
# environment, so a second run, and the student copies after the notebooks, compile far less.
XDIST := -n 2
jax_cache = JAX_COMPILATION_CACHE_DIR=$(CURDIR)/$(1)/jax-cache JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5
LINT_PATHS = $(wildcard course_lib tests tests_reference tests_browser benchmarks tools notebooks conftest.py)
# These machines run as root; Jupyter refuses root without this flag.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: help env colab-env ref-env lab test test-unit test-reference test-notebooks test-smoke \
	check-notebooks lint test-colab student test-student \
	sync-colab clean-env grade nbgrader-course nbgrader-cells

help:
	@echo "make lab              open JupyterLab on notebooks/ (creates .venv if missing)"
	@echo "make test             everything below"
	@echo "  make check-notebooks  notebooks stored without outputs"
	@echo "  make lint             ruff"
	@echo "  make test-unit        pytest tests/"
	@echo "  make test-reference   parity with PyTorch + transformers, pytest tests_reference/ ($(REF_VENV))"
	@echo "  make test-notebooks   every notebook in full mode: JupyterLab Run All in Chromium"
	@echo "                        (SKIP_BROWSER=1: nbval instead; NOTEBOOKS=dir to pick)"
	@echo "  make test-smoke       every notebook with nbval, smoke mode (COURSE_FAST=1)"
	@echo "  make test-student     student copies (solutions stubbed): JupyterLab Run All in Chromium, smoke mode"
	@echo "                        (SKIP_BROWSER=1: nbval instead)"
	@echo "  make test-colab       unit tests + notebooks (smoke mode) on Colab's versions ($(COLAB_VENV))"
	@echo "make student          write student copies (no solutions) to $(STUDENT_DIR)/"
	@echo "make grade SUBMISSIONS=dir   score dir/<student>/<notebook>.ipynb: $(GRADES) + summary"
	@echo "make nbgrader-course COURSE=dir   an nbgrader course folder with every notebook"
	@echo "make nbgrader-cells   stamp nbgrader's metadata on the exercise and check cells"
	@echo "make sync-colab       update the Colab badges and setup cells of the notebooks"
	@echo "make ref-env          create/update $(REF_VENV) (PyTorch CPU + transformers + course_lib)"
	@echo "make clean-env        remove $(VENV), $(COLAB_VENV) and $(REF_VENV)"

# ---- environments -------------------------------------------------------------------------
NBGRADER_SERVER_EXTENSIONS := $(addprefix nbgrader.server_extensions.,formgrader \
	validate_assignment assignment_list course_list)
env: $(VENV)/.installed
colab-env: $(COLAB_VENV)/.installed
ref-env: $(REF_VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(VENV)/bin/python || { echo "==> creating $(VENV)"; $(PYTHON) -m venv $(VENV); \
		$(VENV)/bin/python -m pip install --quiet --upgrade pip; }
	@echo "==> installing course_lib[dev] into $(VENV)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	@# nbgrader (for grading) comes with JupyterLab panels and server extensions; learners'
	@# JupyterLab stays as it was. An instructor can enable them again with the same commands.
	$(VENV)/bin/jupyter labextension disable --level=sys_prefix @jupyter/nbgrader >/dev/null 2>&1
	$(VENV)/bin/jupyter server extension disable --sys-prefix $(NBGRADER_SERVER_EXTENSIONS) \
		>/dev/null 2>&1
	@touch $@

$(COLAB_VENV)/.installed: pyproject.toml $(COLAB_CONSTRAINTS)
	@test -x $(COLAB_VENV)/bin/python || { echo "==> creating $(COLAB_VENV)"; \
		$(PYTHON) -m venv $(COLAB_VENV); $(COLAB_VENV)/bin/python -m pip install --quiet --upgrade pip; }
	@echo "==> installing course_lib[dev] into $(COLAB_VENV), pinned by $(COLAB_CONSTRAINTS)"
	$(COLAB_VENV)/bin/python -m pip install --quiet -c $(COLAB_CONSTRAINTS) -e ".[dev]"
	@touch $@

# PyTorch is installed first and on its own, pinned exactly, so that pip takes the CPU build (a
# local wheel, or one from TORCH_PIP_ARGS's index, ~750 MB installed) and nothing installed after
# it can pull in the default build with its CUDA libraries.
$(REF_VENV)/.installed: pyproject.toml $(REF_REQUIREMENTS)
	@test -x $(REF_VENV)/bin/python || { echo "==> creating $(REF_VENV)"; \
		$(PYTHON) -m venv $(REF_VENV); $(REF_VENV)/bin/python -m pip install --quiet --upgrade pip; }
	@echo "==> installing PyTorch (CPU), transformers and course_lib into $(REF_VENV)"
	$(REF_VENV)/bin/python -m pip install --quiet $(TORCH_PIP_ARGS) \
		"$$(grep -E '^torch==' $(REF_REQUIREMENTS))"
	$(REF_VENV)/bin/python -m pip install --quiet -r $(REF_REQUIREMENTS) -e .
	@touch $@

clean-env:
	rm -rf $(VENV) $(COLAB_VENV) $(REF_VENV)

# ---- the two commands ---------------------------------------------------------------------
lab: env
	$(VENV)/bin/jupyter lab notebooks/ --ip=127.0.0.1 $(ALLOW_ROOT)

test: check-notebooks lint test-unit test-reference test-notebooks test-student test-colab
	@echo "==> make test: all passed"

# ---- the pieces of `make test` ------------------------------------------------------------
check-notebooks: env
	@echo "==> notebooks stored without outputs"
	$(VENV)/bin/python tools/check_notebooks.py $(NOTEBOOKS)

lint: env
	@echo "==> ruff"
	$(VENV)/bin/python -m ruff check $(LINT_PATHS)

# $(call unit_tests,VENV[,PYTEST_ARGS]) and $(call notebook_tests,VENV,DIR,MODE): shared by the
# latest and Colab runs. MODE is "full" or "smoke" (smoke sets COURSE_FAST=1).
# pytest exits 5 when it collects nothing: fine for a folder while it has no notebooks.
unit_tests = MPLBACKEND=Agg $(call jax_cache,$(1)) $(1)/bin/python -m pytest $(XDIST) --durations=5 $(2) tests

notebook_tests = \
	if ! compgen -G "$(2)/*.ipynb" > /dev/null; then \
		echo "(no notebooks in $(2)/ yet: nothing to run)"; \
	else \
		fast=$(if $(filter smoke,$(3)),1,); \
		echo "COURSE_FAST=$$fast $(1)/bin/python -m pytest $(NBVAL_FLAGS) $(2)"; \
		rc=0; COURSE_FAST=$$fast $(call jax_cache,$(1)) $(1)/bin/python -m pytest $(NBVAL_FLAGS) \
			--durations=5 $(2) || rc=$$?; \
		if [ $$rc -eq 5 ]; then echo "(no notebook cells collected)"; rc=0; fi; \
		exit $$rc; \
	fi

test-unit: env
	@echo "==> unit tests ($(VENV))"
	$(call unit_tests,$(VENV))

# The library against the reference implementation: GPT-2 checkpoints made by transformers load
# into the course's GPT with equal logits and generations; the GPT-2 tokenizer equals HF's.
test-reference: ref-env
	@echo "==> parity with PyTorch + transformers ($(REF_VENV))"
	MPLBACKEND=Agg $(call jax_cache,$(REF_VENV)) $(REF_VENV)/bin/python -m pytest --durations=5 \
		tests_reference

# Every notebook in full mode, as a learner runs it: Run All in JupyterLab (browser_tests below).
# Without a browser (SKIP_BROWSER=1) nbval runs them, with the same rule for errors.
test-notebooks: env
	@$(call browser_or_nbval,notebooks,$(NOTEBOOKS),full,notebooks)

test-smoke: env
	@echo "==> notebooks, smoke mode ($(VENV))"
	@$(call notebook_tests,$(VENV),$(NOTEBOOKS),smoke)

test-colab: colab-env
	@echo "==> unit tests on Colab's versions ($(COLAB_VENV)), without grading a class end to end"
	$(call unit_tests,$(COLAB_VENV),-m "not classroom")
	@echo "==> notebooks, smoke mode, on Colab's versions ($(COLAB_VENV))"
	@$(call notebook_tests,$(COLAB_VENV),$(NOTEBOOKS),smoke)

# Student copies: solutions replaced by stubs (course_lib/student.py). They must still run end to
# end: unfinished exercises are tagged so Run All and nbval carry on past them.
STUDENT_DIR ?= student

# JupyterLab's Run All in headless Chromium (tests_browser/), two notebooks at a time (each
# pytest-xdist worker runs its own JupyterLab; slowest notebooks first). $(1): notebooks or
# student; $(2): full or smoke. An error fails unless its cell is tagged raises-exception, and in
# a student copy a tagged cell may only fail the way an unfinished exercise does. Screenshots:
# build/browser/.
browser_tests = BROWSER_KINDS=$(1) BROWSER_MODE=$(2) BROWSER_NOTEBOOKS_DIR=$(abspath $(NOTEBOOKS)) \
	BROWSER_STUDENT_DIR=$(abspath $(STUDENT_DIR)) \
	$(call jax_cache,$(VENV)) $(VENV)/bin/python -m pytest $(XDIST) --dist worksteal \
	--durations=5 tests_browser

# $(call browser_or_nbval,KIND,DIR,MODE,WHAT): browser_tests over KIND, or with SKIP_BROWSER=1
# nbval over DIR (notebook_tests), in MODE; WHAT names them in the log.
browser_or_nbval = \
	if [ "$${SKIP_BROWSER:-}" = 1 ]; then \
		echo "==> $(4), $(3) mode, nbval (SKIP_BROWSER=1) ($(VENV))"; \
		$(call notebook_tests,$(VENV),$(2),$(3)); \
	else \
		echo "==> $(4), $(3) mode: JupyterLab Run All in Chromium ($(VENV))"; \
		$(call browser_tests,$(1),$(3)); \
	fi

student: env
	$(VENV)/bin/python -m course_lib.student $(NOTEBOOKS) $(STUDENT_DIR)

# The student copies run as a learner first meets them: Run All in JupyterLab. Without a browser
# (SKIP_BROWSER=1) nbval runs them instead, with the same rule for the tagged cells but without
# telling an unfinished exercise from any other error in them.
test-student: student
	@$(call browser_or_nbval,student,$(STUDENT_DIR),smoke,student copies)

# Grading (notebooks/README.md, "Grading"). On a laptop: each submitted notebook runs in smoke
# mode and its checks are scored into $(GRADES) and a per-exercise summary beside it.
SUBMISSIONS ?= submissions
GRADES ?= grades.csv
COURSE ?= nbgrader-course

grade: env
	$(VENV)/bin/python -m course_lib.grade $(SUBMISSIONS) --out $(GRADES)

# With nbgrader: a course folder (nbgrader_config.py, source/<notebook>/<notebook>.ipynb).
nbgrader-course: env
	$(VENV)/bin/python -m course_lib.grading course $(COURSE)

# nbgrader's metadata on the exercise and check cells of notebooks/ (check-notebooks checks it).
nbgrader-cells: env
	$(VENV)/bin/python tools/nbgrader_cells.py

sync-colab: env
	$(VENV)/bin/python tools/sync_colab.py
