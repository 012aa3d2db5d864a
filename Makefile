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
	$(BIN)/pip install -q -e ".[export,signals,test,serve,mobile,mobile-build]" "torch==2.13.0"
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/amnet-deploy pipeline --output reports/latest

# The layering contracts first (seconds), then the suite; where the CPU has more than AVX2 (bf16, AMX), the tests
# whose expectations depend on the ISA run again under AVX2 kernels, so one machine checks both paths.
MORE_THAN_AVX2 := $(BIN)/python -c 'from amnet.core.cpu import isa_name; raise SystemExit(isa_name() in ("AVX2", "SSE/AVX"))'
test: $(STAMP)
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q
	if $(MORE_THAN_AVX2); then ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q -m isa -p no:cacheprovider; \
	else echo "ISA-dependent tests: this CPU has AVX2 at most, nothing more to check under ONEDNN_MAX_CPU_ISA=AVX2"; fi

# The models built once (every core), the parity gate on them (the speed bars count only variants that pass), the
# suites as the CPU is, then (where it has more than AVX2) eager and OpenVINO under AVX2 kernels, then the issue
# bars judged from all of it (reports/bench/bars.md). BENCH_CPUS=14,15 pins the gate and the suites to two cores
# of a bigger machine (taskset), as the bars ask.
BENCH_OUT ?= reports/bench
BENCH_CPUS ?=
PIN := $(if $(BENCH_CPUS),taskset -c $(BENCH_CPUS))
BENCH := AMNET_BENCH_MODELS=$(BENCH_OUT)/models $(PIN) $(BIN)/python -m pytest benchmarks/test_speed.py -q -p no:cacheprovider --benchmark-only --benchmark-enable --benchmark-columns=median,iqr,ops -o addopts=""
bench: $(STAMP)
	mkdir -p $(BENCH_OUT) && rm -rf $(BENCH_OUT)/models $(BENCH_OUT)/avx2.json $(BENCH_OUT)/bars.* $(BENCH_OUT)/parity_*
	$(BIN)/python -m benchmarks.bench_models $(BENCH_OUT)/models
	for r in 256 128; do $(PIN) $(BIN)/amnet-deploy parity --build $(BENCH_OUT)/models/r$$r --resolution $$r \
	  --only openvino-fp16,openvino-int8 --quiet --report $(BENCH_OUT)/parity_$$r || echo "parity at $$r² failed: see $(BENCH_OUT)/parity_$$r"; done
	$(BENCH) --benchmark-json=$(BENCH_OUT)/native.json
	if $(MORE_THAN_AVX2); then \
	  ONEDNN_MAX_CPU_ISA=AVX2 $(BENCH) -k "eager or openvino" --benchmark-json=$(BENCH_OUT)/avx2.json; fi
	$(BIN)/python -m benchmarks.bars $(BENCH_OUT)

clean:
	rm -rf $(VENV) $(VENV)-gate reports build *.egg-info
