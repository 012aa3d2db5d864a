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
``amnet_full_b1_r256_ov_int8.xml``; ``open_entry`` maps it to the current file and verifies it.

The sweep deletes only what this tool wrote: the manifest records, atomically
with it, the tokened files a publish is about to create (``publishing``, before
the renames) and those it no longer lists (``retired``, deleted by the next
publish); a pending or temp file is ours only in our exact pattern, for a logical
name a manifest or this publish names, of a process that is gone. Anything else
in the folder (a user's ``IMG.20231225ab.jpg``) stays.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from amnet.core.errors import ArtifactError, InputError, IntegrityError
from amnet.core.fileio import file_sha256, read_json, write_text
from amnet.core.onnx_refs import external_data

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
        data = read_json(path, MANIFEST)
    except InputError as e:  # not JSON, too deep or too big: the folder's fault, not the command line's
        raise ArtifactError(f"{e} (delete it or use another folder)") from None
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
        if Path(a["name"]).suffix.lower() != Path(a["file"]).suffix.lower():  # the name would run another runtime
            raise ArtifactError(f"{path}: entry {a['name']!r} has the main file {a['file']}, of another kind "
                                "(damaged or hand-edited): rebuild it")
    _refuse_duplicates(path, arts)
    return data


def _refuse_duplicates(path: Path, arts: list[dict]) -> None:
    """One entry per name and per file: a second entry would decide what a name runs, or gate a file twice."""
    names = [a["name"] for a in arts]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ArtifactError(f"{path} lists {', '.join(twice)} twice (damaged or hand-edited): rebuild it")
    owner: dict[str, str] = {}
    for a in arts:
        for f in {a["name"], *a["files"]}:
            if owner.setdefault(f, a["name"]) != a["name"]:
                raise ArtifactError(f"{path}: {f} belongs to both {owner[f]!r} and {a['name']!r} "
                                    "(damaged or hand-edited): rebuild it")


def _plain(name: str) -> bool:
    """A file name in the folder itself: no path, no parent, not hidden."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


@dataclass(frozen=True)
class Opened:
    """A path, resolved: its folder, the manifest entry that lists it (None for a loose file), the file to read."""

    folder: Path
    entry: dict | None
    file: Path


def open_entry(path: Path, verify: bool = True, companions: tuple[str, ...] = ()) -> Opened:
    """The one way from a path (on-disk or logical name) to the file to read, checked when ``verify``.

    Listed: the entry's current file; verified, its files must have their sha256 and the entry must list every
    file the artifact reads (the ``companions`` suffixes beside it, an ONNX file's external data). Loose (no
    manifest beside it): the path as given, unverified, external data included (ONNX Runtime and onnx.load
    refuse data outside the model's folder, through '..' or a link, themselves). A file that lies in a build
    folder whose manifest does not list it is refused when verified.
    """
    path = Path(path)
    found = entry_for(path)
    if found is None:
        if not path.exists():
            raise InputError(f"model not found: {path}")
        if verify:
            refuse_unlisted(path)
        return Opened(path.parent, None, path)
    folder, entry = found
    if verify:
        check_files(folder, entry, companions)
    return Opened(folder, entry, folder / entry["file"])


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
    """Every file of an artifact is present and has the sha256 the manifest recorded, and none it reads is
    left out (for callers that hold an entry already; open_entry checks a path)."""
    check_files(folder, entry)


def check_files(folder: Path, entry: dict, companions: tuple[str, ...] = ()) -> None:
    """`verify`, and the entry lists every file the artifact reads: its runtime's `companions` (suffixes, as an
    IR's .bin) and an ONNX file's external data."""
    folder = Path(folder)
    for name, sha in entry["files"].items():
        f = folder / name
        if not f.is_file():
            raise ArtifactError(f"{name} is listed in {MANIFEST} but missing: rebuild it")
        if file_sha256(f) != sha:
            raise IntegrityError(f"{name} does not match the sha256 in {MANIFEST} (damaged or tampered): "
                                 "rebuild it")
    main = Path(entry["file"])
    needed = [main.with_suffix(s).name for s in companions]
    if main.suffix.lower() == ".onnx":  # its hash is checked above, so the names it gives are the built ones
        needed += external_data(folder / main)
    unlisted = [n for n in needed if n not in entry["files"]]
    if unlisted:  # the runtime would read them unchecked
        raise IntegrityError(f"{MANIFEST} gives no sha256 for {', '.join(unlisted)}, which {main.name} needs "
                             "(damaged or hand-edited): rebuild it")


def verified_file(path: Path) -> Path:
    """The current file of `path`, checked against the sha256 its manifest records; a loose file (no manifest
    beside it) as it is. For files read as inputs (a build's ONNX, diagnose's source), as runners check theirs."""
    return open_entry(path).file


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
    """Pending files of a build, published together by `publish` (or removed if the build fails, with the
    folder itself if this stage created it and nothing else is in it)."""

    def __init__(self, out_dir: Path):
        self.dir = Path(out_dir)
        self.created = [d for d in (self.dir, *self.dir.parents) if not d.exists()]  # deepest first
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
        for d in self.created:  # an interrupted first build leaves no empty folder behind
            try:
                d.rmdir()
            except OSError:  # not empty (or not ours to remove any more): kept
                break

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


def without_token(name: str) -> str:
    """with_token's inverse: the logical name of a published file (a name without a token as it is)."""
    stem, _, rest = name.partition(".")
    token, _, tail = rest.partition(".")
    return f"{stem}.{tail}" if tail and re.fullmatch(f"[0-9a-f]{{{TOKEN_LEN}}}", token) else name


def publish(stage: Stage, provenance: dict | None = None) -> dict:
    """Rename the staged files to content-tokened names and swap in the new manifest, under the folder lock."""
    out_dir = stage.dir
    with folder_lock(out_dir):
        data = read(out_dir)
        previous = {f for a in data["artifacts"] for f in a["files"]}
        owned = _owned(out_dir, data)
        plan = []  # (entry, [(pending, final, sha256)]): every final name known before any rename
        for entry, files in stage.items:
            shas = {_logical(p): file_sha256(p) for p in files}
            token = hashlib.sha256("".join(f"{n}:{s};" for n, s in sorted(shas.items())).encode()).hexdigest()
            plan.append((entry, [(p, with_token(_logical(p), token[:TOKEN_LEN]), shas[_logical(p)]) for p in files]))
        finals = {final for _, moves in plan for _, final, _ in moves}
        # Recorded before the renames: a SIGKILL after them leaves files the next publish knows are ours.
        write_text(out_dir / MANIFEST, json.dumps({**data, "publishing": sorted(owned | previous | finals)}) + "\n")
        for entry, moves in plan:
            for pending, final, _ in moves:
                os.replace(pending, out_dir / final)
            files = {final: sha for _, final, sha in moves}
            main = moves[0][1]
            entry = {**entry, "file": main, "files": files, "sha256": files[main]}
            if provenance:
                entry["provenance"] = {**provenance, **entry.get("provenance", {})}
            data["artifacts"] = [a for a in data["artifacts"] if a["name"] != entry["name"]] + [entry]
        # An entry whose files were deleted by hand would otherwise be carried into the new manifest: dropped.
        gone = [a["name"] for a in data["artifacts"] if not all((out_dir / f).is_file() for f in a["files"])]
        if gone:
            import warnings

            warnings.warn(f"{out_dir}/{MANIFEST} listed {', '.join(gone)} whose files are gone: dropped from it")
            data["artifacts"] = [a for a in data["artifacts"] if a["name"] not in gone]
        current = {f for a in data["artifacts"] for f in a["files"]}
        data.pop("publishing", None)
        data["retired"] = sorted((owned | previous | finals) - current)  # the previous ones kept for its readers
        data["schema"] = SCHEMA
        data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_text(out_dir / MANIFEST, json.dumps(data, indent=1) + "\n")
        ours = {a["name"] for a in data["artifacts"]} | {without_token(f) for f in current | previous}
        _sweep(out_dir, owned - current - previous, ours | {_logical(p) for _, m in plan for p, _, _ in m})
    stage.items = []
    return data


def _owned(out_dir: Path, data: dict) -> set[str]:
    """The tokened files on disk that the manifest records as this tool's (retired, or being published when a
    publish was killed)."""
    names = [n for key in ("retired", "publishing") if isinstance(data.get(key), list) for n in data[key]]
    return {n for n in names if isinstance(n, str) and _plain(n) and _TOKENED.match(n) and (out_dir / n).is_file()}


def _sweep(out_dir: Path, retired: set[str], logical_names: set[str]) -> None:
    """Delete the tokened files this tool recorded that no manifest generation kept, and the pending/temp files
    (in exactly our pattern, for a logical name of ours) of processes that are gone. Nothing else."""
    for name in retired:
        (out_dir / name).unlink(missing_ok=True)
    for p in out_dir.iterdir():
        m = _PENDING.match(p.name) or _TEMP.match(p.name)
        if m and _is_ours(p.name, logical_names) and not _alive(int(m.group(1))) and p.is_file():
            p.unlink(missing_ok=True)


def _is_ours(name: str, logical_names: set[str]) -> bool:
    """A pending file of one of our logical names, or atomic_write's temp file of one or of the manifest."""
    pending = _PENDING.match(name)
    if pending:
        return pending.group(2) in logical_names
    temp = _TEMP.match(name)
    inner = name[1:temp.start(1) - 1] if temp else ""  # ".X.<pid>.tmp" → X
    return bool(temp) and (inner == MANIFEST or _is_ours(inner, logical_names))


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
