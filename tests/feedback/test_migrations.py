"""Alembic migrations on a real SQLite file and the real local PostgreSQL."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from feedback import migrate, repo
from feedback.db import Store, make_engine, open_store
from feedback.models import Reason, Role, Thumb
from tests.support.common import schema_diff

_schema_diff = schema_diff


def test_upgrade_from_empty_matches_the_models(any_db_url):
    store = open_store(any_db_url)
    try:
        assert migrate.current(store.engine) == migrate.head() == "0009"
        assert _schema_diff(store.engine) == []
        assert migrate.upgrade(store.engine) == "0009"  # idempotent
    finally:
        store.dispose()


def test_downgrade_then_upgrade_round_trips(any_db_url):
    engine = make_engine(any_db_url)
    try:
        assert migrate.upgrade(engine) == "0009"
        assert migrate.downgrade(engine, "0001") == "0001"
        assert "handoff" not in sa.inspect(engine).get_table_names()
        assert "trainlock" not in sa.inspect(engine).get_table_names()
        assert migrate.upgrade(engine) == "0009"
        assert _schema_diff(engine) == []
    finally:
        engine.dispose()


def _legacy_rows(engine) -> None:
    """What supportloop 0.1 stored: tables made by create_all (revision 0001's schema, no alembic_version)."""
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with engine.begin() as c:
        c.execute(
            sa.text("INSERT INTO conversation (id, system_prompt, created_at) VALUES ('c1', 'Be brief.', :t)"),
            {"t": now},
        )
        for seq, (mid, role) in enumerate([("m1", "user"), ("m2", "assistant")]):
            c.execute(
                sa.text(
                    "INSERT INTO message (id, conversation_id, seq, role, text, adapter_version, created_at) "
                    "VALUES (:id, 'c1', :seq, :role, :text, :version, :t)"
                ),  # 0.1 stamped every answer with the version that wrote it, as now
                {
                    "id": mid,
                    "seq": seq,
                    "role": role,
                    "text": f"text {mid}",
                    "t": now,
                    "version": "base" if role == "assistant" else None,
                },
            )
        c.execute(
            sa.text(
                "INSERT INTO feedback (thumb, reason, comment, message_id, created_at) "
                "VALUES ('down', 'nonsense', 'old', 'm2', :t)"
            ),
            {"t": now},
        )
        c.execute(
            sa.text(
                "INSERT INTO feedback (thumb, reason, comment, message_id, created_at) "
                "VALUES ('down', 'wrong', 'newer', 'm2', :t)"
            ),
            {"t": now},
        )


def test_a_database_made_before_migrations_is_upgraded_keeping_its_data(any_db_url):
    engine = make_engine(any_db_url)
    try:
        with engine.begin() as connection:
            migrate.command.upgrade(migrate._config(connection), "0001")
            connection.execute(sa.text("DROP TABLE alembic_version"))  # as create_all left it
        _legacy_rows(engine)
        assert migrate.upgrade(engine) == "0009"
        assert _schema_diff(engine) == []
        store = Store(any_db_url)
        with store.session() as s:
            assert [m.text for m in repo.list_messages(s, conversation_id="c1")] == ["text m1", "text m2"]
            votes = repo.feedback_by_message(s, conversation_id="c1")
            assert votes["m2"].comment == "newer" and votes["m2"].reason == Reason.wrong
            assert votes["m2"].updated_at is not None
            assert repo.get_message(s, message_id="m2").role == Role.assistant
            repo.set_feedback(s, message_id="m2", thumb=Thumb.up)  # the migrated schema takes writes
        store.dispose()
    finally:
        engine.dispose()
