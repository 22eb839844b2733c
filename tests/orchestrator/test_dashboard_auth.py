"""The dashboard's login and session, without a browser: the key gives a cookie (an HMAC of
it, never the key), the cookie is accepted by /v1 besides the bearer, and a change made with
the cookie needs the dashboard's header."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from durable_core.orchestrator.api import Api
from durable_core.orchestrator.dashboard import COOKIE
from durable_core.orchestrator.service import Orchestrator
from durable_core.orchestrator.store import open_store

from .conftest import sqlite_only

pytestmark = sqlite_only
KEY = "signkey-prod-" + "ab" * 32


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    orch = Orchestrator(open_store(f"sqlite:///{tmp_path}/d.db"), signing_key=KEY)
    with TestClient(Api(orch).served(), base_url="http://127.0.0.1") as client:
        yield client


def test_without_a_session_the_page_is_the_login_and_v1_is_refused(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and 'name="key"' in page.text
    assert "app.js" not in page.text  # no script that would read runs
    assert client.get("/v1/runs").status_code == 401


def test_a_wrong_key_is_refused_and_sets_no_cookie(client: TestClient) -> None:
    res = client.post("/login", data={"key": "signkey-prod-" + "00" * 32}, follow_redirects=False)
    assert res.status_code == 401
    assert "not this orchestrator's signing key" in res.text
    assert COOKIE not in res.cookies
    not_hex = client.post("/login", data={"key": "hunter2"}, follow_redirects=False)
    assert not_hex.status_code == 401 and COOKIE not in not_hex.cookies


def test_the_key_is_taken_with_or_without_its_prefix(client: TestClient) -> None:
    res = client.post("/login", data={"key": "ab" * 32}, follow_redirects=False)
    assert res.status_code == 303 and COOKIE in res.cookies


def test_the_right_key_gives_a_session_that_v1_accepts(client: TestClient) -> None:
    res = client.post("/login", data={"key": KEY}, follow_redirects=False)
    assert res.status_code == 303 and res.headers["location"] == "./"
    header = res.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=strict" in header
    assert KEY.removeprefix("signkey-prod-") not in header
    assert client.get("/v1/runs").status_code == 200
    assert "<title>durable" in client.get("/").text
    refused = client.post("/v1/runs/cancel", json={"status": "queued"})
    assert refused.status_code == 403 and "x-durable-dashboard" in refused.json()["error"]
    done = client.post(
        "/v1/runs/cancel", json={"status": "queued"}, headers={"x-durable-dashboard": "1"}
    )
    assert done.status_code == 200 and done.json()["matched"] == 0
    client.post("/logout")
    assert client.get("/v1/runs").status_code == 401


def test_a_forged_cookie_is_refused(client: TestClient) -> None:
    client.cookies.set(COOKIE, "0" * 64)
    res = client.get("/v1/runs")
    assert res.status_code == 401 and "log in again" in res.json()["error"]


def test_only_the_dashboard_files_are_served(client: TestClient) -> None:
    assert client.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    for name in ("api.py", ".hidden.js", "nope.js", "..%2Fdashboard.py"):
        res = client.get(f"/static/{name}")
        assert res.status_code == 404, (name, res.text)
