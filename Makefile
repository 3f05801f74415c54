# The two commands that matter: `make demo` and `make test`. Each sets up .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	# torch==2.13.0 resolves to the CPU build on local disk; installing it first keeps pip
	# from pulling a multi-GB CUDA build to satisfy the plain `torch>=2.4` requirement.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,bench]'
	# tests/serve/test_browser.py needs a chromium on PATH (Debian's package; root, as in CI, installs it)
	command -v chromium >/dev/null || [ "$$(id -u)" != 0 ] || (apt-get update && apt-get install -y chromium)
	# NADE's fused CPU kernel is built with torch's cpp_extension: g++ and ninja (Debian: g++ ninja-build)
	{ command -v g++ >/dev/null && command -v ninja >/dev/null; } || [ "$$(id -u)" != 0 ] || (apt-get update && apt-get install -y g++ ninja-build)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/genlab demo

test: $(STAMP)
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts
	$(BIN)/lint-imports
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/genlab bench packing
	$(BIN)/genlab bench train

clean:
	rm -rf $(VENV) runs
