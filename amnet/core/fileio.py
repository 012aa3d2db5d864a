"""Files: atomic writes that refuse to replace anything but a regular file, sha256, npz, lazy imports.

The one owner of the npz format (`load_npz`, `save_npz`): every command reads
and writes arrays through it, never with pickle.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import stat
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from amnet.core.errors import InputError, RuntimeMissing, first_line


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_output_path(path: str | os.PathLike) -> Path:
    """A path we may (re)place: new, or an existing regular file. Never a device, FIFO, socket or folder."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise InputError(f"refusing to write {path}: it is {kind}, not a regular file")
    return path


def check_output_dir(folder: str | os.PathLike, *names: str) -> Path:
    """A report folder and every file name a command will write in it, checked before it writes any: a refused
    run replaces nothing. The folder may not exist yet."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"refusing to write into {folder}: it is not a folder")
    for name in names:
        check_output_path(folder / name)
    return folder


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call write(tmp_path), fsync, then rename onto path: readers see the old file or the whole new one."""
    path = check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an .npz (object arrays refused: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"inputs not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # a lone .npy array (or a memory map of one)
            raise InputError(f"{path.name} holds one array, not an .npz of named arrays")
        with z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        first = first_line(e, 10_000).split(". ")[0]  # numpy's first sentence, whole
        raise InputError(f"{path.name} is not a readable .npz ({first[:160]})") from None
    odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if odd:
        raise InputError(f"{path.name}: {', '.join(odd[:3])} {'is' if len(odd) == 1 else 'are'} not .npy arrays")
    return arrays


def save_npz(path: str | os.PathLike, arrays: dict, compressed: bool = False) -> Path:
    save = np.savez_compressed if compressed else np.savez

    def write(tmp):
        with open(tmp, "wb") as f:
            save(f, **arrays)

    return atomic_write(path, write)


# Once per process: the version check reads package metadata from disk (~1 ms), and the MP4 writer asks for its
# library twice per frame of a live stream. A failure raises, so it is not remembered.
@functools.cache
def lazy_import(module: str, hint: str, min_version: str | None = None, distribution: str | None = None):
    """Import an optional dependency, or raise RuntimeMissing with a one-line install hint.

    ``min_version`` is checked against the installed distribution (``distribution``,
    default the module's top-level name), so a too-old package gets the same hint.
    """
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise RuntimeMissing(f"{module} is not installed: {hint}") from None
    if min_version:
        dist = distribution or module.split(".")[0]
        try:
            have = metadata.version(dist)
        except metadata.PackageNotFoundError:
            have = getattr(mod, "__version__", None)
        if have is not None and _version_tuple(have) < _version_tuple(min_version):
            raise RuntimeMissing(f"{dist} {have} is older than the {min_version} needed: {hint}")
    return mod


def _version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = "".join(ch for ch in piece if ch.isdigit()) if piece[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def tool_versions(*packages: str) -> dict[str, str]:
    import platform

    from amnet import __version__

    out = {"amnet-deploy": __version__, "python": platform.python_version()}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out
