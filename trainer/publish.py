"""The adapter registry on disk: `adapters/<version>/` = a PEFT `save_pretrained` folder plus
`manifest.json`.

Publishing writes the folder under a temporary name (`.staging-*`), fsyncs it, renames it to its
version, then the caller inserts the DB row. A crash at any point never leaves a half-written adapter
under a version name; a folder renamed but never registered (killed between the two) is removed by the
next round's `clean_registry`. Version numbers count up past every row and every folder, so a version
name is never reused."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path

from bot.basemodel import fsync_path, fsync_tree

MANIFEST = "manifest.json"
LEGACY_MANIFEST = "supportloop.json"  # what rounds before the registry layout wrote
STAGING_PREFIX = ".staging-"
_VERSION = re.compile(r"^v(\d+)-\d{14}$")


class ManifestError(ValueError):
    """An adapter folder whose manifest is missing or unreadable."""


def weights_hash(base_model: Path) -> str:
    """SHA-256 over the base checkpoint's weight files, in name order."""
    digest = hashlib.sha256()
    files = sorted(Path(base_model).glob("*.safetensors")) or sorted(Path(base_model).glob("*.bin"))
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()


def supportloop_version() -> str:
    try:
        return package_version("supportloop")
    except PackageNotFoundError:
        return "unknown"


def version_name(number: int, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"v{number}-{now:%Y%m%d%H%M%S}"


def next_number(adapters_dir: Path, registered: Iterable[str]) -> int:
    """One more than the highest version number among DB rows and folders (kept or orphaned)."""
    names = list(registered) + ([p.name for p in Path(adapters_dir).iterdir()] if Path(adapters_dir).is_dir() else [])
    numbers = [int(m.group(1)) for m in map(_VERSION.match, names) if m]
    return max(numbers, default=0) + 1


def read_manifest(folder: Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.exists() and (Path(folder) / LEGACY_MANIFEST).exists():
        path = Path(folder) / LEGACY_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{folder}: unreadable {MANIFEST}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{folder}: {MANIFEST} is not a JSON object")
    return manifest


def publish_folder(staging: Path, adapters_dir: Path, version: str, manifest: dict) -> Path:
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
    removed = []
    if not Path(adapters_dir).is_dir():
        return removed
    for path in sorted(Path(adapters_dir).iterdir()):
        orphan = _VERSION.match(path.name) and path.name not in registered
        if path.is_dir() and (path.name.startswith(STAGING_PREFIX) or orphan):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    if removed:
        log(f"cleaned up after an interrupted round: removed {', '.join(removed)}")
    return removed
