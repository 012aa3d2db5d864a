"""The parity gate: every built variant vs the FP32 PyTorch reference (or reference outputs saved earlier).

Comparing is separate from running: `collect_variants` lists what a build
folder holds, `run_variant` produces outputs, `judge` applies the limits of
``amnet/core/thresholds.json`` (per precision and runtime, overridable), and
`write_reports` renders JSON, Markdown, JUnit XML and a PNG per variant.

It fails closed: a limit whose metric is NaN or could not be computed (dlib
missing, no face in the reference) fails as "unavailable" unless its family
was waived (``--no-faces``); NaN/Inf in a variant's output fails it; a
reference holding NaN/Inf fails every variant; a variant whose files do not
match the manifest's sha256 fails. Only errors in the harness itself escape.
"""
from __future__ import annotations

import functools
import json
import math
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from amnet.core import artifacts
from amnet.core.errors import AmnetError, InputError, first_line
from amnet.core.fileio import atomic_write, check_output_path, file_sha256, write_text
from amnet.core.limits import FACE_CHECKS, parse_key
from amnet.core.metrics import compare
from amnet.core.runner import MODEL_INPUTS, run_in_chunks, run_in_flight


@dataclass
class Variant:
    name: str  # e.g. "openvino-int8-b1-r256"
    runtime: str  # a registry name: onnxruntime | openvino | tensorrt | ...
    precision: str
    path: Path
    batch: int | None
    resolution: int | None
    extra: dict = field(default_factory=dict)


def collect_variants(build_dir: Path, resolution: int | None = None) -> list[Variant]:
    """Every full-model artifact in a build folder's manifest (at one resolution, if given)."""
    build_dir = Path(build_dir)
    if not build_dir.is_dir():
        raise InputError(f"build folder not found: {build_dir}")
    arts = artifacts.read(build_dir)["artifacts"]
    if not arts:
        raise InputError(f"{build_dir} holds no manifest.json with artifacts: run `amnet-deploy export`/`build` first")
    out = []
    for a in arts:
        if a["part"] != "full" or (resolution and a.get("resolution") != resolution):
            continue
        # The forms that can share a folder get their own names: GC-smoothed, and elementwise GC at a fixed batch.
        ew = "ew-" if a.get("gc_form") == "elementwise" and a.get("batch") is not None else ""
        tag = ("gcs-" if a.get("gc_smoothing") else "") + ew + ("dyn" if a.get("batch") is None else f"b{a['batch']}")
        out.append(Variant(f"{a['runtime']}-{a['precision']}-{tag}-r{a['resolution']}", a["runtime"], a["precision"],
                           build_dir / a["file"], a.get("batch"), a.get("resolution"), a))
    return out


def built_from(build_dir: Path, variants: list[Variant]) -> dict[str, dict]:
    """Variant name → the provenance of the checkpoint it was exported from (source_checkpoint, source_sha256),
    followed through the manifest's "from" links, for the variants whose chain records one. A link is followed
    only where the entry it names still holds the file it was built from (its from_sha256); where that file has
    been replaced since (exported again, perhaps from another checkpoint), the variant maps to
    {"replaced": that entry's name}: nothing says what it was built from."""
    by_name = {a["name"]: a for a in artifacts.read(Path(build_dir))["artifacts"]}
    out = {}
    for v in variants:
        a, hops = v.extra, 0
        while a is not None and hops < 8:  # export → ONNX precision → IR/engine: a few links at most
            if (a.get("provenance") or {}).get("source_sha256"):
                out[v.name] = a["provenance"]
                break
            parent = by_name.get(a.get("from"))
            if parent is not None and a.get("from_sha256") and a["from_sha256"] != parent.get("sha256"):
                out[v.name] = {"replaced": parent["name"]}
                break
            a, hops = parent, hops + 1
    return out


def check_reference_source(build_dir: Path, variants: list[Variant], checkpoint) -> None:
    """A reference from another checkpoint than the variants' own makes every comparison meaningless (a 256²
    build against the 128² model: 19 dB, a false FAIL; two near models could pass falsely): refuse it."""
    sources = built_from(build_dir, variants)
    replaced = {name: p["replaced"] for name, p in sources.items() if "replaced" in p}
    if replaced:
        name, parent = next(iter(replaced.items()))
        raise InputError(f"{name} was built from a {parent} that has been replaced since: rebuild it (or leave it "
                         f"out with --only), so that its parity is against the model it came from")
    if not sources:
        return
    if not Path(checkpoint).is_file():
        raise InputError(f"checkpoint not found: {checkpoint}")
    sha = file_sha256(checkpoint)
    other = {p["source_sha256"]: p.get("source_checkpoint", "another checkpoint") for p in sources.values()
             if p["source_sha256"] != sha}
    if other:
        from amnet.checkpoint import load_checkpoint

        load_checkpoint(checkpoint)  # a file that is no sound checkpoint at all says so first (NaN weights, damage)
        digest, name = next(iter(other.items()))
        raise InputError(f"{Path(build_dir).name}'s variants were exported from {name} (sha256 {digest[:12]}…), "
                         f"not from {Path(checkpoint).name}: pass that checkpoint as the reference")


def open_variant(v: Variant, threads: int | None = None, verify: bool = True, **options):
    from runtimes.registry import open_runner

    return open_runner(v.path, threads=threads, precision=v.precision, verify=verify, runtime=v.runtime, **options)


def run_in_batches(runner, feeds: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """Run a whole input set through a fixed-batch runner (pads the last chunk) or a dynamic one (chunks of 8)."""
    feeds = {k: feeds[k] for k in MODEL_INPUTS}
    return run_in_chunks(runner.infer, feeds, batch or 8, pad=batch is not None)


def judge(metrics: dict, limits: dict, waived: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(failed checks, waived checks). A metric that is missing or NaN fails as 'unavailable' unless waived."""
    failures, skipped = [], []
    for key, limit in limits.items():
        out, metric, kind = parse_key(key)
        if metric in waived:
            skipped.append(f"{out}.{metric}")
            continue
        value = metrics.get(out, {}).get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            reason = metrics.get(out, {}).get(f"{metric}_unavailable", "could not be computed")
            failures.append(f"{out}.{metric} unavailable ({reason})")
            continue
        if (kind == "max" and value > limit) or (kind == "min" and value < limit):
            failures.append(f"{out}.{metric} {value:.4g} {'>' if kind == 'max' else '<'} {limit:g}")
    if limits and len(skipped) == len(limits):  # a gate that compared nothing has not passed anything
        failures.append(f"every check was waived ({', '.join(skipped)}): nothing was compared")
    return failures, skipped


def nonfinite(arrays: dict[str, np.ndarray]) -> str | None:
    """'face holds 12 NaN/Inf' for the first output that has any, else None."""
    for k, v in arrays.items():
        bad = int(np.size(v) - np.isfinite(v).sum())
        if bad:
            return f"{k} holds {bad} NaN/Inf value(s)"
    return None


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


def face_checks(ref_face: np.ndarray, test_face: np.ndarray) -> dict:
    """dlib detection rate on the variant's faces and the landmark shift (px) vs the reference's.

    ``landmark_shift_px`` compares dither-averaged landmarks (see `dithered_landmarks`);
    ``landmark_shift_single_px`` is the same with one plain 8-bit rounding, kept for comparison.
    When dlib or its model is missing, returns {"unavailable": reason}: the caller fails closed.
    """
    try:
        from amnet.signals import FaceAnalyzer

        analyzer = FaceAnalyzer(upsample=1)
    except (ImportError, AmnetError, RuntimeError) as e:
        return {"unavailable": first_line(e, 160)}

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
    out = {"reference_detected": ref_found, "variant_detected": test_found, "images": len(ref_face),
           "detected_where_reference_detected": both / ref_found if ref_found else None,
           "landmark_shift_px": float(np.mean(shifts)) if shifts else None,
           "landmark_shift_single_px": float(np.mean(single)) if single else None,
           "dither_draws": DITHER_DRAWS, "resolution": int(ref_face.shape[-1])}
    if not ref_found:
        out["unavailable"] = "dlib finds no face in any reference image"
    return out


def evaluate(variants: list[Variant], feeds: dict, reference: dict, limits, threads: int | None = None,
             faces: bool = True, progress: bool = True, verify: bool = True) -> list[dict]:
    """Run and judge every variant. ``limits`` is an `amnet.core.limits.Limits`."""
    from amnet.core.progress import progress_bar

    waived = FACE_CHECKS if not faces else ()
    ref_problem = nonfinite({k: reference[k] for k in ("face", "landmarks")})
    results = []
    for v in progress_bar(variants, desc="parity", disable=not progress, unit="variant"):
        row = {"variant": v.name, "runtime": v.runtime, "precision": v.precision, "file": v.path.name,
               "batch": v.batch, "resolution": v.resolution, "limits": limits.for_variant(v.runtime, v.precision)}
        if not row["limits"]:  # a build refuses this; a hand-edited manifest can still hold one
            row.update(passed=False, failures=[f"no limits for {v.runtime}-{v.precision} in {limits.source}"])
            results.append(row)
            continue
        if ref_problem:
            row.update(passed=False, failures=[f"reference {ref_problem}: nothing valid to compare against"])
            results.append(row)
            continue
        t = time.perf_counter()
        modes = _modes(v.runtime)
        for mode in modes:  # the gate checks every mode the variant can be run in: their kernels round differently
            checked = _check_mode(v, mode if len(modes) > 1 else None, feeds, reference, row["limits"], threads,
                                  verify, faces, waived)
            if mode == modes[0]:
                row.update({k: checked[k] for k in ("failures", "waived", "metrics", "face_checks", "_outputs",
                                                    "actual_precision") if k in checked})
            else:
                row["failures"] += [f"{mode} mode: {f}" for f in checked["failures"]]
            row.setdefault("modes", {})[mode] = _mode_summary(checked)
            if "metrics" not in checked:  # could not run, or non-finite output: nothing more to learn
                break
        row["seconds"] = round(time.perf_counter() - t, 2)
        row["passed"] = not row["failures"]
        results.append(row)
    return results


def _modes(runtime: str) -> tuple[str, ...]:
    """The modes a runtime's runner can run in: OpenVINO's latency and throughput modes, else one."""
    from runtimes import registry

    return ("latency", "throughput") if "mode" in registry.get(runtime).options else ("default",)


def _check_mode(v: Variant, mode: str | None, feeds: dict, reference: dict, limits: dict, threads, verify,
                faces: bool, waived) -> dict:
    """Run one variant in one mode (None: the runner's default) and judge its outputs."""
    try:
        with open_variant(v, threads, verify, **({"mode": mode} if mode else {})) as runner:
            if mode == "throughput":
                out = run_throughput(runner, feeds, v.batch)
            else:
                out = run_in_batches(runner, feeds, v.batch)
            precision = _actual_precision(runner)
    except AmnetError as e:  # missing runtime, damaged or tampered files: a failed check, not a crash
        return {"failures": [f"could not run: {first_line(e)}"]}
    bad = nonfinite(out)
    if bad:
        return {"failures": [f"output {bad}"]}
    wrong = [f"output {k} is {'×'.join(map(str, out[k].shape))}, the reference's "
             f"{'×'.join(map(str, reference[k].shape))}"
             for k in ("face", "landmarks") if out[k].shape != reference[k].shape]
    if wrong:  # another model's outputs: nothing comparable
        return {"failures": wrong}
    metrics = {k: compare(reference[k], out[k], image=(k == "face")) for k in ("face", "landmarks")}
    checked = {"actual_precision": precision, "metrics": metrics, "_outputs": out}
    if faces:
        fc = face_checks(reference["face"], out["face"])
        checked["face_checks"] = fc
        metrics["face"]["detection_rate"] = fc.get("detected_where_reference_detected")
        metrics["face"]["landmark_shift_px"] = fc.get("landmark_shift_px")
        if fc.get("unavailable"):
            for m in FACE_CHECKS:
                metrics["face"][f"{m}_unavailable"] = fc["unavailable"]
    checked["failures"], checked["waived"] = judge(metrics, limits, waived)
    return checked


def _mode_summary(checked: dict) -> dict:
    face = checked.get("metrics", {}).get("face", {})
    return {"passed": not checked["failures"], **{k: face.get(k) for k in ("max_abs", "psnr", "ssim",
                                                                            "landmark_shift_px") if k in face}}


def run_throughput(runner, feeds: dict[str, np.ndarray], batch: int | None) -> dict[str, np.ndarray]:
    """`run_in_batches` in throughput mode: all batches in flight at once."""
    return run_in_flight(runner.infer_many, feeds, batch or 8, pad=batch is not None)


def _actual_precision(runner) -> str:
    compute = getattr(runner, "compute_precision", None)
    return f"{runner.precision} (compute {compute})" if compute else runner.precision


# ---------------------------------------------------------------- reports

def write_reports(results: list[dict], reference: dict, out_dir: Path, header: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    report = {**header, "variants": clean, "passed": all(r["passed"] for r in results)}
    paths = {"json": out_dir / "parity.json", "markdown": out_dir / "parity.md", "junit": out_dir / "parity.junit.xml"}
    pngs = {r["variant"]: out_dir / f"parity_{r['variant']}.png" for r in results if "_outputs" in r}
    for path in [*paths.values(), *pngs.values()]:  # every name writable before any is written
        check_output_path(path)
    paths["json"].unlink(missing_ok=True)  # the verdict last: a write failing midway leaves none, not an old one
    write_text(paths["markdown"], markdown(report))
    atomic_write(paths["junit"], lambda t: Path(t).write_bytes(junit(clean)))
    for r in results:
        if r["variant"] in pngs:
            paths[f"png:{r['variant']}"] = diff_png(reference["face"], r["_outputs"]["face"], r["variant"],
                                                    pngs[r["variant"]])
    write_text(paths["json"], json.dumps(report, indent=1, default=float) + "\n")
    return paths


def markdown(report: dict) -> str:
    lines = [f"# Parity vs {report['reference']}", "",
             f"Inputs: {report['inputs']} ({report['samples']} samples). "
             f"Overall: **{'PASS' if report['passed'] else 'FAIL'}**", "",
             f"lm shift: mean distance (px at 256²) between dlib's 68 landmarks of variant and reference, each "
             f"averaged over {DITHER_DRAWS} dithered 8-bit roundings; in brackets one plain rounding, whose noise "
             f"floor is ~1.2 px (dlib's shape predictor jumps on one-grey-level changes). A runtime with several "
             f"modes (OpenVINO: latency, throughput) is gated in each; the table shows the first, a failure names "
             f"its mode.", "",
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
                     f"{_result(r)} |")
    return "\n".join(lines) + "\n"


def _result(row: dict) -> str:
    if not row["passed"]:
        return "FAIL: " + "; ".join(row["failures"])
    modes = [m for m in row.get("modes", {}) if m != "default"]
    return f"pass ({', '.join(modes)})" if len(modes) > 1 else "pass"


def junit(rows: list[dict]) -> bytes:
    suite = ET.Element("testsuite", name="amnet-parity", tests=str(len(rows)),
                       failures=str(sum(not r["passed"] for r in rows)))
    for r in rows:
        case = ET.SubElement(suite, "testcase", classname=f"parity.{r['runtime']}", name=r["variant"],
                             time=str(r.get("seconds", 0)))
        if not r["passed"]:
            ET.SubElement(case, "failure", message="; ".join(r["failures"]))
    return ET.tostring(suite, encoding="utf-8", xml_declaration=True)


def diff_png(ref: np.ndarray, test: np.ndarray, title: str, path: Path, gain: float = 10.0) -> Path | None:
    """reference | variant | |difference|×gain heatmap, for up to four samples (None without matplotlib)."""
    from benchmarks.plots import pyplot, save

    plt = pyplot()
    if plt is None:
        return None

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
    return save(fig, path, dpi=80)
