# The two set-up commands of the README: `make demo` (main job on built-in data) and `make test`.
# Each creates .venv on first use, installs the CPU torch wheel FIRST (a bare `torch` requirement
# would otherwise pull GBs of CUDA wheels), then rtseg itself.
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.rtseg-installed

.PHONY: demo test test-all lint install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rtseg demo --out runs/demo

# Test modules that run OpenVINO (all of tests/deploy: backend="auto" picks OpenVINO) go in their own process: after OpenVINO inference, later PyTorch
# training in the same process was seen to crash (heap corruption; docs/deploy.md, "Known issues").
OV_TESTS := tests/deploy
OV_IGNORE := $(foreach t,$(OV_TESTS),--ignore=$(t))

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(OV_IGNORE)
	$(PY) -m pytest -q -m "not slow" $(OV_TESTS)

test-all: $(STAMP)
	$(PY) -m pytest -q $(OV_IGNORE)
	$(PY) -m pytest -q $(OV_TESTS)

lint: $(STAMP)
	$(VENV)/bin/ruff check rtseg tests

clean:
	rm -rf $(VENV) runs .pytest_cache
