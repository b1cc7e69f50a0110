"""The knowledge base's admin API (the console's Knowledge page) on a real store with the test embedder:
upload, list, search, remove; agents refused; a bad file refused by name with nothing added; what is
uploaded grounds the very next question."""

from __future__ import annotations

import json

from sqlmodel import func, select

from feedback.models import KnowledgeChunk, KnowledgeDocument, StaffAction

PAGE = b"# Ashley Hotel\n\n## What time is check-out at Ashley Hotel?\n\nCheck-out is at 10:30 am.\n\n## Parking\n\nFree parking behind the hotel.\n"
FAQ = b'{"question": "Do you take cards?", "answer": "Visa and Mastercard."}\n'
HTML = b"<html><head><title>Pets</title><style>p{}</style></head><body><h1>Pets</h1><script>alert(1)</script><p>Dogs are welcome.</p></body></html>"


def _upload(client, headers, *files, source="help"):
    return client.post("/api/admin/knowledge", data={"source": source}, files=[("files", f) for f in files],
                       headers=headers)  # fmt: skip


def _stored(store) -> tuple[int, int]:
    with store.session() as s:
        documents = s.exec(select(func.count()).select_from(KnowledgeDocument)).one()
        return documents, s.exec(select(func.count()).select_from(KnowledgeChunk)).one()


def test_an_admin_uploads_lists_searches_and_removes_a_source(serve, admin, any_store):
    with serve() as client:
        added = _upload(client, admin["ada"], ("ashley.md", PAGE), ("cards.jsonl", FAQ), ("pets.html", HTML))
        assert added.status_code == 201, added.text
        assert added.json() == {"source": "help", "added": 3, "replaced": 0, "unchanged": 0, "passages": 4}
        listed = client.get("/api/admin/knowledge", headers=admin["ada"]).json()
        assert [(s["source"], s["documents"], s["passages"]) for s in listed] == [("help", 3, 4)]
        again = _upload(client, admin["ada"], ("ashley.md", PAGE)).json()
        assert (again["unchanged"], again["passages"]) == (1, 0)  # the same bytes: nothing re-embedded
        found = client.get("/api/admin/knowledge/search", params={"q": "What time is check-out at Ashley Hotel?"},
                           headers=admin["ada"]).json()  # fmt: skip
        assert found["hits"][0]["title"] == "Ashley Hotel › What time is check-out at Ashley Hotel?"
        assert found["hits"][0]["quotable"] and found["outcome"] == "quote"
        html = next(h for h in found["hits"] if h["title"].startswith("Pets"))
        assert html["text"] == "Dogs are welcome."  # the script and the style are gone
        removed = client.delete("/api/admin/knowledge/help", headers=admin["ada"])
        assert removed.json() == {"source": "help", "documents": 3} and _stored(any_store) == (0, 0)
        assert client.delete("/api/admin/knowledge/help", headers=admin["ada"]).status_code == 404
    with any_store.session() as s:
        actions = [a.action for a in s.exec(select(StaffAction).order_by(StaffAction.id))]
    assert actions == ["kb.add", "kb.add", "kb.remove"]


def test_a_changed_file_replaces_its_passages(serve, admin, any_store):
    with serve() as client:
        _upload(client, admin["ada"], ("ashley.md", PAGE))
        changed = _upload(client, admin["ada"], ("ashley.md", PAGE.replace(b"10:30", b"11:00"))).json()
        assert (changed["replaced"], changed["passages"]) == (1, 2) and _stored(any_store) == (1, 2)


def test_agents_and_strangers_cannot_change_the_knowledge_base(serve, admin, any_store):
    with serve() as client:
        _upload(client, admin["ada"], ("ashley.md", PAGE))
        refused = _upload(client, admin["bob"], ("cards.jsonl", FAQ))
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        assert _upload(client, {}, ("cards.jsonl", FAQ)).status_code == 401
        assert client.delete("/api/admin/knowledge/help", headers=admin["bob"]).status_code == 403
        assert (
            client.get("/api/admin/knowledge/search", params={"q": "parking"}, headers=admin["bob"]).status_code == 403
        )
        assert _stored(any_store) == (1, 2)  # unchanged


def test_a_bad_file_is_refused_by_name_and_nothing_is_added(serve, admin, any_store):
    with serve() as client:
        for name, data, reason in [
            ("logo.md", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not UTF-8 text"),
            ("empty.md", b"   \n", "no text to ingest"),
            ("manual.pdf", b"%PDF-1.7", "unsupported file type"),
            ("huge.txt", b"a " * (3 * 1024 * 1024), "the limit is"),
            ("faq.jsonl", b'{"question": "Cards?"}\n', "non-empty question and answer"),
        ]:
            refused = _upload(client, admin["ada"], ("ashley.md", PAGE), (name, data))
            assert refused.status_code == 422, name
            detail = refused.json()["detail"]
            assert detail.startswith(name) and reason in detail and "nothing was added" in detail
        assert _stored(any_store) == (0, 0)
        nameless = _upload(client, admin["ada"], ("ashley.md", PAGE), source="a/b")
        assert nameless.status_code == 422 and _stored(any_store) == (0, 0)


def test_an_uploaded_page_answers_the_very_next_question(serve, admin, fake):
    with serve(kb_min_score=0.3) as client:
        _upload(client, admin["ada"], ("ashley.md", PAGE))
        with client.websocket_connect("/ws/chat") as ws:
            ws.send_text(json.dumps({"type": "user_message", "text": "What time is check-out at Ashley Hotel?"}))
            frames = []
            while (frame := ws.receive_json())["type"] != "done":
                frames.append(frame)
        assert "".join(f["text"] for f in frames if f["type"] == "token") == "Check-out is at 10:30 am."
        assert frame["sources"][0]["title"] == "Ashley Hotel › What time is check-out at Ashley Hotel?"
        assert fake.requests == []
