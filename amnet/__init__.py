"""AMNet in PyTorch (model, checkpoints, training, signals) and, under ``amnet.core``, the torch-free base
every layer shares. Import submodules explicitly; this package root stays torch-free."""

from pathlib import Path

__version__ = "0.2.0"


def default_checkpoint() -> Path:
    """The shipped trained model."""
    return Path(__file__).resolve().parent / "default" / "amnet.safetensors"
