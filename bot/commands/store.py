"""`supportloop staff add`, `db upgrade`, `db backup` and `export`: the feedback store from the command line."""

from __future__ import annotations

import argparse
import sys
from datetime import UTC
from pathlib import Path

from bot.commands.settings import load_settings
from feedback.methods import METHODS


def cmd_staff_add(args: argparse.Namespace) -> int:
    from feedback import repo
    from feedback.db import open_store
    from feedback.models import StaffRole

    store = open_store(load_settings().db_url)
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

    settings = load_settings()
    engine = make_engine(settings.db_url)
    try:
        before = migrate.current(engine)
        after = migrate.upgrade(engine, args.revision)
    finally:
        engine.dispose()
    print(f"database {_redacted(settings.db_url)}: schema {before or 'empty'} → {after}")
    return 0


def cmd_db_backup(args: argparse.Namespace) -> int:
    from feedback.backup import BackupError, backup, default_name

    url = load_settings().db_url
    try:
        made = backup(url, args.out or default_name(url))
    except BackupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(made.describe())
    return 0


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_export(args: argparse.Namespace) -> int:
    from feedback.db import open_store
    from feedback.export import export
    from feedback.pii import Scrubber

    settings = load_settings()
    store = open_store(settings.db_url)
    try:
        with store.session() as session:
            report = export(session, args.format, args.out, since=args.since, scrubber=Scrubber(settings.pii_scrub))
    finally:
        store.dispose()
    print(f"exported {report.describe()}")
    return 0


def _since(value: str):
    from datetime import datetime

    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T12:00:00+00:00)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def add_commands(commands: argparse._SubParsersAction) -> None:
    staff = commands.add_parser("staff", help="manage staff accounts").add_subparsers(
        dest="staff_command", required=True, metavar="ACTION"
    )
    add = staff.add_parser(
        "add",
        help="add a staff member and print their token once",
        description="Add a staff member; prints a new bearer token once (only its hash is stored).",
    )
    add.add_argument("name", help="unique staff name")
    add.add_argument("--role", choices=["agent", "admin"], default="agent", help="role (default agent)")
    add.set_defaults(func=cmd_staff_add)

    db = commands.add_parser("db", help="the feedback store: schema migrations, backups").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    upgrade = db.add_parser(
        "upgrade",
        help="apply schema migrations (the server also does at start-up)",
        description="Migrate SUPPORTLOOP_DATABASE_URL (default: SQLite in the data folder) "
        "to the newest schema, or to --revision. Safe to run repeatedly.",
    )
    upgrade.add_argument("--revision", default="head", help="target revision (default head)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    save = db.add_parser(
        "backup",
        help="copy the store while servers keep running (SQLite online backup, PostgreSQL pg_dump)",
        description="Write a consistent copy of SUPPORTLOOP_DATABASE_URL to OUT (default "
        "supportloop-<UTC time>.sqlite3 or .pgdump here) while servers keep writing; never overwrites a file. "
        "PostgreSQL needs pg_dump of the server's major version. Prints how to restore.",
    )
    save.add_argument("out", type=Path, nargs="?", metavar="OUT", help="the file to write (must not exist)")
    save.set_defaults(func=cmd_db_backup)

    exp = commands.add_parser(
        "export",
        help="export feedback as a training dataset (JSONL)",
        description="Write SFT, DPO or KTO records (TRL's conversational formats) to OUT, "
        "PII-scrubbed per SUPPORTLOOP_PII_SCRUB; prints the record count, size and "
        "content hash.",
    )
    exp.add_argument("--format", required=True, choices=list(METHODS), help="dataset format")
    exp.add_argument(
        "--since",
        type=_since,
        help="only feedback and corrections from this ISO date/time on (UTC when no zone is given)",
    )
    exp.add_argument("out", type=Path, metavar="OUT.jsonl", help="file to write")
    exp.set_defaults(func=cmd_export)
