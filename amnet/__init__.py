"""AMNet in PyTorch: model, checkpoints, training. Import submodules explicitly
(`amnet.model`, `amnet.checkpoint`); this package root stays torch-free."""

__version__ = "0.1.0"
