"""Here (dlib present): the dlib checks of the gate on faces a device CPU produced, against this machine's FP32
reference on the same 24 held-out inputs, judged by the product's limits for the face-check metrics."""
import json, sys
from pathlib import Path
import numpy as np
from amnet import default_checkpoint
from amnet.core.limits import load_limits
from amnet.realdata import load_inputs
from benchmarks.parity import face_checks, run_in_batches
from runtimes import registry

folder = Path(sys.argv[1])
limits = load_limits(None, None, registry.backends())
refs = {}
for f in sorted(folder.glob("faces_*.npz")):
    data = np.load(f)
    for name in data.files:
        name_full = name if name != "face" else f.stem.removeprefix("faces_")
        r = int(name_full.rsplit("-r", 1)[1])
        if r not in refs:
            feeds = load_inputs("heldout", r, 24)
            with registry.open_runner(default_checkpoint(r), runtime="pytorch", threads=2) as runner:
                refs[r] = run_in_batches(runner, feeds, None)["face"]
        test = data[name].astype(np.float32)
        fc = face_checks(refs[r], test)
        precision = name_full.split("-")[1]
        lim = limits.for_variant("openvino", precision)
        face_lim = {k: v for k, v in lim.items() if "detection" in k or "landmark" in k}
        print(name_full, json.dumps({k: fc[k] for k in ("detected_where_reference_detected", "landmark_shift_px",
                                                      "landmark_shift_single_px", "reference_detected",
                                                      "variant_detected")}), "limits:", face_lim, flush=True)
