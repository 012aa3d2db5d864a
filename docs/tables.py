"""The docs' tables, regenerated from the committed report JSON, so every figure on a page traces to a file.

    python docs/tables.py            rewrite each table between <!-- table:NAME --> and <!-- /table:NAME -->
    python docs/tables.py --check    exit 1, naming the pages, if a table is not what the JSON gives

Standard library only: it runs from a fresh clone before any set-up. A table names the machine it was measured
on and the file it was read from. Tables live on the docs/ pages (their links are relative to docs/).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = "docs/*.md"  # links in a table are relative to docs/
BLOCK = re.compile(r"(<!-- table:([\w-]+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)


def load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text())


def source(*rels: str) -> str:
    """The line under a table that names the files it was read from (links relative to docs/)."""
    return "From " + ", ".join(f"[{r.removeprefix('docs/')}]({r.removeprefix('docs/')})" for r in rels) + \
        " by `python docs/tables.py`."


def table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cell = lambda c: str(c).replace("|", "\\|")  # noqa: E731 - a regex's | would split the cell
    return out + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def num(x, digits: int = 1) -> str:
    return "" if x is None or x != x else f"{x:,.{digits}f}"  # NaN (no throughput mode) → empty


# ---------------------------------------------------------------- the tables

def thresholds() -> list[str]:
    rel = "amnet/core/thresholds.json"
    limits = load(rel)
    rows = []
    for group, keys in limits.items():
        if group.startswith("_"):
            continue
        for key, value in keys.items():
            metric, bound = key.rsplit("_", 1)
            rows.append([f"`{group}`", metric, "≤" if bound == "max" else "≥", f"{value:g}"])
    return table(["group", "output.metric", "", "limit"], rows) + ["", f"From [{rel}](../{rel}) by "
                                                                       "`python docs/tables.py`."]


def _machine(m: dict) -> str:
    v = m.get("versions", {})
    soft = ", ".join(f"{k} {v[k]}" for k in ("torch", "onnxruntime", "openvino", "nncf") if k in v)
    return (f"**{m['cpu']}**, {m['threads_used']} threads of {m['cores']} cores, best ISA {m['isa_name']}"
            f"{f'; {soft}' if soft else ''}.")


def example_report() -> list[str]:
    rel = "docs/example-report/report.json"
    report = load(rel)
    out = []
    for res, r in sorted(report["results"].items(), key=lambda kv: -int(kv[0])):
        psnr = {x["variant"]: x["psnr"] for x in r["ranked"]}
        if not out:
            out += [_machine(r["machine"]) + f" `make run` took {report['minutes']:.1f} min.", ""]
        out += [f"**{res}², batch 1** (recommended: `{r['recommended']['variant']}`)", ""]
        out += table(["variant", "median ms", "p99 ms", "FPS", "× eager", "throughput FPS", "face PSNR dB"],
                     [[x["name"], num(x["median_ms"]), num(x["p99_ms"]), num(x["fps"]), num(x["ratio_vs_eager"], 2),
                       num(x.get("throughput_fps")), num(psnr.get(x["name"]))] for x in r["bench"]["rows"]])
        out.append("")
    return out + [source(rel)]


SUITES = ("eager", "fp32", "fp16", "int8", "gcs_int8")


def cpu_check_suites() -> list[str]:
    """`make bench`'s pytest-benchmark suites on the AMX machine: medians, and the interleaved rounds."""
    runs = [("amx1", "native"), ("amx1", "avx2"), ("amx2a", "native"), ("amx2b", "native")]
    rels = [f"docs/cpu-check/{run}/{kind}.json" for run, kind in runs]
    first = load(rels[0])["machine_info"]
    out = [f"**{first['amnet_isa']['cpu']}**, best ISA {first['amnet_isa']['best']}, 2 threads pinned to two "
           "cores (`taskset`), batch 1; ms a frame (medians).", ""]
    rows = []
    for (run, kind), rel in zip(runs, rels):
        bench = load(rel)["benchmarks"]
        for res in (256, 128):
            suite = {b["name"]: b["stats"]["median"] * 1000 for b in bench}
            own = [suite.get(f"test_pytorch_eager[r{res}]")] + [suite.get(f"test_openvino[r{res}-{s}]")
                                                                 for s in SUITES[1:]]
            inter = next(b["extra_info"] for b in bench if b["name"] == f"test_eager_vs_openvino_interleaved[r{res}]")
            cap = "native" if kind == "native" else "`ONEDNN_MAX_CPU_ISA=AVX2`"
            rows.append([run, cap, f"{res}²", "suites", *map(num, own), ""])
            rows.append([run, cap, f"{res}²", "interleaved", *(num(inter["median_ms"][s]) for s in SUITES),
                         num(inter["ratio_to_eager"]["gcs_int8"], 2)])
    out += table(["run", "ISA", "size", "how", "eager", "OV FP32", "OV FP16", "OV INT8", "OV INT8 GC-smoothed",
                  "GC-smoothed × eager"], rows)
    return out + ["", source(*rels)]


def cpu_check_bench() -> list[str]:
    rels = [f"docs/cpu-check/amx3/bench{res}/bench.json" for res in (256, 128)]
    out = []
    for rel in rels:
        b = load(rel)
        if not out:
            out += [_machine(b["machine"]) + " `amnet-deploy bench`, pinned to two cores.", ""]
        out += [f"**{b['resolution']}², batch 1**", ""]
        out += table(["variant", "median ms", "p99 ms", "FPS", "× eager", "throughput FPS"],
                     [[x["name"], num(x["median_ms"]), num(x["p99_ms"]), num(x["fps"]), num(x["ratio_vs_eager"], 2),
                       num(x.get("throughput_fps"))] for x in b["rows"]])
        out.append("")
    return out + [source(*rels)]


def _gpu(rel: str) -> list[str]:
    g = load(rel)
    out = [f"**{g['gpu']}**, torch {g['torch']}, CUDA {g['cuda']}; {g['samples']} held-out samples; "
           f"{g['minutes']} min; TensorRT: {g['tensorrt']}.", ""]
    rows = []
    for res, r in sorted(g["resolutions"].items(), key=lambda kv: int(kv[0])):
        for x in r["rows"]:
            rows.append([x["variant"], x.get("compile") or "eager", num(x.get("load_s")), num(x["median_ms"], 2),
                         num(x["fps"], 0),
                         num(x.get("x_plain_fp16_replay"), 2), num(x["vs_cpu"]["face"]["psnr"]),
                         "pass" if x["passed"] else "**fail**"])
    out += table(["variant", "plan", "open s", "median ms", "FPS", "× plain FP16 replay", "face PSNR dB vs CPU FP32",
                  "gate"], rows)
    return out + ["", source(rel)]


def int8_scopes() -> list[str]:
    rels = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "export/scopes").glob("*.json"))
    rows = []
    for rel in rels:
        s = load(rel)
        rows.append([f"{s['resolution']}²", s["smooth_gc"], s["psnr_floor_db"],
                     "<br>".join(f"`{n}`" for n in s["float_nodes"]), ", ".join(s["float_op_types"])])
    return table(["size", "GC smoothing α", "PSNR floor dB", "kept float (node patterns)", "op inputs kept float"],
                 rows) + ["", "From " + ", ".join(f"[{r}](../{r})" for r in rels) + " by `python docs/tables.py`."]


def parity_example() -> list[str]:
    rels = [f"docs/example-report/parity_{res}/parity.json" for res in (256, 128)]
    rows = []
    for rel in rels:
        for v in load(rel)["variants"]:
            f = v["metrics"]["face"]
            modes = ", ".join(m for m in v["modes"] if m != "default")
            rows.append([v["variant"], f"{f['max_abs']:.2e}", num(f["psnr"]), f"{f['ssim']:.4f}",
                         f"{f['detection_rate']:.0%}", f"{f['landmark_shift_px']:.2f}",
                         ("pass" if v["passed"] else "**fail**") + (f" ({modes})" if modes else "")])
    return table(["variant", "face max abs", "PSNR dB", "SSIM", "dlib det.", "lm shift px", "result"], rows) + \
        ["", source(*rels)]


TABLES = {
    "thresholds": thresholds,
    "parity-example": parity_example,
    "speed-example": example_report,
    "speed-amx-suites": cpu_check_suites,
    "speed-amx-bench": cpu_check_bench,
    "gpu-h100": lambda: _gpu("docs/gpu-check/gpu_report.json"),
    "gpu-h200-recheck": lambda: _gpu("docs/gpu-check/h200_recheck_128.json"),
    "gpu-h200-eager": lambda: _gpu("docs/gpu-check/h200_eager_plans.json"),
    "int8-scopes": int8_scopes,
}


# ---------------------------------------------------------------- the pages

def render(text: str, page: str) -> str:
    def fill(m: re.Match) -> str:
        name = m.group(2)
        if name not in TABLES:
            raise SystemExit(f"{page}: unknown table '{name}' (known: {', '.join(TABLES)})")
        return m.group(1) + "\n".join(TABLES[name]()) + "\n" + m.group(4)

    return BLOCK.sub(fill, text)


def pages() -> list[Path]:
    return sorted(ROOT.glob(PAGES))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python docs/tables.py", description=__doc__.split("\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    args = p.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text, str(page.relative_to(ROOT)))
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(f"out of date (run python docs/tables.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    print(f"rewrote {', '.join(stale)}" if stale else "every page is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
