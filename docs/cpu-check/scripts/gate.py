"""Device CPU: the parity gate of the OpenVINO INT8/FP16 variants with this CPU's own float precision (auto: bf16
on AVX512-BF16/AMX), both modes, against the FP32 PyTorch reference computed here; dlib checks waived (no dlib
on this machine). Prints each row as JSON and saves the latency-mode faces (float16) so that the dlib checks
can be run where dlib is."""
import json, sys
from pathlib import Path
import numpy as np
from amnet import default_checkpoint
from amnet.core.cpu import isa, isa_name
from amnet.core.limits import load_limits
from amnet.realdata import load_inputs
from benchmarks.parity import collect_variants, evaluate, run_in_batches
from runtimes import registry

out, root = Path(sys.argv[1]), Path(sys.argv[2])
print("isa", isa_name(isa()), flush=True)
limits = load_limits(None, None, registry.backends())
for r in (256, 128):
    feeds = load_inputs("heldout", r, 24)
    with registry.open_runner(default_checkpoint(r), runtime="pytorch", threads=2) as ref_runner:
        reference = run_in_batches(ref_runner, feeds, None)
    variants = [v for v in collect_variants(root / f"r{r}", r) if v.runtime == "openvino" and v.precision != "fp32"]
    rows = evaluate(variants, feeds, reference, limits, threads=2, faces=False, progress=False)
    faces = {}
    for row in rows:
        if "_outputs" in row:
            faces[row["variant"]] = row["_outputs"]["face"].astype(np.float16)
        print("GATE", json.dumps({k: v for k, v in row.items() if not k.startswith("_")}, default=str), flush=True)
    if r == 256:
        for name, face in faces.items():
            np.savez(out / f"faces_{name}.npz", face=face)
    else:
        np.savez(out / f"faces_r{r}.npz", **faces)
