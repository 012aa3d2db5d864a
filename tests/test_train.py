import numpy as np
import torch

from amnet.checkpoint import load_checkpoint
from amnet.model import AMNet, AMNetConfig, Discriminator
from amnet.train import PairSampler, TrainConfig, adversarial_step, train


def tiny_data(n=8, res=32, seed=0):
    rng = np.random.default_rng(seed)
    # Two "identities": smooth colour blobs, so source and target are related; each frame also carries
    # its own index in its top-left pixel, so every frame is a different image.
    base = rng.integers(0, 255, (2, 4, 4, 3)).astype(np.uint8)
    faces = np.stack([np.kron(base[i % 2], np.ones((res // 4, res // 4, 1), np.uint8)) for i in range(n)])
    faces[:, 0, 0, :] = np.arange(n)[:, None]
    return {"face": faces, "audio": rng.normal(0, 1, (n, 64, 60)).astype(np.float32),
            "pose": rng.normal(0, .3, (n, 3)).astype(np.float32), "eye": rng.uniform(.1, .4, (n, 2)).astype(np.float32),
            "landmarks": rng.uniform(0, 1, (n, 136)).astype(np.float32), "identity": np.arange(n) % 2}


def test_loss_falls_on_a_few_steps():
    torch.manual_seed(0)
    G, D = AMNet(AMNetConfig(landmarks=136), gc_form="grouped"), Discriminator()
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    batch = next(PairSampler(tiny_data(), 32).batches(4))
    history = [adversarial_step(G, D, opt_g, opt_d, batch) for _ in range(12)]
    assert history[-1]["L_C"] < 0.8 * history[0]["L_C"]
    assert history[-1]["L"] < history[0]["L"]
    assert history[-1]["L_G"] < history[0]["L_G"]


def test_pairs_share_identity_not_frames():
    from amnet.realdata import to_float

    data = tiny_data(n=32)
    s = PairSampler(data, 32)
    tag = lambda img: int(round((float(img[0, 0, 0]) + 1) * 127.5))  # noqa: E731 - the frame index pixel
    blob_of = {i: torch.from_numpy(to_float(data["face"][i:i + 1], 32))[0, :, 16:, 16:] for i in range(2)}
    same_frame = 0
    for source, *_, target, _ in s.batches(8):
        for src, tgt in zip(source, target):
            i, j = tag(src), tag(tgt)
            assert i % 2 == j % 2  # same identity...
            assert torch.equal(src[:, 16:, 16:], blob_of[i % 2]) and torch.equal(tgt[:, 16:, 16:], blob_of[j % 2])
            same_frame += i == j
    assert same_frame < 16  # ...but mostly another frame of it (16 frames per identity here)


def test_checkpoint_every_epoch_and_resume(tmp_path):
    cfg = AMNetConfig(landmarks=136, resolution=32)
    r1 = train(tiny_data(), tmp_path, cfg, TrainConfig(epochs=1, batch=4, resolution=32), progress=False)
    assert r1["steps"] == 2 and (tmp_path / "amnet.safetensors").is_file() and (tmp_path / "train_state.pt").is_file()
    loaded = load_checkpoint(tmp_path / "amnet.safetensors")
    assert loaded.discriminator is not None and loaded.config.extra["steps"] == 2
    r2 = train(tiny_data(), tmp_path, cfg, TrainConfig(epochs=2, batch=4, resolution=32), resume=True, progress=False)
    assert r2["steps"] == 4 and [h["epoch"] for h in r2["history"]] == [1, 2]


def test_mirror_is_a_consistent_involution():
    """Flipping twice is the identity; once, yaw/roll negate, eyes swap, and the landmarks follow the image."""
    from amnet.realdata import load_inputs
    from amnet.signals import head_pose
    from amnet.train import mirror

    d = np.load("calibration_data/heldout.npz")
    lm = torch.from_numpy(d["landmarks"][:4].astype(np.float32))
    x = load_inputs("heldout", 64, 4)
    batch = (torch.from_numpy(x["source"]), torch.from_numpy(x["pose"]), torch.from_numpy(x["eye"]),
             torch.from_numpy(x["source"]), lm)
    once = mirror(*batch)
    for a, b in zip(mirror(*once), batch):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    torch.testing.assert_close(once[2], batch[2].flip(-1))
    # Pose recomputed from the mirrored landmarks: yaw and roll change sign, pitch stays.
    for i in range(4):
        p, q = (head_pose(t[i].reshape(68, 2).numpy() * 256, (256, 256, 3)) for t in (lm, once[4]))
        np.testing.assert_allclose(q, p * np.array([-1, 1, -1]), atol=0.03)


def test_flip_sampler_mirrors_about_half_the_pairs():
    data = tiny_data(n=64)
    data["face"][:] = np.arange(32)[None, None, :, None].astype(np.uint8)  # a left→right ramp
    data["audio"][:, 0, 0] = np.arange(64)  # tags each row with its frame index
    s = PairSampler(data, 32, seed=1, flip=True)
    source, audio, pose, _, target, _ = next(s.batches(64))
    idx = audio[:, 0, 0, 0].long().numpy()
    flipped = target[:, 0, 0, 0] > target[:, 0, 0, -1]  # the ramp now falls
    assert 16 < int(flipped.sum()) < 48
    assert torch.equal(source[:, :, :, 0] > source[:, :, :, -1], target[:, :, :, 0] > target[:, :, :, -1])
    sign = np.where(flipped.numpy(), -1.0, 1.0)
    np.testing.assert_allclose(pose[:, 0].numpy(), sign * data["pose"][idx, 0], rtol=1e-6)
    np.testing.assert_allclose(pose[:, 1].numpy(), data["pose"][idx, 1], rtol=1e-6)


def test_evaluate_reports_per_identity_and_retrieval_ceiling(trained, tmp_path):
    """The held-out report on the shipped model; the ceiling is 1 when the training set holds the targets."""
    from benchmarks.evaluate import evaluate
    from amnet.realdata import heldout_identity

    with np.load("calibration_data/heldout.npz") as h:
        faces, ids = h["images"][h["target_idx"]], h["identity"]
    train = tmp_path / "train.npz"
    np.savez(train, face=faces, identity=ids)
    r = evaluate(trained, 128, tmp_path / "grid.png", train)
    assert r["samples"] == len(heldout_identity()) == 47
    assert set(r["ssim_per_identity"]) == {0, 1, 2}
    assert abs(np.mean([r["ssim_per_identity"][i] * np.sum(ids == i) for i in range(3)]) * 3 / 47
               - r["ssim_generated_vs_target"]) < 1e-9
    assert r["ssim_retrieval_ceiling"]["mean"] > 0.999
    assert 0.4 < r["ssim_generated_vs_target"] < r["ssim_retrieval_ceiling"]["mean"]
    assert r["dlib_detection_rate_generated"] >= 0.9
    assert (tmp_path / "grid.png").stat().st_size > 10_000


def test_flip_refuses_landmarks_it_cannot_mirror():
    import pytest

    from amnet.core.errors import InputError

    data = tiny_data()
    data["landmarks"] = data["landmarks"][:, :100]
    with pytest.raises(InputError, match="68 landmarks"):
        PairSampler(data, 32, flip=True)


def test_crop_takes_one_aligned_window_of_source_and_target():
    import pytest

    from amnet.core.errors import InputError
    from amnet.realdata import to_float

    data = tiny_data(n=8, res=32)
    full = torch.from_numpy(to_float(data["face"], 32))
    sampler = PairSampler(data, 32, crop=16)
    for source, *_, target, _ in sampler.batches(4):
        assert source.shape[-2:] == target.shape[-2:] == (16, 16)
        # the target window is a window of some full target frame, at the same place as the source's
        hits = [(i, y, x) for i in range(8) for y in range(17) for x in range(17)
                if torch.equal(full[i, :, y:y + 16, x:x + 16], target[0])]
        assert hits
        _, y, x = hits[0]
        assert any(torch.equal(full[i, :, y:y + 16, x:x + 16], source[0]) for i in range(8))
    with pytest.raises(InputError, match="--crop"):
        PairSampler(data, 32, crop=30)


def test_init_starts_from_the_given_weights(tmp_path):
    """--init: the run's first weights are the checkpoint's (a fine-tune), recorded in the provenance."""
    from amnet.checkpoint import save_checkpoint

    torch.manual_seed(3)
    start = AMNet(AMNetConfig(landmarks=136, resolution=32))
    ckpt = save_checkpoint(tmp_path / "start.safetensors", start)
    cfg = AMNetConfig(landmarks=136, resolution=32)
    train(tiny_data(), tmp_path / "run", cfg, TrainConfig(epochs=1, batch=4, resolution=32, lr=1e-12),
          progress=False, init=ckpt)
    tuned = load_checkpoint(tmp_path / "run" / "amnet.safetensors")
    assert tuned.config.extra["init"] == str(ckpt)
    a, b = start.state_dict(), tuned.model.state_dict()
    # lr 1e-12: the weights are still the start's (fp16 storage rounds them)
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=2e-3, rtol=2e-3) for k in a if a[k].is_floating_point())
