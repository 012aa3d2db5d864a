"""The CPU speed bars of issues 14 and 15, judged from `make bench`'s pytest-benchmark JSON files.

    python -m benchmarks.bars reports/bench [--strict]

Reads ``native.json`` (the CPU as it is) and, where the CPU has more than AVX2,
``avx2.json`` (the same suites under ``ONEDNN_MAX_CPU_ISA=AVX2``); on an
AVX2-only CPU the native run is the AVX2 run. The issue-14 bars count only
variants that passed the parity gate on this CPU (``parity_<R>/parity.json``,
written by `make bench` from the same models) and the bar's own limits (PSNR ≥
40 dB and SSIM ≥ 0.98 in every mode, landmark shift ≤ 1.0 px, no face lost);
without that report they are not met. Writes ``bars.md`` and
``bars.json`` beside them: each bar with its figure, the run it came from, and
met / not met / not judged here (a bar meant for another kind of CPU is never
counted as met). Exit 0, or with ``--strict`` 1 unless every judged bar is met.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from amnet.core.errors import InputError
from amnet.core.fileio import read_json, write_text

OV_PICKS = ("fp16", "int8", "gcs_int8")  # the OpenVINO variants `make run`'s gate passes and `choose` picks from
PARITY_NAMES = {"fp16": "openvino-fp16-b1-r{r}", "int8": "openvino-int8-b1-r{r}", "gcs_int8": "openvino-int8-gcs-b1-r{r}"}
INT8_BAR = {"psnr": 40.0, "ssim": 0.98}  # issue 14's gate for the pick, beside landmark shift ≤ 1.0 px, no face lost
INT8_BAR_SHIFT_PX, INT8_BAR_DETECTION = 1.0, 1.0
BF16_ISAS = ("AMX", "AVX512-BF16")
STREAM_OVER_FLOOR_MS = 80


def load_run(path: Path) -> dict | None:
    """{"isa": {...}, "fps": {(test, resolution, variant): FPS}, "extra": {...}} from one pytest-benchmark JSON."""
    if not path.is_file():
        return None
    try:
        data = read_json(path, "pytest-benchmark JSON file")
        run = {"isa": data.get("machine_info", {}).get("amnet_isa", {}), "fps": {}, "extra": {}}
        for b in data.get("benchmarks", []):
            test = b["name"].split("[")[0].removeprefix("test_")
            params = b.get("params") or {}
            key = (test, int(params.get("setup", 0)), params.get("variant") or params.get("mode") or "")
            run["fps"][key] = 1.0 / b["stats"]["median"]
            run["extra"][key] = b.get("extra_info") or {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError, ZeroDivisionError) as e:
        raise InputError(f"{path} is not a pytest-benchmark JSON file ({type(e).__name__}): rerun `make bench`")
    return run


def load_gates(folder: Path) -> dict[int, dict[str, str | None]]:
    """{resolution: {pick: None if it passed, else why not}} from parity_<R>/parity.json; a resolution without
    that file is absent (its bars are then not met)."""
    gates = {}
    for r in (256, 128):
        path = folder / f"parity_{r}" / "parity.json"
        if not path.is_file():
            continue
        try:
            rows = {row["variant"]: row for row in read_json(path, "parity report")["variants"]}
            gates[r] = {v: gate_failure(rows.get(name.format(r=r))) for v, name in PARITY_NAMES.items()}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise InputError(f"{path} is not a parity report ({type(e).__name__}): rerun `make bench`")
    return gates


def gate_failure(row: dict | None) -> str | None:
    """None if the pick passed the product's gate and issue 14's limits in every mode, else why not. A limit
    that is missing or NaN fails (every comparison is written so that NaN falls on the failing side)."""
    if row is None:
        return "not in the parity report"
    if row.get("passed") is not True:
        return "failed the parity gate: " + "; ".join(row.get("failures") or ["no reason given"])[:160]
    face = row["metrics"]["face"]
    modes = list((row.get("modes") or {}).values()) or [face]
    why = [f"{m} {', '.join(f'{float(x[m]):.3g}' for x in modes)} < {need:g}" for m, need in INT8_BAR.items()
           if not all(float(x[m]) >= need for x in modes)]
    shifts = [x["landmark_shift_px"] for x in modes if x.get("landmark_shift_px") is not None]
    shifts = shifts or [face.get("landmark_shift_px")]
    if not all(s is not None and float(s) <= INT8_BAR_SHIFT_PX for s in shifts):
        shown = ", ".join("none" if s is None else f"{float(s):.3g}" for s in shifts)
        why.append(f"landmark shift {shown} px > {INT8_BAR_SHIFT_PX:g}")
    detection = face.get("detection_rate")
    if not (detection is not None and float(detection) >= INT8_BAR_DETECTION):
        why.append(f"faces found {detection}")
    return "; ".join(why) or None


def _passed(gates: dict, r: int, pick: str) -> bool:
    return r in gates and gates[r].get(pick, "absent") is None


def _best_ov(run: dict, r: int, gates: dict) -> tuple[str, float] | None:
    """The fastest OpenVINO pick at r of those that passed the gate at r."""
    picks = [(v, run["fps"][("openvino", r, v)]) for v in OV_PICKS
             if ("openvino", r, v) in run["fps"] and _passed(gates, r, v)]
    return max(picks, key=lambda p: p[1]) if picks else None


def _gate_note(gates: dict, r: int) -> str:
    if r not in gates:
        return f"no parity_{r}/parity.json: `make bench` writes it"
    failed = {v: why for v, why in gates[r].items() if why}
    return "; ".join(f"{v} excluded ({why})" for v, why in failed.items())


def _bar(issue, text, value, need, met, source, note="") -> dict:
    return {"issue": issue, "bar": text, "value": value, "need": need, "met": met, "run": source, "note": note}


def judge(native: dict, avx2: dict | None, gates: dict) -> list[dict]:
    best = native["isa"].get("best", "unknown")
    cpu = native["isa"].get("cpu", "unknown CPU")
    here = f"{cpu}, {best}"
    # The AVX2 bars: from the capped run, or from the native one where AVX2 is all the CPU has.
    avx2_run, avx2_src = (avx2, "ONEDNN_MAX_CPU_ISA=AVX2") if avx2 else (
        (native, "native (AVX2 is this CPU's best)") if best == "AVX2" else (None, ""))
    bars = []

    for r, need in ((256, 25.0), (128, 100.0)):
        pick = _best_ov(native, r, gates)
        value = round(pick[1], 1) if pick else None
        met = (value is not None and value >= need) if best in BF16_ISAS else None
        note = "; ".join(filter(None, [f"OpenVINO {pick[0]}" if pick else "no OpenVINO row that passed the gate",
                                       _gate_note(gates, r)]))
        if met is None:
            note += f"; meant for two AVX512-BF16 or AMX cores, this CPU's best is {best}"
        bars.append(_bar(14, f"{r}² best OpenVINO variant, native, ≥ {need:g} FPS", value, need, met, "native", note))

    for r, text, need, ratio in ((256, "256² under AVX2 kernels ≥ 3× PyTorch eager", 3.0, True),
                                 (128, "128² under AVX2 kernels ≥ 40 FPS", 40.0, False)):
        if avx2_run is None:  # the run that should have been there is missing: not met; no AVX2 at all: not judged
            missing = best != "SSE/AVX"
            bars.append(_bar(14, text, None, need, False if missing else None, "",
                             "no avx2.json: run `make bench` (it adds the AVX2 run)" if missing else "no AVX2 here"))
            continue
        # The gate ran natively; under the cap the float parts compute f32, nearer FP32 than what passed.
        pick, eager = _best_ov(avx2_run, r, gates), avx2_run["fps"].get(("pytorch_eager", r, ""))
        interleaved = avx2_run["extra"].get(("eager_vs_openvino_interleaved", r, ""), {})
        ms = interleaved.get("median_ms") or {}
        ratios = {v: x for v, x in (interleaved.get("ratio_to_eager") or {}).items()
                  if v in OV_PICKS and isinstance(x, (int, float)) and v in ms and "eager" in ms
                  and _passed(gates, r, v)}
        excluded = _gate_note(gates, r)
        if ratio and ratios:  # measured in alternation: drift between the suites cannot move it
            v = max(ratios, key=ratios.get)
            bars.append(_bar(14, text, round(ratios[v], 2), need, ratios[v] >= need, avx2_src,
                             "; ".join(filter(None, [f"OpenVINO {v} {ms[v]} ms vs eager {ms['eager']} ms, medians of "
                                                     f"{interleaved.get('rounds')} interleaved rounds", excluded]))))
            continue
        value = (pick[1] / eager if ratio and eager else pick[1]) if pick else None
        note = (f"OpenVINO {pick[0]}" + (f", eager {eager:.2f} FPS" if ratio and eager else "") if pick
                else "no OpenVINO row that passed the gate")
        bars.append(_bar(14, text, None if value is None else round(value, 2), need,
                         value is not None and value >= need, avx2_src, "; ".join(filter(None, [note, excluded]))))

    for r, need in ((128, 25.0), (256, 15.0)):
        extra = native["extra"].get(("reenact_end_to_end", r, "offline"))
        value = extra.get("fps_end_to_end") if extra else None
        bars.append(_bar(15, f"reenact {r}² end to end ≥ {need:g} FPS", value, need,
                         value is not None and value >= need, "native",
                         "features + model + encode, best of 3" if extra else "no reenact row"))
    streams = {m: native["extra"].get(("reenact_end_to_end", 128, m), {}).get("latency_ms")
               for m in ("stream", "stream-drop-late")}
    streams = {m: v for m, v in streams.items() if v}
    # Judged on the live frames: the floor the bar names is a window completed by audio heard. The frames that
    # the stream's end completes (all at once) are shown beside it; a run that lacks the split is judged on all.
    key = {m: "live_over_floor_p99" if v.get("live_over_floor_p99") is not None else "over_floor_p99"
           for m, v in streams.items()}
    mode = min(streams, key=lambda m: streams[m][key[m]]) if streams else None
    value = streams[mode][key[mode]] if mode else None
    note = "no stream row"
    if mode:
        lat = streams[mode]
        note = (f"--{mode}, p99 ms over each frame's floor (p50 {lat['p50']} ms, floor ≤ {lat['floor_max']} ms)" +
                (f"; of the {lat['live_frames']} live frames; over all frames {lat['over_floor_p99']} ms, the "
                 f"{lat['end_frames']} completed by the stream's end up to {lat['end_over_floor_max']} ms"
                 if key[mode] == "live_over_floor_p99" else "; all frames"))
    bars.append(_bar(15, f"--stream 128² latency p99 ≤ floor + {STREAM_OVER_FLOOR_MS} ms", value,
                     STREAM_OVER_FLOOR_MS, value is not None and value <= STREAM_OVER_FLOOR_MS, "native", note))
    for b in bars:
        b["cpu"] = here
    return bars


def markdown(bars: list[dict]) -> str:
    lines = [f"# CPU speed bars ({bars[0]['cpu']})", "", "| issue | bar | value | met | run | note |",
             "|---|---|---|---|---|---|"]
    verdict = {True: "yes", False: "NO", None: "not judged here"}
    lines += [f"| {b['issue']} | {b['bar']} | {'—' if b['value'] is None else b['value']} | {verdict[b['met']]} | "
              f"{b['run']} | {b['note']} |" for b in bars]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, nargs="?", default=Path("reports/bench"))
    ap.add_argument("--strict", action="store_true", help="exit 1 unless every bar judged here is met")
    args = ap.parse_args(argv)
    try:
        native, avx2 = load_run(args.folder / "native.json"), load_run(args.folder / "avx2.json")
        gates = load_gates(args.folder)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if native is None:
        print(f"error: {args.folder / 'native.json'} not found: run `make bench` first", file=sys.stderr)
        return 2
    try:
        bars = judge(native, avx2, gates)
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # a row of the right shape but wrong content
        print(f"error: {args.folder} holds a damaged benchmark row ({type(e).__name__}: {e}): rerun `make bench`",
              file=sys.stderr)
        return 2
    write_text(args.folder / "bars.json", json.dumps(bars, indent=1) + "\n")
    text = markdown(bars)
    write_text(args.folder / "bars.md", text)
    print(text)
    return 1 if args.strict and any(b["met"] is False for b in bars) else 0


if __name__ == "__main__":
    raise SystemExit(main())
