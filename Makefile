# Two commands do all the set-up: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch first, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q "torch==2.13.0" || $(BIN)/pip install -q "torch>=2.6,<2.14" --index-url https://download.pytorch.org/whl/cpu
	$(BIN)/pip install -q -e ".[export,signals,test]"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/amnet-deploy pipeline --output reports/latest

# The layering contracts first (seconds), then the suite.
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks/test_speed.py -q -p no:cacheprovider --benchmark-only --benchmark-enable --benchmark-columns=median,iqr,ops -o addopts=""

clean:
	rm -rf $(VENV) $(VENV)-gate reports build *.egg-info
