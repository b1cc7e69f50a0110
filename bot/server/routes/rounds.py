"""The admin API for training rounds: `POST /api/admin/train` starts one (in its own process),
`GET /api/admin/train/{run_id}` reports its progress, log and outcome (with the gate's verdict),
`GET /api/admin/train` lists the newest rounds."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field, field_validator
from sqlmodel import select

from bot.server.deps import AdminDep, RowId, SessionDep
from feedback import rounds
from feedback.methods import parse_methods
from feedback.models import Adapter, TrainingRun

router = APIRouter(prefix="/api/admin")


class TrainRequest(BaseModel):
    methods: str = Field("auto", description="auto, or a comma-separated list of sft, dpo, kto")

    @field_validator("methods")
    @classmethod
    def _known(cls, value: str) -> str:
        parse_methods(value)  # a ValueError says which names are unknown
        return value.strip()


class TrainStarted(BaseModel):
    run_id: int
    outcome: str
    url: str


class TrainStatus(BaseModel):
    run_id: int
    outcome: str = Field(description="queued, running, published, rejected, skipped, failed or abandoned")
    started_at: datetime
    finished_at: datetime | None
    progress: dict
    adapter_version: str | None
    gate: dict | None = Field(description="the gate's verdict on the candidate, once trained")
    log: list[str]


@router.post("/train", status_code=202, response_model=TrainStarted)
def start_training(body: TrainRequest, request: Request, session: SessionDep, admin: AdminDep) -> TrainStarted:
    run = rounds.request_run(session, actor=admin, config={"methods": body.methods, "requested_by": admin.name})
    request.app.state.launch_round(run.id, body.methods)
    return TrainStarted(run_id=run.id, outcome=run.outcome, url=f"/api/admin/train/{run.id}")


@router.get("/train", response_model=list[TrainStatus])
def training_runs(
    session: SessionDep, _admin: AdminDep, limit: Annotated[int, Query(ge=1, le=50)] = 10, log: bool = False
) -> list[TrainStatus]:
    """The newest rounds first (their logs only with `log=true`)."""
    return [_status(session, run, log) for run in rounds.recent_runs(session, limit=limit)]


@router.get("/train/{run_id}", response_model=TrainStatus)
def training_status(run_id: RowId, session: SessionDep, _admin: AdminDep) -> TrainStatus:
    return _status(session, rounds.get_run(session, run_id=run_id))


def _status(session, run: TrainingRun, log: bool = True) -> TrainStatus:
    gate = None
    if run.adapter_version:
        adapter = session.exec(select(Adapter).where(Adapter.version == run.adapter_version)).first()
        gate = json.loads(adapter.metrics_json).get("gate") if adapter else None
    return TrainStatus(
        run_id=run.id,
        outcome=run.outcome,
        started_at=run.started_at,
        finished_at=run.finished_at,
        progress=json.loads(run.progress_json or "{}"),
        adapter_version=run.adapter_version,
        gate=gate,
        log=run.log.splitlines() if log else [],
    )
