#!/usr/bin/env bash
# One device call: issue 14's CPU bars on this machine's own CPU (if it has AVX512-BF16 or AMX), then the GPU re-check.
set -u
START=$(date +%s); left() { echo $((570 - ($(date +%s) - START))); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
echo "== machine"; nproc; grep -m1 'model name' /proc/cpuinfo; grep -m1 -E '^(cpu family|model)\s' /proc/cpuinfo
grep -m1 -o -w -E 'avx2|avx512f|avx512_bf16|avx512_vnni|amx_tile|amx_bf16|amx_int8|avx_vnni|avx512_fp16' /proc/cpuinfo | sort | uniq -c
grep -m1 -o -w -E 'avx512_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' '; echo
for c in 0 1 2 8; do echo "cpu$c siblings $(cat /sys/devices/system/cpu/cpu$c/topology/thread_siblings_list 2>/dev/null) core $(cat /sys/devices/system/cpu/cpu$c/topology/core_id 2>/dev/null)"; done
nvidia-smi -L; python3 -V
[ -n "${SKIP_INSTALL:-}" ] || { mkdir -p /tmp/site && tar -xJf .dev/ov_trim.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl || echo "INSTALL FAILED"; }
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
python3 -c "from amnet.core.cpu import isa, isa_name; print('amnet isa:', isa_name(isa()), isa())"
CPUS=$(python3 .dev/pick_cpus.py); echo "pinned CPUs: $CPUS"
if [ -n "${FORCE_CPU:-}" ] || grep -q -w -E 'avx512_bf16|amx_tile' /proc/cpuinfo; then
  echo "== build ($(left) s left)"; time timeout 240 python3 -m benchmarks.bench_models ${BM:-/tmp/bm}
  BENCH=(python3 -m pytest benchmarks/test_speed.py -q -p no:cacheprovider --benchmark-only --benchmark-enable --benchmark-columns=median,iqr,ops -o addopts= -k "eager or openvino")
  echo "== native ($(left) s left)"; AMNET_BENCH_MODELS=${BM:-/tmp/bm} timeout 200 taskset -c "$CPUS" "${BENCH[@]}" --benchmark-json="$OUT/native.json"
  echo "== gate ($(left) s left)"; timeout 150 taskset -c "$CPUS" python3 .dev/gate.py "$OUT" ${BM:-/tmp/bm}
  echo "== avx2 ($(left) s left)"; ONEDNN_MAX_CPU_ISA=AVX2 AMNET_BENCH_MODELS=${BM:-/tmp/bm} timeout $(( $(left) - 120 > 60 ? $(left) - 120 : 60 )) taskset -c "$CPUS" "${BENCH[@]}" --benchmark-json="$OUT/avx2.json"
  mkdir -p /tmp/bars && cp "$OUT"/native.json "$OUT"/avx2.json /tmp/bars/ 2>/dev/null; python3 -m benchmarks.bars /tmp/bars
else
  echo "no AVX512-BF16/AMX on this CPU: CPU bars not judged here"
fi
echo "== gpu ($(left) s left)"
if [ "$(left)" -gt 100 ]; then timeout $(left) benchmarks/gpu_check.sh /tmp/gpu --resolutions 128; cp /tmp/gpu/gpu_report.json "$OUT/" 2>/dev/null; cat /tmp/gpu/gpu_report.md 2>/dev/null; fi
echo "== done in $(( $(date +%s) - START )) s"
