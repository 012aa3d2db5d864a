"""ARM64, as far as an x86 machine goes: the same `.tflite` / `.pte` run by aarch64 code under user-mode
emulation on held-out inputs, its outputs compared with x86's within the product's limits.

    python -m benchmarks.arm64_check --tflite M.tflite [--pte M.pte] [--inputs 4] [--report DIR]

Nothing is installed into the system: everything goes into a cache folder of its own (``--cache``, default
~/.cache/amnet-deploy/arm64/), fetched by the ordinary clients from Debian's mirror and PyPI only:

- Debian through apt-get with a private configuration (its own sources, pins, lists, dpkg status and
  archives in the cache): trixie's `qemu-user` for amd64 (static binaries, run as ``qemu-aarch64 -L SYSROOT``,
  no binfmt registration; bookworm's qemu 7.2 segfaults in LiteRT's Interpreter()) and bookworm's python3.11 for arm64 with what it depends on, unpacked with dpkg-deb
  into SYSROOT. Bookworm's python is 3.11, the x86 venv's minor, so the same wheels exist for both.
- the runtimes' aarch64 wheels by `pip download` at the x86 venv's versions (ai-edge-litert, executorch,
  torch, numpy), unzipped into a site folder per runtime. PyPI's aarch64 torch is a CUDA build: ExecuTorch's
  Python runtime links libtorch, which links CUDA's libraries, so those wheels (about 2 GB) come too; nothing
  calls them.

x86 runs each file with the product's own runner (`runtimes.registry.open_runner`); the arm64 side
(`benchmarks/arm64_guest.py`) with the runtime's Python API the runners use, XNNPACK included. Limits are the
variant's own in amnet/core/thresholds.json (FP32: max abs); only the numeric metrics apply (dlib's face checks
compare one artifact on two ISAs with itself, not a face). Speed under emulation means nothing about an ARM
core and is not reported. Exit 0 all pass, 1 a comparison failed, 2 bad input or a failed download or qemu run.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from amnet.core.errors import EXIT_FAIL, EXIT_OK, EXIT_USAGE, AmnetError, InputError, RuntimeMissing, first_line
from amnet.core.fileio import check_input_path, check_output_dir, file_sha256, load_npz, save_npz, write_text
from amnet.core.limits import load_limits
from amnet.core.metrics import compare

CACHE = Path("~/.cache/amnet-deploy/arm64")
MIRROR = "http://deb.debian.org/debian"
RELEASE = "bookworm"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
PYTHON = "python3.11"
SYSROOT_PACKAGES = (f"{PYTHON}:arm64", "libstdc++6:arm64", "libgomp1:arm64")  # libgomp: libtorch_cpu needs it
QEMU_RELEASE = "trixie"  # bookworm's qemu 7.2 segfaults in ai-edge-litert's Interpreter(); trixie's 10.0 runs it
QEMU_PACKAGE = "qemu-user:amd64"  # static binaries since trixie (qemu-user-static is a transitional package)
GUEST = Path(__file__).with_name("arm64_guest.py")
NUMERIC = ("max_abs", "mean_abs", "cosine", "psnr", "ssim")
WHEEL_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_27_aarch64", "manylinux_2_25_aarch64",
                   "manylinux_2_18_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64", "any")
STAMP = ".amnet-arm64.json"  # written last: a folder without it is half-made and made again
NOTE = ("Speed is not reported: qemu translates every aarch64 instruction, so its timings say nothing about "
        "an ARM core.")


def say(line: str) -> None:
    print(f"arm64: {line}", file=sys.stderr, flush=True)


def x86_version(dist: str) -> str:
    """The x86 venv's version of a wheel, without a local tag (torch's '+cpu': PyPI's aarch64 build has none)."""
    try:
        return metadata.version(dist).split("+")[0]
    except metadata.PackageNotFoundError:
        raise RuntimeMissing(f"{dist} is not installed here: the arm64 run uses the x86 venv's version") from None


def wheel_sets() -> dict[str, list[tuple[list[str], bool]]]:
    """Per runtime: (requirements, with their dependencies) for pip download."""
    pin = {d: f"{d}=={x86_version(d)}" for d in ("numpy", "ai-edge-litert", "executorch", "torch", "torchao")}
    return {"litert": [([pin["ai-edge-litert"], pin["numpy"]], True)],
            # executorch's own dependencies are its exporters' (pandas, hydra, coremltools...): only what
            # `import executorch.runtime` loads comes, beside torch and what torch needs.
            "executorch": [([pin["torch"], pin["numpy"]], True),
                           ([pin["executorch"], pin["torchao"], "flatbuffers", "ruamel.yaml", "tabulate", "tqdm",
                             "pyyaml", "packaging"], False)]}


# ---- fetching: each step leaves a stamped folder, or nothing it would trust --------------------------------

def _tool(cmd: list[str], what: str, relay=("Get:", "Need to get", "Downloading", "Saved")) -> None:
    """Run a fetching tool, relaying its progress lines (with sizes); a failure is one line naming `what`."""
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as e:
        raise RuntimeMissing(f"{what}: cannot run {cmd[0]}: {first_line(e)}") from None
    tail = []
    for line in proc.stdout:
        line = line.strip()
        if line.startswith(relay):
            say(line)
        if line:
            tail = (tail + [line])[-5:]
    if proc.wait():
        reason = next((t for t in reversed(tail) if t.startswith(("E:", "ERROR"))), tail[-1] if tail else "")
        raise RuntimeMissing(f"{what} failed (exit {proc.returncode}): {reason[:300]}")


def _apt(cache: Path, mirror: str) -> list[str]:
    """apt-get options for a private Debian of the cache's own: nothing read from or written to the system's."""
    root = cache / "apt"
    for d in ("state/lists/partial", "archives/partial", "etc/apt.conf.d", "etc/preferences.d",
              "etc/sources.list.d"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "state/status").touch()  # nothing "installed": apt resolves every dependency
    write_text(root / "etc/sources.list", f"deb [arch=arm64,amd64 signed-by={KEYRING}] {mirror} {RELEASE} main\n"
               f"deb [arch=amd64 signed-by={KEYRING}] {mirror} {QEMU_RELEASE} main\n")
    # QEMU_RELEASE only where asked for by name (QEMU_PACKAGE/QEMU_RELEASE): its newer 'all' packages stay out
    write_text(root / "etc/preferences.d/qemu", f"Package: *\nPin: release n={QEMU_RELEASE}\nPin-Priority: 100\n")
    opts = {"Dir::State": root / "state", "Dir::State::status": root / "state/status", "Dir::Cache": root,
            "Dir::Cache::archives": root / "archives", "Dir::Etc": root / "etc",
            "Dir::Etc::sourcelist": root / "etc/sources.list", "Dir::Etc::sourceparts": root / "etc/sources.list.d",
            "Dir::Etc::parts": root / "etc/apt.conf.d", "Dir::Etc::preferencesparts": root / "etc/preferences.d",
            "APT::Architecture": "arm64", "APT::Architectures::": "amd64", "Debug::NoLocking": 1,
            "Acquire::Languages": "none", "Acquire::Retries": 1, "APT::Update::Error-Mode": "any", "APT::Sandbox::User": getpass.getuser()}
    return ["apt-get", "-q"] + [f"-o{k}={v}" for k, v in opts.items()]


def _stamped(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return None


def _replace_dir(tmp: Path, folder: Path, stamp: dict) -> None:
    (tmp / STAMP).write_text(json.dumps(stamp))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)


def ensure_sysroot(cache: Path, mirror: str = MIRROR) -> dict:
    """qemu and the arm64 Python root, fetched and unpacked once: {qemu, sysroot, debian packages}."""
    root = cache / "root"
    if (stamp := _stamped(root)) is None:
        apt = _apt(cache, mirror)
        archives = cache / "apt/archives"
        for old in archives.glob("*.deb"):  # this resolution's packages only
            old.unlink()
        say(f"Debian {RELEASE} package lists from {mirror}")
        _tool(apt + ["update"], f"apt-get update from {mirror}")
        say(f"qemu and an arm64 {PYTHON} with its libraries")
        _tool(apt + ["install", "--download-only", "--no-install-recommends", "-y",
               f"{QEMU_PACKAGE}/{QEMU_RELEASE}", *SYSROOT_PACKAGES],
              f"downloading {QEMU_PACKAGE} and {', '.join(SYSROOT_PACKAGES)} from {mirror}")
        tmp = Path(tempfile.mkdtemp(prefix="root.", dir=cache))
        try:
            versions = {}
            for deb in sorted(archives.glob("*.deb")):
                name, version, arch = deb.stem.split("_")
                versions[f"{name}:{arch}"] = version.replace("%3a", ":")
                dest = tmp / ("qemu" if f"{name}:{arch}" == QEMU_PACKAGE else "sysroot")
                _tool(["dpkg-deb", "-x", str(deb), str(dest)], f"unpacking {deb.name}")
            _replace_dir(tmp, root, {"release": RELEASE, "qemu_release": QEMU_RELEASE, "debs": versions})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        say(f"unpacked {len(versions)} packages into {root}")
        stamp = _stamped(root)
    return {"qemu": root / "qemu/usr/bin/qemu-aarch64", "sysroot": root / "sysroot", "debs": stamp["debs"],
            "qemu_version": stamp["debs"].get(QEMU_PACKAGE)}


def ensure_site(cache: Path, runtime: str) -> Path:
    """The runtime's aarch64 wheels, downloaded by pip and unzipped into a site folder of their own."""
    sets = wheel_sets()[runtime]
    site = cache / f"site-{runtime}"
    if (_stamped(site) or {}).get("requirements") == sets:
        return site
    wheels = cache / "wheels" / runtime
    wheels.mkdir(parents=True, exist_ok=True)
    for requirements, deps in sets:
        say(f"{runtime} aarch64 wheels: {' '.join(requirements)}{'' if deps else ' (no dependencies)'}")
        cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version", "3.11",
               "--implementation", "cp", "--progress-bar", "off", "-d", str(wheels), *requirements]
        cmd += [f"--platform={p}" for p in WHEEL_PLATFORMS] + ([] if deps else ["--no-deps"])
        _tool(cmd, f"pip download of {runtime}'s aarch64 wheels")
    tmp = Path(tempfile.mkdtemp(prefix=f"site-{runtime}.", dir=cache))
    try:
        for whl in sorted(wheels.glob("*.whl")):
            _unzip_wheel(whl, tmp)
        _replace_dir(tmp, site, {"requirements": sets, "wheels": sorted(w.name for w in wheels.glob("*.whl"))})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return site


def _unzip_wheel(whl: Path, site: Path) -> None:
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):  # purelib/platlib go to the site root; scripts and headers nowhere
                if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                    continue
                parts = parts[2:]
            if info.is_dir() or ".." in parts:
                continue
            target = site.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def ready(cache: Path, runtime: str) -> bool:
    """Whether an emulated run of `runtime` can start without the network."""
    return _stamped(cache / "root") is not None and _stamped(cache / f"site-{runtime}") is not None


# ---- running and comparing ----------------------------------------------------------------------------------

def run_x86(model: Path, samples: int, threads: int) -> dict:
    """The product's runner on the model: what it is, its held-out inputs at its resolution, its outputs."""
    from amnet.realdata import load_inputs
    from runtimes.registry import open_runner

    with open_runner(model, threads=threads) as runner:
        source = next(s for s in runner.inputs if s.name == "source")
        batch, resolution = int(source.shape[0]), int(source.shape[-1])
        feeds = {k: v for k, v in load_inputs("heldout", resolution, samples).items() if k != "target"}
        if len(feeds["source"]) < samples or samples % batch:
            raise InputError(f"--inputs {samples}: the held-out set has {len(feeds['source'])} samples and "
                             f"{model.name} takes batches of {batch}")
        outs = [runner.infer({k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, samples, batch)]
        return {"runtime": runner.name, "precision": str(runner.precision), "resolution": resolution,
                "batch": batch, "feeds": feeds,
                "outputs": {k: np.concatenate([o[k] for o in outs]) for k in ("face", "landmarks")}}


def run_arm64(kind: str, model: Path, feeds: dict, root: dict, site: Path, cpu: str, threads: int,
              timeout: float) -> tuple[dict, dict]:
    with tempfile.TemporaryDirectory(prefix="amnet-arm64.") as work:
        work = Path(work)
        save_npz(work / "in.npz", feeds)
        cmd = [str(root["qemu"]), "-L", str(root["sysroot"]), "-cpu", cpu, str(root["sysroot"] / "usr/bin" / PYTHON),
               "-s", str(GUEST), kind, str(model.resolve()), str(work / "in.npz"), str(work / "out.npz"),
               str(work / "facts.json"), str(threads)]
        env = {"PYTHONHOME": str(root["sysroot"] / "usr"), "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1",
               "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": str(threads), "HOME": work}
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeMissing(f"the arm64 run of {model.name} under qemu took over {timeout:.0f} s "
                                 f"(--timeout)") from None
        except OSError as e:
            raise RuntimeMissing(f"cannot start {root['qemu']}: {first_line(e)}") from None
        if proc.returncode or not (work / "out.npz").exists():
            lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
            raise RuntimeMissing(f"the arm64 run of {model.name} under qemu failed (exit {proc.returncode}): "
                                 f"{lines[-1][:300] if lines else 'no message'}")
        return load_npz(work / "out.npz"), json.loads((work / "facts.json").read_text())


def judge(x86: dict, arm64: dict, bars: dict) -> dict:
    """Per output, the metrics of arm64's outputs against x86's, and each numeric limit met or not."""
    metrics, checks = {}, []
    for name, ref in x86.items():
        test = arm64.get(name)
        if test is None or test.shape != ref.shape:
            raise RuntimeMissing(f"the arm64 run gave {name} of shape {getattr(test, 'shape', None)}, "
                                 f"x86 {ref.shape}")
        metrics[name] = compare(ref, test, image=name == "face")
    for key, limit in sorted(bars.items()):
        output, _, rule = key.partition(".")
        metric, _, side = rule.rpartition("_")
        if metric not in NUMERIC or metric not in metrics.get(output, {}):
            continue
        value = metrics[output][metric]
        checks.append({"key": key, "limit": limit, "value": value,
                       "passed": bool(value <= limit if side == "max" else value >= limit)})
    return {"metrics": metrics, "checks": checks, "passed": bool(checks) and all(c["passed"] for c in checks)}


def check(models: dict[str, Path], samples: int, cache: Path, cpu: str, threads: int, timeout: float,
          mirror: str = MIRROR) -> dict:
    limits = load_limits()
    x86 = {kind: run_x86(path, samples, threads) for kind, path in models.items()}  # bad models fail before downloads
    root = ensure_sysroot(cache, mirror)
    rows = []
    for kind, path in models.items():
        site = ensure_site(cache, kind)
        ran = x86[kind]
        say(f"running {path.name} on aarch64 (qemu -cpu {cpu}, {samples} inputs)")
        outputs, facts = run_arm64(kind, path, ran["feeds"], root, site, cpu, threads, timeout)
        verdict = judge(ran["outputs"], outputs, limits.for_variant(ran["runtime"], ran["precision"]))
        rows.append({"file": path.name, "sha256": file_sha256(path), "runtime": ran["runtime"],
                     "precision": ran["precision"], "resolution": ran["resolution"], "batch": ran["batch"],
                     "samples": samples, "arm64": facts, **verdict})
    return {"host_cpu": _cpu_name(), "qemu": root["qemu_version"], "qemu_cpu": cpu, "debian": RELEASE,
            "sysroot_python": root["debs"].get(f"{PYTHON}:arm64"), "threads": threads,
            "x86_wheels": {d: metadata.version(d) for d in ("ai-edge-litert", "executorch", "torch", "numpy")},
            "inputs": f"calibration_data/heldout.npz, first {samples}", "limits": _shown(limits.source),
            "rows": rows, "passed": all(r["passed"] for r in rows), "note": NOTE}


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "")


def markdown(report: dict) -> str:
    lines = ["# ARM64 check: the same files on aarch64 (qemu user-mode) vs x86", "",
             f"x86 host: {report['host_cpu']}; aarch64 under qemu-user {report['qemu']} (Debian, `-cpu "
             f"{report['qemu_cpu']}`), Debian {report['debian']} python3.11 {report['sysroot_python']}; "
             f"{report['threads']} thread(s). Inputs: {report['inputs']}. Limits: the variant's own, from "
             f"`{Path(report['limits']).name}` (numeric metrics).", "",
             "| file | runtime | precision | res | aarch64 wheels | XNNPACK | face max abs | face PSNR dB | "
             "landmarks max abs | limits | result |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        m, a = r["metrics"], r["arm64"]
        wheels = ", ".join(f"{k} {v}" for k, v in a.get("wheels", {}).items())
        xnn = (f"{a['xnnpack_partitions']} partition(s)" if "xnnpack_partitions" in a
               else "registered" if "XnnpackBackend" in a.get("backends", []) else "?")
        bars = "; ".join(f"{c['key']} {'≤' if c['key'].endswith('_max') else '≥'} {c['limit']:g}"
                         for c in r["checks"])
        lines.append(f"| `{r['file']}` | {r['runtime']} | {r['precision']} | {r['resolution']}² | {wheels} | {xnn} "
                     f"| {m['face']['max_abs']:.3g} | {m['face']['psnr']:.1f} | {m['landmarks']['max_abs']:.3g} "
                     f"| {bars} | {'pass' if r['passed'] else 'FAIL'} |")
    lines += ["", "sha256: " + ", ".join(f"`{r['file']}` {r['sha256']}" for r in report["rows"]), "",
              report["note"], ""]
    return "\n".join(lines)


def _shown(path) -> str:
    """A path inside the project as the project names it (a report is committed: no machine's folders in it)."""
    root = Path(__file__).resolve().parent.parent
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--tflite", type=Path, help="a .tflite to run on aarch64")
    ap.add_argument("--pte", type=Path, help="a .pte to run on aarch64")
    ap.add_argument("--inputs", type=int, default=4, help="held-out samples (default 4)")
    ap.add_argument("--report", type=Path, default=Path("reports/arm64"),
                    help="folder for arm64_check.json and .md (default reports/arm64)")
    ap.add_argument("--cache", type=Path, default=CACHE, help=f"where everything fetched goes (default {CACHE})")
    ap.add_argument("--cpu", default="cortex-a76", help="qemu's CPU model (default cortex-a76, a phone's big core)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for one emulated run (default 1800)")
    ap.add_argument("--mirror", default=MIRROR, help=f"Debian mirror (default {MIRROR})")
    args = ap.parse_args(argv)
    try:
        models = {k: check_input_path(p, f"--{flag}") for k, p, flag in
                  (("litert", args.tflite, "tflite"), ("executorch", args.pte, "pte")) if p is not None}
        if not models:
            raise InputError("give --tflite and/or --pte: the model file(s) to run on aarch64")
        if args.inputs < 1 or args.threads < 1:
            raise InputError(f"--inputs and --threads must be at least 1, got {args.inputs} and {args.threads}")
        check_output_dir(args.report, "arm64_check.json", "arm64_check.md")
        cache = args.cache.expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        report = check(models, args.inputs, cache, args.cpu, args.threads, args.timeout, args.mirror)
        args.report.mkdir(parents=True, exist_ok=True)
        write_text(args.report / "arm64_check.json", json.dumps(report, indent=1) + "\n")
        text = markdown(report)
        write_text(args.report / "arm64_check.md", text)
    except (AmnetError, OSError) as e:
        print(f"arm64_check: error: {first_line(e, 400)}", file=sys.stderr)
        return EXIT_USAGE
    print(text)
    return EXIT_OK if report["passed"] else EXIT_FAIL


if __name__ == "__main__":
    raise SystemExit(main())
