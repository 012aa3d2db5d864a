"""`parity`, `bench`, `choose` and `pipeline`: the harness as commands."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from amnet.cli.args import (THREADS, checkpoint_arg, float_precision_arg, isa_caps, number, output_file, positive,
                            resolution, shipped_checkpoint, unwritable)
from amnet.core.errors import EXIT_FAIL, InputError
from amnet.core.fileio import check_output_dir, check_output_path, load_npz, write_text
from amnet.core.runner import MODEL_INPUTS, check_values
from benchmarks.bench import PASSES
from runtimes import registry


def report_dir(folder, *names: str) -> Path:
    """`check_output_dir`, and the folder writable now (or creatable): a report that cannot be written fails
    before the work, not after it."""
    folder = check_output_dir(folder, *names)
    why = unwritable(folder)
    if why:
        raise InputError(f"cannot write reports into {folder}: {why}")
    return folder


def _inputs(args, resolution: int) -> tuple[dict, str]:
    """The inputs every harness command runs (NaN/Inf refused here, so no command can report on them)."""
    if args.inputs:
        feeds = load_npz(args.inputs)
        missing = set(MODEL_INPUTS) - set(feeds)
        if missing:
            raise InputError(f"{args.inputs} lacks {', '.join(sorted(missing))}")
        feeds, desc = {k: feeds[k] for k in MODEL_INPUTS}, str(args.inputs)
    else:
        from amnet.realdata import load_inputs

        feeds = load_inputs("heldout", resolution, args.samples)
        feeds.pop("target", None)
        if len(feeds["source"]) < args.samples:
            raise InputError(f"--samples {args.samples}: calibration_data/heldout.npz holds "
                             f"{len(feeds['source'])} samples")
        desc = "calibration_data/heldout.npz (held-out real frames and speech)"
    for name, v in feeds.items():
        if v.dtype.kind == "f" and v.size:
            check_values(name, float(v.min()), float(v.max()), int(v.size - np.isfinite(v).sum()))
    return feeds, desc


def _reference(args, feeds: dict) -> tuple[dict, str]:
    if args.reference:
        ref = load_npz(args.reference)
        n = len(feeds["source"])
        for k in ("face", "landmarks"):
            v = ref.get(k)
            if v is None or v.dtype.kind != "f" or v.ndim < 2 or len(v) != n:
                raise InputError(f"{args.reference} must hold float '{k}' for all {n} inputs")
        if ref["landmarks"].ndim != 2:
            raise InputError(f"{args.reference}: landmarks must be N×L, got "
                             f"{'×'.join(map(str, ref['landmarks'].shape))}")
        if ref["face"].shape[1:] != (3, *feeds["source"].shape[-2:]):
            raise InputError(f"{args.reference}: face is {ref['face'].shape[1:]}, the inputs make "
                             f"{(3, *feeds['source'].shape[-2:])}")
        return ref, f"saved reference {args.reference}"
    from amnet.core.errors import RuntimeMissing
    from benchmarks.parity import run_in_batches

    try:
        runner = registry.open_runner(args.checkpoint, runtime="pytorch", threads=args.threads)
    except RuntimeMissing as e:
        raise RuntimeMissing(f"{e}; or pass --reference OUT.npz (reference outputs saved earlier)") from None
    with runner:
        return run_in_batches(runner, feeds, None), f"PyTorch FP32 ({Path(args.checkpoint).name}, loop GC)"


def preflight(args, resolutions: list[int], gate: bool = True, timed: bool = True) -> None:
    """Every option checked before any work and any write: a refused run costs nothing and replaces nothing."""
    needs_checkpoint = timed or (gate and not args.reference)
    if needs_checkpoint and not Path(args.checkpoint).is_file():
        raise InputError(f"checkpoint not found: {args.checkpoint}")
    if gate:
        from amnet.core.limits import load_limits

        load_limits(Path(args.thresholds) if args.thresholds else None, args.threshold, registry.backends())
        for r in resolutions if args.inputs or args.reference else ():
            feeds, _ = _inputs(args, r)
            if args.reference:
                _reference(args, feeds)
    if timed:
        from benchmarks.bench import usable_isas

        usable_isas(tuple(args.isa))


def selected_variants(args, resolution: int) -> list:
    from benchmarks.parity import collect_variants

    variants = collect_variants(Path(args.build), resolution)
    if args.only:
        variants = [v for v in variants if any(o in v.name for o in args.only.split(","))]
    return variants


def run_parity(args, resolution: int, out_dir: Path) -> dict:
    from amnet.core.limits import load_limits
    from benchmarks.parity import check_reference_source, evaluate, write_reports

    limits = load_limits(Path(args.thresholds) if args.thresholds else None, args.threshold, registry.backends())
    variants = selected_variants(args, resolution)
    if not variants:
        raise InputError(f"no variant at {resolution}² in {args.build}")
    if not args.reference:
        check_reference_source(Path(args.build), variants, args.checkpoint)
    feeds, inputs_desc = _inputs(args, resolution)
    if feeds["source"].ndim != 4 or feeds["source"].shape[-2:] != (resolution, resolution):
        raise InputError(f"the inputs' source is {'×'.join(map(str, feeds['source'].shape))}; the variants "
                         f"selected run at {resolution}² (pass --resolution, or inputs at that size)")
    reference, ref_desc = _reference(args, feeds)
    results = evaluate(variants, feeds, reference, limits, args.threads, faces=not args.no_faces,
                       progress=not args.quiet, verify=not args.no_verify)
    header = {"reference": ref_desc, "inputs": inputs_desc, "samples": len(feeds["source"]), "resolution": resolution}
    write_reports(results, reference, out_dir, header)
    return {**header, "variants": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]}


def cmd_parity(args) -> int:
    from benchmarks.parity import markdown

    out_dir = report_dir(args.report, "parity.json", "parity.md", "parity.junit.xml")
    args.checkpoint = shipped_checkpoint(args, args.resolution)
    preflight(args, [args.resolution], timed=False)
    report = run_parity(args, args.resolution, out_dir)
    report["passed"] = all(r["passed"] for r in report["variants"])
    print(markdown(report))
    print(f"reports → {out_dir}/parity.json, parity.md, parity.junit.xml, parity_*.png")
    failed = [f"{r['variant']} ({'; '.join(r['failures'])})" for r in report["variants"] if not r["passed"]]
    if failed:
        print("FAILED: " + ", ".join(failed))
        unchecked = set()
        for r in report["variants"]:
            if r["passed"]:
                continue
            why = _face_checks_not_run(r)
            if why:  # nothing of the variant's is wrong that diagnose could find
                unchecked.add(why)
            elif r["runtime"] in ("onnxruntime", "openvino", "tensorrt") and "metrics" in r:
                print(f"  where it breaks: amnet-deploy diagnose {args.checkpoint} --build {args.build} "
                      f"--variant {r['variant']}")
        for why in sorted(unchecked):
            print(f"  the face checks could not run: {why}: fix that (dlib and its 68-point model, AMNET_DLIB_68), "
                  "or waive them with --no-faces")
        return EXIT_FAIL
    return 0


def _face_checks_not_run(row: dict) -> str | None:
    """Why dlib's checks could not run (its model would not load, no face in the reference), when that is all
    that failed the variant; else None."""
    why = (row.get("face_checks") or {}).get("unavailable")
    if why and all(f.endswith(f"unavailable ({why})") for f in row["failures"]):
        return why
    return None


def cmd_diagnose(args) -> int:
    from amnet.checkpoint import load_checkpoint
    from benchmarks.diagnose import diagnose, summary_line, write_reports
    from benchmarks.parity import check_reference_source, collect_variants

    report_dir(args.report, "diagnose.json", "diagnose.md", "diagnose.png",
               *(("sensitivity.json", "sensitivity.md", "sensitivity.png") if args.sensitivity else ()))
    if args.sensitivity:
        if args.scope_out:  # a file in a folder that exists (REPORT, the default's, is made)
            output_file(args.scope_out, "--scope-out")
        else:
            check_output_path(Path(args.report) / "int8_scope.json")
    variants = {v.name: v for v in collect_variants(Path(args.build))}
    if args.variant not in variants:
        raise InputError(f"no variant {args.variant!r} in {args.build}; it holds {', '.join(sorted(variants))}")
    variant = variants[args.variant]
    args.resolution = variant.resolution
    args.checkpoint = shipped_checkpoint(args, variant.resolution)
    check_reference_source(Path(args.build), [variant], args.checkpoint)
    feeds, _ = _inputs(args, variant.resolution)
    if feeds["source"].shape[-2:] != (variant.resolution, variant.resolution):
        raise InputError(f"the inputs' source is {'×'.join(map(str, feeds['source'].shape))}; {variant.name} runs "
                         f"at {variant.resolution}²")
    model = load_checkpoint(args.checkpoint).require_full()
    report = diagnose(model, variant, feeds, args.snr_min)
    write_reports(report, Path(args.report))
    print(summary_line(report))
    print(f"reports → {args.report}/diagnose.json, diagnose.md, diagnose.png")
    if args.sensitivity:
        return _sensitivity(args, model, variant, feeds)
    return 0


def _sensitivity(args, model, variant, feeds) -> int:
    from amnet.core import artifacts
    from benchmarks import sensitivity
    from runtimes.pytorch_runner import reference_outputs

    source = artifacts.resolve(Path(args.build) / variant.extra.get("from", variant.path.name))
    if source.suffix != ".onnx" or not source.is_file():
        raise InputError(f"--sensitivity needs the FP32 ONNX {variant.name} was built from, in {args.build}")
    source = artifacts.verified_file(source)
    reference = reference_outputs(model, feeds)["face"]
    report = sensitivity.scan(source, feeds, reference, args.budget_db, args.calib_samples, variant.batch or 1)
    scope_file = Path(args.scope_out or Path(args.report) / "int8_scope.json")
    sensitivity.write_reports(report, Path(args.report), scope_file)
    top = ", ".join(r["layer"].replace("/reenactor/", "") for r in report["layers"][:3])
    print(f"most costly alone in INT8: {top}; scope for {args.budget_db:g} dB: {len(report['scope'])} convs float, "
          f"{report['scope_psnr']:.1f} dB → {scope_file} (build --int8-scope {scope_file}); {report['seconds']:.0f} s")
    return 0 if report["met"] else EXIT_FAIL


def run_bench(args, resolution: int) -> dict:
    from benchmarks.bench import bench

    variants = selected_variants(args, resolution)
    if not variants:
        raise InputError(f"no variant at {resolution}² in {args.build}{' matching --only' if args.only else ''}")
    gflops = None
    if not registry.get("pytorch").missing():
        from amnet.checkpoint import load_checkpoint
        from amnet.flops import gflops_per_frame

        gflops = gflops_per_frame(load_checkpoint(args.checkpoint).require_full(), resolution)
    return bench(variants, args.checkpoint, resolution, args.threads or 2, args.iters, gflops=gflops,
                 progress=not args.quiet, isas=tuple(args.isa), verify=not args.no_verify, passes=args.passes)


def cmd_bench(args) -> int:
    from benchmarks.bench import machine_info, markdown

    out = report_dir(args.report, "bench.json", "bench.md")
    args.checkpoint = shipped_checkpoint(args, args.resolution)
    preflight(args, [args.resolution], gate=False)
    report = run_bench(args, args.resolution)
    report["machine"] = machine_info(args.threads or 2)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "bench.json", json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    write_text(out / "bench.md", text)
    print(text)
    failed = [f"{r['name']} ({r['error']})" for r in report["rows"] if "error" in r]
    if failed:  # a variant that could not be timed is a failed measurement, not a blank row
        print("FAILED to measure: " + ", ".join(failed))
        return EXIT_FAIL
    return 0


def rank(parity_rows: list[dict], bench_rows: list[dict], isa: str = "native") -> list[dict]:
    """Variants that pass the gate, fastest first (best of latency FPS and throughput FPS), on one ISA cap.

    The gate runs natively; under a cap without bf16 the float parts compute f32, closer to FP32 than the
    bf16 that passed, so a variant that passes natively is taken to pass there too.
    """
    speed = {r["name"]: r for r in bench_rows if "fps" in r and r.get("isa", "native") == isa}
    ranked = []
    for p in parity_rows:
        b = speed.get(p["variant"])
        if not p["passed"] or b is None:
            continue
        best = max(b["fps"], b.get("throughput_fps", 0))
        eager = b["fps"] / b["ratio_vs_eager"] if b.get("ratio_vs_eager") else None  # same ISA cap
        ranked.append({"variant": p["variant"], "file": p.get("file"), "runtime": p["runtime"], "precision": p["precision"],
                       "runs_as": p.get("actual_precision"), "batch": p["batch"], "fps_b1": round(b["fps"], 1),
                       "throughput_fps": round(b.get("throughput_fps", b["fps"]), 1), "best_fps": round(best, 1),
                       "ratio_vs_eager": round(b.get("ratio_vs_eager", float("nan")), 2),
                       "best_vs_eager": round(best / eager, 2) if eager else float("nan"),
                       "psnr": p["metrics"]["face"].get("psnr"), "median_ms": round(b["median_ms"], 1),
                       "file_mb": round(b["file_mb"], 2) if "file_mb" in b else None})
    return sorted(ranked, key=lambda r: -r["best_fps"])


PHONE_RUNTIMES = ("litert", "executorch")  # what Android and iOS apps embed


def phone_pick(ranked: list[dict], parity_rows: list[dict]) -> tuple[dict | None, str]:
    """The fastest on-device variant that passes the gate, and the report's line about it (also when none does)."""
    top = next((r for r in ranked if r["runtime"] in PHONE_RUNTIMES), None)
    if top:
        return top, (f"**For a phone: {top['runtime']} {top['precision']}** (`{top['variant']}`, "
                     f"{top['file_mb']} MB): {top['best_fps']} FPS here, the fastest of the on-device variants "
                     "that pass the parity gate.")
    built = [r["variant"] for r in parity_rows if r["runtime"] in PHONE_RUNTIMES]
    if built:
        return None, f"For a phone: none of the on-device variants passes ({', '.join(built)})."
    return None, (f"For a phone: no on-device variant in this build (`amnet-deploy build --runtime "
                  f"{'|'.join(PHONE_RUNTIMES)}` makes one).")


def choose_markdown(ranked: list[dict], resolution: int, threads: int, excluded: list[str], phone: str = "") -> str:
    lines = [f"## Which runtime to pick at {resolution}×{resolution} ({threads} threads)", ""]
    if not ranked:
        return "\n".join(lines + ["No variant passed the fidelity gate.", *([phone] if phone else []), ""])
    top = ranked[0]
    mode = "throughput mode (async streams)" if top["throughput_fps"] > top["fps_b1"] * 1.1 else "latency mode"
    psnr = "exact" if top["psnr"] in (None, float("inf")) else f"PSNR {top['psnr']:.1f} dB vs FP32"
    lines += [f"**Recommended: {top['runtime']} {top['precision']}** (`{top['variant']}`), batch {top['batch']}, "
              f"{threads} threads, "
              f"{mode}: {top['best_fps']} FPS ({top['best_vs_eager']}× PyTorch eager at batch 1), {psnr}; "
              f"the fastest of the variants that pass the parity gate.", "", *([phone, ""] if phone else []),
              "| rank | variant | runs as | FPS b=1 | best FPS | × eager (b=1) | best × eager | median ms | "
              "face PSNR dB |",
              "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(ranked, 1):
        p = "∞" if r["psnr"] in (None, float("inf")) else f"{r['psnr']:.1f}"
        lines.append(f"| {i} | {r['variant']} | {r['runs_as']} | {r['fps_b1']} | {r['best_fps']} | "
                     f"{r['ratio_vs_eager']} | {r['best_vs_eager']} | {r['median_ms']} | {p} |")
    if excluded:
        lines += ["", "Excluded (failed the gate): " + ", ".join(excluded)]
    return "\n".join(lines) + "\n"


def per_isa_markdown(per_isa: dict) -> str:
    if len(per_isa) < 2:
        return ""
    lines = ["", "The parity gate ran once, on this CPU as it is; a row under a cap reuses its verdict (without bf16 "
                 "the float parts compute f32, nearer FP32 than what passed).", "",
             "| ISA (oneDNN cap) | pick | FPS b=1 | best FPS | best × eager on that ISA |", "|---|---|---|---|---|"]
    for isa, top in per_isa.items():
        lines.append(f"| {isa} | {top['variant'] if top else 'none passes'} | {top['fps_b1'] if top else ''} | "
                     f"{top['best_fps'] if top else ''} | {top['best_vs_eager'] if top else ''} |")
    return "\n".join(lines) + "\n"


def speed_plot(bench_rows: list[dict], passed: set[str], resolution: int, path: Path) -> Path:
    """Bars: FPS at batch 1 and best throughput per variant; grey = failed the gate; lines: eager, real time."""
    from benchmarks.plots import pyplot, save

    from benchmarks.bench import REAL_TIME_FPS

    plt = pyplot()

    rows = [r for r in bench_rows if "fps" in r]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    ok = [r["name"] in passed or r["runtime"] == "pytorch" for r in rows]
    ax.barh(y, [r.get("throughput_fps", r["fps"]) for r in rows], color=["#9ecae1" if o else "#d9d9d9" for o in ok],
            label="best throughput")
    ax.barh(y, [r["fps"] for r in rows], height=0.5, color=["#3182bd" if o else "#969696" for o in ok],
            label="batch 1 latency mode")
    eager = next((r["fps"] for r in rows if r["runtime"] == "pytorch" and r.get("isa", "native") == "native"), None)
    if eager:
        ax.axvline(eager, color="k", ls=":", lw=1, label="PyTorch eager (native ISA)")
    ax.axvline(REAL_TIME_FPS, color="#e6550d", ls="--", lw=1, label=f"real time ({REAL_TIME_FPS:g} FPS)")
    ax.set_yticks(y, [r["name"] + ("" if r.get("isa", "native") == "native" else f" @{r['isa']}") for r in rows],
                  fontsize=8)
    ax.set_xlabel("frames per second")
    ax.set_title(f"AMNet at {resolution}×{resolution} (grey: failed the parity gate)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path, dpi=90)


def choose(args, resolution: int, out_dir: Path) -> tuple[dict, str]:
    from benchmarks.bench import machine_info
    from benchmarks.bench import markdown as bench_md

    parity = run_parity(args, resolution, out_dir / f"parity_{resolution}")
    bench = run_bench(args, resolution)
    ranked = rank(parity["variants"], bench["rows"], (bench.get("isas") or ["native"])[0])
    per_isa = {isa: next(iter(rank(parity["variants"], bench["rows"], isa)), None) for isa in bench.get("isas", [])}
    excluded = [f"{r['variant']} ({'; '.join(r['failures'])})" for r in parity["variants"] if not r["passed"]]
    phone, phone_line = phone_pick(ranked, parity["variants"])
    result = {"resolution": resolution, "build": display_path(args.build), "machine": machine_info(args.threads or 2),
              "ranked": ranked,
              "recommended": ranked[0] if ranked else None, "for_phone": phone, "for_phone_note": phone_line,
              "per_isa": per_isa, "excluded": excluded, "bench": bench,
              "parity_passed": all(r["passed"] for r in parity["variants"])}
    plot = speed_plot(bench["rows"], {r["variant"] for r in parity["variants"] if r["passed"]}, resolution,
                      out_dir / f"speed_{resolution}.png")
    from benchmarks.parity import markdown as parity_md

    parity["passed"] = result["parity_passed"]
    text = (choose_markdown(ranked, resolution, args.threads or 2, excluded, phone_line)
            + f"\nMeasured on {_machine_line(result['machine'])}.\n" + per_isa_markdown(per_isa)
            + f"\n![speed]({plot.name})\n\n"
            + bench_md(bench) + "\n" + parity_md(parity).replace("# Parity", "## Parity", 1)
            + f"\nPer-variant pictures (reference | variant | difference): `parity_{resolution}/parity_*.png`\n")
    write_text(out_dir / f"choose_{resolution}.json", json.dumps(result, indent=1))
    write_text(out_dir / f"choose_{resolution}.md", text)
    return result, text


def choose_outputs(out_dir, resolutions) -> None:
    """The names `choose` writes for these resolutions, checked before any work (its parity folder included)."""
    for r in resolutions:
        report_dir(out_dir, f"choose_{r}.json", f"choose_{r}.md", f"speed_{r}.png")
        check_output_dir(Path(out_dir) / f"parity_{r}", "parity.json", "parity.md", "parity.junit.xml")


def cmd_choose(args) -> int:
    out_dir = Path(args.report)
    choose_outputs(out_dir, [args.resolution])
    args.checkpoint = shipped_checkpoint(args, args.resolution)
    preflight(args, [args.resolution])
    result, text = choose(args, args.resolution, out_dir)
    print(json.dumps(result["ranked"], indent=1) if args.json else text)
    return 0 if result["recommended"] else EXIT_FAIL


PIPELINE_BATCHES = (1,)


def display_path(path) -> str:
    """Relative to the current folder when under it: reports carry no machine-specific absolute paths."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def build_smoothed_int8(checkpoint, build_dir: Path, resolution: int, quiet: bool) -> None:
    """The GC-smoothed OpenVINO INT8 beside the default one (`*_gcs_*`), where a scope ships for this size."""
    from export.int8_scope import PIPELINE_SMOOTH_GC, shipped_smoothed_scope
    from export.pipeline import BuildOptions, ExportOptions, build, export_checkpoint

    scope = shipped_smoothed_scope(resolution)
    missing = registry.get("openvino").missing(build=True)
    if scope is None or missing:
        print(f"GC-smoothed INT8 at {resolution}² skipped: {missing or 'no scope ships for this size'}")
        return
    export_checkpoint(checkpoint, build_dir, ExportOptions(PIPELINE_BATCHES, resolution, progress=not quiet,
                                                           smooth_gc=PIPELINE_SMOOTH_GC))
    build(build_dir, "openvino", build_dir, BuildOptions(("int8",), PIPELINE_BATCHES, resolution, progress=not quiet,
                                                         int8_scope=scope))


def _machine_line(m: dict) -> str:
    cap = f", capped at {m['isa_cap']}" if m.get("isa_cap") else ""
    return (f"{m['cpu']} ({m['cores']} cores, best ISA {m.get('isa_name', '?')}{cap}; "
            f"INT8/FP16 float parts: {m.get('float_precision', 'auto')})")


def cmd_pipeline(args) -> int:
    """export → build every runtime this machine has → parity → bench → choose, into one report folder."""
    from amnet.checkpoint import load_checkpoint, summary
    from export.pipeline import BuildOptions, ExportOptions, build, export_checkpoint

    t0 = time.time()
    out = report_dir(args.output, "report.md", "report.json")
    build_dir = check_output_dir(out / "build", "manifest.json")
    args.build = str(build_dir)
    choose_outputs(out, args.resolutions)
    # No checkpoint given: each size runs its shipped model (the 128² one, and its 256² fine-tune at 256²).
    checkpoints = {r: shipped_checkpoint(args, r) for r in args.resolutions}
    for r in args.resolutions:
        args.checkpoint = checkpoints[r]
        preflight(args, [r])
    sections = []
    infos = {}
    for r, path in checkpoints.items():
        infos[r] = summary(load_checkpoint(path))
        infos[r]["path"] = display_path(infos[r]["path"])
        print(f"model at {r}²: {infos[r]['path']} ({infos[r]['format']}, {infos[r]['parameters']})")
    quiet = args.quiet
    for r in args.resolutions:
        export_checkpoint(checkpoints[r], build_dir, ExportOptions(PIPELINE_BATCHES, r, progress=not quiet))
        for name, backend in registry.backends().items():
            if backend.builder is None:
                continue
            missing = backend.missing(build=True)
            if missing:  # e.g. TensorRT on a machine without a GPU: said once, the run goes on
                print(f"{name} skipped: {missing}")
                continue
            source = checkpoints[r] if backend.builds_from == "checkpoint" else build_dir
            build(source, name, build_dir, BuildOptions(backend.precisions, PIPELINE_BATCHES, r, progress=not quiet))
        build_smoothed_int8(checkpoints[r], build_dir, r, quiet)
    results = {}
    for r in args.resolutions:
        args.checkpoint = checkpoints[r]  # the reference and the eager timing of this size
        result, text = choose(args, r, out)
        results[r] = result
        sections.append(text)
    minutes = (time.time() - t0) / 60
    models = [f"at {r}² `{i['path']}` ({i['format']}, sha256 {i['sha256'][:12]}…, parameters {i['parameters']})"
              for r, i in infos.items()]
    head = ["# amnet-deploy report", "", f"Model: {'; '.join(models)}.",
            f"Generated in {minutes:.1f} min on {_machine_line(results[args.resolutions[0]]['machine'])}.", ""]
    report = "\n".join(head) + "\n".join(sections)
    write_text(out / "report.md", report)
    write_text(out / "report.json", json.dumps(
        {"models": {str(r): i for r, i in infos.items()}, "minutes": round(minutes, 2),
         "results": {str(k): v for k, v in results.items()}},
        indent=1, default=float))
    print(report)
    print(f"report → {out}/report.md (+ report.json, parity_*/, choose_*.md)")
    # The report is the product: variants that fail the gate are listed and excluded, not fatal.
    # `amnet-deploy parity` is the CI gate that exits 1 on any failure.
    return 0 if all(v["recommended"] for v in results.values()) else EXIT_FAIL


def add_commands(sub) -> None:
    def common(s, build=True, gate=True, timed=True):
        checkpoint_arg(s, "for the reference and eager timing ", per_resolution=True)
        if build:
            s.add_argument("--build", required=True, help="build folder (its manifest.json lists the variants)")
        s.add_argument("--resolution", type=resolution, default=256)
        if gate:  # the options of the fidelity gate (bench times; it compares nothing)
            s.add_argument("--inputs", help="npz with source/audio/pose/eye (default: held-out real inputs)")
            s.add_argument("--samples", type=positive("--samples"), default=24,
                           help="held-out samples to use (at most the 47 calibration_data/heldout.npz holds)")
            s.add_argument("--reference", help="npz of reference outputs saved earlier (no torch needed)")
            s.add_argument("--thresholds", help="thresholds JSON (default amnet/core/thresholds.json)")
            s.add_argument("--threshold", action="append", metavar="GROUP.OUT.METRIC_min=V",
                           help="override one limit, e.g. int8.face.psnr_min=30 or openvino-int8.face.ssim_min=0.98 "
                                "(repeatable; beats the file)")
        s.add_argument("--only", help="comma-separated substrings of variant names to include")
        s.add_argument("--threads", type=THREADS, default=min(2, os.cpu_count() or 1))
        if timed:  # the options of the timing (parity times nothing)
            s.add_argument("--iters", type=positive("--iters"), default=30, help="timed iterations per variant")
            s.add_argument("--passes", type=positive("--passes"), default=PASSES,
                           help=f"child processes per variant, each timing a share of --iters, the order reversed every "
                                f"other pass (an odd number > 1 is rounded up: forward and reverse pairs centre every "
                                f"variant), so that a machine's drift moves every variant alike (default {PASSES})")
            s.add_argument("--isa", type=isa_caps, default=["native"], metavar="CAP[,CAP…]",
                           help="bench once per oneDNN ISA cap, e.g. native,AVX2,AVX512_CORE (ONEDNN_MAX_CPU_ISA for "
                                "OpenVINO and PyTorch): the rows an AVX2 laptop would see, from one machine")
        float_precision_arg(s)
        if gate:
            s.add_argument("--no-faces", action="store_true",
                           help="waive the dlib detection/landmark checks (otherwise they must run, or the gate fails)")
        s.add_argument("--no-verify", action="store_true", help="run artifacts whose sha256 differs from the manifest")
        s.add_argument("--quiet", action="store_true")

    s = sub.add_parser("parity", help="fidelity gate: every built variant vs PyTorch FP32 (exit 1 on failure)")
    common(s, timed=False)
    s.add_argument("--report", default="reports/parity", help="folder for JSON, Markdown, JUnit XML and PNGs")
    s.set_defaults(func=cmd_parity)

    s = sub.add_parser("diagnose", help="where a variant parts from PyTorch FP32: SNR at every conv and module "
                                        "boundary, the first one below the floor named")
    checkpoint_arg(s, "for the reference forward ", per_resolution=True)
    s.add_argument("--build", required=True, help="build folder (its manifest.json lists the variants)")
    s.add_argument("--variant", required=True, help="a variant name as parity prints it, e.g. openvino-int8-b1-r128")
    s.add_argument("--inputs", help="npz with source/audio/pose/eye (default: held-out real inputs)")
    s.add_argument("--samples", type=positive("--samples"), default=8, help="held-out samples to use")
    s.add_argument("--snr-min", type=number("--snr-min", 0, 200),
                   help="SNR floor in dB (default by precision: fp32 80, fp16 45, int8 20)")
    s.add_argument("--sensitivity", action="store_true",
                   help="also scan every quantizable conv (alone in INT8, alone float) and write the smallest float "
                        "scope that meets --budget-db (OpenVINO/NNCF, on the variant's FP32 ONNX)")
    s.add_argument("--budget-db", type=number("--budget-db", 0, 200, above=True), default=40.0,
                   help="face PSNR the generated INT8 scope must keep")
    s.add_argument("--calib-samples", type=positive("--calib-samples"), default=16)
    s.add_argument("--scope-out", help="where the scope file goes (default REPORT/int8_scope.json)")
    s.add_argument("--report", default="reports/diagnose", help="folder for JSON, Markdown and the plots")
    s.set_defaults(func=cmd_diagnose)

    s = sub.add_parser("bench", help="latency, FPS, RSS, cold start and roofline of every variant vs eager")
    common(s, gate=False)
    s.add_argument("--report", default="reports/bench")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("choose", help="parity then bench: the ranked variants that pass, and a recommendation")
    common(s)
    s.add_argument("--report", default="reports/choose")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_choose)

    s = sub.add_parser("pipeline", help="the main job: export → build → parity → bench → choose, one report")
    common(s, build=False)
    s.add_argument("--output", default="reports/latest")
    s.add_argument("--resolutions", type=lambda t: [resolution(x) for x in t.split(",")], default=[256, 128])
    s.set_defaults(func=cmd_pipeline)
