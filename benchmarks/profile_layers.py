"""Where an OpenVINO IR spends its time, per role in AMNet and per kernel (``PERF_COUNT``).

    python -m benchmarks.profile_layers reports/latest/build/amnet_full_b1_r256_ov_int8.xml
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.profile_layers ...   # as on an AVX2-only CPU

Roles follow `export.int8_scope`: the GC convs and their MLPs, the convs that
read a GC output (float in the default INT8 scope; GC smoothing moves some to
INT8), the other convs, the fuser, and the rest by op type. The kernel name
(``brgconv_avx2_f32``, ``jit_avx2_I8``, ``brgconv_avx512_amx_I8`` …) says in what
precision and ISA it ran. Conv rows give their GOP per frame and the rate they
ran at; the last line, the INT8 convs alone at that rate: the frame time no work
on the float layers can go below.
"""
from __future__ import annotations

import argparse
import math
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


def conv_gop(model) -> dict[str, float]:
    """GOP (2 × multiply-adds) of each convolution per frame, by node name, from the IR's static shapes."""
    gop = {}
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind not in CONV_TYPES:
            continue
        out, w = op.get_output_partial_shape(0), op.get_input_partial_shape(1)
        if not (out.is_static and w.is_static):
            continue
        out, w = [d.get_length() for d in out], [d.get_length() for d in w]
        if kind == "ConvolutionBackpropData":  # weights [Cin, Cout, k…]: every input scattered over Cout × k…
            inputs = [d.get_length() for d in op.get_input_partial_shape(0)]
            macs = math.prod(inputs) * math.prod(w[1:])
        else:  # each output sums Cin/groups × k… products: [Cout, Cin, k…], or [G, Cout/G, Cin/G, k…]
            macs = math.prod(out) * math.prod(w[2:] if kind == "GroupConvolution" else w[1:])
        gop[op.get_friendly_name()] = 2 * macs / out[0] / 1e9
    return gop


def profile(xml: Path, threads: int = 2, runs: int = 10, compute: str = "f32"
            ) -> tuple[dict[tuple[str, str], float], float, dict[tuple[str, str], float]]:
    """Mean milliseconds per frame per (role, kernel) over `runs` inferences on held-out inputs (a batch-B IR's
    request divided by B), the mean wall time per frame, and the convolutions' GOP per frame per (role, kernel)."""
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
    work: dict[tuple[str, str], float] = defaultdict(float)
    gop = conv_gop(model)
    wall = 0.0
    for _ in range(runs):
        t = time.perf_counter()
        request.infer(item)
        wall += (time.perf_counter() - t) * 1000 / runs / batch
        for p in request.profiling_info:
            ms = p.real_time.total_seconds() * 1000
            if ms > 0:
                kernel = p.exec_type if p.node_type in CONV_TYPES else ""
                totals[(role(p.node_name, p.node_type), kernel)] += ms / runs / batch
    for p in request.profiling_info:  # the last run's nodes: each once
        if p.node_type in CONV_TYPES and p.real_time.total_seconds() > 0:
            # a quantized conv that feeds an output is renamed "<name>_original" by the INT8 transformations
            name = p.node_name.removesuffix("_original")
            work[(role(name, p.node_type), p.exec_type)] += gop.get(name, 0.0)
    return dict(totals), wall, dict(work)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("xml", type=Path, help="OpenVINO IR (.xml) of the full model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args(argv)
    totals, wall, work = profile(artifacts.resolve(args.xml), args.threads, args.runs)
    total = sum(totals.values())
    print(f"{args.xml.name}: {total:.1f} ms per frame in layers, {wall:.1f} ms wall ({args.threads} threads)")
    for key, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:args.top]:
        name, kernel = key
        rate = f"{work[key]:7.3g} GOP at {work[key] / ms * 1000:4.0f} GOP/s" if work.get(key) else ""
        print(f"{ms:8.2f} ms {100 * ms / total:5.1f} %  {f'{name} [{kernel}]' if kernel else name:<52}{rate}".rstrip())
    int8 = [k for k in work if "I8" in k[1]]
    if int8:  # what no float-side work can beat: the INT8 convs alone, at the rate they ran
        ms = sum(totals[k] for k in int8)
        print(f"INT8 convs alone: {ms:.1f} ms ({1000 / ms:.0f} FPS at most) for {sum(work[k] for k in int8):.2f} GOP, "
              f"{sum(work[k] for k in int8) / ms * 1000:.0f} GOP/s; all the other layers: {total - ms:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
