"""One error family, so the CLI can print one clear line instead of a traceback.

This module imports nothing heavy: the torch-free runtimes share it.
"""


class AmnetError(Exception):
    """An error whose message is meant for the user, as one line."""


class InputError(AmnetError):
    """Wrong shape, dtype, name or values in what the user passed."""


class CheckpointError(AmnetError):
    """A file that is not a usable AMNet checkpoint."""


class ArtifactError(AmnetError):
    """A corrupt, truncated or foreign exported artifact (ONNX, IR, engine)."""


class RuntimeMissing(AmnetError):
    """A runtime (OpenVINO, TensorRT, ...) that is not installed here."""
