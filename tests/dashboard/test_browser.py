"""The dashboard in a real browser, against a real orchestrator and app over HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect
from tests.orchestrator.conftest import wait_until

from .conftest import screenshot
from .stack import KEY, Stack, stack


def _finished(s: Stack, fn: str, count: int = 1) -> list[dict[str, Any]]:
    def done() -> list[dict[str, Any]] | None:
        runs = s.runs(fn)
        ended = [r for r in runs if r["status"] in ("completed", "failed", "cancelled")]
        return ended if len(ended) >= count else None

    return list(wait_until(f"{count} finished run(s) of {fn}", done))


def _open_run(page: Any, s: Stack, run_id: str) -> None:
    page.goto(f"{s.url}/#/runs/{run_id}")
    expect(page.locator(".run-head h1")).to_be_visible()


def test_runs_list_and_a_run_timeline(page: Any, tmp_path: Path) -> None:
    with stack(f"sqlite:///{tmp_path}/d.db") as s:
        s.send("shop/refund.requested", {"charge": "ch_1"})
        for n in range(3):
            s.send("shop/order.created", {"order": f"A-{n + 1}"})
        s.send("report/requested")
        (run, *_) = _finished(s, "checkout", 3)
        _finished(s, "refund")
        page.goto(f"{s.url}/")
        expect(page.locator("tr[data-run]")).to_have_count(5)
        expect(page.locator("tr[data-run] >> text=shop-checkout")).to_have_count(3)
        expect(page.locator(".pill.failed")).to_have_count(1)
        screenshot(page, "dashboard-runs")

        page.locator(f"tr[data-run='{run['run_id']}']").click()
        expect(page).to_have_url(f"{s.url}/#/runs/{run['run_id']}")
        expect(page.locator(".run-head .pill")).to_have_text("completed")
        steps = [
            "validate-order",
            "reserve-stock",
            "charge-card",
            "wait-for-settlement",
            "send-receipt",
        ]
        for name in steps:
            expect(page.locator(f".tl-row[data-step='{name}']").first).to_be_visible()
        # The failed attempt and its retry are two bars.
        expect(page.locator(".tl-row[data-step='charge-card']")).to_have_count(2)
        page.locator(".tl-row[data-step='charge-card']").last.click()
        expect(page.locator("#step-detail")).to_contain_text('"charged": 42.5')
        screenshot(page, "dashboard-run")
        page.locator(".tl-row[data-step='charge-card']").first.click()
        expect(page.locator("#step-detail")).to_contain_text("card network did not answer")


def test_cancel_a_sleeping_run(page: Any, tmp_path: Path) -> None:
    with stack(f"sqlite:///{tmp_path}/d.db") as s:
        s.send("report/requested")
        run_id = wait_until("the report run", lambda: s.runs("nap"))[0]["run_id"]
        _open_run(page, s, run_id)
        expect(page.locator(".run-head .pill")).to_have_text("sleeping")
        expect(page.locator(".notice").first).to_contain_text("Sleeping until")
        page.get_by_role("button", name="Cancel").click()
        expect(page.locator(".run-head .pill")).to_have_text("cancelled")
        assert s.runs("nap")[0]["status"] == "cancelled"


def test_rerun_from_a_step_and_see_the_new_run_complete(page: Any, tmp_path: Path) -> None:
    with stack(f"sqlite:///{tmp_path}/d.db") as s:
        s.send("shop/order.created", {"order": "B-7"})
        (first,) = _finished(s, "checkout")
        _open_run(page, s, first["run_id"])
        page.locator(".tl-row[data-step='charge-card']").last.click()
        expect(page.locator("#from-step")).to_have_value("charge-card")
        page.get_by_role("button", name="Start rerun").click()
        expect(page).not_to_have_url(f"{s.url}/#/runs/{first['run_id']}")
        expect(page.locator(".run-head .pill")).to_have_text("completed")
        new_id = page.url.rsplit("/", 1)[-1]
        again = s.api.get(f"/v1/runs/{new_id}").json()
        assert again["output"] == {"order": "B-7", "charged": 42.5, "currency": "EUR"}
        assert [st["name"] for st in again["steps"]][:2] == ["validate-order", "reserve-stock"]
        assert len(s.runs("checkout")) == 2


def test_functions_page_and_invoke_a_function_with_data(page: Any, tmp_path: Path) -> None:
    with stack(f"sqlite:///{tmp_path}/d.db") as s:
        page.goto(f"{s.url}/#/functions")
        row = page.locator("tr", has_text="shop-checkout")
        expect(row).to_contain_text("event shop/order.created")
        page.goto(f"{s.url}/#/actions")
        page.get_by_label("Function").select_option("shop-checkout")
        page.locator(".card", has_text="Invoke function").locator("textarea").fill(
            '{"order": "I-9"}'
        )
        page.get_by_role("button", name="Invoke function").click()
        expect(page.locator(".run-head .pill")).to_have_text("completed")
        run_id = page.url.rsplit("/", 1)[-1]
        assert s.api.get(f"/v1/runs/{run_id}").json()["output"]["order"] == "I-9"


def test_login_with_the_production_key(page: Any, tmp_path: Path) -> None:
    with stack(f"sqlite:///{tmp_path}/d.db", key=KEY) as s:
        s.send("shop/order.created", {"order": "P-1"})
        _finished(s, "checkout")
        assert httpx.get(f"{s.url}/v1/runs").status_code == 401
        page.goto(f"{s.url}/")
        expect(page.get_by_label("Signing key")).to_be_visible()
        page.get_by_label("Signing key").fill("signkey-prod-" + "0" * 64)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("#login-error")).to_contain_text("not this orchestrator's signing key")
        page.get_by_label("Signing key").fill(KEY)
        page.get_by_role("button", name="Log in").click()
        expect(page.locator("tr[data-run]")).to_have_count(1)
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert (
            KEY not in cookie["value"] and KEY.removeprefix("signkey-prod-") not in cookie["value"]
        )
        # The cookie alone changes nothing without the dashboard's header (CSRF).
        run_id = s.runs("checkout")[0]["run_id"]
        refused = page.request.post(f"{s.url}/v1/runs/{run_id}/rerun")
        assert refused.status == 403 and "x-durable-dashboard" in refused.json()["error"]
        assert page.request.get(f"{s.url}/v1/runs").status == 200
