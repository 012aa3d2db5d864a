#!/usr/bin/env bash
# Third device call: `amnet-deploy bench` (latency and throughput mode side by side, eager in the same run) on two
# pinned AMX cores, 128² and 256², after the FP16 policy fix.
set -u
START=$(date +%s); left() { echo $((265 - ($(date +%s) - START))); }
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
grep -m1 'model name' /proc/cpuinfo; grep -m1 -E '^model\s' /proc/cpuinfo; nproc
mkdir -p /tmp/site && tar -xJf .dev/ov_trim.tar.xz -C /tmp/site && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev/whl/*.whl || echo "INSTALL FAILED"
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1
echo "== build ($(left) s left)"; time timeout 150 python3 -m benchmarks.bench_models /tmp/bm
CPUS=$(python3 .dev/pick_cpus.py last)
for r in 128 256; do
  echo "== bench $r on CPUs $CPUS, load $(cat /proc/loadavg) ($(left) s left)"
  timeout $(( $(left) > 20 ? $(left) - 5 : 15 )) taskset -c "$CPUS" python3 -m amnet.cli bench --build /tmp/bm/r$r --resolution $r --only openvino-fp16,openvino-int8 --iters $([ $r = 128 ] && echo 40 || echo 20) --passes 2 --report "$OUT/bench$r" 2>&1 | grep -v "run/s"
done
echo "== done in $(( $(date +%s) - START )) s"
