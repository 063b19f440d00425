# Two commands for a new user on a fresh machine:
#   make demo   the main job end to end on CPU Triton (creates/reuses .venv)
#   make test   the test suite against a real tritonserver (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fer-triton-installed

.PHONY: install demo test test-all bench clean

install: $(STAMP)

# Reuse an existing venv when it is complete; rebuild the install when pyproject.toml changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch/torchvision: the tested pair (a CUDA build that also runs on CPU-only hosts).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -c "import fer_triton.cli, fer_triton.server; fer_triton.server.TritonInstall.find()"
	touch $(STAMP)

demo: install
	$(VENV)/bin/fer-triton demo

# The default run: everything except tests marked slow (full-size ViT-B/32); about 5-15 min.
test: install
	$(VENV)/bin/pytest -q -m "not slow"

test-all: install
	$(VENV)/bin/pytest -q

bench: install
	$(VENV)/bin/fer-triton bench

clean:
	rm -rf build .pytest_cache
