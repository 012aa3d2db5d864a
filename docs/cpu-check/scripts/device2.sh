#!/usr/bin/env bash
# Second device call: the FP16 variant with bf16 float parts (the policy fix), and the native suites twice, pinned
# away from CPU 0, to see how much the 128² figure moves between runs.
set -u
START=$(date +%s); left() { echo $((450 - ($(date +%s) - START))); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
grep -m1 'model name' /proc/cpuinfo; grep -m1 -E '^model\s' /proc/cpuinfo; nproc
mkdir -p /tmp/site && tar -xJf .dev/ov_trim.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl || echo "INSTALL FAILED"
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
python3 -c "from amnet.core.cpu import isa, isa_name, float_precision; print('amnet isa:', isa_name(isa()), 'fp16 floats:', float_precision('fp16'))"
echo "== build ($(left) s left)"; time timeout 200 python3 -m benchmarks.bench_models /tmp/bm
BENCH=(python3 -m pytest benchmarks/test_speed.py -q -p no:cacheprovider --benchmark-only --benchmark-enable --benchmark-columns=median,iqr,ops -o addopts= -k "eager or openvino")
for run in a b; do
  CPUS=$(python3 .dev/pick_cpus.py $([ $run = a ] && echo last)); echo "== native $run on CPUs $CPUS, load $(cat /proc/loadavg) ($(left) s left)"
  AMNET_BENCH_MODELS=/tmp/bm timeout 150 taskset -c "$CPUS" "${BENCH[@]}" --benchmark-json="$OUT/native_$run.json" | grep -E "^test_|passed|failed|error"
  mkdir -p /tmp/bars_$run && cp "$OUT/native_$run.json" /tmp/bars_$run/native.json && python3 -m benchmarks.bars /tmp/bars_$run | grep "^| 14"
done
echo "== gate ($(left) s left)"; timeout 120 taskset -c "$(python3 .dev/pick_cpus.py last)" python3 .dev/gate.py "$OUT" /tmp/bm
echo "== done in $(( $(date +%s) - START )) s"
