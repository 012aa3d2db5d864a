"""One error family, so the CLI can print one clear line instead of a traceback.

Exit codes (the CLI's contract): 0 pass, 1 a check failed, 2 usage or input
error (every AmnetError, and an OSError such as a full disk), 3 internal error.
"""

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class AmnetError(Exception):
    """An error whose message is meant for the user, as one line."""


class InputError(AmnetError):
    """Wrong shape, dtype, name or values in what the user passed."""


class CheckpointError(AmnetError):
    """A file that is not a usable AMNet checkpoint."""


class ArtifactError(AmnetError):
    """A corrupt, truncated or foreign exported artifact (ONNX, IR, engine)."""


class IntegrityError(ArtifactError):
    """An artifact whose bytes differ from what its manifest recorded (tampered or half-written)."""


class RuntimeMissing(AmnetError):
    """A runtime or package (OpenVINO, TensorRT, torch, ...) that is not installed here."""


def first_line(e: BaseException | str, limit: int = 200) -> str:
    """What a library said, as one short line: the first line of its message, else the exception's type name."""
    text = str(e).strip()
    return (text.splitlines() or [type(e).__name__])[0][:limit]
