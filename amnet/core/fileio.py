"""Files: atomic writes that refuse to replace anything but a regular file, sha256, npz, lazy imports.

The one owner of the npz format (`load_npz`, `save_npz`): every command reads
and writes arrays through it, never with pickle.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
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


def check_input_path(path: str | os.PathLike, what: str = "input") -> Path:
    """A file we may read: an existing regular file (or folder where one is allowed by the caller's own check).
    A FIFO would block `open` (signals unanswered), a device would stream without end: both refused up front."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except OSError as e:
        raise InputError(f"cannot read {what} {path}: {e.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = ("a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
        raise InputError(f"refusing to read {what} {path}: it is {kind}, not a regular file")
    return path


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: compare where they would be
        return Path(os.path.realpath(a)) == Path(os.path.realpath(b))


def refuse_overwriting(output: str | os.PathLike, *inputs: str | os.PathLike | None, flag: str = "--output") -> Path:
    """An output that is (or resolves to, through links) one of the command's inputs, or a build folder's
    manifest, is refused before any work: writing it would destroy what the command reads."""
    output = Path(output)
    for given in inputs:
        if given is None or str(given) == "-":
            continue
        if _same(output, Path(given)):
            raise InputError(f"{flag} {output} is also an input ({given}): write the result elsewhere")
    if output.name == "manifest.json" and output.exists():  # artifacts.MANIFEST (core.fileio is below it)
        raise InputError(f"{flag} {output} would replace a build folder's manifest: write the result elsewhere")
    return output


JSON_MAX_BYTES = 64 << 20  # a manifest, limits, scope or clips file is kilobytes; a bigger one is not ours


def read_json(path: str | os.PathLike, what: str = "JSON file"):
    """A JSON file's contents, or one InputError: missing, not a regular file, too big, not JSON, or nested so
    deep that the parser would overflow its stack (a hostile file, never a traceback)."""
    path = check_input_path(path, what)
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file")
    if path.stat().st_size > JSON_MAX_BYTES:
        raise InputError(f"{what} {path} is over {JSON_MAX_BYTES >> 20} MiB: not one of ours")
    try:
        return json.loads(path.read_bytes())
    except RecursionError:
        raise InputError(f"{what} {path} is nested too deeply to be one of ours") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{what} {path} is not valid JSON ({first_line(e, 120)})") from None


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
    except OSError as e:  # disk full, EACCES: name the file the user asked for, not our hidden temp file
        if e.filename is not None and Path(os.fsdecode(e.filename)) not in (tmp, path):
            raise  # about another file the writer read: its own name is the right one
        raise OSError(e.errno, e.strerror or str(e), str(path)) from None
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
