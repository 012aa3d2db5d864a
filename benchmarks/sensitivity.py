"""INT8 sensitivity of every quantizable conv of ψ, and the smallest float scope that meets a PSNR budget.

What `export/int8_scope.py` was first derived from, by hand; here it is a command
(`amnet-deploy diagnose --sensitivity`), so the next model, calibration set or
CPU gets its own answer. On the OpenVINO model of the variant's FP32 export,
with NNCF as the build uses it:

- alone in INT8: that conv quantized, every other conv float;
- alone float: that conv float, every other quantizable conv INT8;

each scored by face PSNR/SSIM against the PyTorch FP32 forward on held-out
inputs. The GC path, the fuser and the residual Add / InstanceNorm inputs stay
float throughout (`ALWAYS_FLOAT`). Then, greedily from the most costly conv
alone in INT8, convs go float until the whole model meets the budget; that set
is written as a scope file `build --int8-scope FILE` accepts.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from amnet.core.metrics import psnr, ssim
from amnet.core.progress import progress_bar
from amnet.core.runner import MODEL_INPUTS, run_in_chunks
from export.int8_scope import ALWAYS_FLOAT, FLOAT_OP_TYPES, write_scope

CONV_TYPES = ("Convolution", "GroupConvolution", "ConvolutionBackpropData")  # depthwise convs are layers too


def layer_of(friendly_name: str) -> str:
    """'/reenactor/cells.1/body/body.0/Conv/WithoutBiases' → '/reenactor/cells.1/body/body.0/' (the module scope)."""
    return friendly_name[: friendly_name.rindex("/Conv") + 1]


def quantizable_layers(ov_model) -> list[str]:
    always = re.compile("|".join(ALWAYS_FLOAT))
    names = [layer_of(op.get_friendly_name()) for op in ov_model.get_ordered_ops()
             if op.get_type_name() in CONV_TYPES and "/Conv" in op.get_friendly_name()]
    return list(dict.fromkeys(n for n in names if not always.search(n)))


class Scanner:
    """Quantize the FP32 OpenVINO model with a given float set and score its face against the reference."""

    def __init__(self, onnx_path: Path, feeds: dict, reference_face: np.ndarray, calib_samples: int, batch: int):
        import nncf
        import openvino as ov

        from amnet.realdata import calibration_batches

        nncf.set_log_level(logging.ERROR)
        self.ov, self.nncf = ov, nncf
        self.model = ov.convert_model(str(onnx_path))
        names = [i.get_any_name() for i in self.model.inputs]
        resolution = self.model.inputs[0].get_partial_shape()[-1].get_length()
        self.items = calibration_batches(names, resolution, calib_samples, batch)
        self.feeds, self.reference, self.batch = feeds, reference_face, batch
        self.layers = quantizable_layers(self.model)

    def score(self, float_layers: list[str]) -> dict:
        patterns = [f".*{f}.*" for f in ALWAYS_FLOAT] + [f".*{re.escape(x)}.*" for x in float_layers]
        ignored = self.nncf.IgnoredScope(patterns=patterns, types=list(FLOAT_OP_TYPES), validate=False)
        q = self.nncf.quantize(self.model.clone(), self.nncf.Dataset(self.items), subset_size=len(self.items),
                               preset=self.nncf.QuantizationPreset.MIXED, ignored_scope=ignored,
                               fast_bias_correction=True)
        compiled = self.ov.Core().compile_model(q, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                           "INFERENCE_NUM_THREADS": 2})
        out = compiled.outputs[0]
        face = run_in_chunks(lambda c: {"face": compiled({k: c[k] for k in MODEL_INPUTS})[out]}, self.feeds,
                             self.batch, pad=True)["face"]
        return {"psnr": psnr(self.reference, face), "ssim": ssim(self.reference, face)}


def scan(onnx_path: Path, feeds: dict, reference_face: np.ndarray, budget_db: float, calib_samples: int = 16,
         batch: int = 1, progress: bool = True, only: list[str] | None = None) -> dict:
    """``only``: scan these layers (module scopes) instead of every quantizable conv."""
    t0 = time.perf_counter()
    s = Scanner(onnx_path, feeds, reference_face, calib_samples, batch)
    layers = [x for x in s.layers if only is None or x in only]
    all_int8 = s.score([])
    rows = []
    for layer in progress_bar(layers, desc="sensitivity", disable=not progress, unit="layer"):
        alone_int8 = s.score([x for x in layers if x != layer])
        alone_float = s.score([layer])
        rows.append({"layer": layer, "alone_int8_psnr": alone_int8["psnr"], "alone_int8_ssim": alone_int8["ssim"],
                     "alone_float_psnr": alone_float["psnr"], "alone_float_ssim": alone_float["ssim"],
                     "float_gain_db": alone_float["psnr"] - all_int8["psnr"]})
    rows.sort(key=lambda r: r["alone_int8_psnr"])  # most costly first
    chosen, current = [], all_int8
    steps = [{"float": [], **current}]
    for r in rows:
        if current["psnr"] >= budget_db:
            break
        chosen.append(r["layer"])
        current = s.score(chosen)
        steps.append({"float": list(chosen), **current})
    return {"onnx": onnx_path.name, "samples": len(reference_face), "calib_samples": calib_samples,
            "budget_db": budget_db, "all_int8": all_int8, "layers": rows, "greedy": steps,
            "scope": chosen, "scope_psnr": current["psnr"], "scope_ssim": current["ssim"],
            "met": current["psnr"] >= budget_db, "seconds": round(time.perf_counter() - t0, 1)}


def markdown(report: dict) -> str:
    lines = [f"# INT8 sensitivity of {report['onnx']}", "",
             f"{report['samples']} held-out samples, {report['calib_samples']} calibration samples; face PSNR/SSIM vs "
             f"PyTorch FP32. Every quantizable conv in INT8: {report['all_int8']['psnr']:.1f} dB. "
             f"{report['seconds']:.0f} s.", "", "![sensitivity](sensitivity.png)", "",
             "| rank | layer | alone in INT8: PSNR / SSIM | alone float (rest INT8): PSNR / SSIM |", "|---|---|---|---|"]
    for i, r in enumerate(report["layers"], 1):
        lines.append(f"| {i} | `{r['layer']}` | {r['alone_int8_psnr']:.1f} / {r['alone_int8_ssim']:.4f} | "
                     f"{r['alone_float_psnr']:.1f} / {r['alone_float_ssim']:.4f} |")
    verdict = "meets" if report["met"] else "does NOT meet"
    lines += ["", f"Scope for {report['budget_db']:g} dB: {len(report['scope'])} convs float → "
              f"{report['scope_psnr']:.1f} dB / SSIM {report['scope_ssim']:.4f} ({verdict} the budget).", ""]
    lines += [f"- `{x}`" for x in report["scope"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path | None:
    from benchmarks.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return None

    rows = report["layers"]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(rows) + 1.2))
    y = np.arange(len(rows))
    ax.barh(y, [min(r["alone_int8_psnr"], 80) for r in rows], color="#3182bd", label="alone in INT8")
    ax.axvline(report["budget_db"], color="#e6550d", ls="--", lw=1, label=f"budget {report['budget_db']:g} dB")
    ax.set_yticks(y, [r["layer"].replace("/reenactor/", "") for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("face PSNR vs FP32 (dB)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path, dpi=100)


def write_reports(report: dict, out_dir: Path, scope_file: Path) -> None:
    import json

    from amnet.core.fileio import write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "sensitivity.json", json.dumps(report, indent=1, default=float) + "\n")
    write_text(out_dir / "sensitivity.md", markdown(report))
    plot(report, out_dir / "sensitivity.png")
    write_scope(scope_file, report["scope"], {"budget_db": report["budget_db"], "measured_psnr_db":
                                              report["scope_psnr"], "from": report["onnx"]})
