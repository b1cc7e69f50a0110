"""The adapter registry on disk: version numbers never reused, interrupted rounds cleaned up, manifests
read defensively, published folders loadable with a plain `PeftModel.from_pretrained`."""

from __future__ import annotations

import json

import pytest

from feedback.registry import (
    MANIFEST,
    ManifestError,
    clean_registry,
    next_number,
    publish_folder,
    read_manifest,
    version_name,
)


def test_version_numbers_count_past_rows_and_orphaned_folders(tmp_path):
    assert next_number(tmp_path / "missing", []) == 1
    (tmp_path / "v7-20261128120000").mkdir()  # a folder whose round died before registering it
    (tmp_path / ".staging-sft-abc").mkdir()
    assert next_number(tmp_path, ["v2-20261101000000", "base"]) == 8
    assert version_name(8).startswith("v8-") and len(version_name(8)) == len("v8-20261128120000")


def test_clean_registry_removes_staging_and_unregistered_versions_only(tmp_path):
    for name in ("v1-20261128120000", "v2-20261128130000", ".staging-sft-x", ".staging-dpo-y", "notes"):
        (tmp_path / name).mkdir()
    logs: list[str] = []
    removed = clean_registry(tmp_path, {"v1-20261128120000"}, logs.append)
    assert removed == [".staging-dpo-y", ".staging-sft-x", "v2-20261128130000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "v1-20261128120000"]
    assert "removed .staging-dpo-y" in logs[0]
    assert clean_registry(tmp_path / "missing", set(), logs.append) == []


def test_publishing_refuses_an_existing_version_and_manifests_are_read_defensively(tmp_path):
    staging = tmp_path / ".staging-sft-1"
    staging.mkdir()
    final = publish_folder(staging, tmp_path, "v1-20261128120000", {"version": "v1-20261128120000"})
    assert read_manifest(final)["version"] == "v1-20261128120000" and not staging.exists()
    again = tmp_path / ".staging-sft-2"
    again.mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        publish_folder(again, tmp_path, "v1-20261128120000", {})
    (final / MANIFEST).write_text("{truncated")
    with pytest.raises(ManifestError, match="unreadable manifest.json"):
        read_manifest(final)
    (final / MANIFEST).write_text(json.dumps([1, 2]))
    with pytest.raises(ManifestError, match="not a JSON object"):
        read_manifest(final)
