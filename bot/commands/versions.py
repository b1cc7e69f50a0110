"""`supportloop adapters list|promote|rollback|canary|stop-canary`: the admin API's version commands on
the store directly (for operators with database access). Servers on the store follow the change at their
next poll (at once on PostgreSQL) and validate the version then; one that refuses it keeps serving its
version and logs why."""

from __future__ import annotations

import argparse
import json
import sys

from bot.commands.settings import load_settings


def _run(change) -> int:
    from feedback import repo
    from feedback.db import open_store

    store = open_store(load_settings().db_url)
    try:
        with store.session() as session:
            return change(session)
    except (repo.NotFound, repo.Conflict, repo.Invalid) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()


def cmd_list(args: argparse.Namespace) -> int:
    from feedback import versions

    def show(session) -> int:
        rows = versions.versions(session)
        if args.json:
            print(json.dumps(rows, default=str, indent=2))
            return 0
        print(f"{'version':<28} {'status':<12} {'answers':>8} {'thumbs-up':>10}  activated")
        for row in rows:
            rate = row["live"]["thumbs_up_rate"]
            status = row["status"] if row["canary_percent"] is None else f"canary {row['canary_percent']:g}%"
            print(
                f"{row['version']:<28} {status:<12} {row['live']['messages']:>8} "
                f"{'-' if rate is None else f'{rate:.0%}':>10}  {row['activated_at'] or '-'}"
            )
        return 0

    return _run(show)


def cmd_promote(args: argparse.Namespace) -> int:
    from feedback import versions

    return _run(lambda session: _report(versions.promote(session, args.version, actor="cli", force=args.force)))


def cmd_rollback(args: argparse.Namespace) -> int:
    from feedback import versions

    return _run(lambda session: _report(versions.rollback(session, actor="cli")))


def cmd_canary(args: argparse.Namespace) -> int:
    from feedback import canary

    def start(session) -> int:
        started = canary.start(session, args.version, args.percent, actor="cli", force=args.force)
        print(
            f"canary: {started.version} answers {started.percent:g} % of the sessions started from now on "
            f"(since {started.started_at:%Y-%m-%d %H:%M:%S} UTC); rolled back automatically if its thumbs-down "
            f"rate is significantly worse (Fisher exact, one-sided, p < {canary.ALPHA}, ≥ {canary.MIN_VOTES} votes each)"
        )
        return 0

    return _run(start)


def cmd_stop_canary(_args: argparse.Namespace) -> int:
    from feedback import canary

    def stop(session) -> int:
        print(
            f"canary of {canary.stop(session, actor='cli').version} stopped; its sessions go back to the active version"
        )
        return 0

    return _run(stop)


def _report(activation) -> int:
    forced = " (forced past the gate)" if activation.forced else ""
    print(
        f"{activation.action}: {activation.version} is now active{forced}, was {activation.previous}; "
        "servers switch at their next poll"
    )
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    adapters = commands.add_parser(
        "adapters", help="list, promote, roll back and canary adapter versions"
    ).add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    listing = adapters.add_parser("list", help="versions with status and live stats (base included)")
    listing.add_argument("--json", action="store_true", help="everything, with manifest metrics, as JSON")
    listing.set_defaults(func=cmd_list)
    promote = adapters.add_parser("promote", help="make a version active (base = no adapter)")
    promote.add_argument("version")
    promote.add_argument("--force", action="store_true", help="also a version the evaluation gate rejected")
    promote.set_defaults(func=cmd_promote)
    rollback = adapters.add_parser("rollback", help="make the previously active version active again")
    rollback.set_defaults(func=cmd_rollback)
    canary = adapters.add_parser("canary", help="serve a version to a percentage of new sessions (or change it)")
    canary.add_argument("version")
    canary.add_argument("percent", type=float, help="above 0, at most 100")
    canary.add_argument("--force", action="store_true", help="also a version the evaluation gate rejected")
    canary.set_defaults(func=cmd_canary)
    stop = "end the running canary; its sessions go back to the active version"
    adapters.add_parser("stop-canary", help=stop, description=stop).set_defaults(func=cmd_stop_canary)
