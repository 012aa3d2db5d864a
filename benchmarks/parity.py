"""The parity gate: every built variant vs the FP32 PyTorch reference (or reference outputs saved earlier).

Comparing is separate from running: `collect_variants` lists what a build
folder holds, `run_variant` produces outputs, `judge` applies the thresholds of
``benchmarks/thresholds.json`` (per precision, overridable), and `write_reports`
renders JSON, Markdown, JUnit XML and a PNG per variant.
"""
from __future__ import annotations

import functools
import json
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amnet.errors import InputError
from benchmarks.metrics import compare

THRESHOLDS_FILE = Path(__file__).with_name("thresholds.json")
MODEL_INPUTS = ("source", "audio", "pose", "eye")


@dataclass
class Variant:
    name: str  # e.g. "openvino-int8-b1"
    runtime: str  # onnxruntime | openvino | tensorrt
    precision: str
    path: Path
    batch: int | None
    resolution: int | None
    extra: dict = field(default_factory=dict)


def collect_variants(build_dir: Path, resolution: int | None = None) -> list[Variant]:
    """Every full-model artifact in a build folder's manifest that this machine can run."""
    from export import manifest as mf

    arts = mf.read(build_dir)["artifacts"]
    if not arts:
        raise InputError(f"{build_dir} holds no manifest.json with artifacts: run `amnet-deploy export`/`build` first")
    out = []
    for a in arts:
        if a["part"] != "full" or (resolution and a.get("resolution") != resolution):
            continue
        runtime = {"onnx": "onnxruntime"}.get(a.get("runtime", "onnx"), a.get("runtime"))
        batch = a["batch"]
        tag = "dyn" if batch is None else f"b{batch}"
        out.append(Variant(f"{runtime}-{a['precision']}-{tag}-r{a['resolution']}", runtime, a["precision"],
                           build_dir / a["file"], batch, a.get("resolution"), a))
    return out


def open_variant(v: Variant, threads: int | None = None):
    from cli.open import open_runner  # dispatches .onnx / .xml / .engine

    return open_runner(v.path, threads=threads, **({"precision": v.precision} if v.runtime == "openvino" else {}))


def run_in_batches(runner, feeds: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """Run a whole input set through a fixed-batch runner (pads the last chunk) or a dynamic one."""
    n = len(feeds["source"])
    step = batch or n
    parts = []
    for s in range(0, n, step):
        chunk = {k: feeds[k][s:s + step] for k in MODEL_INPUTS}
        take = len(chunk["source"])
        if batch and take < batch:
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], batch - take, 0)]) for k, v in chunk.items()}
        out = runner.infer(chunk)
        parts.append({k: v[:take] for k, v in out.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def load_thresholds(path: Path | None = None, overrides: dict | None = None) -> dict:
    data = json.loads((path or THRESHOLDS_FILE).read_text())
    for key, value in (overrides or {}).items():  # "int8.psnr_min=30"
        precision, metric = key.split(".", 1)
        data.setdefault(precision, {})[metric] = value
    return data


def judge(metrics: dict, limits: dict) -> list[str]:
    """The failed checks, as 'output.metric value vs limit' strings."""
    failures = []
    for key, limit in limits.items():
        out, _, rule = key.partition(".")
        metric, _, kind = rule.rpartition("_")
        value = metrics.get(out, {}).get(metric)
        if value is None:
            continue
        bad = (kind == "max" and value > limit) or (kind == "min" and value < limit)
        if bad:
            failures.append(f"{out}.{metric} {value:.4g} {'>' if kind == 'max' else '<'} {limit:g}")
    return failures


DITHER_DRAWS = 32


@functools.lru_cache(maxsize=2)
def _dither(shape: tuple, draws: int) -> np.ndarray:
    """The ±½-grey-level draws, identical for every image of a shape (float32: 25 MB at 256², 32 draws)."""
    return np.stack([np.random.default_rng(k).uniform(-0.5, 0.5, shape) for k in range(draws)]).astype(np.float32)


def dithered_landmarks(analyzer, face: np.ndarray, draws: int = DITHER_DRAWS):
    """dlib's 68 landmarks of one [-1, 1] face: the detected box, then the mean over `draws` dithered 8-bit copies.

    dlib's regression-tree shape predictor is chaotic in its input: rounding a
    face to 8 bits a little differently (a 71.6 dB FP16 output, 5 % of pixels
    off by one grey level) moves its points by 1.25 px on average and the jaw by
    up to 6 px. Averaging over ±½-grey-level dither draws, the same draws for
    every image, measures where the landmarks are rather than which way the
    rounding fell (noise floor 0.24 px for that FP16 output at 32 draws).
    Returns (single-shot landmarks, dithered mean), or None without a face.
    """
    level = (face.transpose(1, 2, 0) + 1) * 127.5
    first = np.ascontiguousarray(level.clip(0, 255).astype(np.uint8))
    box = analyzer.largest_face(first)
    if box is None:
        return None
    copies = (level + _dither(level.shape, draws)).round().clip(0, 255).astype(np.uint8)
    return analyzer.points(first, box), np.mean([analyzer.points(c, box) for c in copies], axis=0)


def face_checks(ref_face: np.ndarray, test_face: np.ndarray) -> dict | None:
    """dlib detection rate on the variant's faces and the landmark shift (px) vs the reference's.

    ``landmark_shift_px`` compares dither-averaged landmarks (see `dithered_landmarks`);
    ``landmark_shift_single_px`` is the same with one plain 8-bit rounding, kept for comparison.
    """
    try:
        from amnet.signals import FaceAnalyzer
    except ImportError:
        return None
    try:
        analyzer = FaceAnalyzer(upsample=1)
    except Exception:  # noqa: BLE001 - dlib or its model missing: the check is reported as unavailable
        return None

    ref_found = test_found = both = 0
    shifts, single = [], []
    scale = 256 / ref_face.shape[-1]  # in pixels of a 256×256 face, whatever resolution ran
    for r, t in zip(ref_face, test_face):
        lr, lt = dithered_landmarks(analyzer, r), dithered_landmarks(analyzer, t)
        ref_found += lr is not None
        test_found += lt is not None
        if lr is not None and lt is not None:
            both += 1
            single.append(float(np.linalg.norm(lr[0] - lt[0], axis=1).mean()) * scale)
            shifts.append(float(np.linalg.norm(lr[1] - lt[1], axis=1).mean()) * scale)
    return {"reference_detected": ref_found, "variant_detected": test_found, "images": len(ref_face),
            "detected_where_reference_detected": both / ref_found if ref_found else None,
            "landmark_shift_px": float(np.mean(shifts)) if shifts else None,
            "landmark_shift_single_px": float(np.mean(single)) if single else None,
            "dither_draws": DITHER_DRAWS, "resolution": int(ref_face.shape[-1])}


def evaluate(variants: list[Variant], feeds: dict, reference: dict, thresholds: dict, threads: int | None = None,
             faces: bool = True, progress: bool = True) -> list[dict]:
    from tqdm import tqdm

    results = []
    for v in tqdm(variants, desc="parity", disable=not progress, unit="variant"):
        row = {"variant": v.name, "runtime": v.runtime, "precision": v.precision, "file": v.path.name,
               "batch": v.batch, "resolution": v.resolution}
        t = time.perf_counter()
        try:
            with open_variant(v, threads) as runner:
                out = run_in_batches(runner, feeds, v.batch)
                row["actual_precision"] = _actual_precision(runner)
        except Exception as e:  # noqa: BLE001 - a variant that cannot run is a failed variant, not a crash
            row.update(passed=False, failures=[f"could not run: {str(e).splitlines()[0][:160]}"], skipped=False)
            results.append(row)
            continue
        row["seconds"] = round(time.perf_counter() - t, 2)
        metrics = {k: compare(reference[k], out[k], image=(k == "face")) for k in ("face", "landmarks")}
        if faces:
            fc = face_checks(reference["face"], out["face"])
            if fc:
                metrics["face"]["detection_rate"] = fc["detected_where_reference_detected"]
                metrics["face"]["landmark_shift_px"] = fc["landmark_shift_px"]
                row["face_checks"] = fc
        # Per precision, sharpened per runtime where an issue set a stricter bar (e.g. "openvino-int8").
        limits = {**thresholds.get(v.precision, {}), **thresholds.get(f"{v.runtime}-{v.precision}", {})}
        row.update(metrics=metrics, limits=limits, failures=judge(metrics, limits))
        row["passed"] = not row["failures"]
        row["_outputs"] = out
        results.append(row)
    return results


def _actual_precision(runner) -> str:
    compute = getattr(runner, "compute_precision", None)
    return f"{runner.precision} (compute {compute})" if compute else runner.precision


# ---------------------------------------------------------------- reports

def write_reports(results: list[dict], reference: dict, out_dir: Path, header: dict) -> dict[str, Path]:
    from amnet.checkpoint import atomic_write

    out_dir.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    report = {**header, "variants": clean, "passed": all(r["passed"] for r in results)}
    paths = {"json": out_dir / "parity.json", "markdown": out_dir / "parity.md", "junit": out_dir / "parity.junit.xml"}
    atomic_write(paths["json"], lambda t: Path(t).write_text(json.dumps(report, indent=1, default=float) + "\n"))
    atomic_write(paths["markdown"], lambda t: Path(t).write_text(markdown(report)))
    atomic_write(paths["junit"], lambda t: Path(t).write_bytes(junit(clean)))
    for r in results:
        if "_outputs" in r:
            paths[f"png:{r['variant']}"] = diff_png(reference["face"], r["_outputs"]["face"], r["variant"],
                                                    out_dir / f"parity_{r['variant']}.png")
    return paths


def markdown(report: dict) -> str:
    lines = [f"# Parity vs {report['reference']}", "",
             f"Inputs: {report['inputs']} ({report['samples']} samples). "
             f"Overall: **{'PASS' if report['passed'] else 'FAIL'}**", "",
             f"lm shift: mean distance (px at 256²) between dlib's 68 landmarks of variant and reference, each "
             f"averaged over {DITHER_DRAWS} dithered 8-bit roundings; in brackets one plain rounding, whose noise "
             f"floor is ~1.2 px (dlib's shape predictor jumps on one-grey-level changes).", "",
             "| variant | runs as | face max abs | face PSNR dB | face SSIM | landmarks max abs | dlib det. "
             "| lm shift px (single-shot) | result |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["variants"]:
        m = r.get("metrics", {})
        f, lm = m.get("face", {}), m.get("landmarks", {})
        single = (r.get("face_checks") or {}).get("landmark_shift_single_px")

        def g(d, k, fmt):
            return format(d[k], fmt) if d.get(k) is not None else "–"

        lines.append(f"| {r['variant']} | {r.get('actual_precision', '–')} | {g(f, 'max_abs', '.2e')} | "
                     f"{g(f, 'psnr', '.1f')} | {g(f, 'ssim', '.4f')} | {g(lm, 'max_abs', '.2e')} | "
                     f"{g(f, 'detection_rate', '.0%')} | {g(f, 'landmark_shift_px', '.2f')}"
                     f"{f' ({single:.2f})' if single is not None else ''} | "
                     f"{'pass' if r['passed'] else 'FAIL: ' + '; '.join(r['failures'])} |")
    return "\n".join(lines) + "\n"


def junit(rows: list[dict]) -> bytes:
    suite = ET.Element("testsuite", name="amnet-parity", tests=str(len(rows)),
                       failures=str(sum(not r["passed"] for r in rows)))
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname=f"parity.{r['runtime']}", name=r["variant"],
                             time=str(r.get("seconds", 0)))
        if not r["passed"]:
            ET.SubElement(case, "failure", message="; ".join(r["failures"]))
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)


def diff_png(ref: np.ndarray, test: np.ndarray, title: str, path: Path, gain: float = 10.0) -> Path:
    """reference | variant | |difference|×gain heatmap, for up to four samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from amnet.checkpoint import atomic_write

    n = min(4, len(ref))
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        diff = np.abs(ref[i] - test[i]).mean(0)
        for ax, img, name in ((axes[i, 0], ref[i], "reference"), (axes[i, 1], test[i], "variant")):
            ax.imshow(((img.transpose(1, 2, 0) + 1) / 2).clip(0, 1))
            ax.set_title(name, fontsize=8)
        im = axes[i, 2].imshow(np.clip(diff * gain, 0, 1), cmap="inferno", vmin=0, vmax=1)
        axes[i, 2].set_title(f"|diff| × {gain:g} (max {diff.max():.3f})", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.6)
    fig.suptitle(title, fontsize=9)
    atomic_write(path, lambda t: fig.savefig(t, dpi=80, format="png"))
    plt.close(fig)
    return path
