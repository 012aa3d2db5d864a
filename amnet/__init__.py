"""AMNet in PyTorch (model, checkpoints, training, signals) and, under ``amnet.core``, the torch-free base
every layer shares. Import submodules explicitly; this package root stays torch-free."""

from pathlib import Path

__version__ = "0.2.0"


def default_checkpoint(resolution: int | None = None) -> Path:
    """The shipped trained model: trained at 128²; for 256², its fine-tune at 256² (the 128² weights make grid
    artefacts there: held-out SSIM 0.40 against 0.57, amnet/default/MODEL_CARD.md)."""
    folder = Path(__file__).resolve().parent / "default"
    return folder / ("amnet_256.safetensors" if resolution == 256 else "amnet.safetensors")
