"""One training round: snapshot the store, build the SFT dataset, train, publish, register."""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bot.basemodel import resolve_device
from feedback import repo
from feedback.db import open_store
from feedback.export import dataset_hash, sft_records
from feedback.models import BASE_VERSION
from trainer.config import RoundConfig
from trainer.publish import base_model_id, publish_folder, version_name
from trainer.sft import TrainStats, train_sft


class NothingToTrain(RuntimeError):
    """The store has no approved corrections yet."""


@dataclass(frozen=True)
class RoundSummary:
    version: str
    parent: str
    path: Path
    dataset_hash: str
    stats: TrainStats
    device: str

    def describe(self) -> str:
        s = self.stats
        return (f"trained {self.version} (parent {self.parent}) on {s.examples} examples: {s.steps} steps, "
                f"loss {s.first_loss:.3f} → {s.final_loss:.3f}, {s.seconds:.1f} s on {self.device}/{s.precision}")


def _snapshot(store) -> tuple[list[dict], str]:
    with store.session() as session:
        records = sft_records(session)
        active = repo.active_adapter(session)
    return records, active.version if active else BASE_VERSION


def _train_and_publish(config: RoundConfig, records: list[dict], parent: str, store,
                       log: Callable[[str], None]) -> RoundSummary:
    device = resolve_device(config.device)
    config.adapters_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=config.adapters_dir))
    try:
        stats = train_sft(records, base_model=config.base_model, out_dir=staging, device=device,
                          lora=config.lora, sft=config.sft, log=log, progress=config.progress)
        digest = dataset_hash(records)
        with store.session() as session:
            version = version_name(repo.next_adapter_number(session))
        manifest = {"version": version, "parent": parent, "base_model": base_model_id(config.base_model),
                    "method": "sft", "dataset_hash": digest, "examples": stats.examples, "steps": stats.steps,
                    "losses": stats.losses, "seconds": stats.seconds, "precision": stats.precision,
                    "created": datetime.now(timezone.utc).isoformat(), "config": config.to_dict()}
        final = publish_folder(staging, config.adapters_dir, version, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metrics = {"train_loss_first": stats.first_loss, "train_loss_final": stats.final_loss,
               "examples": stats.examples, "steps": stats.steps, "seconds": round(stats.seconds, 2)}
    with store.session() as session:
        repo.register_adapter(session, version=version, path=str(final.resolve()), parent=parent,
                              base_model=manifest["base_model"], dataset_hash=digest, metrics=metrics,
                              activate=config.activate)
    return RoundSummary(version, parent, final, digest, stats, device)


def _round(config: RoundConfig, store, record: Callable[[str], None]) -> RoundSummary:
    records, parent = _snapshot(store)
    if not records:
        raise NothingToTrain("No approved corrections or thumbed-up answers yet: staff approve one with "
                             "POST /api/messages/{id}/corrections {\"text\": ..., \"approve\": true}.")
    record(f"round: {len(records)} SFT examples (approved corrections, thumbed-up answers), parent {parent}")
    summary = _train_and_publish(config, records, parent, store, record)
    record(summary.describe())
    return summary


def run_round(config: RoundConfig, log: Callable[[str], None] = print) -> RoundSummary:
    """Train one round from the store's approved corrections; the run and its log are recorded."""
    store = open_store(config.database_url)
    with store.session() as session:
        run_id = repo.start_run(session, config=config.to_dict()).id
    lines: list[str] = []

    def record(line: str) -> None:
        lines.append(line)
        log(line)

    summary, outcome = None, "failed"
    try:
        summary = _round(config, store, record)
        outcome = "published"
    except NothingToTrain as exc:
        outcome = "skipped"
        lines.append(str(exc))
        raise
    except Exception as exc:
        lines.append(f"failed: {exc!r}")
        raise
    finally:
        with store.session() as session:
            repo.finish_run(session, run_id=run_id, outcome=outcome, log="\n".join(lines),
                            adapter_version=summary.version if summary else None)
        store.dispose()
    return summary
