"""The `supportloop` command line. The command groups are in `bot/commands/` (`serving`, `store`,
`rounds`, `versions`); this module assembles them and holds `train`, the one command that reaches the
trainer, lazily, inside the function. Heavy imports (torch, the server, the trainer) happen inside
the commands, so `supportloop --help` stays light."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bot.commands import knowledge, rounds, serving, store, versions
from bot.commands.settings import load_settings


def round_config(args: argparse.Namespace, settings):
    from bot.runtime.interface import resolve_base_model
    from trainer.config import LoraSettings, RoundConfig, SFTSettings
    from trainer.gate import GateSettings

    names = ("epochs", "min_steps", "learning_rate", "batch_size", "anchors", "seed")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    lora = LoraSettings() if args.rank is None else LoraSettings(r=args.rank, alpha=2 * args.rank)
    golden = args.golden_set or settings.golden_set
    return RoundConfig(
        database_url=settings.db_url,
        adapters_dir=settings.adapters_dir,
        base_model=resolve_base_model(settings.base_model, settings.model_cache),
        device=args.device or settings.device,
        activate=not args.no_activate,
        progress=not args.quiet,
        lora=lora,
        sft=SFTSettings(**given),
        methods=args.methods,
        processes=args.processes,
        system_prompt=settings.system_prompt,
        pii_scrub=list(settings.pii_scrub),
        min_new_feedback=args.min_new_feedback if args.if_needed else 0,
        gate=GateSettings(golden_set=Path(golden) if golden else None, max_new_tokens=settings.max_new_tokens),
    )


def cmd_train(args: argparse.Namespace) -> int:
    from feedback.methods import parse_methods
    from feedback.models import RunOutcome
    from trainer.round import RoundBusy, run_round

    try:
        parse_methods(args.methods)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        config = round_config(args, load_settings())
    except Exception as exc:
        rounds.fail_requested_run(args.run_id, exc)
        raise
    try:
        result = run_round(config, log=lambda line: print(line, flush=True), run_id=args.run_id)
    except RoundBusy as exc:
        print(f"busy: {exc}; try again when it has finished", file=sys.stderr)
        return rounds.EXIT_BUSY
    if result.outcome == RunOutcome.skipped:
        print(result.message)
        return 0
    state = "rejected" if result.outcome == RunOutcome.rejected else "active" if config.activate else "candidate"
    print(f"new adapter {result.version} ({state}) at {result.path}")
    return rounds.EXIT_REJECTED if result.outcome == RunOutcome.rejected else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supportloop",
        description="A customer-support chatbot that learns from feedback. Settings come from SUPPORTLOOP_* variables.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serving.add_commands(commands)
    store.add_commands(commands)
    rounds.add_commands(commands, cmd_train)
    versions.add_commands(commands)
    knowledge.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bot.commands.settings import BadSettings
    from bot.runtime.types import ModelNotAvailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelNotAvailable, BadSettings) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
