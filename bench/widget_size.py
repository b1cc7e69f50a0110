"""The widget's weight on a customer's page: widget/widget.js as served, minified with terser (through
npx, from the npm registry; skipped when npx is missing) and gzip-compressed. Target: ≤ 30 KB minified.
Prints JSON and one summary line.

    .venv/bin/python bench/widget_size.py
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "widget" / "widget.js"


def minified(source: bytes) -> bytes | None:
    npx = shutil.which("npx")
    if npx is None:
        return None
    result = subprocess.run(
        [npx, "--yes", "terser@5", "--compress", "--mangle"], input=source, capture_output=True, timeout=300
    )
    return result.stdout if result.returncode == 0 else None


def main() -> None:
    source = SCRIPT.read_bytes()
    small = minified(source)
    result = {
        "bytes": len(source),
        "gzip_bytes": len(gzip.compress(source, 9)),
        "minified_bytes": len(small) if small else None,
        "minified_gzip_bytes": len(gzip.compress(small, 9)) if small else None,
        "target_minified_bytes": 30_000,
    }
    print(json.dumps(result, indent=2))
    shown = (
        f"{result['minified_bytes']:,} B minified ({result['minified_gzip_bytes']:,} B gzip)"
        if small
        else "minifier unavailable"
    )
    print(
        f"widget_size: {result['bytes']:,} B as served ({result['gzip_bytes']:,} B gzip), {shown}; target ≤ 30,000 B minified"
    )


if __name__ == "__main__":
    main()
