"""The models `make bench` times, built once per resolution into a folder the suites can reuse.

    python -m benchmarks.bench_models DIR [--resolutions 256,128]

`benchmarks/test_speed.py` builds into a temporary folder, unless ``AMNET_BENCH_MODELS=DIR`` is set: then it
reads DIR/r<R> and builds there only what is missing. `make bench` builds DIR afresh once per run, so its native
and AVX2 suites and its parity gate time and check the same files, and suites pinned to two cores
(``BENCH_CPUS``) time models built with every core.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from amnet.core.errors import EXIT_USAGE, AmnetError, first_line

MODELS_ENV = "AMNET_BENCH_MODELS"


def build_models(resolution: int, folder: Path) -> Path:
    """ONNX FP32, ONNX Runtime INT8, OpenVINO FP32/FP16/INT8 and the GC-smoothed OpenVINO INT8 that `make run`
    builds beside the default one, all batch 1, into folder (amnet_full_b1_rR{,_int8,_ov_*,_gcs_ov_int8}.*)."""
    from amnet import default_checkpoint
    from export.int8_scope import PIPELINE_SMOOTH_GC, shipped_smoothed_scope
    from export.pipeline import BuildOptions, ExportOptions, build, export_checkpoint

    r, d = resolution, Path(folder)
    export_checkpoint(default_checkpoint(r), d, ExportOptions((1,), r, check_parity=False, progress=False))
    build(d, "onnxruntime", d, BuildOptions(("int8",), (1,), r, 32, progress=False))
    build(d, "openvino", d, BuildOptions(("fp32", "fp16", "int8"), (1,), r, 32, progress=False))
    export_checkpoint(default_checkpoint(r), d, ExportOptions((1,), r, check_parity=False, progress=False,
                                                            smooth_gc=PIPELINE_SMOOTH_GC))
    build(d, "openvino", d, BuildOptions(("int8",), (1,), r, 32, progress=False,
                                         int8_scope=shipped_smoothed_scope(r)))
    return d


def cached_models(resolution: int, root: Path) -> Path:
    """root/r<R>, built first if absent. Built beside it and renamed when complete, so an interrupted build is
    never taken for a finished one."""
    done = Path(root) / f"r{resolution}"
    if not done.is_dir():
        partial = done.with_name(done.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        build_models(resolution, partial)
        partial.rename(done)
    return done


def models_root() -> Path | None:
    value = os.environ.get(MODELS_ENV, "").strip()
    return Path(value) if value else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--resolutions", default="256,128", help="comma-separated (default 256,128)")
    args = ap.parse_args(argv)
    try:
        resolutions = [int(r) for r in args.resolutions.split(",")]
    except ValueError:
        ap.error(f"--resolutions: comma-separated integers, not {args.resolutions!r}")
    try:
        for r in resolutions:
            print(f"{cached_models(r, args.folder)}: built", flush=True)
    except (AmnetError, OSError) as e:  # OpenVINO or NNCF missing, a folder that cannot be written: one line
        print(f"error: {first_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
