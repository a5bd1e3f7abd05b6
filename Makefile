# Two commands do everything on a fresh machine (Python 3.11+):
#   make demo   - create the virtual environment if missing, then run the offline demo
#   make test   - create the virtual environment if missing, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEPS_HASH := $(shell cat pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.deps-$(DEPS_HASH)
EXTRAS ?= dev,ui,ray,openvino
PYTEST_ARGS ?=

.PHONY: venv demo test bench clean

$(STAMP):
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.deps-*
	@touch $@

# (Re)point the environment's editable xcam at this checkout (cheap; needed when a cached
# environment is reused by another clone, as CI does).
venv: $(STAMP)
	@$(BIN)/python -c "import pathlib, xcam, sys; sys.exit(pathlib.Path(xcam.__file__).resolve().parents[1] != pathlib.Path.cwd().resolve())" 2>/dev/null \
		|| $(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .

demo: venv
	$(BIN)/xcam demo

test: venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: venv
	$(BIN)/xcam bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
