# Two commands for a new user on a fresh machine:
#   make demo   the main job end to end on CPU Triton (creates/reuses .venv)
#   make test   the test suite against a real tritonserver (what CI runs)
# Both build the wheel and install it (not editable) into .venv: the wheel is what runs and is tested.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.fer-triton-installed
DIST   := dist
# What the light-venv test of tests/test_packaging.py installs from, without network at test time.
CLIENT_WHEELS := $(VENV)/share/fer-triton/client-wheels
# -I: run from any folder without the source tree's fer_triton/ (which lacks the mapped sub-packages)
# shadowing the installed package.
PYI    := $(PY) -I
# Tests run against the installed wheel: conftest checks that fer_triton comes from site-packages;
# PYTHONSAFEPATH keeps `python -m fer_triton` subprocesses started in the repo root from importing the
# source tree instead; the light-venv test installs this wheel.
TEST_ENV = FER_TRITON_TEST_INSTALLED=1 PYTHONSAFEPATH=1 FER_TRITON_WHEEL="$(abspath $(wildcard $(DIST)/fer_triton-*.whl))"

.PHONY: install wheel project develop demo test test-all bench clean

install: $(STAMP)

# Reuse an existing venv when it is complete; install the dependencies again when pyproject.toml or
# this Makefile changes. The project itself is reinstalled from a fresh wheel by `project`.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# torch/torchvision: the tested pair (a CUDA build that also runs on CPU-only hosts).
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(MAKE) --no-print-directory wheel
	$(PY) -m pip install --quiet "$$(ls $(DIST)/fer_triton-*.whl)[all,test]"
	# The client-only install's packages, for the light-venv test (no network while testing).
	rm -rf $(CLIENT_WHEELS)
	$(PY) -m pip download --quiet -d $(CLIENT_WHEELS) "$$(ls $(DIST)/fer_triton-*.whl)[client]"
	rm -f $(CLIENT_WHEELS)/fer_triton-*.whl
	# NVIDIA's perf_analyzer (from the tritonclient 2.51.0 wheel) into the venv: benchmarks and tests
	# never download at run time.
	$(PYI) -m fer_triton.benchmarks.perf_analyzer
	$(PYI) -c "import fer_triton.cli, fer_triton.server; fer_triton.server.TritonInstall.find()"
	# The Mosquitto MQTT broker for tests/test_mqtt.py (Debian's package, as root where apt-get works; the
	# tests start their own broker on a loopback port and skip, saying why, without it). Never fails the install.
	@command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1 || \
	      { apt-get update -qq >/dev/null 2>&1 && \
	        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null 2>&1; }; }; } || \
	  echo "note: the mosquitto broker is not installed (tests/test_mqtt.py will skip): apt-get install mosquitto"
	touch $(STAMP)

# The wheel from the current sources, built in-tree without stale build output (setuptools would
# otherwise carry deleted modules over from build/lib).
wheel:
	rm -rf build/lib build/bdist.* fer_triton.egg-info $(DIST)/fer_triton-*.whl
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w $(DIST) .

# The project itself, reinstalled from a fresh wheel (cheap: no dependencies).
project: install wheel
	$(PY) -m pip install --quiet --no-deps --force-reinstall $(DIST)/fer_triton-*.whl
	$(PYI) -c "import fer_triton.cli, fer_triton.export, fer_triton.clip_loader"

# For working on the code: the same venv with an editable install (`make test` replaces it again).
develop: install
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .

demo: project
	$(VENV)/bin/fer-triton demo

# The default run: everything except tests marked slow (full-size ViT-B/32); about 15 min on 2 cores.
test: project
	$(TEST_ENV) $(VENV)/bin/pytest -q -m "not slow"

test-all: project
	$(TEST_ENV) $(VENV)/bin/pytest -q

bench: project
	$(VENV)/bin/fer-triton bench

# The one-shot GPU check (benchmarks/gpu_check.py, docs/gpu.md): PyTorch CUDA and the pip-only GPU server,
# one table, under 8 minutes, no network once installed. GPU_CHECK_ARGS=--dry-run rehearses it on the CPU.
# On a lent machine without this venv: scripts/gpu_check_device.sh.
.PHONY: gpu-check
gpu-check: project
	$(VENV)/bin/fer-triton gpu-check $(GPU_CHECK_ARGS)

clean:
	rm -rf build $(DIST) .pytest_cache
