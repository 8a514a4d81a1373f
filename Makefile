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

# The web UI on the default model (http://127.0.0.1:7860; Ctrl-C stops). out/demo.mp4 is
# a generated clip to drop on the page. DEMO_ARGS adds serve options (--port, --data-dir, --auth ...).
DEMO_ARGS ?=
demo: $(STAMP)
	mkdir -p out
	$(PY) -m videoapp.data.synthetic out/demo.mp4
	@echo "Open the address below in a browser and drop out/demo.mp4 on the Predict page."
	$(VENV)/bin/videoapp serve $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_decode.py
	$(PY) benchmarks/bench_timeline_memory.py
	$(PY) benchmarks/bench_mvit.py
	$(PY) benchmarks/bench_hiera.py
	$(PY) benchmarks/bench_twins.py
	$(PY) benchmarks/bench_eval.py
	$(PY) benchmarks/bench_onnx.py

clean:
	rm -rf $(VENV) out .bench .pytest_cache
