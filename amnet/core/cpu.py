"""What this CPU can compute natively, as oneDNN (under OpenVINO and PyTorch) will see it.

The flags come from /proc/cpuinfo; ``ONEDNN_MAX_CPU_ISA`` caps them the way
oneDNN does, so a run under ``ONEDNN_MAX_CPU_ISA=AVX2`` reports (and picks
precisions for) the AVX2 machine it emulates. Float precision policy for the
float parts of INT8/FP16 variants: bf16 where the (capped) CPU has native bf16
(AVX512-BF16 or AMX), f32 elsewhere; FP32 variants always compute f32.

The GC path (the nine grouped convs and their weight heads) is never INT8 and computes in that same float
precision: bf16 on bf16 CPUs. Keeping it f32 there was not measured on a bf16 machine yet; with bf16 GCs the
INT8 gate passed on two AMX cores (44-47 dB, every face found). Each OpenVINO build records what its GC path
ran in (manifest: ``actual_precision.gc_path``).
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

from amnet.core.errors import InputError

# Feature → cpuinfo flags (any of them).
FEATURES = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "VNNI": ("avx512_vnni",), "AVX-VNNI": ("avx_vnni",),
            "AVX512-BF16": ("avx512_bf16",), "AMX": ("amx_tile", "amx_bf16", "amx_int8"),
            "AVX512-FP16": ("avx512_fp16",)}
# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) → the features still usable under them.
CAPS = {
    "SSE41": (), "AVX": (), "AVX2": ("AVX2",), "AVX2_VNNI": ("AVX2", "AVX-VNNI"), "AVX2_VNNI_2": ("AVX2", "AVX-VNNI"),
    "AVX512_CORE": ("AVX2", "AVX-512"), "AVX512_CORE_VNNI": ("AVX2", "AVX-512", "VNNI"),
    "AVX512_CORE_BF16": ("AVX2", "AVX-512", "VNNI", "AVX512-BF16"),
    "AVX512_CORE_FP16": ("AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AVX512-FP16"),
    "AVX512_CORE_AMX": ("AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AVX512-FP16", "AMX"),  # = AVX10_1_512_AMX
    "AVX512_CORE_AMX_FP16": ("AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AVX512-FP16", "AMX"),
    "AVX10_1_512": ("AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AVX512-FP16"),
    "AVX10_1_512_AMX": ("AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AVX512-FP16", "AMX"),
    "AVX10_1_512_AMX_FP16": ("AVX2", "AVX-512", "VNNI", "AVX512-BF16", "AVX512-FP16", "AMX"),
}
UNCAPPED = ("ALL", "DEFAULT")  # oneDNN's values for "no cap"
FLOAT_PRECISIONS = ("auto", "f32", "bf16")
FLOAT_PRECISION_ENV = "AMNET_FLOAT_PRECISION"  # `--float-precision` sets it, so benchmark children inherit it


# AMD's (family, model range) → core generation: "AMD EPYC" alone does not say Zen 3 (AVX2) from Zen 4 (AVX-512).
AMD_CORES = ((23, range(0x00, 0x30), "Zen/Zen+"), (23, range(0x30, 0x100), "Zen 2"),
             (25, range(0x00, 0x10), "Zen 3"), (25, range(0x10, 0x20), "Zen 4"), (25, range(0x20, 0x60), "Zen 3"),
             (25, range(0x60, 0x80), "Zen 4"), (25, range(0xA0, 0xB0), "Zen 4"), (26, range(0x00, 0x100), "Zen 5"))


def describe_cpu(cpuinfo: str) -> tuple[str, set[str]]:
    """/proc/cpuinfo text → ("AMD EPYC (family 25, model 1: Zen 3)", flags) from its first processor."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break  # the first processor is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name", "")
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    if family.isdigit() and model.isdigit():
        core = next((c for f, models, c in AMD_CORES if fields.get("vendor_id") == "AuthenticAMD"
                     and int(family) == f and int(model) in models), None)
        name = f"{name} (family {family}, model {model}{f': {core}' if core else ''})".strip()
    return name, set(fields.get("flags", "").split())


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        name, flags = describe_cpu(Path("/proc/cpuinfo").read_text())
    except OSError:
        name, flags = "", set()
    return name or platform.processor(), flags


def isa_cap() -> str | None:
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() or None
    if cap in UNCAPPED:
        return None
    if cap is not None and cap not in CAPS:
        raise InputError(f"ONEDNN_MAX_CPU_ISA={cap} is not one of oneDNN's: {', '.join((*CAPS, *UNCAPPED))}")
    return cap


def isa() -> dict:
    """{"cpu": model name, "cap": ONEDNN_MAX_CPU_ISA or None, "native": {feature: bool}, "effective": {…}}."""
    model, flags = _cpuinfo()
    native = {name: any(f in flags for f in keys) for name, keys in FEATURES.items()}
    cap = isa_cap()
    allowed = set(CAPS[cap]) if cap else set(FEATURES)
    return {"cpu": model, "cap": cap, "native": native,
            "effective": {name: have and name in allowed for name, have in native.items()}}


def isa_name(info: dict | None = None) -> str:
    """The best effective ISA in one word: AMX, AVX512-BF16, AVX512-VNNI, AVX-512, AVX2-VNNI, AVX2, or SSE/AVX."""
    e = (info or isa())["effective"]
    for name, need in (("AMX", ("AMX",)), ("AVX512-BF16", ("AVX512-BF16",)), ("AVX512-VNNI", ("AVX-512", "VNNI")),
                       ("AVX-512", ("AVX-512",)), ("AVX2-VNNI", ("AVX2", "AVX-VNNI")), ("AVX2", ("AVX2",))):
        if all(e[n] for n in need):
            return name
    return "SSE/AVX"


def native_bf16(info: dict | None = None) -> bool:
    e = (info or isa())["effective"]
    return e["AVX512-BF16"] or e["AMX"]


def float_precision(variant_precision: str, asked: str | None = None) -> str:
    """The compute precision (OpenVINO's INFERENCE_PRECISION_HINT) for a variant's float parts."""
    asked = asked or os.environ.get(FLOAT_PRECISION_ENV) or "auto"
    if asked not in FLOAT_PRECISIONS:
        raise InputError(f"float precision must be one of {', '.join(FLOAT_PRECISIONS)}, got {asked!r}")
    if str(variant_precision) == "fp32":
        return "f32"  # the FP32 variant is the exact one: never rounded to bf16 behind the user's back
    if asked != "auto":
        return asked
    # FP16 variants too: bf16, never f16, even where the CPU has AVX512-FP16. On two cores of a Xeon with AMX and
    # AVX512-FP16 (family 6, model 207), the FP16 IR computing f16 took 184.5 ms a 256² frame, twice the FP32 IR
    # (91.6 ms) and nine times the INT8 one with bf16 float parts (21.1 ms): AMX multiplies bf16, not f16.
    return "bf16" if native_bf16() else "f32"
