"""AMNet → ONNX, with GC as one grouped convolution over batch-folded channels.

ONNX ``Conv.group`` is a static attribute, so folding the batch into channels
(group = N·C) fixes N: each batch bucket is its own artifact. ``dynamic=True``
exports GC's elementwise form instead, which keeps N symbolic. The decoder's
ConvTranspose layers are exported as sub-pixel convs (export/subpixel.py), and
the nine GCs' eighteen weight/bias MLPs as one GEMM and two batched matmuls
(amnet.model.GCHeads): 36 small matrix-vector products a frame become 3, whose
per-call cost was most of the MLPs' time on a CPU (two AVX2 cores at 128²: 1.6–1.8
→ 0.7–0.8 ms in the FP32 IR, 1.26 → 0.78 ms in the GC-smoothed INT8 one).

Opset 17: the first with LayerNormalization (f_Geo's per-sample standardisation
becomes one node), and the newest that ONNX Runtime, OpenVINO and TensorRT 10
all import without caveats.

The TorchScript exporter (``dynamo=False``) is used: the dynamo exporter cannot
fold a symbolic batch into a group count either, needs onnxscript, and the
TorchScript graph is what onnxsim and the runtimes here were checked with.
"""
from __future__ import annotations

import io
import json
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch

from amnet import __version__
from amnet.core import artifacts
from amnet.core.artifacts import Stage
from amnet.core.errors import ArtifactError
from amnet.core.fileio import atomic_write
from amnet.model import AMNet, FuserHalf, ReenactorHalf
from export.subpixel import convertible, subpixel_upsampling

OPSET = 17
PARTS = ("full", "fuser", "reenactor")
PART_IO = {
    "full": (["source", "audio", "pose", "eye"], ["face", "landmarks"]),
    "fuser": (["audio", "pose", "eye"], ["f_geo", "landmarks"]),
    "reenactor": (["source", "f_geo"], ["face"]),
}


def artifact_name(part: str, batch: int | None, resolution: int | None, gc_form: str = "grouped",
                  smoothed: bool = False) -> str:
    """amnet_full_b1_r256.onnx; `_ew` marks a fixed-batch export with the elementwise GC, `_gcs` a GC-smoothed one
    (`export --smooth-gc`), so both live beside the plain export in one build folder."""
    b = "dyn" if batch is None else f"b{batch}"
    r = "" if resolution is None else f"_r{resolution}"
    ew = "_ew" if gc_form == "elementwise" and batch is not None else ""
    return f"amnet_{part}_{b}{r}{ew}{'_gcs' if smoothed else ''}.onnx"


def gc_smoothing(meta: dict) -> dict:
    """The manifest field a build copies from its source ONNX metadata: {"gc_smoothing": α}, or nothing."""
    value = meta.get("gc_smoothing", "none")
    return {} if value in ("none", None) else {"gc_smoothing": float(value)}


def gc_form_for(batch: int | None, requested: str = "grouped") -> str:
    """A dynamic batch needs the elementwise GC (group = N·C would fix N); a fixed batch may use either."""
    return "elementwise" if batch is None else requested


def dummy_inputs(part: str, batch: int, resolution: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    shapes = {"source": (batch, 3, resolution, resolution), "audio": (batch, 1, 64, 60), "pose": (batch, 3),
              "eye": (batch, 2), "f_geo": (batch, 256)}
    return tuple(torch.randn(*shapes[n], generator=g) for n in PART_IO[part][0])


def _module(model: AMNet, part: str) -> torch.nn.Module:
    return {"full": lambda: model, "fuser": lambda: FuserHalf(model), "reenactor": lambda: ReenactorHalf(model)}[part]()


@contextmanager
def fused_gc_heads(model: AMNet):
    """Inside the block the GCs' MLPs run as GCHeads, built from the weights as they are now (after any GC
    smoothing); after it, as before. Its nodes are named /reenactor/gc_heads/ (float in every INT8 scope)."""
    reenactor, before = model.reenactor, model.reenactor.gc_heads
    reenactor.fuse_gc_heads(persistent=True)  # traced as initializers, like every other weight
    try:
        yield model
    finally:
        reenactor.gc_heads = before


def to_onnx(model: AMNet, part: str = "full", batch: int | None = 1, resolution: int = 256,
            simplify: bool = True, gc_form: str = "grouped") -> onnx.ModelProto:
    """Trace one part at one batch (None = dynamic batch, elementwise GC) and return the ModelProto."""
    form = gc_form_for(batch, gc_form)
    inputs, outputs = PART_IO[part]
    args = dummy_inputs(part, batch or 2, resolution)
    dynamic_axes = {n: {0: "N"} for n in inputs + outputs} if batch is None else None
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad(), model.eval().gc_form(form), subpixel_upsampling(model), \
            fused_gc_heads(model):
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation notice
        torch.onnx.export(_module(model, part), args, buf, input_names=inputs, output_names=outputs,
                          opset_version=OPSET, dynamic_axes=dynamic_axes, do_constant_folding=True, dynamo=False)
    proto = onnx.load_from_string(buf.getvalue())
    if simplify:
        proto = simplify_model(proto)
    onnx.checker.check_model(proto)
    return proto


def simplify_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    import onnxsim

    simplified, ok = onnxsim.simplify(proto)
    if not ok:
        raise ArtifactError("onnxsim could not validate the simplified graph")
    return simplified


def set_metadata(proto: onnx.ModelProto, meta: dict) -> None:
    existing = {p.key: p for p in proto.metadata_props}
    for k, v in meta.items():
        v = v if isinstance(v, str) else json.dumps(v)
        if k in existing:
            existing[k].value = v
        else:
            proto.metadata_props.add(key=k, value=v)


def save_onnx(proto: onnx.ModelProto, path: Path) -> Path:
    data = proto.SerializeToString()
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def read_metadata(path: Path) -> dict:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf decode errors vary
        raise ArtifactError(f"{path.name} is not a readable ONNX file ({type(e).__name__})") from None
    return {p.key: p.value for p in proto.metadata_props}


def read_export_metadata(path: Path) -> dict:
    """The metadata `export` writes, validated: a build from a foreign ONNX is refused in one line."""
    meta = read_metadata(path)
    if not meta.get("producer", "").startswith("amnet-deploy"):
        raise ArtifactError(f"{path.name} was not exported by amnet-deploy (no producer metadata): "
                            "export it with `amnet-deploy export`")
    problems = [k for k in ("part", "batch", "resolution", "precision", "landmarks", "audio_delta") if k not in meta]
    if problems:
        raise ArtifactError(f"{path.name}: metadata lacks {', '.join(problems)}: re-export it")
    out = dict(meta)
    for key in ("batch", "resolution", "landmarks"):
        value = meta[key]
        if key == "batch" and value == "dynamic" or key == "resolution" and value == "None":
            out[key] = None
            continue
        if not value.isdigit() or int(value) < 1:
            raise ArtifactError(f"{path.name}: metadata {key}={value!r} is not a positive integer: re-export it")
        out[key] = int(value)
    if meta["part"] not in PARTS:
        raise ArtifactError(f"{path.name}: metadata part={meta['part']!r} is not one of {', '.join(PARTS)}")
    return out


def export_one(model: AMNet, stage: Stage, part: str, batch: int | None, resolution: int,
               source_sha256: str, simplify: bool = True, gc_form: str = "grouped") -> tuple[dict, Path]:
    """Trace one part at one batch into the stage; returns its manifest entry and pending file."""
    res = None if part == "fuser" else resolution
    gc_form = gc_form_for(batch, gc_form)
    proto = to_onnx(model, part, batch, resolution, simplify, gc_form)
    set_metadata(proto, {
        "producer": f"amnet-deploy {__version__}", "source_checkpoint_sha256": source_sha256,
        "part": part, "gc_form": gc_form, "gc_kernel": str(model.config.kernel),
        "batch": "dynamic" if batch is None else str(batch), "resolution": str(res),
        "precision": "fp32", "opset": str(OPSET), "landmarks": str(model.config.landmarks),
        "audio_delta": model.config.audio_delta, "simplified": str(simplify).lower(),
        "gc_smoothing": str(getattr(model, "gc_smoothing", None) or "none"),
        "gc_heads": "none" if part == "fuser" else "fused",  # the GCs' MLPs as GCHeads (fused_gc_heads)
        # the decoder's ConvTranspose as Conv + DepthToSpace (export/subpixel.py), where ψ is in the file
        "upsampling": "none" if part == "fuser" else "subpixel" if any(
            convertible(m) for m in model.reenactor.decoder) else "transpose",
    })
    name = artifact_name(part, batch, res, gc_form, smoothed=bool(getattr(model, "gc_smoothing", None)))
    pending = save_onnx(proto, stage.path(name))
    entry = {"name": name, "runtime": "onnxruntime", "part": part, "gc_form": gc_form, "batch": batch,
             "resolution": res, "precision": "fp32", "audio_delta": model.config.audio_delta}
    if getattr(model, "gc_smoothing", None):
        entry["gc_smoothing"] = model.gc_smoothing
    stage.add(entry, [pending])
    return entry, pending


def export_file(model: AMNet, out_dir: Path, part: str = "full", batch: int | None = 1, resolution: int = 256,
                source_sha256: str = "", simplify: bool = True, gc_form: str = "grouped") -> Path:
    """Export and publish one ONNX file; returns its path (tests and quick scripts)."""
    with Stage(out_dir) as stage:
        entry, _ = export_one(model, stage, part, batch, resolution, source_sha256, simplify, gc_form)
        manifest = artifacts.publish(stage)
    return Path(out_dir) / next(a["file"] for a in manifest["artifacts"] if a["name"] == entry["name"])


def parity(model: AMNet, onnx_path: Path, part: str, feeds: dict[str, np.ndarray], batch: int | None,
           threads: int | None = None) -> dict:
    """Max and mean abs error of ONNX Runtime vs eager PyTorch (loop GC) on real inputs; NaN stays NaN (fails)."""
    from amnet.core.runner import run_in_chunks
    from runtimes.onnxruntime_runner import OnnxRuntimeRunner

    names, outs = PART_IO[part]
    feeds = {k: feeds[k] for k in names}
    mod = _module(model, part)

    def reference(chunk):
        with torch.inference_mode():
            ref = mod(*(torch.from_numpy(chunk[k]) for k in names))
        return dict(zip(outs, (r.numpy() for r in (ref if isinstance(ref, tuple) else (ref,)))))

    with OnnxRuntimeRunner(onnx_path, threads=threads) as runner, model.eval().gc_form("loop"):
        got = run_in_chunks(runner.infer, feeds, batch or 4, pad=batch is not None)
        ref = run_in_chunks(reference, feeds, 8)
    errs = {o: np.abs(got[o].astype(np.float64) - ref[o]) for o in outs}
    return {o: {"max_abs": float(np.max(e)), "mean_abs": float(np.mean(e))} for o, e in errs.items()}
