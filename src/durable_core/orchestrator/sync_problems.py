"""Why an app's latest sync failed, per app, for `/v1/apps` and the dashboard's Apps page.

An app is named by its app id when its registration said one, or by the URL `durable dev` syncs.
A later good sync of the app clears its entry. The entries live in the memory of the process
that saw the failure (a sync is one request to one process), the newest 100 of them."""

from __future__ import annotations

from typing import Any

from .store.records import now_ms

LIMIT = 100


class SyncProblems:
    def __init__(self) -> None:
        self._by_app: dict[str, tuple[str, int]] = {}

    def failed(self, app: str, why: str) -> None:
        self._by_app.pop(app, None)
        self._by_app[app] = (why, now_ms())
        while len(self._by_app) > LIMIT:
            del self._by_app[next(iter(self._by_app))]

    def cleared(self, *apps: str) -> None:
        for app in apps:
            self._by_app.pop(app, None)

    def listing(self) -> list[tuple[str, str, int]]:
        """(app, why, when in ms), newest first."""
        return [(app, why, at) for app, (why, at) in reversed(self._by_app.items())]


def named_app(body: Any) -> str:
    """The app a registration body names, as far as it names one."""
    if isinstance(body, dict):
        for key in ("appname", "appName"):
            if isinstance(name := body.get(key), str) and name:
                return name[:200]
    return "(an app whose registration named no app id)"
