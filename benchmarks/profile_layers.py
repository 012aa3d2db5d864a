"""Where an OpenVINO IR spends its time, per role in AMNet and per kernel (``PERF_COUNT``).

    python -m benchmarks.profile_layers reports/latest/build/amnet_full_b1_r256_ov_int8.xml
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.profile_layers ...   # as on an AVX2-only CPU

Roles follow `export.int8_scope`: the GC convs and their MLPs, the convs that
read a GC output (float in every INT8 variant), the other convs (INT8-eligible),
the fuser, and the rest by op type. The kernel name (``brgconv_avx2_f32``,
``jit_avx2_I8``, ``brgconv_avx512_amx_I8`` …) says in what precision and ISA it ran.
"""
from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

from amnet.core import artifacts
from export.int8_scope import FUSER, GC_PATH, GC_READERS

CONV_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")


def role(node_name: str, node_type: str) -> str:
    if re.search(GC_PATH, node_name):
        return "GC conv" if node_type in CONV_TYPES else "GC weight/bias MLP"
    if re.search(FUSER, node_name):
        return "fuser"
    if node_type in CONV_TYPES:
        return "conv reading a GC output" if any(re.search(r, node_name) for r in GC_READERS) else "other conv"
    return node_type


def profile(xml: Path, threads: int = 2, runs: int = 10,
            compute: str = "f32") -> tuple[dict[tuple[str, str], float], float]:
    """Mean milliseconds per (role, kernel) over `runs` inferences on held-out inputs, and the mean wall time."""
    import time

    import openvino as ov

    from amnet.realdata import load_inputs

    core = ov.Core()
    model = core.read_model(str(xml))
    compiled = core.compile_model(model, "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": threads,
                                                 "INFERENCE_PRECISION_HINT": compute})
    resolution = compiled.inputs[0].get_partial_shape()[-1].get_length()
    batch = compiled.inputs[0].get_partial_shape()[0].get_length()
    feeds = load_inputs("heldout", resolution, batch)
    item = {i.get_any_name(): feeds[i.get_any_name()] for i in compiled.inputs}
    request = compiled.create_infer_request()
    for _ in range(3):
        request.infer(item)
    totals: dict[tuple[str, str], float] = defaultdict(float)
    wall = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        request.infer(item)
        wall += (time.perf_counter() - t) * 1000 / runs
        for p in request.profiling_info:
            ms = p.real_time.total_seconds() * 1000
            if ms > 0:
                kernel = p.exec_type if p.node_type in CONV_TYPES else ""
                totals[(role(p.node_name, p.node_type), kernel)] += ms / runs
    return dict(totals), wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("xml", type=Path, help="OpenVINO IR (.xml) of the full model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    totals, wall = profile(artifacts.resolve(args.xml), args.threads, args.runs)
    total = sum(totals.values())
    print(f"{args.xml.name}: {total:.1f} ms per frame in layers, {wall:.1f} ms wall ({args.threads} threads)")
    for (name, kernel), ms in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{ms:8.2f} ms {100 * ms / total:5.1f} %  {name}{f' [{kernel}]' if kernel else ''}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
