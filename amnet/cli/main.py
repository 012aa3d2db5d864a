"""`amnet-deploy`: export, build, run and verify AMNet.

Exit codes: 0 pass, 1 a check failed (`parity`, `export`'s parity, `choose`
without a passing variant), 2 usage or input error, 3 internal error. Errors are
one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from amnet.core.errors import EXIT_FAIL, EXIT_INTERNAL, EXIT_USAGE, AmnetError, InputError, first_line
from amnet.cli.args import (THREADS, check_resolution, checkpoint_arg, float_precision_arg, ints, number,
                            output_file, positive, resolution, shipped_checkpoint, unwritable, words)
from amnet.core import artifacts
from amnet.core.fileio import load_npz
from runtimes import registry

# ---------------------------------------------------------------- commands

def cmd_info(args) -> int:
    from amnet.checkpoint import load_checkpoint, summary

    info = summary(load_checkpoint(args.checkpoint))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg = info["config"]
    print(f"{info['path']}\n  format      {info['format']}  (sha256 {info['sha256'][:16]}…)")
    print(f"  holds       {', '.join(info['components'])}")
    print(f"  config      GC k={cfg['kernel']}, L={cfg['landmarks']}, trained at {cfg['resolution']}², "
          f"audio deltas: {cfg['audio_delta']}")
    for name, n in info["parameters"].items():
        print(f"  params      {name:<14}{n:>12,}")
    for res, g in info.get("gflops_per_frame", {}).items():
        print(f"  GFLOP/frame {res:<14}{g:>12.2f}")
    if cfg.get("extra"):
        extra = {k: v for k, v in cfg["extra"].items() if k != "final_losses"}
        print(f"  training    {json.dumps(extra)}")
    return 0


# Packages of the optional extras, so a command that needs one says which `pip install` brings it.
EXTRAS = {"torch": "export", "safetensors": "export", "onnx": "export", "onnxsim": "export", "nncf": "export",
          "librosa": "signals", "soundfile": "signals", "av": "signals"}
INFER_CHUNK = 8  # samples per call for models without a fixed batch: bounded memory for any N


def cmd_infer(args) -> int:
    import time

    from amnet.core.fileio import check_output_path, refuse_overwriting, save_npz
    from amnet.core.runner import check_outputs, run_in_chunks
    from runtimes.registry import files_read, open_runner

    check_output_path(args.output)  # before any work: a device, FIFO or folder is refused up front
    refuse_overwriting(args.output, args.inputs, *files_read(args.model))  # the model, all its files, the inputs
    feeds = load_npz(args.inputs)
    if args.resolution and "source" in feeds:
        from amnet.realdata import resize_source

        feeds["source"] = resize_source(feeds["source"], args.resolution)
    if "source" in feeds and getattr(feeds["source"], "ndim", 0) == 4:
        check_resolution(*feeds["source"].shape[-2:], batch=min(len(feeds["source"]), INFER_CHUNK))
    with open_runner(args.model, threads=args.threads, verify=not args.no_verify) as runner:
        check_audio_delta(feeds, runner.metadata.get("audio_delta"))
        feeds.pop("audio_delta", None)
        wanted = {s.name for s in runner.inputs}
        feeds = {k: v for k, v in feeds.items() if k in wanted} if wanted <= set(feeds) else feeds
        fixed = runner.inputs[0].batch
        t = time.perf_counter()
        if not feeds or not wanted <= set(feeds):
            runner.infer(feeds)  # names what is missing, in one line
        out = run_in_chunks(runner.infer, feeds, fixed or INFER_CHUNK, pad=fixed is not None)
        t = time.perf_counter() - t
    check_outputs(out, f"{runner.name} ({Path(args.model).name})")
    save_npz(args.output, out)
    shapes = ", ".join(f"{k} {'×'.join(map(str, v.shape))}" for k, v in out.items())
    print(f"{runner.name} ({runner.precision}): {shapes} → {args.output}  [{t * 1000:.1f} ms]")
    return 0


def check_audio_delta(feeds: dict, expected: str | None) -> None:
    """IN.npz may say which delta convention its audio uses; refuse a mismatch with the model."""
    given = feeds.get("audio_delta")
    if given is not None and expected and str(given) != expected:
        raise InputError(f"the inputs' audio features use '{given}' deltas but the model was trained with "
                         f"'{expected}' deltas: re-extract with `amnet-deploy signals --delta {expected}`")


def cmd_signals(args) -> int:
    import numpy as np

    from amnet.core.fileio import check_output_dir, save_npz, write_text
    from amnet.signals import extract

    out = check_output_dir(args.output, "signals.npz", "report.json")
    arrays, report = extract(args.video, args.audio, args.delta, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    arrays["audio_delta"] = np.array(args.delta)
    save_npz(out / "signals.npz", arrays, compressed=True)
    write_text(out / "report.json", json.dumps(report, indent=1))
    print(f"{len(arrays['face'])} frames with a face of {report['frames']} → {out / 'signals.npz'}; "
          f"skipped {len(report['no_face'])} without a face, {len(report['no_audio'])} past the audio's end")
    return 0


def cmd_reenact(args) -> int:
    from amnet.reenact.run import Options, reenact

    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    summary = reenact(Options(
        source=args.source, audio=args.audio, output=args.output, model=args.model, runtime=args.runtime,
        precision=args.precision, drive=args.drive, from_report=args.from_report, pose=args.pose, resolution=args.resolution, fps=args.fps,
        side_by_side=args.side_by_side, stream=args.stream, drop_late=args.drop_late, pcm_rate=args.pcm_rate,
        threads=args.threads, no_verify=args.no_verify, progress=not args.quiet, warn=warn))
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    split = summary["split_s"]
    line = (f"{summary['frames']} frames → {summary['output']} in {summary['seconds']:.1f} s "
            f"({summary['fps_end_to_end']} FPS end to end: features {split['features']:.2f} s, "
            f"model {split['model']:.2f} s, encode {split['encode']:.2f} s; setup {summary['setup_s']:.1f} s) on "
            f"{summary['runtime']} "
            f"{summary['precision']} at {summary['resolution']}², model {summary['model']} ({summary['model_from']})")
    print(line)
    if "latency_ms" in summary:
        lat = summary["latency_ms"]
        dropped = f"; {summary['dropped_frames']} frames repeated (--drop-late)" if summary["dropped_frames"] else ""
        end = (f"; the {lat['end_frames']} frames completed by the stream's end, all at once: up to "
               f"{lat['end_over_floor_max']} ms above their floor" if lat["end_frames"] else "")
        live = (f"{lat['live_over_floor_p99']} ms over the {lat['live_frames']} live frames" if lat["live_frames"]
                else "no live frames, every window reaches past the audio's end")
        print(f"latency from the arrival of a frame's audio centre to its encoded frame: p50 {lat['p50']} ms, p99 {lat['p99']} ms "
              f"(the centred window's floor: {lat['floor_p50']} ms; p99 above it: {live}, "
              f"{lat['over_floor_p99']} ms over all{end}){dropped}")
    return 0


def cmd_dataset(args) -> int:
    from amnet.realdata import build, read_clips

    clips = read_clips(Path(args.clips)) if args.clips else None
    meta = build(Path(args.media), Path(args.output), Path(args.train_output), args.delta,
                 args.calib_samples, args.heldout_samples, clips=clips)
    for c in meta["clips"]:
        print(f"  {c['identity']:<26} train {c['train_frames']:>4}  held-out {c['heldout_frames']:>4}  "
              f"no face {len(c['no_face'])}")
    print(f"→ {args.output}/calib.npz, heldout.npz; {meta['train_samples']} training frames → {args.train_output}")
    return 0


def cmd_train(args) -> int:
    import numpy as np

    from amnet.model import AMNetConfig
    from amnet.train import TrainConfig, check_training_data, train

    data = load_npz(args.data)
    missing = {"face", "audio", "pose", "eye", "landmarks", "identity"} - set(data)
    if missing:
        raise InputError(f"{args.data} lacks {', '.join(sorted(missing))}: build it with `amnet-deploy dataset`")
    check_training_data(data)
    if args.batch > len(data["face"]):  # no full batch: zero steps, an untrained checkpoint
        raise InputError(f"--batch {args.batch} is more than the {len(data['face'])} pairs in {args.data}")
    cfg = AMNetConfig(kernel=args.kernel, landmarks=int(data["landmarks"].shape[1]), resolution=args.resolution,
                      audio_delta=str(data["audio_delta"]) if "audio_delta" in data else args.delta)
    result = train({k: np.asarray(v) for k, v in data.items()}, Path(args.output), cfg,
                   TrainConfig(args.epochs, args.batch, args.lr, args.resolution, args.minutes, threads=args.threads,
                               decay_from=args.decay_from, flip=args.flip, crop=args.crop),
                   resume=args.resume, init=args.init, overwrite=args.overwrite)
    last = result["history"][-1] if result["history"] else {}
    print(f"{result['steps']} steps; last epoch {json.dumps(last)} → {result['checkpoint']}")
    return 0


def cmd_evaluate(args) -> int:
    from amnet.checkpoint import load_checkpoint
    from benchmarks.evaluate import evaluate

    if args.grid:  # before the minutes of work, not after
        output_file(args.grid, "--grid")
    train = Path(args.train) if args.train else None
    if train is not None and not train.is_file():
        raise InputError(f"{train} not found: build it with `amnet-deploy dataset` (or calibration_data/rebuild.sh)")
    args.checkpoint = shipped_checkpoint(args, args.resolution)
    result = evaluate(load_checkpoint(args.checkpoint).require_full(), args.resolution,
                      Path(args.grid) if args.grid else None, train)
    print(json.dumps(result, indent=1))
    return 0


def cmd_export(args) -> int:
    from export.pipeline import PARITY_MAX_ABS, ExportOptions, export_checkpoint

    opts = ExportOptions(tuple(args.batch), args.resolution, args.dynamic_batch, tuple(args.parts),
                         not args.no_simplify, not args.no_parity, args.threads, not args.quiet, args.gc_form,
                         args.smooth_gc)
    before = {a["file"] for a in artifacts.read(Path(args.output))["artifacts"]} if Path(args.output).is_dir() else set()
    args.checkpoint = shipped_checkpoint(args, args.resolution)
    manifest = export_checkpoint(args.checkpoint, Path(args.output), opts)
    made = [a for a in manifest["artifacts"] if a["file"] not in before and a["runtime"] == "onnxruntime"
            and a["precision"] == "fp32"]  # this call's files: an old failure in the folder is not this export's
    print_artifacts(made)
    failed = [a["name"] for a in made if a.get("parity", {}).get("passed") is False]
    if failed:
        print(f"parity FAILED (> {PARITY_MAX_ABS:g} max abs): {', '.join(failed)}")
        return EXIT_FAIL
    return 0


def print_artifacts(arts: list[dict]) -> None:
    print(f"{'artifact':<40}{'runtime':<13}{'form':<12}{'precision':<11}{'max abs err':>24}")
    for a in arts:
        p = a.get("parity") or {}
        err = ", ".join(f"{k} {v['max_abs']:.1e}" for k, v in p.get("outputs", {}).items())
        print(f"{a['name']:<40}{a['runtime']:<13}{a.get('gc_form') or '':<12}{a['precision']:<11}{err:>24}")


def cmd_build(args) -> int:
    from export.pipeline import BuildOptions, build

    opts = BuildOptions(tuple(args.precision), tuple(args.batch), args.resolution, args.calib_samples, args.preset,
                        args.accuracy_control, args.max_drop, args.version_compatible, not args.quiet, args.gc_form,
                        Path(args.int8_scope) if args.int8_scope else None)
    manifest = build(Path(args.model), args.runtime, Path(args.output), opts)
    print_artifacts([a for a in manifest["artifacts"] if a["runtime"] == args.runtime])
    return 0


# ---------------------------------------------------------------- parser

class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (and exit 2), pointing at --help instead of printing the usage block; --help names
    each option's default, as the docs do."""

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        action.help = with_default(action)
        return action

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def cmd_serve(args) -> int:
    from amnet.serve.local import ServeOptions, serve_forever

    opts = ServeOptions(args.model, args.host, args.port, args.replicas, args.streams_per_replica, args.threads,
                        args.token, args.max_session_s, args.runtime, args.precision, not args.no_verify)
    if args.write_config:
        from amnet.serve.config import write_config

        print(f"Ray Serve config → {write_config(opts, args.write_config)} (deploy: serve deploy {args.write_config})")
        return 0
    return serve_forever(opts)


def cmd_loadtest(args) -> int:
    from benchmarks.loadtest import main_args

    return main_args(args)


def with_default(action: argparse.Action) -> str | None:
    """An option's help ending in its default; a flag, an option without a default, or a help that already says
    its default is left as it is."""
    text, default = action.help, action.default
    if (not action.option_strings or default in (None, False, argparse.SUPPRESS) or text == argparse.SUPPRESS
            or "default" in (text or "").lower()):
        return text
    shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
    return f"{text or ''} (default: {shown.replace('%', '%%')})".lstrip()


def version() -> str:
    """The installed package's version; from a source tree that is not installed, the package's own."""
    from importlib import metadata

    try:
        return metadata.version("amnet-deploy")
    except metadata.PackageNotFoundError:
        from amnet import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    from amnet.core.artifacts import Precision

    p = OneLineParser(prog="amnet-deploy", description=__doc__.split("\n")[0],
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"amnet-deploy {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("info", help="what a checkpoint holds: format, config, parameters, GFLOPs")
    checkpoint_arg(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("infer", help="run any model file on saved inputs (IN.npz → OUT.npz)")
    s.add_argument("model", help="checkpoint, .onnx, OpenVINO .xml, TensorRT .engine, or an export folder")
    s.add_argument("--inputs", required=True, help="npz with source (N×3×H×W in [-1,1]), audio (N×1×64×60), "
                                                   "pose (N×3), eye (N×2); or f_geo for a ψ-only model")
    s.add_argument("--output", required=True, help="npz to write: face, landmarks")
    s.add_argument("--resolution", type=resolution, help="resize source to R×R first")
    s.add_argument("--threads", type=THREADS, help="CPU threads (default: the runtime's)")
    s.add_argument("--no-verify", action="store_true", help="run an artifact even if its sha256 differs from "
                                                             "its manifest")
    float_precision_arg(s)
    s.set_defaults(func=cmd_infer)

    s = sub.add_parser("signals", help="drive signals from a video and a speech track")
    s.add_argument("video")
    s.add_argument("--audio", required=True, help="speech WAV/FLAC (resampled to 44.1 kHz)")
    s.add_argument("--output", required=True, help="folder for signals.npz and report.json")
    s.add_argument("--delta", choices=("official", "time"), default="official",
                   help="delta convention: 'official' (along coefficients, as the release) or 'time'")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_signals)

    from amnet.reenact.media import MAX_RATE, MIN_RATE

    s = sub.add_parser(
        "reenact", help="speech + a face → a talking-head MP4 (any built runtime; offline or --stream)",
        description="Speech + a face → a talking-head MP4 with the speech as its sound track. The shipped model "
                    "knows only the three people of calibration_data/ (it cannot reenact a face it never saw: "
                    "such a face gets a warning). Without --drive, the head holds the source's pose (or --pose) "
                    "and blinks on a fixed natural schedule. Each frame needs ~0.38 s of speech after its own "
                    "moment (its audio window is centred): --stream measures that latency.")
    s.add_argument("--source", required=True, metavar="FACE", help="image or video of a person the model knows "
                   "(a video: its first frame with a face); cropped and aligned as the training data")
    s.add_argument("--audio", required=True, metavar="SPEECH", help="WAV/FLAC/MP3/OGG/… at any rate and channel "
                   "count (resampled to 44.1 kHz mono), or - for signed 16-bit mono PCM on stdin (see --pcm-rate)")
    s.add_argument("--output", required=True, metavar="OUT.mp4", help="H.264 (else MPEG-4) + AAC; written to a "
                   "temp file and renamed when complete")
    s.add_argument("--model", help="a checkpoint, a built artifact or a build folder (with --runtime/--precision); "
                   "default: the shipped checkpoint (or --from-report's recommendation)")
    s.add_argument("--from-report", metavar="DIR", help="without --model: the variant `choose` recommended in this "
                   "report folder (make run writes reports/latest)")
    s.add_argument("--runtime", help="for a build folder: which runtime's artifacts (default onnxruntime)")
    s.add_argument("--precision", help="for a build folder: which precision (default fp32)")
    s.add_argument("--drive", metavar="VIDEO", help="take head pose and blinks per frame from this video")
    s.add_argument("--pose", metavar="YAW,PITCH,ROLL", help="hold this head pose (degrees) instead of the source's")
    s.add_argument("--resolution", type=resolution, help="for a checkpoint (default 128; artifacts fix their own)")
    s.add_argument("--fps", type=float, default=25.0)
    s.add_argument("--side-by-side", action="store_true", help="source (or drive) face | generated face")
    s.add_argument("--stream", action="store_true", help="read the audio paced in real time (a file plays at 1×) "
                   "and emit each frame as soon as its window is complete; report per-frame latency")
    s.add_argument("--drop-late", action="store_true", help="--stream on a CPU slower than real time: skip frames "
                   "already a frame period late and repeat the next computed one (bounded latency, fewer distinct frames)")
    s.add_argument("--no-verify", action="store_true", help="run an artifact whose sha256 differs from its manifest")
    s.add_argument("--pcm-rate", type=int, default=44100, help=f"sample rate of PCM on stdin "
                   f"({MIN_RATE // 1000}–{MAX_RATE // 1000} kHz)")
    s.add_argument("--threads", type=THREADS)
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    float_precision_arg(s)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_reenact)

    s = sub.add_parser("dataset", help="rebuild calibration_data/ (and the training set) from the named packages")
    s.add_argument("--media", default="work/media", help="folder prepared by calibration_data/rebuild.sh")
    s.add_argument("--clips", help="JSON list of {identity, video, speech_train, speech_heldout} for your own "
                                   "videos (default: the shipped clips under --media)")
    s.add_argument("--output", default="calibration_data")
    s.add_argument("--train-output", default="work/train.npz")
    s.add_argument("--delta", choices=("official", "time"), default="official")
    s.add_argument("--calib-samples", type=positive("--calib-samples"), default=64)
    s.add_argument("--heldout-samples", type=positive("--heldout-samples"), default=48)
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("train", help="train AMNet (L_G + 100·L_C + L_Adv) on a signals dataset")
    s.add_argument("data", help="training npz from `amnet-deploy dataset` (face, audio, pose, eye, landmarks, identity)")
    s.add_argument("--output", required=True, help="run folder: amnet.safetensors + train_state.pt each epoch")
    s.add_argument("--epochs", type=positive("--epochs"), default=100)
    s.add_argument("--batch", type=positive("--batch"), default=16)
    s.add_argument("--lr", type=number("--lr", 0, 1, above=True), default=2e-4)
    s.add_argument("--resolution", type=resolution, default=256)
    s.add_argument("--kernel", type=int, choices=(1, 3), default=1, help="GC kernel size")
    s.add_argument("--delta", choices=("official", "time"), default="official")
    s.add_argument("--decay-from", type=positive("--decay-from"), metavar="EPOCH",
                   help="from this epoch on, decay the learning rate linearly to 0 at --epochs (pix2pix schedule)")
    s.add_argument("--flip", action="store_true",
                   help="mirror half the pairs (image, yaw/roll, eyes, 68 landmarks): more poses from few videos")
    s.add_argument("--minutes", type=number("--minutes", 0, above=True),
                   help="stop after this much wall time (checkpoint kept)")
    s.add_argument("--threads", type=THREADS)
    again = s.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue from the run folder's last epoch")
    again.add_argument("--overwrite", action="store_true",
                       help="start afresh in a run folder that already holds a run, replacing it")
    s.add_argument("--crop", type=positive("--crop"), metavar="PX",
                   help="train on random PX×PX windows of the --resolution pairs (a quarter of the cost at half the "
                        "side; but InstanceNorm over a window is not over the face: the 256² fine-tune stalled on "
                        "128² crops and moved on whole frames, see the model card)")
    s.add_argument("--init", metavar="CHECKPOINT",
                   help="fine-tune: start from this checkpoint's weights (e.g. the 128² default, at --resolution 256)")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="held-out quality: SSIM/PSNR vs the real target, dlib detection rate")
    checkpoint_arg(s, per_resolution=True)
    s.add_argument("--resolution", type=resolution, default=128)
    s.add_argument("--grid", help="write a source | target | generated picture here (PNG)")
    s.add_argument("--train", help="training npz: also report the retrieval ceiling (each held-out target's "
                                   "best SSIM against the same person's training frames)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("export", help="checkpoint → ONNX (grouped GC per batch bucket, or dynamic batch)")
    checkpoint_arg(s, per_resolution=True)
    s.add_argument("--output", required=True, help="folder for the .onnx files and manifest.json")
    s.add_argument("--batch", type=ints, default=[1], help="batch buckets, e.g. 1,2,4,8 (default 1)")
    s.add_argument("--resolution", type=resolution, default=256)
    s.add_argument("--dynamic-batch", action="store_true", help="also export the elementwise-GC dynamic-batch model")
    s.add_argument("--parts", type=words(("full", "fuser", "reenactor")), default=["full"],
                   help="full, fuser (φ alone), reenactor (ψ on source + f_geo); comma-separated")
    s.add_argument("--gc-form", choices=("grouped", "elementwise"), default="grouped",
                   help="GC in fixed-batch files: one grouped conv over batch-folded channels (default), or a "
                        "per-channel multiply-add (k=1) for runtimes without a kernel for run-time conv weights")
    s.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    s.add_argument("--no-parity", action="store_true", help="skip the ORT-vs-PyTorch check on held-out inputs")
    s.add_argument("--threads", type=THREADS)
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--smooth-gc", type=float, metavar="ALPHA",
                   help="fold per-channel factors (calibration abs-max^ALPHA) out of every GC and into the conv that "
                        "reads it: the same function, evener ranges, so those convs can run INT8 (pair with a "
                        "scope from `python -m benchmarks.gc_ranges --moves`)")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("build", help="compile for a runtime: OpenVINO IR, FP16/INT8 ONNX, TensorRT engines, CUDA "
                                     "plans, .tflite, .pte")
    s.add_argument("model", help="an export folder, an .onnx file, or a checkpoint")
    builders = {name: b for name, b in registry.backends().items() if b.builder is not None}
    s.add_argument("--runtime", choices=tuple(builders), required=True,
                   help="; ".join(f"{n}: {b.description}" for n, b in builders.items()))
    s.add_argument("--precision", type=words(tuple(p.value for p in Precision)),
                   default=None, help="comma-separated (default: all the runtime builds)")
    s.add_argument("--output", required=True)
    s.add_argument("--batch", type=ints, default=[1])
    s.add_argument("--resolution", type=resolution, default=256)
    s.add_argument("--calib-samples", type=positive("--calib-samples"), default=64,
                   help="INT8 calibration samples from calibration_data/ (at most the 63 it holds)")
    s.add_argument("--preset", choices=("performance", "mixed"), default="mixed",
                   help="NNCF preset (mixed: asymmetric activations; measured +1 dB PSNR here)")
    s.add_argument("--accuracy-control", action="store_true",
                   help="INT8 with nncf.quantize_with_accuracy_control (PSNR metric)")
    s.add_argument("--gc-form", choices=("grouped", "elementwise"), default="grouped",
                   help="build from the grouped (default) or the elementwise-GC export, e.g. for TensorRT when it "
                        "has no kernel for a conv with run-time weights and group = N·C")
    s.add_argument("--int8-scope", metavar="FILE", help="what INT8 keeps float: a scope file written by "
                   "`amnet-deploy diagnose --sensitivity` (default: export/int8_scope.py)")
    s.add_argument("--version-compatible", action="store_true",
                   help="TensorRT: build version-compatible engines (run on later TensorRT versions)")
    s.add_argument("--max-drop", type=number("--max-drop", 0, 50), default=6.0,
                   help="accuracy control: max drop of the face PSNR vs FP32, capped at 50 dB "
                        "(6 → keep ≥ 44 dB; 42 dB measured SSIM 0.967-0.976 here); the most harmful layers "
                        "are reverted to float until it holds")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_build)

    s = sub.add_parser("serve", help="a Ray Serve app on 127.0.0.1: live WebSocket streams, offline jobs, metrics")
    s.add_argument("model", metavar="MODEL|BUILD_DIR", help="a built artifact, a checkpoint or a build folder "
                   "(with --runtime/--precision)")
    s.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    s.add_argument("--port", type=positive("--port", 65535), default=8000)
    s.add_argument("--replicas", type=positive("--replicas"), default=1)
    s.add_argument("--streams-per-replica", type=positive("--streams-per-replica"), default=4,
                   help="live sessions a replica holds; more are refused with close code 1013")
    s.add_argument("--threads", type=THREADS, help="runtime threads per replica (default: the cores shared out)")
    s.add_argument("--token", help="bearer token (default: $AMNET_SERVE_TOKEN, else a random one printed once)")
    s.add_argument("--max-session-s", type=number("--max-session-s", 1, 86400), default=600.0)
    s.add_argument("--runtime", help="for a build folder: which runtime's artifacts (default onnxruntime)")
    s.add_argument("--precision", help="for a build folder: which precision (default fp32)")
    s.add_argument("--no-verify", action="store_true", help="run an artifact whose sha256 differs from its manifest")
    s.add_argument("--write-config", metavar="FILE", help="write the Ray Serve config (serve deploy) and exit")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("loadtest", help="N WebSocket clients streaming real speech at 1× to a serve URL")
    from benchmarks.loadtest import add_arguments

    add_arguments(s)
    s.set_defaults(func=cmd_loadtest)

    from amnet.cli.harness import add_commands

    add_commands(sub)
    return p


def _one_line_warnings(message, category, filename, lineno, file=None, line=None):
    print(f"amnet-deploy: warning: {first_line(message, 10_000)}", file=sys.stderr)


def _one_line(text) -> str:
    """A message stays one line even when it quotes a file name holding a newline."""
    return str(text).replace("\r", "\\r").replace("\n", "\\n")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup path (temp files, pending build files) runs."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading

    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main else None
    try:
        return _main(argv)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _quiet_without_home() -> None:
    """Where HOME is unwritable (a service account, a read-only container), ONNX Runtime warns on every run that it
    cannot keep its telemetry device id there, and matplotlib that it cannot make its config folder: ONNX
    Runtime's documented opt-out and a config folder of this process's own (removed at exit) say nothing. Set
    before either library loads; the benchmark children inherit them."""
    import atexit
    import shutil
    import tempfile

    if not unwritable(Path.home()):
        return
    if not os.environ.get("ORT_DISABLE_TELEMETRY"):  # unset or empty; a user's own value stands
        os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    if not os.environ.get("MPLCONFIGDIR"):
        folder = tempfile.mkdtemp(prefix="amnet-mplconfig-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ["MPLCONFIGDIR"] = folder


def _main(argv: list[str] | None) -> int:
    prog = "amnet-deploy"  # its command once parsed: the parser itself loads AMNET_BACKENDS plugins, which may fail
    try:
        _quiet_without_home()
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
            return e.code if isinstance(e.code, int) else EXIT_USAGE
        prog = f"amnet-deploy {args.command}"
        empty = [k for k in ("output", "report", "train_output", "scope_out", "grid")
                 if isinstance(getattr(args, k, None), str) and not getattr(args, k).strip()]
        if empty:  # Path("") is the current folder: an empty name must not write there
            raise InputError(f"--{empty[0].replace('_', '-')} is empty")
        if getattr(args, "float_precision", None):
            from amnet.core.cpu import FLOAT_PRECISION_ENV

            os.environ[FLOAT_PRECISION_ENV] = args.float_precision  # runners, and benchmark children, read it
        if getattr(args, "precision", None) is None and args.command == "build":
            args.precision = [str(p) for p in registry.get(args.runtime).precisions]
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings
            warnings.filterwarnings("once", category=UserWarning, module="amnet")
            return args.func(args)
    except AmnetError as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except ImportError as e:  # an optional extra this command needs (the torch-free install has none)
        top = (e.name or "").split(".")[0]
        extra = EXTRAS.get(top)
        if extra is None:
            return _internal_error(prog, e)
        print(f"{prog}: error: this command needs {top}, which is not installed: "
              f"pip install 'amnet-deploy[{extra}]'", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:  # disk full, read-only folder, permission denied: the user's to fix
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"{prog}: error: {_one_line(e.strerror or e)}{_one_line(where)}", file=sys.stderr)
        return EXIT_USAGE
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - a bug of ours: one line, and an exit code no gate reads as "failed"
        return _internal_error(prog, e)


def _internal_error(prog: str, e: Exception) -> int:
    if os.environ.get("AMNET_DEBUG"):
        raise e
    what = f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__  # named once, not twice
    print(f"{prog}: internal error: {what} "
          "(please report it; AMNET_DEBUG=1 shows the traceback)", file=sys.stderr)
    return EXIT_INTERNAL
