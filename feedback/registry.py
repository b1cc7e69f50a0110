"""The adapter registry on disk: `adapters/<version>/` = a PEFT `save_pretrained` folder plus
`manifest.json`, and the version names both the server and the trainer use. Plain files (no torch, no
SQLModel): the model worker processes import it too.

Publishing writes the folder under a temporary name (`.staging-*`), fsyncs it, renames it to its
version, then the caller inserts the DB row. A crash at any point never leaves a half-written adapter
under a version name; a folder renamed but never registered (killed between the two) is removed by the
next round's `clean_registry`. Version numbers count up past every row and every folder, so a version
name is never reused."""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BASE_VERSION = "base"  # the version name of "no adapter": the bare base model
MANIFEST = "manifest.json"
LEGACY_MANIFEST = "supportloop.json"  # what rounds before the registry layout wrote
STAGING_PREFIX = ".staging-"
_NUMBERED = re.compile(r"^v(\d+)-\d{14}$")


class ManifestError(ValueError):
    """An adapter folder whose manifest is missing or unreadable."""


def version_name(number: int, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"v{number}-{now:%Y%m%d%H%M%S}"


def next_number(adapters_dir: Path, registered: Iterable[str]) -> int:
    """One more than the highest version number among DB rows and folders (kept or orphaned)."""
    names = list(registered) + ([p.name for p in Path(adapters_dir).iterdir()] if Path(adapters_dir).is_dir() else [])
    numbers = [int(m.group(1)) for m in map(_NUMBERED.match, names) if m]
    return max(numbers, default=0) + 1


def manifest_path(folder: Path) -> Path | None:
    """The adapter folder's manifest (`manifest.json`, or the legacy name), or None when it has none."""
    for name in (MANIFEST, LEGACY_MANIFEST):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest; `ManifestError` when it is missing or unreadable."""
    path = manifest_path(folder) or Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{folder}: unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{folder}: {MANIFEST} is not a JSON object")
    return manifest


def publish_folder(staging: Path, adapters_dir: Path, version: str, manifest: dict[str, Any]) -> Path:
    """Move a finished adapter folder into the registry under `version`, durably."""
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    fsync_tree(staging)
    final = adapters_dir / version
    if final.exists():
        raise FileExistsError(f"adapter version {version} already exists in {adapters_dir}")
    os.rename(staging, final)
    fsync_path(adapters_dir)
    return final


def clean_registry(adapters_dir: Path, registered: set[str], log: Callable[[str], None]) -> list[str]:
    """Remove what a killed round left: staging folders, and version folders with no DB row. Call only
    while holding the round lock. Returns the names removed."""
    removed: list[str] = []
    if not Path(adapters_dir).is_dir():
        return removed
    for path in sorted(Path(adapters_dir).iterdir()):
        orphan = _NUMBERED.match(path.name) and path.name not in registered
        if path.is_dir() and (path.name.startswith(STAGING_PREFIX) or orphan):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log(f"cleaned up after an interrupted round: removed {', '.join(removed)}")
    return removed


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file below `folder`, then the folder itself, to disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fsync_path(path)
    fsync_path(folder)
