"""Wall time of one round: N approved corrections → a gated, published adapter.

Fills a fresh store with N DSTC9 questions (a conversation each, as the bot would have stored it, with
the reference answer approved as a staff correction), writes 32 unrelated DSTC9 pairs as the golden
set, and times `supportloop train` from start to exit (model loading, training, the gate, publishing).
Prints JSON and a one-line summary. Targets: ≤ 8 minutes on a 2-core CPU, ≤ 60 s on a CUDA GPU.

    .venv/bin/python bench/train.py --corrections 100 [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import live

from bot.server.settings import Settings
from feedback import repo
from feedback.db import open_store
from feedback.models import Role


def seed_store(data_dir: Path, pairs: list[dict]) -> None:
    store = open_store(Settings(data_dir=data_dir).db_url)
    system = Settings().system_prompt
    with store.session() as s:
        staff = repo.create_staff(s, name="bench")[0]
        for pair in pairs:
            conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt=system)
            repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=pair["question"])
            answer = repo.add_message(
                s,
                conversation_id=conversation.id,
                role=Role.assistant,
                text="I'm sorry, I don't have that information.",
                adapter_version="base",
            )
            repo.add_correction(s, message_id=answer.id, actor=staff, text=pair["reference"], approve=True)
    store.dispose()


def cpu_name() -> str:
    """The CPU model, and which wide-vector units it has (they decide fp32/bf16 speed)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    units = [unit for unit in ("avx512f", "amx_bf16") if unit in info] or ["avx2"]
    return f"{name} ({', '.join(units)})"


def run(n: int, device: str, seed: int) -> dict:
    corrected, golden = live.pick_pairs(n, 32, seed, per_entity=2)
    data_dir = Path(tempfile.mkdtemp(prefix="supportloop-train-bench-"))
    seed_store(data_dir, corrected)
    golden_file = data_dir / "golden.jsonl"
    golden_file.write_text(
        "".join(json.dumps({"question": p["question"], "answer": p["reference"]}) + "\n" for p in golden)
    )
    version, manifest, _passed, wall = live.train_round(
        {"SUPPORTLOOP_DATA_DIR": str(data_dir)}, "--device", device, "--golden-set", str(golden_file)
    )
    sft = manifest["training"]["sft"]
    return {
        "corrections": n,
        "device": device,
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "round_s": round(wall, 1),
        "train_s": manifest["timings"]["train_s"],
        "gate_s": manifest["timings"]["gate_s"],
        "steps": sft["steps"],
        "precision": sft["precision"],
        "loss_first": round(sft["losses"][0], 3),
        "loss_final": round(sft["losses"][-1], 3),
        "gate_passed": manifest["gate"]["passed"],
        "gate_metrics": manifest["gate"]["metrics"],
        "version": version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corrections", type=int, default=100, help="approved corrections (default 100)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="which DSTC9 pairs (default 0)")
    args = parser.parse_args()
    result = run(args.corrections, args.device, args.seed)
    print(json.dumps(result, indent=2))
    target = 480 if args.device == "cpu" else 60
    metrics = result["gate_metrics"]
    print(
        f"train: {result['corrections']} corrections → {result['version']} "
        f"({'gate passed' if result['gate_passed'] else 'gate REJECTED'}) in {result['round_s']} s on {args.device} "
        f"({result['cores']} cores, {result['precision']}): train {result['train_s']} s ({result['steps']} steps), "
        f"gate {result['gate_s']} s; new {metrics['new']['candidate']:.3f}, golden {metrics['golden']['candidate']:.3f} "
        f"vs {metrics['golden']['active']:.3f}; target ≤ {target} s {'met' if result['round_s'] <= target else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
