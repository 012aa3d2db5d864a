"""What the CLI's `export` and `build` call: checkpoint → ONNX artifacts, ONNX → a runtime's artifacts.

Each step takes one small options dataclass. `build` finds the backend in the
runtime registry and refuses any (runtime, precision) that has no limits in
thresholds.json: no variant is ever built without checks.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from amnet.core import artifacts
from amnet.core.artifacts import Precision, Stage
from amnet.core.errors import ArtifactError, InputError
from amnet.core.fileio import refuse_overwriting, tool_versions
from amnet.core.limits import load_limits
from runtimes import registry

PARITY_MAX_ABS = 1e-4


@dataclass
class ExportOptions:
    batches: tuple[int, ...] = (1,)
    resolution: int = 256
    dynamic: bool = False
    parts: tuple[str, ...] = ("full",)
    simplify: bool = True
    check_parity: bool = True
    threads: int | None = None
    progress: bool = True
    gc_form: str = "grouped"  # fixed-batch GC: one grouped conv (the default) or elementwise (TensorRT fallback)
    smooth_gc: float | None = None  # α: fold per-channel factors out of the GCs into their readers (gc_smoothing)


@dataclass
class BuildOptions:
    precisions: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
    batches: tuple[int, ...] = (1,)
    resolution: int = 256
    calib_samples: int = 64
    preset: str = "mixed"  # NNCF preset
    accuracy_control: bool = False
    max_drop: float = 6.0
    version_compatible: bool = False  # TensorRT
    progress: bool = True
    gc_form: str = "grouped"  # which fixed-batch FP32 export to build from (exported now if missing)
    int8_scope: Path | None = None  # a scope file from `diagnose --sensitivity`; None: export/int8_scope.py

    def __post_init__(self):
        self.precisions = tuple(Precision.parse(p) for p in self.precisions)
        if self.calib_samples < 1:
            raise InputError(f"calibration samples must be ≥ 1, got {self.calib_samples}")


def require_limits(runtime: str, precisions) -> None:
    limits = load_limits(runtimes=registry.backends())
    missing = [f"{runtime}-{p}" for p in precisions if not limits.has(runtime, str(p))]
    if missing:
        raise InputError(f"no parity limits for {', '.join(missing)} in {limits.source}: add them before building "
                         "(a variant without checks is never built)")


def refuse_output_over_input(model: Path, out_dir: Path) -> None:
    """An --output that is the input file, or a folder holding it unlisted, is refused before any work: the input
    would be replaced, or lie in a build folder whose manifest does not list it (refused from then on). Building
    a folder into itself, or from a file its manifest lists, is the normal flow."""
    if model.is_dir() and out_dir.exists() and os.path.samefile(model, out_dir):
        return
    refuse_overwriting(out_dir, model)
    if model.is_file() and out_dir.is_dir() and os.path.samefile(model.parent, out_dir) \
            and artifacts.open_entry(model, verify=False).entry is None:
        raise InputError(f"--output {out_dir} holds the input {model.name}, which its {artifacts.MANIFEST} "
                          "would not list: write the build to another folder")


def export_checkpoint(checkpoint, out_dir: Path, opts: ExportOptions | None = None) -> dict:
    from amnet.core.progress import progress_bar

    from amnet.checkpoint import load_checkpoint
    from amnet.realdata import parity_feeds
    from export.onnx_export import OPSET, export_one, parity

    opts = opts or ExportOptions()
    refuse_output_over_input(Path(checkpoint), Path(out_dir))
    require_limits("onnxruntime", [Precision.FP32])
    loaded = load_checkpoint(checkpoint)
    model = loaded.require_full()
    if opts.smooth_gc is not None:
        from amnet.realdata import load_inputs
        from export.gc_smoothing import smooth

        smooth(model, load_inputs("calib", opts.resolution), opts.smooth_gc)  # the same function, evener ranges
        model.gc_smoothing = opts.smooth_gc
    feeds = parity_feeds(model, opts.resolution) if opts.check_parity else None
    jobs = [(p, b) for p in opts.parts for b in opts.batches] + ([(p, None) for p in opts.parts] if opts.dynamic else [])
    with Stage(out_dir) as stage:
        for part, batch in progress_bar(jobs, desc="export", disable=not opts.progress, unit="file"):
            entry, path = export_one(model, stage, part, batch, opts.resolution, loaded.sha256, opts.simplify,
                                     opts.gc_form)
            if feeds is not None:
                errs = parity(model, path, part, feeds, batch, opts.threads)
                entry["parity"] = {"reference": "pytorch-fp32-loop", "inputs": "calibration_data/heldout.npz",
                                   "outputs": errs, "threshold_max_abs": PARITY_MAX_ABS,
                                   "passed": all(e["max_abs"] <= PARITY_MAX_ABS for e in errs.values())}
        provenance = {"source_checkpoint": loaded.path.name, "source_sha256": loaded.sha256,
                      "source_format": loaded.format, "config": loaded.config.to_dict(), "opset": OPSET,
                      "versions": tool_versions("torch", "onnx", "onnxruntime", "onnxsim")}
        return artifacts.publish(stage, provenance)


def build(model: Path, runtime: str, out_dir: Path, opts: BuildOptions | None = None) -> dict:
    """Build a runtime's artifacts from an export folder, one .onnx, or a checkpoint (exported first)."""
    opts = opts or BuildOptions()
    refuse_output_over_input(Path(model), Path(out_dir))
    backend = registry.get(runtime)
    unsupported = [str(p) for p in opts.precisions if p not in backend.precisions]
    if unsupported:
        raise InputError(f"runtime {runtime} builds {', '.join(map(str, backend.precisions))}; "
                         f"not {', '.join(unsupported)}")
    require_limits(runtime, opts.precisions)
    builder = backend.load_builder()  # fails fast, before any export work, when the runtime is absent
    if backend.builds_from == "checkpoint":
        if Path(model).suffix.lower() not in registry.CHECKPOINT_SUFFIXES or not Path(model).is_file():
            raise InputError(f"{runtime} builds from a checkpoint (.safetensors or official .pth), not {model}")
        return builder(Path(model), Path(out_dir), opts)
    return builder(fp32_onnx_inputs(Path(model), Path(out_dir), opts), Path(out_dir), opts)


def fp32_onnx_inputs(model_path: Path, out_dir: Path, opts: BuildOptions) -> list[Path]:
    """The fixed-batch full-model FP32 ONNX files to build from: given, found in an export folder, or exported now.

    A scope measured on a GC-smoothed export (`export --smooth-gc α`) builds only from an export smoothed alike.
    """
    from export.int8_scope import load_scope
    from export.onnx_export import read_export_metadata

    smooth = load_scope(opts.int8_scope).smooth_gc
    if model_path.suffix == ".onnx":  # a logical name, as `infer` takes it; a tampered export is never built from
        opened = artifacts.open_entry(model_path)
        if opened.entry is not None:
            _refuse_failed_exports(opened.folder, [opened.entry])
        model_path = opened.file
        meta = read_export_metadata(model_path)
        if meta["batch"] is None:
            raise InputError(f"{model_path.name} has a dynamic batch: builds need a fixed-batch export "
                             "(`amnet-deploy export --batch 1,4`)")
        if meta["part"] != "full" or meta["precision"] != "fp32":
            raise InputError(f"{model_path.name} is the {meta['part']} {meta['precision']} model: "
                             "builds start from the full-model fp32 export")
        have = meta.get("gc_smoothing", "none")
        if smooth is not None and (have == "none" or float(have) != float(smooth)):
            raise InputError(f"{opts.int8_scope} was measured on an export with `--smooth-gc {smooth}`; "
                             f"{model_path.name} has gc_smoothing={have}: re-export with "
                             f"`amnet-deploy export --smooth-gc {smooth}`")
        return [model_path]
    if not model_path.exists():
        raise InputError(f"model not found: {model_path}")
    if model_path.is_dir():  # the manifest records each export's smoothing: no file needs opening to match it
        files = _fp32_exports(model_path, artifacts.read(model_path), opts, smooth)
        if not files:
            how = f"`amnet-deploy export --smooth-gc {smooth}` (the INT8 scope was measured on one)" if smooth \
                else "`amnet-deploy export`"
            raise InputError(f"{model_path} holds no fp32 full-model ONNX ({opts.gc_form} GC"
                             f"{f', smoothed α={smooth}' if smooth else ''}) at {opts.resolution}² for batch "
                             f"{','.join(map(str, opts.batches))}: run {how} first")
        return files
    manifest = export_checkpoint(model_path, out_dir, ExportOptions(  # smoothed as the INT8 scope was measured
        opts.batches, opts.resolution, progress=opts.progress, gc_form=opts.gc_form, smooth_gc=smooth))
    return _fp32_exports(out_dir, manifest, opts, smooth)  # refuses what failed the export's parity check


def _fp32_exports(folder: Path, manifest: dict, opts: BuildOptions, smooth: float | None) -> list[Path]:
    """The full-model FP32 ONNX files of a manifest that match the build's batches, resolution, GC form and
    smoothing."""
    chosen = [a for a in manifest["artifacts"] if a["part"] == "full" and a["runtime"] == "onnxruntime"
              and a["precision"] == "fp32" and a.get("batch") in opts.batches
              and a.get("resolution") == opts.resolution and a.get("gc_form") == opts.gc_form
              and a.get("gc_smoothing") == smooth]
    _refuse_failed_exports(folder, chosen)
    return [artifacts.open_entry(folder / a["file"]).file for a in chosen]  # a tampered export is never built from


def _refuse_failed_exports(where, entries: list[dict]) -> None:
    """An export whose own ONNX-vs-PyTorch parity check failed is never built from."""
    failed = [a["name"] for a in entries if isinstance(a.get("parity"), dict) and a["parity"].get("passed") is not True]
    if failed:
        raise ArtifactError(f"{', '.join(failed)} in {where} failed the ONNX parity check of its export (see "
                            f"its manifest entry): nothing is built from it; fix the checkpoint and export again")
