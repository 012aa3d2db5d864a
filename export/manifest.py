"""The sidecar manifest of an export folder: provenance plus one entry per artifact."""
from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from amnet import __version__
from amnet.checkpoint import atomic_write
from amnet.errors import ArtifactError

MANIFEST = "manifest.json"


def tool_versions(*packages: str) -> dict[str, str]:
    out = {"amnet-deploy": __version__, "python": platform.python_version()}
    for p in packages:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def read(out_dir: Path) -> dict:
    path = out_dir / MANIFEST
    if not path.is_file():
        return {"artifacts": []}
    try:
        data = json.loads(path.read_text())
        data["artifacts"]  # noqa: B018 - shape check
        return data
    except (ValueError, KeyError, TypeError):
        raise ArtifactError(f"{path} is not an amnet-deploy manifest (delete it or use another folder)") from None


def update(out_dir: Path, artifacts: list, **fields) -> dict:
    """Merge artifacts into the folder's manifest (same file name replaces), write atomically."""
    data = read(out_dir)
    new = [a if isinstance(a, dict) else asdict(a) for a in artifacts]
    names = {a["file"] for a in new}
    data["artifacts"] = [a for a in data["artifacts"] if a["file"] not in names] + new
    data.update(fields)
    data["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write(out_dir / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=1) + "\n"))
    return data
