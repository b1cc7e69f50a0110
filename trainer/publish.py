"""What the trainer records about an adapter it publishes: the base checkpoint's weights hash and the
supportloop version that made it. The registry itself (folders, manifests, version names) is
`feedback.registry`, shared with the server."""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path


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
