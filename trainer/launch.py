"""A round's training on several processes: data-parallel (DDP) over GPUs, or over CPU processes (gloo).

`supportloop train --processes N` (N > 1) runs each method's training as

    python -m torch.distributed.run --nproc_per_node N -m trainer.launch SPEC.json

— the launcher `accelerate launch --multi_gpu --num_processes N -m trainer.launch SPEC.json` also uses
(accelerate's CLI refuses several processes with `--cpu`, so CPU runs use torch's launcher directly). Every
process runs the same `train_lora` as a one-process round; TRL's trainer (through accelerate) sees the
launcher's environment and wraps the model in DDP, each process taking its share of every batch; process 0
saves the adapter and writes the statistics. Everything else of the round (snapshot, gate, publish) stays
in the round's own process. With one process nothing here is used: the round trains in-process as always.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from trainer.config import LoraSettings, PreferenceSettings, SFTSettings
from trainer.lora import TrainStats


def train_distributed(
    method: str,
    records: list[dict],
    *,
    processes: int,
    base_model: Path,
    out_dir: Path,
    device: str,
    lora: LoraSettings,
    settings: SFTSettings | PreferenceSettings,
    log: Callable[[str], None],
    init_adapter: Path | None = None,
) -> TrainStats:
    """Train `method` on `records` in `processes` processes; the adapter lands in `out_dir` as in-process."""
    with tempfile.TemporaryDirectory(prefix="supportloop-ddp-") as work:
        spec = Path(work) / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "method": method,
                    "records": records,
                    "base_model": str(base_model),
                    "out_dir": str(out_dir),
                    "device": device,
                    "lora": asdict(lora),
                    "settings": asdict(settings),
                    "init_adapter": str(init_adapter) if init_adapter else None,
                    "stats": str(Path(work) / "stats.json"),
                }
            )  # fmt: skip
        )
        log(f"{method}: training on {processes} processes (DDP, {'nccl' if device == 'cuda' else 'gloo'})")
        _launch(processes, spec, log)
        stats = json.loads((Path(work) / "stats.json").read_text())
    return TrainStats(**stats)


def _launch(processes: int, spec: Path, log: Callable[[str], None]) -> None:
    command = [  # --standalone: a local rendezvous on a port it picks itself
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
        "-m", "trainer.launch", str(spec),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in run.stdout or []:
        lines.append(line.rstrip())
        if line.startswith("supportloop: "):
            log(line.removeprefix("supportloop: ").rstrip())
    if run.wait() != 0:
        tail = "\n".join(lines[-30:])
        raise RuntimeError(f"distributed training failed (exit code {run.returncode}):\n{tail}")


def main(spec_path: str) -> None:
    """One process of the launch: train, then (process 0) write the statistics."""
    from trainer.preference import train_dpo, train_kto
    from trainer.sft import train_sft

    spec = json.loads(Path(spec_path).read_text())
    first = int(os.environ.get("RANK", "0")) == 0
    log = (lambda text: print(f"supportloop: {text}", flush=True)) if first else (lambda _text: None)
    common = dict(
        base_model=Path(spec["base_model"]),
        out_dir=Path(spec["out_dir"]),
        device=spec["device"],
        lora=LoraSettings(**spec["lora"]),
        log=log,
        progress=False,
        init_adapter=Path(spec["init_adapter"]) if spec["init_adapter"] else None,
    )
    if spec["method"] == "sft":
        stats = train_sft(spec["records"], sft=SFTSettings(**spec["settings"]), **common)
    else:
        train = train_dpo if spec["method"] == "dpo" else train_kto
        stats = train(spec["records"], settings=PreferenceSettings(**spec["settings"]), **common)
    import torch.distributed

    if first:
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        log(f"{spec['method']}: {world} processes trained together")
        Path(spec["stats"]).write_text(json.dumps(asdict(stats)))


if __name__ == "__main__":
    main(sys.argv[1])
