"""The staff console's server side through the app (SQLite file and real PostgreSQL): login with a token
into an http-only cookie, logout, expiry, CSRF and origin checks on state-changing requests, roles on
pages and APIs, stale corrections, and the data the console's pages read."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from bot.server.app import create_app
from bot.server.deps import CSRF_HEADER, LOGIN_COOKIE
from feedback import repo
from feedback.models import Correction, CorrectionStatus, StaffLogin, utcnow
from tests.support.common import wait_until
from tests.support.consoledata import WRONG, seed_console, seed_votes


@pytest.fixture
def console(settings, any_store, fake):
    """(client, seeded store): an https client, so the Secure login cookie is kept like a browser would."""
    seeded = seed_console(any_store)
    app = create_app(settings.model_copy(update={"rate_limit": "1000/minute"}), generator=fake, store=any_store)
    with TestClient(app, base_url="https://testserver") as client:
        wait_until(lambda: client.get("/readyz").status_code == 200)
        yield client, seeded


def login(client, token: str, next_url: str = "/staff"):
    return client.post("/staff/login", data={"token": token, "next": next_url}, follow_redirects=False)


def csrf_of(client) -> str:
    page = client.get("/staff").text
    return page.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]


def test_a_token_logs_in_to_an_http_only_secure_cookie_and_logout_ends_it(console, any_store):
    client, seeded = console
    assert client.get("/staff", follow_redirects=False).headers["location"] == "/staff/login?next=/staff"
    answer = login(client, seeded.tokens["bob"], "/staff?reason=wrong")
    assert answer.status_code == 303 and answer.headers["location"] == "/staff?reason=wrong"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"{LOGIN_COOKIE}=") and "HttpOnly" in cookie and "Secure" in cookie
    assert "samesite=lax" in cookie.lower() and seeded.tokens["bob"] not in cookie  # a login token, not the staff token
    page = client.get("/staff")
    assert page.status_code == 200 and "bob" in page.text and 'data-role="agent"' in page.text
    assert (
        page.headers["cache-control"] == "no-store"
        and "frame-ancestors 'none'" in page.headers["content-security-policy"]
    )
    assert client.get("/api/review").json()["total"] == 3  # the APIs take the cookie
    with any_store.session() as s:
        assert len(s.exec(select(StaffLogin)).all()) == 1 and s.exec(select(StaffLogin)).one().token_hash not in cookie
    assert client.post("/staff/logout", data={"csrf": "forged"}, follow_redirects=False).status_code == 403
    out = client.post("/staff/logout", data={"csrf": csrf_of(client)}, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/staff/login"
    assert client.get("/api/review").status_code == 401
    with any_store.session() as s:
        assert s.exec(select(StaffLogin)).all() == []
        assert [a.action for a in repo.list_actions(s)][:2] == ["staff.logout", "staff.login"]


def test_a_wrong_or_disabled_token_gets_the_login_page_and_no_data(console, any_store):
    client, seeded = console
    wrong = login(client, "slt_not-a-token")
    assert wrong.status_code == 401 and "does not belong to any staff account" in wrong.text
    assert LOGIN_COOKIE not in wrong.headers.get("set-cookie", "") and WRONG not in wrong.text
    assert login(client, "").status_code == 401
    with any_store.session() as s:
        ada = repo.staff_by_token(s, token=seeded.tokens["ada"])
        bob = repo.staff_by_token(s, token=seeded.tokens["bob"])
        repo.update_staff(s, staff_id=bob.id, actor=ada, disabled=True)
    disabled = login(client, seeded.tokens["bob"])
    assert disabled.status_code == 403 and "disabled" in disabled.text
    assert client.get("/staff", follow_redirects=False).status_code == 303


def test_an_expired_login_or_a_disabled_account_goes_back_to_the_login_page(console, any_store):
    client, seeded = console
    login(client, seeded.tokens["bob"])
    assert client.get("/staff").status_code == 200
    with any_store.session() as s:
        row = s.exec(select(StaffLogin)).one()
        row.expires_at = utcnow() - timedelta(seconds=1)
        s.add(row)
        s.commit()
    gone = client.get("/staff/conversations/x?y=1", follow_redirects=False)
    assert gone.status_code == 303 and gone.headers["location"] == "/staff/login?next=/staff/conversations/x%3Fy%3D1"
    review = client.get("/api/review")
    assert review.status_code == 401 and "expired" in review.json()["detail"] and "items" not in review.json()
    login(client, seeded.tokens["bob"])
    with any_store.session() as s:
        ada = repo.staff_by_token(s, token=seeded.tokens["ada"])
        repo.update_staff(s, staff_id=repo.staff_by_token(s, token=seeded.tokens["bob"]).id, actor=ada, disabled=True)
    assert client.get("/staff", follow_redirects=False).status_code == 303
    assert "disabled" in client.get("/staff").text  # the login page says why (and does not redirect back)
    assert client.get("/api/review").status_code == 403


def test_state_changes_with_the_cookie_need_the_csrf_token_and_the_same_origin(console, any_store):
    client, seeded = console
    login(client, seeded.tokens["bob"])
    csrf, message = csrf_of(client), seeded.answers["down"].id
    body = {"text": "From 3pm.", "approve": True}
    missing = client.post(f"/api/messages/{message}/corrections", json=body)
    assert missing.status_code == 403 and "CSRF" in missing.json()["detail"]
    assert (
        client.post(f"/api/messages/{message}/corrections", json=body, headers={CSRF_HEADER: "x" + csrf}).status_code
        == 403
    )
    other_site = client.post(
        f"/api/messages/{message}/corrections", json=body, headers={CSRF_HEADER: csrf, "Origin": "https://evil.example"}
    )
    assert other_site.status_code == 403
    with any_store.session() as s:
        assert repo.list_corrections(s) == []  # nothing was changed by the refused requests
    ok = client.post(
        f"/api/messages/{message}/corrections", json=body, headers={CSRF_HEADER: csrf, "Origin": "https://testserver"}
    )
    assert ok.status_code == 201 and ok.json()["status"] == "approved"
    forged_login = client.post(
        "/staff/login", data={"token": seeded.tokens["ada"]}, headers={"Origin": "https://evil.example"}
    )
    assert forged_login.status_code == 403 and "another site" in forged_login.text


def test_agents_do_not_see_admin_pages_and_the_admin_api_refuses_them(console):
    client, seeded = console
    login(client, seeded.tokens["bob"])
    queue = client.get("/staff").text
    assert 'href="/staff/adapters"' not in queue and 'href="/staff/team"' not in queue
    assert client.get("/staff/adapters").status_code == 403 and client.get("/staff/team").status_code == 403
    headers = {CSRF_HEADER: csrf_of(client)}
    for method, path in (
        ("POST", "/api/admin/adapters/rollback"),
        ("POST", "/api/admin/train"),
        ("GET", "/api/staff"),
        ("POST", "/api/staff"),
        ("GET", "/api/admin/adapters/votes"),
        ("GET", "/api/admin/train"),
    ):
        refused = client.request(method, path, headers=headers, json={"name": "eve"})
        assert refused.status_code == 403 and refused.json()["detail"] == "This needs an admin account.", path
    login(client, seeded.tokens["ada"])
    admin = client.get("/staff").text
    assert 'href="/staff/adapters"' in admin and client.get("/staff/adapters").status_code == 200


def test_a_correction_on_an_answer_someone_else_corrected_meanwhile_is_a_conflict(console, any_store):
    client, seeded = console
    message = seeded.answers["down"].id
    ada = {"Authorization": f"Bearer {seeded.tokens['ada']}"}
    bob = {"Authorization": f"Bearer {seeded.tokens['bob']}"}
    first = client.post(
        f"/api/messages/{message}/corrections", headers=ada, json={"text": "From 3pm.", "approve": True, "based_on": 0}
    )
    assert first.status_code == 201
    stale = client.post(
        f"/api/messages/{message}/corrections", headers=bob, json={"text": "From 2pm.", "approve": True, "based_on": 0}
    )
    assert stale.status_code == 409
    assert stale.json()["detail"].startswith(
        "ada approved a correction of this answer after you opened it; nothing was saved"
    )
    based = client.post(
        f"/api/messages/{message}/corrections", headers=bob, json={"text": "From 2pm.", "based_on": first.json()["id"]}
    )
    assert based.status_code == 201 and based.json()["status"] == "draft"
    approve_edit = client.patch(
        f"/api/corrections/{based.json()['id']}",
        headers=ada,
        json={"text": "From 3 pm.", "revision": 1, "approve": True},
    )
    assert approve_edit.status_code == 200 and approve_edit.json()["status"] == "approved"
    late = client.patch(
        f"/api/corrections/{based.json()['id']}", headers=bob, json={"text": "From 1pm.", "revision": 1}
    )
    assert late.status_code == 409 and "already approved by ada" in late.json()["detail"]
    unknown = client.post(
        f"/api/messages/{seeded.answers['recent'].id}/corrections",
        headers=bob,
        json={"text": "x", "based_on": first.json()["id"]},
    )
    assert unknown.status_code == 409 and "has no correction" in unknown.json()["detail"]
    both = client.post(
        f"/api/messages/{message}/corrections", headers=bob, json={"text": "x", "approve": True, "reject": True}
    )
    assert both.status_code == 422
    with any_store.session() as s:
        texts = [(c.text, c.status) for c in repo.list_corrections(s, message_id=message)]
    assert sorted(texts) == [("From 3 pm.", CorrectionStatus.approved), ("From 3pm.", CorrectionStatus.approved)]


def test_two_agents_racing_on_one_answer_save_one_correction(console, any_store):
    client, seeded = console
    message, results = seeded.answers["recent"].id, []
    tokens = [seeded.tokens["ada"], seeded.tokens["bob"]] * 4
    start = threading.Barrier(len(tokens))

    def correct(token: str) -> None:
        start.wait()
        results.append(
            client.post(
                f"/api/messages/{message}/corrections",
                headers={"Authorization": f"Bearer {token}"},
                json={"text": f"by {token[-4:]}", "approve": True, "based_on": 0},
            ).status_code
        )

    threads = [threading.Thread(target=correct, args=(t,)) for t in tokens]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [201] + [409] * 7
    with any_store.session() as s:
        assert len(s.exec(select(Correction).where(Correction.message_id == message)).all()) == 1


def test_reject_takes_an_answer_off_the_queue_without_training_on_it(console, any_store):
    client, seeded = console
    bob = {"Authorization": f"Bearer {seeded.tokens['bob']}"}
    message = seeded.answers["handoff"]
    rejected = client.post(
        f"/api/messages/{message.id}/corrections",
        headers=bob,
        json={"text": message.text, "reject": True, "based_on": 0},
    )
    assert rejected.status_code == 201 and rejected.json()["status"] == "rejected"
    queue = client.get("/api/review", headers=bob).json()
    assert [i["message"]["id"] for i in queue["items"]] == [seeded.answers["down"].id, seeded.answers["recent"].id]
    assert queue["versions"] == ["base"]
    with any_store.session() as s:
        from feedback.export import sft_records

        assert sft_records(s) == []


def test_the_conversation_shows_corrections_with_who_approved_them(console):
    client, seeded = console
    ada = {"Authorization": f"Bearer {seeded.tokens['ada']}"}
    message = seeded.answers["down"]
    client.post(f"/api/messages/{message.id}/corrections", headers=ada, json={"text": "From 3pm.", "approve": True})
    convo = client.get(f"/api/conversations/{message.conversation_id}", headers=ada).json()
    assert [m["role"] for m in convo["messages"]] == ["user", "assistant"]
    answer = convo["messages"][1]
    assert answer["text"] == WRONG and answer["feedback"]["reason"] == "wrong"
    assert [(c["text"], c["status"], convo["names"][str(c["reviewed_by"])]) for c in answer["corrections"]] == [
        ("From 3pm.", "approved", "ada")
    ]
    assert client.get("/api/conversations/nope", headers=ada).status_code == 404


def test_the_review_queue_filters_by_day(console):
    client, seeded = console
    bob = {"Authorization": f"Bearer {seeded.tokens['bob']}"}
    today = utcnow().date()
    inside = client.get(
        "/api/review",
        headers=bob,
        params={"since": f"{today}T00:00:00Z", "until": f"{today + timedelta(days=1)}T00:00:00Z"},
    )
    assert inside.json()["total"] == 3
    assert client.get("/api/review", headers=bob, params={"until": f"{today}T00:00:00Z"}).json()["total"] == 0
    assert client.get("/api/review", headers=bob, params={"until": "yesterday"}).status_code == 422


def test_votes_over_time_per_version_feed_the_rate_chart(console, any_store):
    client, seeded = console
    seed_votes(any_store, {"v1-a": ["up", "up", "down"], "v2-b": ["up", "down", "down"]}, hours=4)
    ada = {"Authorization": f"Bearer {seeded.tokens['ada']}"}
    votes = client.get("/api/admin/adapters/votes", headers=ada).json()
    assert votes["bucket"] == "hour" and set(votes["series"]) == {"base", "v1-a", "v2-b"}
    assert [(p["up"], p["down"]) for p in votes["series"]["v1-a"]] == [(2, 1)] * 4
    assert [(p["up"], p["down"]) for p in votes["series"]["v2-b"]] == [(1, 2)] * 4
    starts = [p["t"] for p in votes["series"]["v1-a"]]
    assert starts == sorted(starts) and all(t.endswith(":00:00Z") for t in starts)
    daily = client.get("/api/admin/adapters/votes", headers=ada, params={"bucket": "day"}).json()
    assert sum(p["up"] for p in daily["series"]["v1-a"]) == 8 and daily["series"]["v1-a"][0]["t"].endswith("T00:00:00Z")
    assert client.get("/api/admin/adapters/votes", headers=ada, params={"bucket": "week"}).status_code == 422


def test_plain_http_to_another_host_refuses_to_log_in_with_a_reason(settings, store, fake):
    seeded = seed_console(store)
    with TestClient(create_app(settings, generator=fake, store=store)) as client:  # http://testserver
        refused = login(client, seeded.tokens["bob"])
        assert refused.status_code == 400 and "must be served over HTTPS" in refused.text
        assert LOGIN_COOKIE not in refused.headers.get("set-cookie", "")
    with TestClient(
        create_app(settings.model_copy(update={"cookie_secure": False}), generator=fake, store=store)
    ) as client:
        allowed = login(client, seeded.tokens["bob"])
        assert allowed.status_code == 303 and "Secure" not in allowed.headers["set-cookie"]


def test_login_never_redirects_to_another_site(console):
    client, seeded = console
    for target in ("https://evil.example/", "//evil.example/staff", "/elsewhere", "/staff\\@evil"):
        assert login(client, seeded.tokens["bob"], target).headers["location"] == "/staff", target
    assert client.get("/staff/login?next=//evil.example", follow_redirects=False).headers["location"] == "/staff"


def test_the_console_assets_are_served(console):
    client, _ = console
    script = client.get("/staff/static/console.js")
    assert (
        script.status_code == 200 and "javascript" in script.headers["content-type"] and "X-CSRF-Token" in script.text
    )
    assert "innerHTML" not in script.text  # every text goes in as text
    assert client.get("/staff/static/console.css").status_code == 200
    assert client.get("/staff/login").headers["x-frame-options"] == "DENY"
