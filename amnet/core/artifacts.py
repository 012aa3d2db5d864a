"""The build folder's manifest: what each artifact is, which files make it, and their sha256.

One owner of ``manifest.json``. Publishing is transactional:

- a builder writes its files under pending names (``Stage.path``), never over
  a published file;
- ``publish`` then, under an exclusive lock on the folder, renames each
  artifact's files to names that carry a token of their contents
  (``amnet_full_b1_r256_ov_int8.<token>.xml`` + ``.<token>.bin``), swaps in the
  new manifest atomically, and only then deletes the files no entry refers to.

So a reader sees the old manifest with all its files, or the new one with all
of its files (the files of the manifest just replaced are kept until the next
publish, for readers that read it a moment ago); a SIGKILL at any point leaves
the previous build loadable (at worst some orphans, swept by the next publish); an IR's ``.xml`` and ``.bin``
are never from two builds; two builds into one folder serialise on the lock.
Entries keep their logical ``name`` (no token) so users and tools can refer to
``amnet_full_b1_r256_ov_int8.xml``; ``resolve`` maps it to the current file.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from amnet.core.errors import ArtifactError, InputError, IntegrityError
from amnet.core.fileio import file_sha256, write_text

MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
SCHEMA = 2
TOKEN_LEN = 10
_TOKENED = re.compile(rf"^[^.]+\.[0-9a-f]{{{TOKEN_LEN}}}\.")
_PENDING = re.compile(r"^\.pending-(\d+)-\d+-(.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TEMP = re.compile(r"^\..+\.(\d+)\.tmp$")  # atomic_write's temp files


class Precision(str, Enum):
    """The precisions a build can produce; every (runtime, precision) needs limits in thresholds.json."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> "Precision":
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            raise InputError(f"unknown precision {text!r}; choose from {', '.join(p.value for p in cls)}") from None


# ---------------------------------------------------------------- reading

def read(out_dir: Path) -> dict:
    """The folder's manifest ({"artifacts": []} when there is none); a malformed one is one ArtifactError."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        return {"schema": SCHEMA, "artifacts": []}
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not valid JSON (delete it or use another folder)") from None
    arts = data.get("artifacts") if isinstance(data, dict) else None
    if not isinstance(arts, list) or not all(isinstance(a, dict) for a in arts):
        raise ArtifactError(f"{path} is not an amnet-deploy manifest (no list of artifacts)")
    if data.get("schema") != SCHEMA:
        raise ArtifactError(f"{path} was written by another amnet-deploy version (schema {data.get('schema')}, "
                            f"want {SCHEMA}): rebuild into a new folder")
    for a in arts:
        bad = [k for k, t in (("name", str), ("file", str), ("files", dict), ("runtime", str), ("precision", str),
                              ("part", str)) if not isinstance(a.get(k), t)]
        bad += [k for k in ("batch", "resolution") if a.get(k) is not None and not _positive_int(a.get(k))]
        if bad:
            raise ArtifactError(f"{path}: entry {a.get('name', '?')!r} has a missing or malformed {', '.join(bad)}")
        # Every file an entry names is a plain name in this folder with a sha256, its main file among them:
        # an entry that left its file out of `files` would be run unverified.
        files = a["files"]
        if (not files or a["file"] not in files or not all(_plain(f) for f in (a["name"], *files))
                or not all(isinstance(h, str) and _SHA256.match(h) for h in files.values())):
            raise ArtifactError(f"{path}: entry {a['name']!r} does not list its files by plain name with a "
                                "sha256 each, its main file among them (damaged or hand-edited): rebuild it")
    return data


def _plain(name: str) -> bool:
    """A file name in the folder itself: no path, no parent, not hidden."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def entry_for(path: Path) -> tuple[Path, dict] | None:
    """The manifest entry that lists this file (by its on-disk or logical name), or None."""
    path = Path(path)
    folder = path.parent
    if not (folder / MANIFEST).is_file():
        return None
    for a in read(folder)["artifacts"]:
        if path.name == a["name"] or path.name in a["files"]:
            return folder, a
    return None


def logical_name(path: Path) -> str:
    """The artifact name a file is published under (its own name when no manifest lists it)."""
    found = entry_for(path)
    return found[1]["name"] if found else Path(path).name


def resolve(path: Path) -> Path:
    """A file path as given, or the current file of the artifact whose logical name it is."""
    path = Path(path)
    if path.exists():
        return path
    found = entry_for(path)
    return found[0] / found[1]["file"] if found else path


def verify(folder: Path, entry: dict) -> None:
    """Every file of an artifact is present and has the sha256 the manifest recorded."""
    for name, sha in entry["files"].items():
        f = Path(folder) / name
        if not f.is_file():
            raise ArtifactError(f"{name} is listed in {MANIFEST} but missing: rebuild it")
        if file_sha256(f) != sha:
            raise IntegrityError(f"{name} does not match the sha256 in {MANIFEST} (damaged or tampered): "
                                 "rebuild it")


def verified_file(path: Path) -> Path:
    """The current file of `path`, checked against the sha256 its manifest records; a loose file (no manifest
    beside it) as it is. For files read as inputs (a build's ONNX, diagnose's source), as runners check theirs."""
    path = Path(path)
    found = entry_for(path)
    if found is None:
        refuse_unlisted(path)
        return path
    verify(*found)
    return found[0] / found[1]["file"]


def refuse_unlisted(path: Path) -> None:
    """A file that lies in a build folder whose manifest does not list it: nothing vouches for its contents."""
    if (Path(path).parent / MANIFEST).is_file():
        raise IntegrityError(f"{Path(path).name} lies in a build folder whose {MANIFEST} does not list it, so "
                             "nothing vouches for its contents: rebuild it")


# ---------------------------------------------------------------- writing

@contextmanager
def folder_lock(out_dir: Path):
    """An exclusive lock on a build folder (flock: released by the kernel if the holder dies)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / LOCK, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class Stage:
    """Pending files of a build, published together by `publish` (or removed if the build fails)."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.items: list[tuple[dict, list[Path]]] = []
        self._n = 0

    def path(self, logical_name: str) -> Path:
        """Where a builder writes a file it will publish as `logical_name` (no dot in its stem)."""
        if "." not in logical_name or "/" in logical_name or logical_name.startswith("."):
            raise ValueError(f"bad artifact file name {logical_name!r}")
        self._n += 1
        return self.dir / f".pending-{os.getpid()}-{self._n}-{logical_name}"

    def add(self, entry: dict, files: list[Path]) -> None:
        """One artifact: its manifest entry (with a logical ``name``) and its pending files, main file first."""
        self.items.append((entry, [Path(f) for f in files]))

    def discard(self) -> None:
        for p in self.dir.glob(f".pending-{os.getpid()}-*"):
            p.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is not None:
            self.discard()


def _logical(pending: Path) -> str:
    m = _PENDING.match(pending.name)
    if not m:
        raise ValueError(f"{pending} is not a staged file")
    return m.group(2)


def with_token(logical: str, token: str) -> str:
    stem, _, rest = logical.partition(".")
    return f"{stem}.{token}.{rest}"


def publish(stage: Stage, provenance: dict | None = None) -> dict:
    """Rename the staged files to content-tokened names and swap in the new manifest, under the folder lock."""
    out_dir = stage.dir
    with folder_lock(out_dir):
        data = read(out_dir)
        previous = {f for a in data["artifacts"] for f in a["files"]}
        for entry, files in stage.items:
            shas = {_logical(p): file_sha256(p) for p in files}
            token = hashlib.sha256("".join(f"{n}:{s};" for n, s in sorted(shas.items())).encode()).hexdigest()
            token = token[:TOKEN_LEN]
            finals = {}
            for p in files:
                final = with_token(_logical(p), token)
                os.replace(p, out_dir / final)
                finals[final] = shas[_logical(p)]
            main = with_token(_logical(files[0]), token)
            entry = {**entry, "file": main, "files": finals, "sha256": finals[main]}
            if provenance:
                entry["provenance"] = {**provenance, **entry.get("provenance", {})}
            data["artifacts"] = [a for a in data["artifacts"] if a["name"] != entry["name"]] + [entry]
        # An entry whose files were deleted by hand would otherwise be carried into the new manifest: dropped.
        gone = [a["name"] for a in data["artifacts"] if not all((out_dir / f).is_file() for f in a["files"])]
        if gone:
            import warnings

            warnings.warn(f"{out_dir}/{MANIFEST} listed {', '.join(gone)} whose files are gone: dropped from it")
            data["artifacts"] = [a for a in data["artifacts"] if a["name"] not in gone]
        data["schema"] = SCHEMA
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_text(out_dir / MANIFEST, json.dumps(data, indent=1) + "\n")
        _sweep(out_dir, {f for a in data["artifacts"] for f in a["files"]} | previous)
    stage.items = []
    return data


def _sweep(out_dir: Path, live: set[str]) -> None:
    """Delete tokened files that neither the new nor the previous manifest refers to, and pending/temp files
    of processes that are gone."""
    for p in out_dir.iterdir():
        m = _PENDING.match(p.name) or _TEMP.match(p.name)
        if m and not _alive(int(m.group(1))):
            p.unlink(missing_ok=True)
        elif _TOKENED.match(p.name) and p.name not in live and p.is_file():
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
