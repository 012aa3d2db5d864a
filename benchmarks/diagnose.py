"""`amnet-deploy diagnose`: where a built variant parts from the PyTorch FP32 forward, tensor by tensor.

Every convolution of ψ and every module boundary that maps back to the model
(encoder, each cell, each GC output, decoder stages) is a probe. The PyTorch
side records them with forward hooks; the variant exposes the same tensors:
ONNX Runtime by adding them as graph outputs, OpenVINO by ``Model.add_outputs``
(the IR keeps the ONNX tensor names), TensorRT by rebuilding the variant's
precision ONNX with the probes marked as engine outputs (a close relative of
the deployed engine: a marked tensor can stop fusion across it). Probes are compared in graph order by SNR
(dB: signal power over error power) and max abs; the first one below
``--snr-min`` is named in one line, and a plot shows SNR by depth.

The ONNX exporter names a node after the modules it sits in: ``/reenactor/
cells.1/body/body.3/Conv`` for ``reenactor.cells[1].body[3]`` (a Sequential opens
a scope, a ModuleList does not), so probes map back by name.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from amnet.core.errors import ArtifactError, InputError
from amnet.core.fileio import file_sha256, write_text
from amnet.core.runner import MODEL_INPUTS, run_in_chunks

# Default SNR floor per precision: well below what a healthy variant of that precision keeps at every probe
# (FP32 > 100 dB, FP16 > 60 dB, INT8 > 25 dB on the shipped model), well above what a broken layer gives.
SNR_MIN = {"fp32": 80.0, "fp16": 45.0, "bf16": 35.0, "int8": 20.0}


def onnx_scopes(model) -> dict[str, str]:
    """Module path → the ONNX node-name scope the TorchScript exporter gives it ('/reenactor/cells.1/')."""
    from torch import nn

    out = {}

    def walk(mod, dotted: str, scope: str, name_of_mod: str):
        for name, child in mod.named_children():
            child_name = f"{name_of_mod}.{name}" if isinstance(mod, (nn.Sequential, nn.ModuleList)) else name
            child_dotted = f"{dotted}.{name}" if dotted else name
            # A ModuleList is never called, so it opens no scope: its children sit in the parent's scope.
            child_scope = scope if isinstance(child, nn.ModuleList) else f"{scope}/{child_name}"
            out[child_dotted] = child_scope + "/"
            walk(child, child_dotted, child_scope, child_name)

    walk(model, "", "", "")
    return out


def probe_modules(model) -> list[str]:
    """The module paths probed: ψ's convolutions, its encoder, every cell and GC, and the decoder's stages."""
    from torch import nn

    paths = ["reenactor.encoder"]
    paths += [f"reenactor.cells.{i}" for i in range(len(model.reenactor.cells))]
    paths += [f"reenactor.gcs.{i}" for i in range(len(model.reenactor.gcs))]
    paths += [f"reenactor.decoder.{i}" for i, m in enumerate(model.reenactor.decoder) if isinstance(m, nn.ReLU)]
    paths += [f"reenactor.{name}" for name, m in model.reenactor.named_modules()
              if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return paths


def probe_tensors(node_names_in_order: list[tuple[str, str]], scopes: dict[str, str], paths: list[str]) -> list[dict]:
    """For each probed module, the graph tensor that is its output: the last node inside its scope."""
    probes = []
    for path in paths:
        scope = scopes[path]
        last = [out for name, out in node_names_in_order if name.startswith(scope)]
        if last:
            probes.append({"module": path, "tensor": last[-1],
                           "order": max(i for i, (n, _) in enumerate(node_names_in_order) if n.startswith(scope))})
    return sorted(probes, key=lambda p: p["order"])


def reference_tensors(model, feeds: dict, paths: list[str]) -> dict[str, np.ndarray]:
    """The PyTorch FP32 forward (loop GC) with a forward hook on every probed module."""
    import torch

    modules = dict(model.named_modules())
    store: dict[str, list] = {p: [] for p in paths}
    # Cloned: the model's ReLUs are in place and would overwrite a conv's output after the hook saw it.
    hooks = [modules[p].register_forward_hook(lambda m, i, o, p=p: store[p].append(o.detach().clone().numpy()))
             for p in paths]
    try:
        def forward(chunk):
            with torch.inference_mode(), model.eval().gc_form("loop"):
                model(*(torch.from_numpy(chunk[k]) for k in MODEL_INPUTS))
            return {"_": np.zeros((len(chunk["source"]), 1))}

        run_in_chunks(forward, feeds, 8)
    finally:
        for h in hooks:
            h.remove()
    return {p: np.concatenate(v) for p, v in store.items()}


def _onnx_order(path: Path) -> list[tuple[str, str]]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return [(n.name, n.output[0]) for n in proto.graph.node if n.output]


def onnx_variant_tensors(path: Path, tensors: list[str], feeds: dict, batch: int | None) -> dict[str, np.ndarray]:
    """ONNX Runtime, with every probe added as a graph output (unfused, as the parity gate runs Q/DQ files)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    known = {o.name for o in proto.graph.output}
    for t in tensors:
        if t not in known:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(t))
    with tempfile.TemporaryDirectory() as tmp:
        probe_file = Path(tmp) / "probes.onnx"
        onnx.save(proto, str(probe_file))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(probe_file), opts, providers=["CPUExecutionProvider"])

        def run(chunk):
            return dict(zip(tensors, session.run(tensors, {k: chunk[k] for k in MODEL_INPUTS})))

        return run_in_chunks(run, feeds, batch or 8, pad=batch is not None)


def openvino_variant_tensors(path: Path, tensors: list[str], feeds: dict, batch: int | None,
                             precision: str) -> dict[str, np.ndarray]:
    """OpenVINO, with every probe added as a model output, compiled as the runner compiles it."""
    import openvino as ov

    from amnet.core.cpu import float_precision

    core = ov.Core()
    model = core.read_model(str(path))
    names = {n for op in model.get_ops() for out in op.outputs() for n in out.get_names()}
    found = [t for t in tensors if t in names]
    model.add_outputs(found)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": float_precision(precision),
                                                 "INFERENCE_NUM_THREADS": 2})
    index = {}
    for i, out in enumerate(compiled.outputs):
        for n in out.get_names():
            index.setdefault(n, i)
    request = compiled.create_infer_request()

    def run(chunk):
        request.infer({k: chunk[k] for k in MODEL_INPUTS})
        return {t: request.get_output_tensor(index[t]).data.copy() for t in found}

    return run_in_chunks(run, feeds, batch or 1, pad=True)


def engine_source(variant, tmp: Path) -> Path:
    """The ONNX a TensorRT variant was built from, as its sidecar's sha256 names it: what the TensorRT build
    takes (`precision_source`: the export, the onnxruntime build's FP16/INT8 file of it, or one made again with
    the default scope and 32 calibration samples). Refused when that is another file (an engine built with another
    --int8-scope or --calib-samples): probing another quantization would blame the wrong layer."""
    from amnet.core import artifacts
    from export.tensorrt_build import precision_source

    folder, side = variant.path.parent, variant.extra.get("tensorrt", {})
    fp32 = artifacts.resolve(folder / variant.extra.get("from", ""))
    if not fp32.is_file():
        raise ArtifactError(f"{variant.name} was built from {variant.extra.get('from')}, which is not in {folder}")
    source = precision_source(artifacts.verified_file(fp32), variant.precision, folder, 32, Path(tmp))
    if side.get("onnx_sha256") != file_sha256(source):
        raise ArtifactError(f"{variant.name} was built from {side.get('onnx', 'an ONNX')} (sha256 "
                            f"{str(side.get('onnx_sha256'))[:12]}…), which is neither in {folder} nor made again "
                            "here (another --int8-scope or --calib-samples?): rebuild it with the defaults to diagnose")
    return source


def tensorrt_variant_tensors(variant, tensors: list[str], feeds: dict) -> dict[str, np.ndarray]:
    """TensorRT: the ONNX the variant was built from, rebuilt with every probe marked as an engine output, then run."""
    from export.tensorrt_build import serialize_engine
    from runtimes.tensorrt_runner import TensorRTRunner, gpu_name, import_tensorrt, write_sidecar

    trt = import_tensorrt()
    side = variant.extra.get("tensorrt", {})
    with tempfile.TemporaryDirectory() as tmp:
        source = engine_source(variant, Path(tmp))
        data, _ = serialize_engine(source, variant.precision, Path(tmp) / "timing.cache",
                                   side.get("workspace_bytes", 2 << 30), extra_outputs=tuple(tensors))
        engine = Path(tmp) / "probes.engine"
        engine.write_bytes(data)
        write_sidecar(engine, {"tensorrt": trt.__version__, "gpu": gpu_name(), "precision": variant.precision})
        with TensorRTRunner(engine) as runner:
            found = [t for t in tensors if t in runner.outputs]
            return run_in_chunks(lambda c: {t: v for t, v in runner.infer(c).items() if t in found},
                                 {k: feeds[k] for k in MODEL_INPUTS}, variant.batch or 1, pad=True)


def snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    ref, test = ref.astype(np.float64), test.astype(np.float64)
    noise = float(np.sum((ref - test) ** 2))
    signal = float(np.sum(ref ** 2))
    if not np.isfinite(noise):
        return float("nan")
    return float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)


def reference_inputs(model, feeds: dict) -> dict:
    """The model inputs checked by the PyTorch reference's own check, as `parity` checks them: a wrong shape is
    one line naming the input, not an error from deep inside a torch layer."""
    from amnet.core.runner import check_feeds
    from runtimes.pytorch_runner import TorchRunner

    with TorchRunner(model) as reference:
        return check_feeds({k: feeds[k] for k in MODEL_INPUTS}, reference.inputs)


def diagnose(model, variant, feeds: dict, snr_min: float | None = None) -> dict:
    """Probe by probe comparison of one variant (a benchmarks.parity.Variant) with the PyTorch forward."""
    from amnet.core import artifacts

    if variant.runtime not in ("onnxruntime", "openvino", "tensorrt"):
        raise InputError(f"diagnose runs ONNX Runtime, OpenVINO and TensorRT variants; {variant.name} is "
                         f"{variant.runtime}")
    feeds = {**feeds, **reference_inputs(model, feeds)}
    artifacts.verify(variant.path.parent, variant.extra)
    if variant.runtime == "tensorrt":  # before any work: on a machine without it, one line
        from runtimes.tensorrt_runner import import_cudart, import_tensorrt

        import_tensorrt()
        import_cudart()
    scopes, paths = onnx_scopes(model), probe_modules(model)
    order_file = variant.path
    if variant.runtime in ("openvino", "tensorrt"):  # the names and order of the ONNX it was built from
        source = artifacts.resolve(variant.path.parent / variant.extra.get("from", ""))
        if not source.is_file():
            raise ArtifactError(f"{variant.name} was built from {variant.extra.get('from')}, which is not in "
                                f"{variant.path.parent}: diagnose needs it for the tensor names")
        order_file = artifacts.verified_file(source)  # parsed for names; its hash vouches for it
    probes = probe_tensors(_onnx_order(order_file), scopes, paths)
    ref = reference_tensors(model, feeds, [p["module"] for p in probes])
    names = [p["tensor"] for p in probes]
    if variant.runtime == "onnxruntime":
        got = onnx_variant_tensors(variant.path, names, feeds, variant.batch)
    elif variant.runtime == "tensorrt":
        got = tensorrt_variant_tensors(variant, names, feeds)
    else:
        got = openvino_variant_tensors(variant.path, names, feeds, variant.batch, variant.precision)
    floor = SNR_MIN.get(variant.precision, 30.0) if snr_min is None else snr_min
    rows = []
    for depth, p in enumerate(probes):
        if p["tensor"] not in got:
            rows.append({**p, "depth": depth, "snr_db": None, "max_abs": None, "note": "not exposed by the runtime"})
            continue
        r, g = ref[p["module"]], got[p["tensor"]].reshape(ref[p["module"]].shape)
        rows.append({"module": p["module"], "tensor": p["tensor"], "depth": depth, "snr_db": snr_db(r, g),
                     "max_abs": float(np.max(np.abs(r.astype(np.float64) - g)))})
    first = next((r for r in rows if r["snr_db"] is not None and not r["snr_db"] >= floor), None)
    return {"variant": variant.name, "runtime": variant.runtime, "precision": variant.precision,
            "samples": len(feeds["source"]), "snr_min_db": floor, "probes": rows,
            "first_below": first and {"module": first["module"], "tensor": first["tensor"], "snr_db": first["snr_db"]}}


def summary_line(report: dict) -> str:
    f = report["first_below"]
    if f is None:
        return (f"{report['variant']}: every probe keeps ≥ {report['snr_min_db']:g} dB SNR against PyTorch FP32 "
                f"({len(report['probes'])} probes)")
    return (f"{report['variant']}: first below {report['snr_min_db']:g} dB is {f['module']} "
            f"({f['tensor']}): {f['snr_db']:.1f} dB")


def markdown(report: dict) -> str:
    lines = [f"# Diagnose {report['variant']}", "", summary_line(report), "",
             f"{report['samples']} samples; SNR = signal power over error power, vs the PyTorch FP32 forward.", "",
             "![SNR by depth](diagnose.png)", "", "| depth | module | tensor | SNR dB | max abs |", "|---|---|---|---|---|"]
    for r in report["probes"]:
        snr = "–" if r["snr_db"] is None else f"{r['snr_db']:.1f}"
        mark = " ⟵ first below" if report["first_below"] and r["tensor"] == report["first_below"]["tensor"] else ""
        lines.append(f"| {r['depth']} | {r['module']}{mark} | `{r['tensor']}` | {snr} | "
                     f"{'–' if r['max_abs'] is None else format(r['max_abs'], '.2e')} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    from benchmarks.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return None

    rows = [r for r in report["probes"] if r["snr_db"] is not None]
    snr = [min(r["snr_db"], 160.0) for r in rows]
    fig, ax = plt.subplots(figsize=(9, 3.6))
    ax.plot(range(len(rows)), snr, marker="o", ms=3, lw=1)
    ax.axhline(report["snr_min_db"], color="#e6550d", ls="--", lw=1, label=f"floor {report['snr_min_db']:g} dB")
    ax.set_xticks(range(len(rows)), [r["module"].replace("reenactor.", "") for r in rows], rotation=90, fontsize=5)
    ax.set_ylabel("SNR vs PyTorch FP32 (dB)")
    ax.set_title(summary_line(report), fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path, dpi=110)


def write_reports(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "diagnose.json", json.dumps(report, indent=1, default=float) + "\n")
    write_text(out_dir / "diagnose.md", markdown(report))
    plot(report, out_dir / "diagnose.png")
