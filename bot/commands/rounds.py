"""The arguments of `supportloop train` and `supportloop schedule`, and `schedule` itself.

`train` runs one training round now (its command function, the one place that reaches the trainer, is
in `bot/cli.py`); with `--if-needed --min-new-feedback N` it suits cron. `schedule --every 1h
--min-new-feedback N` runs `train --if-needed` on an APScheduler interval, each round in its own process.
The admin API starts the same `train --run-id N` command as a process of its own
(`bot.server.round_launcher`)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC
from pathlib import Path

from bot.commands.settings import load_settings

EXIT_REJECTED = 4  # the round trained a candidate and the gate refused it
EXIT_BUSY = 75  # another round holds the lock (EX_TEMPFAIL: try again later)
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def duration(value: str) -> int:
    """Seconds in '90s', '30m', '1h', '1h30m'."""
    match = _DURATION.match(value.strip())
    if not value.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration like 30m, 1h or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise argparse.ArgumentTypeError("the interval must be longer than 0 s")
    return total


def fail_requested_run(run_id: int | None, exc: Exception) -> None:
    """A round the admin API asked for that cannot start says why in its run, instead of staying queued."""
    if run_id is None:
        return
    from feedback.db import open_store
    from feedback.models import RunOutcome
    from feedback.rounds import finish_run

    store = open_store(load_settings().db_url)
    try:
        with store.session() as session:
            finish_run(session, run_id=run_id, outcome=RunOutcome.failed, log=f"could not start: {exc}")
    finally:
        store.dispose()


def cmd_schedule(args: argparse.Namespace) -> int:
    from apscheduler.schedulers.blocking import BlockingScheduler
    from apscheduler.triggers.interval import IntervalTrigger

    command = [
        sys.executable,
        "-m",
        "bot.cli",
        "train",
        "--if-needed",
        "--min-new-feedback",
        str(args.min_new_feedback),
        *args.train_args[args.train_args[:1] == ["--"] :],
    ]

    def one_round() -> None:
        code = subprocess.run(command).returncode
        print(f"schedule: round finished with exit status {code}", flush=True)

    scheduler = BlockingScheduler()
    scheduler.add_job(
        one_round, IntervalTrigger(seconds=args.every), id="round", max_instances=1, coalesce=True, next_run_time=_now()
    )
    print(
        f"schedule: a round every {args.every} s when at least {args.min_new_feedback} votes or corrections "
        "are new; Ctrl-C stops",
        flush=True,
    )
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


def _now():
    from datetime import datetime

    return datetime.now(UTC)


def _processes(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes (1 or more)")
    return int(value)


def _round_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--methods",
        default="auto",
        help="auto (SFT when there are corrections or thumbed-up "
        "answers, else KTO on thumbs) or a comma-separated list of sft, dpo, kto, run in that "
        "order on one adapter",
    )
    parser.add_argument("--epochs", type=int, help="SFT passes over the examples (default 5)")
    parser.add_argument("--min-steps", type=int, help="at least this many optimizer steps (default 0)")
    parser.add_argument("--lr", dest="learning_rate", type=float, help="SFT learning rate (default 2e-3)")
    parser.add_argument("--rank", type=int, help="LoRA rank (default 16; alpha = 2 × rank)")
    parser.add_argument("--batch-size", type=int, help="examples per step (default 8)")
    parser.add_argument(
        "--anchors",
        type=int,
        help="the base model's answers to this many everyday questions "
        "mixed into SFT so other answers stay as they were (default 16; 0: none)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default SUPPORTLOOP_DEVICE")
    parser.add_argument(
        "--processes",
        type=_processes,
        default=1,
        help="train data-parallel on N processes (DDP: one per GPU, or CPU processes; "
        "launched with torch.distributed.run, docs/architecture.md); default 1: in this process",
    )
    parser.add_argument(
        "--golden-set",
        type=Path,
        help='JSONL of {"question", "answer"} the candidate must not regress on (default SUPPORTLOOP_GOLDEN_SET)',
    )
    parser.add_argument("--no-activate", action="store_true", help="register as a candidate, do not activate")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def add_commands(commands: argparse._SubParsersAction, cmd_train: Callable[[argparse.Namespace], int]) -> None:
    """The `train` and `schedule` commands (`cmd_train` lives in `bot/cli.py`)."""
    train = commands.add_parser(
        "train",
        help="run one training round: train, gate, publish",
        description="One round on the store (SFT: approved corrections and thumbed-up answers; DPO: corrections "
        "vs originals; KTO: thumbs), then the evaluation gate; a passing adapter becomes the active version that "
        f"running servers pick up. Exit 0: published or nothing to do; {EXIT_REJECTED}: the gate rejected the "
        f"candidate; {EXIT_BUSY}: another round is running.",
    )
    _round_arguments(train)
    train.add_argument("--if-needed", action="store_true", help="train only when enough feedback is new")
    train.add_argument(
        "--min-new-feedback",
        type=int,
        default=1,
        help="with --if-needed: votes and approved corrections new since the last round (default 1)",
    )
    train.add_argument("--run-id", type=int, help=argparse.SUPPRESS)  # a run the admin API created
    train.set_defaults(func=cmd_train)
    schedule = commands.add_parser(
        "schedule",
        help="run `train --if-needed` on an interval (long-running)",
        description="Runs `supportloop train --if-needed --min-new-feedback N` every interval, each round in its "
        "own process; arguments after -- go to train. Runs until stopped.",
    )
    schedule.add_argument("--every", type=duration, required=True, help="interval: 30m, 1h, 1h30m, 90s")
    schedule.add_argument(
        "--min-new-feedback",
        type=int,
        default=1,
        help="votes and approved corrections new since the last round needed to train (default 1)",
    )
    schedule.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then options for train")
    schedule.set_defaults(func=cmd_schedule)
