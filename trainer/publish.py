"""Publishing an adapter: write to a temporary name, fsync, rename, then insert the DB row.

A crash at any point never leaves a half-written adapter visible under a version name, and version
names are never reused (the folder rename refuses an existing name)."""
from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

from bot.basemodel import fsync_path, fsync_tree

MANIFEST = "supportloop.json"


def base_model_id(base_model: Path) -> str:
    """Identity of a base checkpoint: its folder name and a hash of its config."""
    digest = hashlib.sha256((Path(base_model) / "config.json").read_bytes()).hexdigest()[:16]
    return f"{Path(base_model).name}@{digest}"


def version_name(number: int, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"v{number}-{now:%Y%m%d%H%M%S}"


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
