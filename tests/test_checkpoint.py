import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from amnet.checkpoint import OFFICIAL_MAP, load_checkpoint, save_checkpoint
from amnet.core.errors import CheckpointError
from amnet.model import AMNet
from tests.conftest import ROOT, random_inputs


def official_state(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {net: {k: torch.randn(*shape, generator=g) for k, shape in layout[net].items()}
            for net in ("netG", "netA", "netD")}


@pytest.fixture(scope="module")
def official_g(tmp_path_factory, official_layout):
    sd = official_state(official_layout)
    path = tmp_path_factory.mktemp("official") / "latest_G.pth"
    torch.save({"netA": sd["netA"], "netG": sd["netG"], "epoch": 110}, path)
    return path, sd


def test_map_covers_the_whole_official_layout(official_layout):
    for net in ("netG", "netA"):
        assert set(OFFICIAL_MAP[net]) >= set(official_layout[net])
    mapped = {OFFICIAL_MAP["netG"][k] for k in official_layout["netG"]}
    assert mapped == set(AMNet().reenactor.state_dict())
    mapped = {OFFICIAL_MAP["netA"][k] for k in official_layout["netA"]}
    assert mapped == set(AMNet().fuser.state_dict())


def test_official_tensors_land_where_they_should(official_g):
    path, sd = official_g
    loaded = load_checkpoint(path)
    assert loaded.format == "official-G"
    assert loaded.config.kernel == 1 and loaded.config.landmarks == 212
    ours = {"netG": loaded.model.reenactor.state_dict(), "netA": loaded.model.fuser.state_dict()}
    for net in ("netG", "netA"):
        for theirs, tensor in sd[net].items():
            mine = ours[net][OFFICIAL_MAP[net][theirs]]
            assert torch.equal(mine.reshape(tensor.shape), tensor), theirs


def test_convert_save_load_round_trip_keeps_outputs(official_g, tmp_path):
    path, _ = official_g
    model = load_checkpoint(path).model
    feeds = {k: torch.from_numpy(v) for k, v in random_inputs(2, 32).items()}
    with torch.no_grad():
        before = model(**feeds)
    saved = save_checkpoint(tmp_path / "converted.safetensors", model)
    again = load_checkpoint(saved)
    assert again.format == "amnet-safetensors" and again.config.audio_delta == "official"
    with torch.no_grad():
        after = again.model(**feeds)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_fuser_only_file(tmp_path, official_layout):
    sd = official_state(official_layout)
    path = tmp_path / "audio_net.pth"
    torch.save({"audio_net": sd["netA"]}, path)
    loaded = load_checkpoint(path)
    assert loaded.format == "official-fuser" and loaded.components == ["fuser"]
    with pytest.raises(CheckpointError, match="lacks the reenactor"):
        loaded.require_full()


def test_fp16_storage_round_trip(tmp_path, small_model):
    path = save_checkpoint(tmp_path / "half.safetensors", small_model, half=True)
    loaded = load_checkpoint(path)
    w = small_model.reenactor.encoder[0].weight
    assert torch.allclose(loaded.model.reenactor.encoder[0].weight, w, atol=1e-3)
    assert loaded.config.landmarks == 136


def _bad_files(tmp_path, official_layout):
    sd = official_state(official_layout)
    files = {}
    files["text"] = tmp_path / "notes.pth"
    files["text"].write_text("hello, not a checkpoint")
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, AMNet())
    files["truncated"] = tmp_path / "truncated.safetensors"
    files["truncated"].write_bytes(good.read_bytes()[:5000])
    files["foreign"] = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, files["foreign"])
    missing = dict(sd["netG"])
    missing.pop("cells.3._op.conv1.weight")
    files["missing"] = tmp_path / "missing_G.pth"
    torch.save({"netG": missing, "netA": sd["netA"]}, files["missing"])
    shape = dict(sd["netG"])
    shape["stem.0._op.conv.weight"] = torch.zeros(24, 3, 5, 5)
    files["shape"] = tmp_path / "shape_G.pth"
    torch.save({"netG": shape, "netA": sd["netA"]}, files["shape"])
    files["pickle"] = tmp_path / "legacy.pth"
    files["pickle"].write_bytes(pickle.dumps({"netG": {}}))
    return files


@pytest.mark.parametrize("kind,match", [
    ("text", "not a checkpoint"), ("truncated", "not a readable safetensors"), ("foreign", "not an AMNet checkpoint"),
    ("missing", "missing keys reenactor|missing keys cells.3.body.0.weight"),
    ("shape", "shape mismatch: encoder.0.weight"), ("pickle", "legacy pickle"),
])
def test_bad_checkpoints_get_one_clear_line(tmp_path, official_layout, kind, match):
    path = _bad_files(tmp_path, official_layout)[kind]
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_malicious_pickle_is_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil_G.pth"
    torch.save({"netG": Evil()}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_cli_bad_checkpoint_exits_2_without_traceback(tmp_path, official_layout):
    path = _bad_files(tmp_path, official_layout)["shape"]
    r = subprocess.run([sys.executable, "-m", "amnet.cli", "info", str(path)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "shape mismatch" in r.stderr


def test_cli_info_and_infer_on_official_checkpoint(official_g, tmp_path):
    import json

    path, _ = official_g
    r = subprocess.run([sys.executable, "-m", "amnet.cli", "info", str(path), "--json"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["format"] == "official-G"
    assert info["parameters"] == {"fuser": 1_864_495, "reenactor": 4_085_200}
    assert info["gflops_per_frame"]["256x256"] == pytest.approx(20.0, abs=0.2)

    feeds = random_inputs(2, 32)
    np.savez(tmp_path / "in.npz", **feeds)
    r = subprocess.run([sys.executable, "-m", "amnet.cli", "infer", str(path), "--inputs", str(tmp_path / "in.npz"),
                        "--output", str(tmp_path / "out.npz")], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    out = np.load(tmp_path / "out.npz")
    model = load_checkpoint(path).model
    with torch.no_grad():
        face, lm = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    assert out["face"].shape == (2, 3, 32, 32) and out["landmarks"].shape == (2, 212)
    np.testing.assert_allclose(out["face"], face.numpy(), atol=1e-6)


def test_infer_refuses_a_delta_mismatch(checkpoint_file, tmp_path):
    from amnet.core.errors import InputError
    from amnet.cli.main import check_audio_delta, main

    with pytest.raises(InputError, match="'time' deltas but the model was trained with 'official'"):
        check_audio_delta({"audio_delta": np.array("time")}, "official")
    check_audio_delta({"audio_delta": np.array("official")}, "official")  # a match passes
    feeds = random_inputs(1, 32)
    np.savez(tmp_path / "in.npz", audio_delta=np.array("time"), **feeds)
    assert main(["infer", str(checkpoint_file), "--inputs", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "o.npz")]) == 2


@pytest.mark.parametrize("edit", ["int weights", "complex weights", "no fuser", "both empty"])
def test_official_files_that_would_run_wrong_weights_are_refused(tmp_path, official_layout, edit):
    sd = official_state(official_layout)
    g, a = dict(sd["netG"]), dict(sd["netA"])
    first = next(iter(g))
    if edit == "int weights":
        g = {k: (v * 100).long() for k, v in g.items()}
    elif edit == "complex weights":
        g[first] = g[first].to(torch.complex64)
    elif edit == "no fuser":
        a = {}
    else:
        g, a = {}, {}
    path = tmp_path / "G.pth"
    torch.save({"netG": g, "netA": a}, path)
    with pytest.raises(CheckpointError, match="not a float tensor|lacks the fuser|holds no weights"):
        load_checkpoint(path).require_full()


def test_a_nan_in_the_discriminator_is_refused_too(tmp_path, small_model):
    from amnet.model import Discriminator

    d = Discriminator()
    with torch.no_grad():
        next(d.parameters()).view(-1)[0] = float("nan")
    path = save_checkpoint(tmp_path / "nan_d.safetensors", small_model, d)
    with pytest.raises(CheckpointError, match=r"NaN/Inf weights \(discriminator\."):
        load_checkpoint(path)
