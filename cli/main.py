"""`amnet-deploy`: export, build, run and verify AMNet.

Every subcommand prints one clear line and exits 2 on bad input (never a
traceback); `parity` exits 1 when a variant fails its fidelity gate.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amnet.errors import AmnetError, InputError

EXIT_FAIL, EXIT_USAGE = 1, 2


def _ints(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _words(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}; got {text!r}")
        return values
    return parse


def _resolution(text: str) -> int:
    r = int(text)
    if r % 4 or r < 8:
        raise argparse.ArgumentTypeError(f"resolution must be a multiple of 4 and ≥ 8, got {r}")
    return r


def _checkpoint_arg(p: argparse.ArgumentParser, help_extra: str = "") -> None:
    from cli.open import default_checkpoint

    p.add_argument("checkpoint", nargs="?", default=str(default_checkpoint()),
                   help=f"AMNet checkpoint: .safetensors (ours) or official *_G.pth {help_extra}"
                        f"(default: the shipped model, {default_checkpoint().name})")


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


def cmd_infer(args) -> int:
    import numpy as np

    from cli.open import open_runner

    feeds = load_npz(args.inputs)
    if args.resolution and "source" in feeds:
        from amnet.realdata import resize_source

        feeds["source"] = resize_source(feeds["source"], args.resolution)
    with open_runner(args.model, threads=args.threads) as runner:
        check_audio_delta(feeds, getattr(runner, "metadata", {}).get("audio_delta"))
        feeds.pop("audio_delta", None)
        wanted = {s.name for s in runner.inputs}
        out = runner.infer({k: v for k, v in feeds.items() if k in wanted} if wanted <= set(feeds) else feeds)
        t = runner.inference_time
    from amnet.checkpoint import atomic_write

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **out)

    atomic_write(args.output, write)
    shapes = ", ".join(f"{k} {'×'.join(map(str, v.shape))}" for k, v in out.items())
    print(f"{runner.name} ({runner.precision}): {shapes} → {args.output}  [{t * 1000:.1f} ms]")
    return 0


def load_npz(path) -> dict:
    import zipfile

    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{path.name} is not a readable .npz ({str(e).splitlines()[0][:100]})") from None


def check_audio_delta(feeds: dict, expected: str | None) -> None:
    """IN.npz may say which delta convention its audio uses; refuse a mismatch with the model."""
    given = feeds.get("audio_delta")
    if given is not None and expected and str(given) != expected:
        raise InputError(f"the inputs' audio features use '{given}' deltas but the model was trained with "
                         f"'{expected}' deltas: re-extract with `amnet-deploy signals --delta {expected}`")


def cmd_signals(args) -> int:
    import numpy as np

    from amnet.checkpoint import atomic_write
    from amnet.signals import extract

    arrays, report = extract(args.video, args.audio, args.delta, progress=not args.quiet)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    arrays["audio_delta"] = np.array(args.delta)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(out / "signals.npz", write)
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1)))
    print(f"{len(arrays['face'])} frames with a face of {report['frames']} → {out / 'signals.npz'}; "
          f"skipped {len(report['no_face'])} without a face, {len(report['no_audio'])} past the audio's end")
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
    from amnet.train import TrainConfig, train

    data = load_npz(args.data)
    missing = {"face", "audio", "pose", "eye", "landmarks", "identity"} - set(data)
    if missing:
        raise InputError(f"{args.data} lacks {', '.join(sorted(missing))}: build it with `amnet-deploy dataset`")
    cfg = AMNetConfig(kernel=args.kernel, landmarks=int(data["landmarks"].shape[1]), resolution=args.resolution,
                      audio_delta=str(data["audio_delta"]) if "audio_delta" in data else args.delta)
    result = train({k: np.asarray(v) for k, v in data.items()}, Path(args.output), cfg,
                   TrainConfig(args.epochs, args.batch, args.lr, args.resolution, args.minutes, threads=args.threads,
                               decay_from=args.decay_from, flip=args.flip),
                   resume=args.resume)
    last = result["history"][-1] if result["history"] else {}
    print(f"{result['steps']} steps; last epoch {json.dumps(last)} → {result['checkpoint']}")
    return 0


def cmd_evaluate(args) -> int:
    from amnet.checkpoint import load_checkpoint
    from amnet.evaluate import evaluate

    train = Path(args.train) if args.train else None
    if train is not None and not train.is_file():
        raise InputError(f"{train} not found: build it with `amnet-deploy dataset` (or calibration_data/rebuild.sh)")
    result = evaluate(load_checkpoint(args.checkpoint).require_full(), args.resolution,
                      Path(args.grid) if args.grid else None, train)
    print(json.dumps(result, indent=1))
    return 0


def cmd_export(args) -> int:
    from export.pipeline import export_checkpoint

    manifest = export_checkpoint(args.checkpoint, Path(args.output), batches=args.batch, resolution=args.resolution,
                                 dynamic=args.dynamic_batch, parts=args.parts, simplify=not args.no_simplify,
                                 check_parity=not args.no_parity, threads=args.threads, progress=not args.quiet)
    print_artifacts(manifest["artifacts"])
    failed = [a["file"] for a in manifest["artifacts"] if a.get("parity", {}).get("passed") is False]
    if failed:
        print(f"parity FAILED (> {manifest['parity_threshold']:g} max abs): {', '.join(failed)}")
        return EXIT_FAIL
    return 0


def print_artifacts(arts: list[dict]) -> None:
    print(f"{'artifact':<40}{'form':<12}{'precision':<11}{'max abs err':>24}")
    for a in arts:
        p = a.get("parity") or {}
        err = ", ".join(f"{k} {v['max_abs']:.1e}" for k, v in p.get("outputs", {}).items())
        print(f"{a['file']:<40}{a['gc_form']:<12}{a['precision']:<11}{err:>24}")


def cmd_build(args) -> int:
    from export.pipeline import build_runtime

    manifest = build_runtime(args.model, args.runtime, args.precision, Path(args.output), batches=args.batch,
                             resolution=args.resolution, calib_samples=args.calib_samples, preset=args.preset,
                             accuracy_control=args.accuracy_control, max_drop=args.max_drop,
                             version_compatible=args.version_compatible, progress=not args.quiet)
    runtime = {"onnxruntime": "onnx"}.get(args.runtime, args.runtime)
    print_artifacts([a for a in manifest["artifacts"] if a.get("runtime", "onnx") == runtime])
    return 0


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="amnet-deploy", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("info", help="what a checkpoint holds: format, config, parameters, GFLOPs")
    _checkpoint_arg(s)
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("infer", help="run any model file on saved inputs (IN.npz → OUT.npz)")
    s.add_argument("model", help="checkpoint, .onnx, OpenVINO .xml, TensorRT .engine, or an export folder")
    s.add_argument("--inputs", required=True, help="npz with source (N×3×H×W in [-1,1]), audio (N×1×64×60), "
                                                   "pose (N×3), eye (N×2); or f_geo for a ψ-only model")
    s.add_argument("--output", required=True, help="npz to write: face, landmarks")
    s.add_argument("--resolution", type=_resolution, help="resize source to R×R first")
    s.add_argument("--threads", type=int, help="CPU threads (default: the runtime's)")
    s.set_defaults(func=cmd_infer)

    s = sub.add_parser("signals", help="drive signals from a video and a speech track")
    s.add_argument("video")
    s.add_argument("--audio", required=True, help="speech WAV/FLAC (resampled to 44.1 kHz)")
    s.add_argument("--output", required=True, help="folder for signals.npz and report.json")
    s.add_argument("--delta", choices=("official", "time"), default="official",
                   help="delta convention: 'official' (along coefficients, as the release) or 'time'")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_signals)

    s = sub.add_parser("dataset", help="rebuild calibration_data/ (and the training set) from the named packages")
    s.add_argument("--media", default="work/media", help="folder prepared by calibration_data/rebuild.sh")
    s.add_argument("--clips", help="JSON list of {identity, video, speech_train, speech_heldout} for your own "
                                   "videos (default: the shipped clips under --media)")
    s.add_argument("--output", default="calibration_data")
    s.add_argument("--train-output", default="work/train.npz")
    s.add_argument("--delta", choices=("official", "time"), default="official")
    s.add_argument("--calib-samples", type=int, default=64)
    s.add_argument("--heldout-samples", type=int, default=48)
    s.set_defaults(func=cmd_dataset)

    s = sub.add_parser("train", help="train AMNet (L_G + 100·L_C + L_Adv) on a signals dataset")
    s.add_argument("data", help="training npz from `amnet-deploy dataset` (face, audio, pose, eye, landmarks, identity)")
    s.add_argument("--output", required=True, help="run folder: amnet.safetensors + train_state.pt each epoch")
    s.add_argument("--epochs", type=int, default=100)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--lr", type=float, default=2e-4)
    s.add_argument("--resolution", type=_resolution, default=256)
    s.add_argument("--kernel", type=int, choices=(1, 3), default=1, help="GC kernel size")
    s.add_argument("--delta", choices=("official", "time"), default="official")
    s.add_argument("--decay-from", type=int, metavar="EPOCH",
                   help="from this epoch on, decay the learning rate linearly to 0 at --epochs (pix2pix schedule)")
    s.add_argument("--flip", action="store_true",
                   help="mirror half the pairs (image, yaw/roll, eyes, 68 landmarks): more poses from few videos")
    s.add_argument("--minutes", type=float, help="stop after this much wall time (checkpoint kept)")
    s.add_argument("--threads", type=int)
    s.add_argument("--resume", action="store_true", help="continue from the run folder's last epoch")
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("evaluate", help="held-out quality: SSIM/PSNR vs the real target, dlib detection rate")
    _checkpoint_arg(s)
    s.add_argument("--resolution", type=_resolution, default=128)
    s.add_argument("--grid", help="write a source | target | generated picture here (PNG)")
    s.add_argument("--train", help="training npz: also report the retrieval ceiling (each held-out target's "
                                   "best SSIM against the same person's training frames)")
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("export", help="checkpoint → ONNX (grouped GC per batch bucket, or dynamic batch)")
    _checkpoint_arg(s)
    s.add_argument("--output", required=True, help="folder for the .onnx files and manifest.json")
    s.add_argument("--batch", type=_ints, default=[1], help="batch buckets, e.g. 1,2,4,8 (default 1)")
    s.add_argument("--resolution", type=_resolution, default=256)
    s.add_argument("--dynamic-batch", action="store_true", help="also export the elementwise-GC dynamic-batch model")
    s.add_argument("--parts", type=_words(("full", "fuser", "reenactor")), default=["full"],
                   help="full, fuser (φ alone), reenactor (ψ on source + f_geo); comma-separated")
    s.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    s.add_argument("--no-parity", action="store_true", help="skip the ORT-vs-PyTorch check on held-out inputs")
    s.add_argument("--threads", type=int)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("build", help="compile for a runtime: OpenVINO IR or TensorRT engines, FP32/FP16/INT8")
    s.add_argument("model", help="an export folder, an .onnx file, or a checkpoint")
    s.add_argument("--runtime", choices=("openvino", "tensorrt", "onnxruntime"), required=True,
                   help="onnxruntime: the FP16 / Q/DQ INT8 ONNX files TensorRT builds from, runnable anywhere")
    s.add_argument("--precision", type=_words(("fp32", "fp16", "int8")), default=["fp32", "fp16", "int8"])
    s.add_argument("--output", required=True)
    s.add_argument("--batch", type=_ints, default=[1])
    s.add_argument("--resolution", type=_resolution, default=256)
    s.add_argument("--calib-samples", type=int, default=64, help="INT8 calibration samples from calibration_data/")
    s.add_argument("--preset", choices=("performance", "mixed"), default="mixed",
                   help="NNCF preset (mixed: asymmetric activations; measured +1 dB PSNR here)")
    s.add_argument("--accuracy-control", action="store_true",
                   help="INT8 with nncf.quantize_with_accuracy_control (PSNR metric)")
    s.add_argument("--version-compatible", action="store_true",
                   help="TensorRT: build version-compatible engines (run on later TensorRT versions)")
    s.add_argument("--max-drop", type=float, default=6.0,
                   help="accuracy control: max drop of the face PSNR vs FP32, capped at 50 dB "
                        "(6 → keep ≥ 44 dB; 42 dB measured SSIM 0.967-0.976 here); the most harmful layers "
                        "are reverted to float until it holds")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_build)

    from cli.harness import add_commands

    add_commands(sub, _checkpoint_arg, _resolution)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except AmnetError as e:
        print(f"amnet-deploy {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
