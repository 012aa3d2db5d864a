"""Where an OpenVINO IR spends its time, per role in AMNet and per kernel (``PERF_COUNT``).

    python -m benchmarks.profile_layers reports/latest/build/amnet_full_b1_r256_ov_int8.xml
    ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.profile_layers ...   # as on an AVX2-only CPU
    python -m benchmarks.profile_layers ... --json profile.json        # the rows, for the docs' tables

The IR is compiled by the product's own OpenVINO runner (its float precision policy, threads and latency mode;
``--float-precision``/``--mode`` as elsewhere), so on a bf16 CPU the profile is of the bf16 model that runs.

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
import json
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


def profile(xml: Path, threads: int = 2, runs: int = 10, compute: str | None = None, mode: str = "latency"
            ) -> tuple[dict[tuple[str, str], float], float, dict[tuple[str, str], float], dict]:
    """Mean milliseconds per frame per (role, kernel) over `runs` inferences on held-out inputs (a batch-B IR's
    request divided by B), the mean wall time per frame, the convolutions' GOP per frame per (role, kernel), and
    how it was compiled. The IR is compiled by the product's own runner (its float precision policy, threads and
    mode, `compute` as `--float-precision`), so the profile is of the model the product runs."""
    import time

    from amnet.realdata import load_inputs
    from runtimes.openvino_runner import OpenVinoRunner

    totals: dict[tuple[str, str], float] = defaultdict(float)
    work: dict[tuple[str, str], float] = defaultdict(float)
    with OpenVinoRunner(xml, threads=threads, mode=mode, compute=compute, perf_count=True) as runner:
        compiled, request = runner.compiled, runner.request
        resolution = compiled.inputs[0].get_partial_shape()[-1].get_length()
        batch = compiled.inputs[0].get_partial_shape()[0].get_length()
        feeds = load_inputs("heldout", resolution, batch)
        item = {i.get_any_name(): feeds[i.get_any_name()] for i in compiled.inputs}
        for _ in range(3):
            request.infer(item)
        gop = conv_gop(_model(xml))  # the IR's own shapes and names (the runtime graph fuses them)
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
        how = {"precision": runner.precision, "compute": runner.compute_precision, "threads": threads,
               "mode": mode, "batch": batch, "resolution": resolution}
    return dict(totals), wall, dict(work), how


def _model(xml: Path):
    import openvino as ov

    return ov.Core().read_model(str(xml))


def main(argv=None) -> int:
    from amnet.core.cpu import FLOAT_PRECISIONS, isa, isa_name
    from amnet.core.fileio import write_text

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("xml", type=Path, help="OpenVINO IR (.xml) of the full model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--mode", choices=("latency", "throughput"), default="latency",
                    help="OpenVINO's PERFORMANCE_HINT, as the product's runner sets it (default: latency)")
    ap.add_argument("--float-precision", choices=FLOAT_PRECISIONS, default=None,
                    help="what the float parts compute in, as the other commands take it (default: auto: bf16 "
                         "where the CPU has native bf16, else f32; an FP32 IR always f32)")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here (for the docs' tables)")
    args = ap.parse_args(argv)
    xml = artifacts.resolve(args.xml)
    totals, wall, work, how = profile(xml, args.threads, args.runs, args.float_precision, args.mode)
    total = sum(totals.values())
    cpu = isa()
    print(f"{args.xml.name}: {total:.1f} ms per frame in layers, {wall:.1f} ms wall ({args.threads} threads, "
          f"{how['mode']} mode, {how['precision']} IR computing its float parts in {how['compute']}, as the product "
          f"runs it; {cpu['cpu']}, {isa_name(cpu)})")
    rows = []
    for key, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        name, kernel = key
        rows.append({"role": name, "kernel": kernel, "ms": round(ms, 4), "share": round(ms / total, 4),
                     "gop": round(work.get(key, 0.0), 5)})
        if len(rows) <= args.top:
            rate = f"{work[key]:7.3g} GOP at {work[key] / ms * 1000:4.0f} GOP/s" if work.get(key) else ""
            print(f"{ms:8.2f} ms {100 * ms / total:5.1f} %  {f'{name} [{kernel}]' if kernel else name:<52}"
                  f"{rate}".rstrip())
    int8 = [k for k in work if "I8" in k[1]]
    int8_ms = sum(totals[k] for k in int8)
    if int8:  # what no float-side work can beat: the INT8 convs alone, at the rate they ran
        print(f"INT8 convs alone: {int8_ms:.1f} ms ({1000 / int8_ms:.0f} FPS at most) for "
              f"{sum(work[k] for k in int8):.2f} GOP, {sum(work[k] for k in int8) / int8_ms * 1000:.0f} GOP/s; "
              f"all the other layers: {total - int8_ms:.1f} ms")
    if args.json:
        write_text(args.json, json.dumps({"ir": args.xml.name, "cpu": cpu["cpu"], "isa": isa_name(cpu),
                                          "onednn_max_cpu_isa": cpu["cap"], **how, "runs": args.runs,
                                          "layers_ms": round(total, 4), "wall_ms": round(wall, 4),
                                          "int8_convs_ms": round(int8_ms, 4), "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
