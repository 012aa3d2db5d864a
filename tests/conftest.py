import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Two threads, as on the CI machine; tests stay deterministic.
torch.set_num_threads(2)
os.environ.setdefault("OMP_NUM_THREADS", "2")

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def official_layout():
    return json.loads((DATA / "official-checkpoint-layout.json").read_text())


@pytest.fixture(scope="session")
def small_model():
    from amnet.model import AMNet, AMNetConfig

    torch.manual_seed(0)
    return AMNet(AMNetConfig(landmarks=136)).eval()


@pytest.fixture(scope="session")
def checkpoint_file(tmp_path_factory, small_model):
    from amnet.checkpoint import save_checkpoint

    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.safetensors", small_model)


def random_inputs(n=2, res=32, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "source": rng.uniform(-1, 1, (n, 3, res, res)).astype(np.float32),
        "audio": rng.normal(0, 1, (n, 1, 64, 60)).astype(np.float32),
        "pose": rng.normal(0, 0.3, (n, 3)).astype(np.float32),
        "eye": rng.uniform(0.1, 0.4, (n, 2)).astype(np.float32),
    }


@pytest.fixture(scope="session")
def small_build(checkpoint_file, tmp_path_factory):
    """The small model exported at 32², batch 1 and 2, plus five random inputs: (folder, inputs.npz)."""
    from export.pipeline import ExportOptions, export_checkpoint

    d = tmp_path_factory.mktemp("small_build")
    export_checkpoint(checkpoint_file, d, ExportOptions((1, 2), 32, check_parity=False, progress=False))
    inputs = d.parent / f"{d.name}_in.npz"
    np.savez(inputs, **random_inputs(5, 32))
    return d, inputs


def copy_build(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.fixture(scope="session")
def limits():
    """The product's own limits file: tests read bars from it, never retype them."""
    from amnet.core.limits import load_limits

    return load_limits()


@pytest.fixture(scope="session")
def trained():
    """The shipped trained model (the real-data parity checks run on it)."""
    from amnet.checkpoint import load_checkpoint
    from amnet import default_checkpoint

    path = default_checkpoint()
    if not path.is_file():
        pytest.fail(f"the shipped checkpoint {path} is missing")
    return load_checkpoint(path).model


@pytest.fixture(scope="session")
def ov_build(trained, tmp_path_factory):
    """The shipped model at 128², batch 1, as OpenVINO FP32/FP16/INT8 (32 calibration samples): (folder, by precision)."""
    from amnet.checkpoint import save_checkpoint
    from export.pipeline import BuildOptions, ExportOptions, build, export_checkpoint

    d = tmp_path_factory.mktemp("ov")
    ckpt = save_checkpoint(d.parent / f"{d.name}.safetensors", trained)
    export_checkpoint(ckpt, d, ExportOptions((1,), 128, check_parity=False, progress=False))
    manifest = build(d, "openvino", d, BuildOptions(("fp32", "fp16", "int8"), (1,), 128, calib_samples=32,
                                                    progress=False))
    return d, {a["precision"]: a for a in manifest["artifacts"] if a["runtime"] == "openvino"}
