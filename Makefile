# Two commands for a fresh Linux machine: `make run` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, pinned to the CPU wheel, so the range in pyproject never pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv run demo test test-loaded bench soak clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,zenoh]"
	touch $@

venv: $(VENV)/.installed

run: venv
	$(BIN)/sage-runtime $(ARGS)

demo: venv
	$(BIN)/sage-runtime --demo $(ARGS)

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The daemon-level tests with a busy loop pinned to one core (taskset where present): handshakes,
# not sleeps, must carry them on a loaded box (issue 16).
LOADED_TESTS ?= tests/test_daemon_integration.py tests/test_hardening.py tests/test_hardening_state.py \
	tests/test_faults.py tests/test_security.py tests/test_metabolic_daemon.py tests/test_trust_and_state_cli.py
test-loaded: venv
	@PIN=$$(command -v taskset >/dev/null && echo "taskset -c 0"); \
	$$PIN $(BIN)/python -c "while True: pass" & HOG=$$!; \
	$(BIN)/python -m pytest -q $(LOADED_TESTS) $(PYTEST_ARGS); RC=$$?; kill $$HOG; exit $$RC

bench: venv
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

# The 10-minute soak of issue 7 (ARGS="--duration 60" for a short one): benchmarks/results/soak.{json,png}.
soak: venv
	$(BIN)/python benchmarks/soak.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
