"""Base-model provisioning: resolution rules and idempotent pulls."""

from __future__ import annotations

import pytest

from bot.runtime.base_model import (
    COMPLETE_MARKER,
    DEFAULT_MODEL_NAME,
    ModelNotAvailable,
    pull_default_model,
    resolve_base_model,
)


def test_custom_checkpoint_folder_is_used_as_is(tiny_model, tmp_path):
    assert resolve_base_model(tiny_model, tmp_path) == tiny_model


def test_interrupted_pull_is_not_mistaken_for_a_model(tmp_path):
    partial = tmp_path / DEFAULT_MODEL_NAME
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(ModelNotAvailable, match="supportloop model pull"):
        resolve_base_model(None, tmp_path)


def test_pull_is_idempotent(tmp_path):
    done = tmp_path / DEFAULT_MODEL_NAME
    done.mkdir()
    (done / COMPLETE_MARKER).write_text("x")
    assert pull_default_model(tmp_path, install=False, progress=False) == done
    assert resolve_base_model(None, tmp_path) == done


@pytest.mark.integration
def test_pulled_default_model_is_a_plain_checkpoint():
    from bot.server.settings import Settings

    folder = pull_default_model(Settings().model_cache, progress=False)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert "quantization_config" not in (folder / "config.json").read_text()
