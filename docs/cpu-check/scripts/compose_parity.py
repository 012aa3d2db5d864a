"""parity_<R>/parity.json for benchmarks.bars from a device's gate rows (dlib waived there: no dlib) and the dlib
checks run here on the faces that device saved (latency mode), so that `python -m benchmarks.bars FOLDER` judges
the device's runs with the gate applied.   python compose_parity.py GATE.jsonl LANDMARKS.txt FOLDER"""
import json, sys
from pathlib import Path

gate, landmarks, folder = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
faces = {}
for line in landmarks.read_text().splitlines():
    name, rest = line.split(" ", 1)
    faces[name] = json.loads(rest[:rest.index("} limits:") + 1])
by_r: dict[int, list] = {}
for line in gate.read_text().splitlines():
    row = json.loads(line)
    fc = faces.get(row["variant"])
    if fc is not None:
        row["metrics"]["face"]["detection_rate"] = fc["detected_where_reference_detected"]
        row["metrics"]["face"]["landmark_shift_px"] = fc["landmark_shift_px"]
        row["modes"]["latency"]["landmark_shift_px"] = fc["landmark_shift_px"]
        limits = row["limits"]
        if fc["detected_where_reference_detected"] < limits.get("face.detection_rate_min", 0) or \
                fc["landmark_shift_px"] > limits.get("face.landmark_shift_px_max", float("inf")):
            row["passed"] = False
            row["failures"].append("dlib checks (run where dlib is) failed")
        row["waived"] = []
        row["face_checks"] = fc | {"checked": "here, on the device's latency-mode faces"}
    by_r.setdefault(row["resolution"], []).append(row)
for r, rows in by_r.items():
    (folder / f"parity_{r}").mkdir(parents=True, exist_ok=True)
    (folder / f"parity_{r}" / "parity.json").write_text(json.dumps(
        {"reference": "PyTorch FP32 on the device CPU", "samples": 24, "resolution": r, "variants": rows,
         "passed": all(x["passed"] for x in rows)}, indent=1) + "\n")
