"""The dashboard of an embedded orchestrator, under the API's mount (/durable/) of each
framework's example app: its page and its files."""

from __future__ import annotations

import pytest

from test_examples import ServeFactory, serve

__all__ = ["serve"]


@pytest.mark.parametrize(
    ("way", "extra"),
    [("flask-run", ()), ("django-runserver", ("--noreload",)), ("fastapi-uvicorn", ())],
)
def test_dashboard_is_served_under_the_api_mount(
    serve: ServeFactory, way: str, extra: tuple[str, ...]
) -> None:
    server = serve(way, *extra)
    page = server.http.get("/durable/")
    assert page.status_code == 200, page.text
    assert page.headers["content-type"].startswith("text/html")
    assert "<title>durable" in page.text
    script = server.http.get("/durable/static/app.js")
    assert script.status_code == 200, script.text
    assert script.headers["content-type"].startswith("text/javascript")
    assert "hashchange" in script.text
