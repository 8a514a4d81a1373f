# Set-up and everyday commands. Each target creates .venv on first use and
# re-installs only when pyproject.toml changes (a second run is quick).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

# The main job on the embedded default: predict on a clip generated here.
demo: $(STAMP)
	mkdir -p out
	$(PY) -m videoapp.data.synthetic out/demo.mp4
	$(VENV)/bin/videoapp predict out/demo.mp4 --window-s 2 --stride-s 1

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_mvit.py
	$(PY) benchmarks/bench_hiera.py

clean:
	rm -rf $(VENV) out .bench .pytest_cache
