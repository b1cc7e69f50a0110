"""One training round: snapshot the store, build the datasets, train the chosen methods one after the
other on one adapter, publish, register."""
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
from feedback.export import dataset_hash, records as export_records
from feedback.models import BASE_VERSION
from trainer.config import RoundConfig
from trainer.lora import TrainStats
from trainer.preference import train_dpo, train_kto
from trainer.publish import base_model_id, publish_folder, version_name
from trainer.sft import train_sft

METHODS = ("sft", "dpo", "kto")  # the order methods run in when several are chosen


class NothingToTrain(RuntimeError):
    """The store has nothing any chosen method can learn from yet."""


@dataclass(frozen=True)
class RoundSummary:
    version: str
    parent: str
    path: Path
    datasets: dict[str, dict]  # method → {"hash", "examples"}
    stats: dict[str, TrainStats]  # method → its training
    device: str

    def describe(self) -> str:
        parts = [f"{m} {s.examples} examples, {s.steps} steps, loss {s.first_loss:.3f} → {s.final_loss:.3f}, "
                 f"{s.seconds:.1f} s" for m, s in self.stats.items()]
        return f"trained {self.version} (parent {self.parent}) on {self.device}: " + "; ".join(parts)


def parse_methods(setting: str) -> list[str] | None:
    """The methods named by a `--methods` setting, in `METHODS` order; None for `auto`."""
    if setting.strip() == "auto":
        return None
    wanted = {m.strip() for m in setting.split(",") if m.strip()}
    unknown = sorted(wanted - set(METHODS))
    if unknown or not wanted:
        raise ValueError(f"unknown training methods {unknown or setting!r}; use auto or some of {', '.join(METHODS)}")
    return [m for m in METHODS if m in wanted]


def choose_methods(setting: str, sizes: dict[str, int]) -> list[str]:
    """The methods a round runs, in `METHODS` order. `auto`: SFT when there are approved corrections or
    thumbed-up answers (SFT is what makes the adapter reproduce corrected facts), else KTO when there
    are at least two thumbed answers; DPO only when asked for (its pairs come from the corrections SFT
    already learns, and alone it learned no facts at about 4x the cost of an SFT step). Named methods
    without data are left out."""
    named = parse_methods(setting)
    if named is None:
        return ["sft"] if sizes["sft"] else ["kto"] if sizes["kto"] >= 2 else []
    return [m for m in named if sizes[m] >= (2 if m == "kto" else 1)]


def _snapshot(store) -> tuple[dict[str, list[dict]], str]:
    with store.session() as session:
        datasets = {method: export_records(session, method) for method in METHODS}
        active = repo.active_adapter(session)
    return datasets, active.version if active else BASE_VERSION


def _train(config: RoundConfig, method: str, records: list[dict], out: Path, previous: Path | None,
           device: str, log: Callable[[str], None]) -> TrainStats:
    common = dict(base_model=config.base_model, out_dir=out, device=device, lora=config.lora, log=log,
                  progress=config.progress, init_adapter=previous)
    if method == "sft":
        return train_sft(records, sft=config.sft, **common)
    return (train_dpo if method == "dpo" else train_kto)(records, settings=config.preference, **common)


def _train_methods(config: RoundConfig, methods: list[str], datasets: dict[str, list[dict]], device: str,
                   log: Callable[[str], None]) -> tuple[Path, dict[str, TrainStats]]:
    """Each method continues the previous one's adapter; returns the last adapter's folder (a staging
    folder inside the registry, invisible until published) and each method's training."""
    stats, previous = {}, None
    for method in methods:
        out = Path(tempfile.mkdtemp(prefix=f".staging-{method}-", dir=config.adapters_dir))
        after = f", continuing the adapter of {list(stats)[-1]}" if stats else ""
        log(f"{method}: {len(datasets[method])} examples{after}")
        try:
            stats[method] = _train(config, method, datasets[method], out, previous, device, log)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        finally:
            if previous is not None:
                shutil.rmtree(previous, ignore_errors=True)
        previous = out
    return previous, stats


def _train_and_publish(config: RoundConfig, methods: list[str], datasets: dict[str, list[dict]], parent: str,
                       store, log: Callable[[str], None]) -> RoundSummary:
    device = resolve_device(config.device)
    config.adapters_dir.mkdir(parents=True, exist_ok=True)
    described = {m: {"hash": dataset_hash(datasets[m]), "examples": len(datasets[m])} for m in methods}
    staging, stats = None, {}
    try:
        staging, stats = _train_methods(config, methods, datasets, device, log)
        with store.session() as session:
            version = version_name(repo.next_adapter_number(session))
        manifest = {"version": version, "parent": parent, "base_model": base_model_id(config.base_model),
                    "methods": methods, "datasets": described, "examples": sum(s.examples for s in stats.values()),
                    "training": {m: {"steps": s.steps, "losses": s.losses, "seconds": s.seconds,
                                     "precision": s.precision} for m, s in stats.items()},
                    "created": datetime.now(timezone.utc).isoformat(), "config": config.to_dict()}
        final = publish_folder(staging, config.adapters_dir, version, manifest)
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    _register(config, store, version, final, parent, manifest, stats)
    return RoundSummary(version, parent, final, described, stats, device)


def _register(config: RoundConfig, store, version: str, final: Path, parent: str, manifest: dict,
              stats: dict[str, TrainStats]) -> None:
    last = list(stats.values())[-1]
    metrics = {"train_loss_first": list(stats.values())[0].first_loss, "train_loss_final": last.final_loss,
               "examples": manifest["examples"], "steps": sum(s.steps for s in stats.values()),
               "seconds": round(sum(s.seconds for s in stats.values()), 2)}
    combined = dataset_hash([{m: d["hash"]} for m, d in manifest["datasets"].items()])
    with store.session() as session:
        repo.register_adapter(session, version=version, path=str(final.resolve()), parent=parent,
                              base_model=manifest["base_model"], dataset_hash=combined, metrics=metrics,
                              activate=config.activate, datasets=manifest["datasets"])


def _round(config: RoundConfig, store, record: Callable[[str], None]) -> RoundSummary:
    datasets, parent = _snapshot(store)
    sizes = {m: len(d) for m, d in datasets.items()}
    methods = choose_methods(config.methods, sizes)
    if not methods:
        raise NothingToTrain(f"No approved corrections or thumbed-up answers yet (dataset sizes {sizes}, methods "
                             f"{config.methods}): staff approve one with POST /api/messages/{{id}}/corrections "
                             "{\"text\": ..., \"approve\": true}.")
    record(f"round: methods {', '.join(methods)}; dataset sizes {sizes}; parent {parent}")
    summary = _train_and_publish(config, methods, datasets, parent, store, record)
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
