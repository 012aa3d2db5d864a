import numpy as np
import torch

from amnet.checkpoint import load_checkpoint
from amnet.model import AMNet, AMNetConfig, Discriminator
from amnet.train import PairSampler, TrainConfig, adversarial_step, train


def tiny_data(n=8, res=32, seed=0):
    rng = np.random.default_rng(seed)
    # Two "identities": smooth colour blobs, so source and target are related.
    base = rng.integers(0, 255, (2, 4, 4, 3)).astype(np.uint8)
    faces = np.stack([np.kron(base[i % 2], np.ones((res // 4, res // 4, 1), np.uint8)) for i in range(n)])
    return {"face": faces, "audio": rng.normal(0, 1, (n, 64, 60)).astype(np.float32),
            "pose": rng.normal(0, .3, (n, 3)).astype(np.float32), "eye": rng.uniform(.1, .4, (n, 2)).astype(np.float32),
            "landmarks": rng.uniform(0, 1, (n, 136)).astype(np.float32), "identity": np.arange(n) % 2}


def test_loss_falls_on_a_few_steps():
    torch.manual_seed(0)
    G, D = AMNet(AMNetConfig(landmarks=136)).set_gc_form("grouped"), Discriminator()
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    batch = next(PairSampler(tiny_data(), 32).batches(4))
    history = [adversarial_step(G, D, opt_g, opt_d, batch) for _ in range(12)]
    assert history[-1]["L_C"] < 0.8 * history[0]["L_C"]
    assert history[-1]["L"] < history[0]["L"]
    assert history[-1]["L_G"] < history[0]["L_G"]


def test_pairs_share_identity():
    s = PairSampler(tiny_data(), 32)
    source, *_, target, _ = next(s.batches(8))
    # Identity i%2 → the source is a frame of the same blob image as the target.
    assert torch.equal(source, target)


def test_checkpoint_every_epoch_and_resume(tmp_path):
    cfg = AMNetConfig(landmarks=136, resolution=32)
    r1 = train(tiny_data(), tmp_path, cfg, TrainConfig(epochs=1, batch=4, resolution=32), progress=False)
    assert r1["steps"] == 2 and (tmp_path / "amnet.safetensors").is_file() and (tmp_path / "train_state.pt").is_file()
    loaded = load_checkpoint(tmp_path / "amnet.safetensors")
    assert loaded.discriminator is not None and loaded.config.extra["steps"] == 2
    r2 = train(tiny_data(), tmp_path, cfg, TrainConfig(epochs=2, batch=4, resolution=32), resume=True, progress=False)
    assert r2["steps"] == 4 and [h["epoch"] for h in r2["history"]] == [1, 2]
