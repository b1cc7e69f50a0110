"""One training round: take the round lock, clean up after an interrupted round, snapshot the store,
train the chosen methods one after the other on one adapter, run the evaluation gate, publish the
adapter folder with its manifest, register it (active, candidate or rejected), record the run."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bot.runtime.base_model import base_model_id, resolve_device
from feedback import repo
from feedback.db import open_store
from feedback.export import dataset_hash
from feedback.failpoints import failpoint
from feedback.methods import parse_methods
from feedback.models import RunOutcome
from feedback.pii import Scrubber
from feedback.registry import (
    BASE_VERSION,
    STAGING_PREFIX,
    ManifestError,
    clean_registry,
    next_number,
    publish_folder,
    read_manifest,
    version_name,
)
from feedback.rounds import (
    Holder,
    acquire_lock,
    finish_run,
    last_trained_snapshot,
    new_feedback_count,
    release_lock,
    start_run,
    update_run,
)
from trainer.anchors import anchor_records
from trainer.config import RoundConfig
from trainer.datasets import RoundData, snapshot
from trainer.gate import GateInputs, Verdict, evaluate, load_golden
from trainer.lora import TrainStats
from trainer.preference import train_dpo, train_kto
from trainer.publish import supportloop_version, weights_hash
from trainer.runlog import RunLog
from trainer.sft import train_sft


class RoundBusy(RuntimeError):
    """Another round holds the lock."""

    def __init__(self, holder: Holder) -> None:
        super().__init__(f"another training round is running: {holder.describe()}")
        self.holder = holder


@dataclass
class RoundResult:
    run_id: int
    outcome: RunOutcome
    message: str
    version: str | None = None
    path: Path | None = None
    parent: str = BASE_VERSION
    verdict: Verdict | None = None
    stats: dict[str, TrainStats] = field(default_factory=dict)
    device: str = "cpu"

    def describe(self) -> str:
        parts = [
            f"{m} {s.examples} examples, {s.steps} steps, loss {s.first_loss:.3f} → {s.final_loss:.3f}, "
            f"{s.seconds:.1f} s"
            for m, s in self.stats.items()
        ]
        trained = f"trained {self.version} (parent {self.parent}) on {self.device}: " + "; ".join(parts)
        return trained + (f"; {self.verdict.describe()}" if self.verdict else "")


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


def _train(
    config: RoundConfig,
    method: str,
    records: list[dict],
    out: Path,
    previous: Path | None,
    device: str,
    log: Callable[[str], None],
) -> TrainStats:
    common = dict(
        base_model=config.base_model,
        out_dir=out,
        device=device,
        lora=config.lora,
        log=log,
        progress=config.progress,
        init_adapter=previous,
    )
    if config.processes > 1:  # the same training, data-parallel in processes of its own
        from trainer.launch import train_distributed

        settings = config.sft if method == "sft" else config.preference
        del common["progress"]
        return train_distributed(method, records, processes=config.processes, settings=settings, **common)
    if method == "sft":
        return train_sft(records, sft=config.sft, **common)
    return (train_dpo if method == "dpo" else train_kto)(records, settings=config.preference, **common)


def _train_methods(
    config: RoundConfig, methods: list[str], datasets: dict[str, list[dict]], device: str, log: RunLog
) -> tuple[Path, dict[str, TrainStats]]:
    """Each method continues the previous one's adapter; returns the last adapter's folder (a staging
    folder inside the registry, invisible until published) and each method's training."""
    stats, previous = {}, None
    for method in methods:
        out = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{method}-", dir=config.adapters_dir))
        after = f", continuing the adapter of {list(stats)[-1]}" if stats else ""
        log.phase(f"train {method}")
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


def _active_for_gate(config: RoundConfig, data: RoundData, log: RunLog) -> tuple[str, Path | None]:
    """The active version to compare with, and its folder; an active adapter whose folder or manifest
    is unreadable is reported and skipped (the candidate is compared with the base model)."""
    if data.parent == BASE_VERSION:
        return BASE_VERSION, None
    local = config.adapters_dir / data.parent
    folder = local if local.is_dir() else Path(data.parent_path or local)
    try:
        read_manifest(folder)
    except ManifestError as exc:
        log(f"gate: skipping the active adapter {data.parent}: {exc}")
        return f"base (active {data.parent} skipped: unreadable manifest)", None
    return data.parent, folder


def _gate(config: RoundConfig, data: RoundData, staging: Path, device: str, log: RunLog) -> Verdict:
    log.phase("gate")
    golden = load_golden(config.gate.golden_set, config.system_prompt) if config.gate.golden_set else []
    verdict = evaluate(
        base_model=config.base_model,
        device=device,
        candidate=staging,
        active=_active_for_gate(config, data, log),
        inputs=GateInputs(data.new, data.regression, golden),
        settings=config.gate,
        system_prompt=config.system_prompt,
        log=log,
    )
    for check in verdict.checks:
        log(f"gate: {'pass' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    return verdict


def _manifest(
    config: RoundConfig,
    data: RoundData,
    version: str,
    methods: list[str],
    stats: dict[str, TrainStats],
    verdict: Verdict,
    timings: dict,
) -> dict:
    import peft
    import torch
    import transformers
    import trl

    settings = config.to_dict()
    return {
        "version": version,
        "parent": data.parent,
        "status": _status(config, verdict),
        "base_model": {"id": base_model_id(config.base_model), "weights": weights_hash(config.base_model)},
        "methods": methods,
        "datasets": {m: {"hash": dataset_hash(data.datasets[m]), "examples": len(data.datasets[m])} for m in methods},
        "hyperparameters": {key: settings[key] for key in ("lora", "sft", "preference")},
        "training": {
            m: {
                "examples": s.examples,
                "steps": s.steps,
                "losses": s.losses,
                "seconds": round(s.seconds, 2),
                "precision": s.precision,
            }
            for m, s in stats.items()
        },
        "gate": verdict.to_dict(),
        "timings": timings,
        "snapshot_at": data.snapshot_at.isoformat(),
        "created": datetime.now(UTC).isoformat(),
        "packages": {
            "supportloop": supportloop_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
            "trl": trl.__version__,
        },
        "config": settings,
    }


def _status(config: RoundConfig, verdict: Verdict) -> str:
    return "rejected" if not verdict.passed else "active" if config.activate else "candidate"


def _publish(
    config: RoundConfig,
    store,
    data: RoundData,
    staging: Path,
    manifest_for: Callable[[str], dict],
    verdict: Verdict,
    log: RunLog,
) -> tuple[str, Path]:
    log.phase("publish")
    if log.lost_lock:
        raise RuntimeError("this round lost the round lock (its heartbeat went stale); not publishing")
    with store.session() as session:
        version = version_name(next_number(config.adapters_dir, repo.adapter_versions(session)))
    manifest = manifest_for(version)
    final = publish_folder(staging, config.adapters_dir, version, manifest)
    failpoint("publish:folder")
    losses = [loss for t in manifest["training"].values() for loss in t["losses"]]
    metrics = {
        "examples": sum(t["examples"] for t in manifest["training"].values()),
        "gate": manifest["gate"],
        "timings": manifest["timings"],
        "train_loss_final": losses[-1] if losses else None,
        "losses": {m: t["losses"] for m, t in manifest["training"].items()},
    }  # per step, for the console's chart
    combined = dataset_hash([{m: d["hash"]} for m, d in manifest["datasets"].items()])
    with store.session() as session:
        repo.register_adapter(
            session,
            version=version,
            path=str(final.resolve()),
            parent=data.parent,
            base_model=manifest["base_model"]["id"],
            dataset_hash=combined,
            metrics=metrics,
            activate=config.activate,
            datasets=manifest["datasets"],
            rejected=not verdict.passed,
        )
    return version, final


def _not_needed(config: RoundConfig, store) -> str | None:
    if config.min_new_feedback <= 0:
        return None
    with store.session() as session:
        since = last_trained_snapshot(session)
        count = new_feedback_count(session, since=since)
    if count >= config.min_new_feedback:
        return None
    return (
        f"not needed: {count} new votes and approved corrections since the last round "
        f"({since:%Y-%m-%d %H:%M} UTC), fewer than {config.min_new_feedback}"
        if since
        else f"not needed: {count} votes and approved corrections so far, fewer than {config.min_new_feedback}"
    )


def _nothing(config: RoundConfig, data: RoundData) -> str:
    return (
        f"nothing to train: no approved corrections or thumbed-up answers yet (dataset sizes {data.sizes}, "
        f"methods {config.methods}); staff approve one with POST /api/messages/{{id}}/corrections "
        '{"text": ..., "approve": true}'
    )


def _anchors(config: RoundConfig, device: str, log: RunLog) -> list[dict]:
    log.phase("anchors")
    records = anchor_records(
        base_model=config.base_model,
        base_id=base_model_id(config.base_model),
        device=device,
        system_prompt=config.system_prompt,
        count=config.sft.anchors,
        cache_dir=config.adapters_dir,
        log=log,
    )
    if records:
        log(f"sft: {len(records)} anchor examples (the base model's answers to everyday questions) mixed in")
    return records


def _locked_round(config: RoundConfig, store, run_id: int, log: RunLog) -> RoundResult:
    started = time.perf_counter()
    with store.session() as session:
        clean_registry(config.adapters_dir, repo.adapter_versions(session), log)
    if reason := _not_needed(config, store):
        return RoundResult(run_id, RunOutcome.skipped, reason)
    log.phase("snapshot")
    data = snapshot(store, Scrubber(config.pii_scrub))
    with store.session() as session:
        update_run(session, run_id=run_id, snapshot_at=data.snapshot_at)
    methods = choose_methods(config.methods, data.sizes)
    if not methods:
        return RoundResult(run_id, RunOutcome.skipped, _nothing(config, data), parent=data.parent)
    log(
        f"round: methods {', '.join(methods)}; dataset sizes {data.sizes}; parent {data.parent}; "
        f"gate sets: {len(data.new)} new corrections, {len(data.regression)} regression questions"
    )
    device = resolve_device(config.device)
    config.adapters_dir.mkdir(parents=True, exist_ok=True)
    anchors = _anchors(config, device, log) if "sft" in methods else []
    staging = None
    try:
        staging, stats = _train_methods(
            config, methods, data.datasets | {"sft": data.datasets["sft"] + anchors}, device, log
        )
        trained = time.perf_counter()
        verdict = _gate(config, data, staging, device, log)
        timings = {"train_s": round(trained - started, 1), "gate_s": round(time.perf_counter() - trained, 1)}
        version, final = _publish(
            config,
            store,
            data,
            staging,
            lambda v: _manifest(config, data, v, methods, stats, verdict, timings),
            verdict,
            log,
        )
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    outcome = RunOutcome.published if verdict.passed else RunOutcome.rejected
    result = RoundResult(run_id, outcome, "", version, final, data.parent, verdict, stats, device)
    result.message = result.describe()
    return result


def run_round(config: RoundConfig, log: Callable[[str], None] = print, run_id: int | None = None) -> RoundResult:
    """One round under the store's round lock; the run, its progress and its log are recorded.
    Raises `RoundBusy` when another round holds the lock."""
    store = open_store(config.database_url)
    try:
        with store.session() as session:
            if run_id is None:
                run_id = start_run(session, config=config.to_dict()).id
            update_run(session, run_id=run_id, outcome=RunOutcome.running)
            holder = acquire_lock(session, run_id=run_id)
        if holder is not None:
            busy = RoundBusy(holder)
            with store.session() as session:
                finish_run(session, run_id=run_id, outcome=RunOutcome.skipped, log=str(busy))
            raise busy
        try:
            return _record(config, store, run_id, log)
        finally:
            with store.session() as session:
                release_lock(session, run_id=run_id)
    finally:
        store.dispose()


def _record(config: RoundConfig, store, run_id: int, log: Callable[[str], None]) -> RoundResult:
    with RunLog(store, run_id, log) as record:
        result = None
        try:
            result = _locked_round(config, store, run_id, record)
            record(result.message)
        except Exception as exc:
            record(f"failed: {exc!r}")
            raise
        finally:
            outcome = result.outcome if result else RunOutcome.failed
            record.phase("done")
            with store.session() as session:
                finish_run(
                    session,
                    run_id=run_id,
                    outcome=outcome,
                    log=record.text,
                    adapter_version=result.version if result else None,
                )
    return result
