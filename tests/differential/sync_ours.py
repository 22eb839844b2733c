"""The sync-payload functions written with `durable`, served at /api/durable.

Each function mirrors the one with the same id in `sync_peer.py`.
"""

from __future__ import annotations

import datetime

from fastapi import FastAPI

from adapters.fastapi import Serve
from durable_core import (
    Batch,
    Cancel,
    Concurrency,
    Debounce,
    Durable,
    Priority,
    RateLimit,
    Singleton,
    SyncContext,
    Throttle,
    Timeouts,
    TriggerCron,
    TriggerEvent,
)

APP_ID = "sync"
SECONDS_5 = datetime.timedelta(seconds=5)
SECONDS_90 = datetime.timedelta(seconds=90)
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
HOURS_36 = datetime.timedelta(hours=36)
DAY = datetime.timedelta(days=1)
WEEK = datetime.timedelta(weeks=1)

EVENT = TriggerEvent("shop/order.created")
EVENT_IF = TriggerEvent("shop/order.paid", "event.data.total > 100")
CRON = TriggerCron("0 9 * * 1-5")
CRON_TZ = TriggerCron("TZ=Europe/Paris 30 2 * * *")


def _handler(ctx: SyncContext) -> None:
    return None


def _failed(ctx: SyncContext) -> None:
    return None


def build(api_origin: str, signing_key: str | None, serve_origin: str | None) -> FastAPI:
    """A FastAPI app serving the functions, registering with the orchestrator at `api_origin`;
    in production mode when given a signing key."""
    durable = Durable(
        APP_ID,
        dev=signing_key is None,
        signing_key=signing_key,
        orchestrator_url=api_origin,
        serve_origin=serve_origin,
    )
    fn = durable.function
    functions = [
        # -- triggers -----------------------------------------------------------------------
        fn(id="event", trigger=EVENT)(_handler),
        fn(id="event-if", trigger=EVENT_IF, retries=0)(_handler),
        fn(id="cron", trigger=CRON, retries=3)(_handler),
        fn(id="cron-tz", trigger=CRON_TZ, retries=1)(_handler),
        fn(id="multi", trigger=[EVENT, EVENT_IF, CRON], retries=2)(_handler),
        fn(id="named", name="Send the receipt", trigger=EVENT, retries=20)(_handler),
        # -- flow control -------------------------------------------------------------------
        fn(
            id="concurrency",
            trigger=EVENT,
            retries=4,
            concurrency=[Concurrency(limit=3)],
        )(_handler),
        fn(
            id="concurrency-keyed",
            trigger=EVENT,
            retries=4,
            concurrency=[
                Concurrency(limit=1, key="event.data.user_id", scope="fn"),
                Concurrency(limit=10, key="event.data.shop_id", scope="env"),
            ],
        )(_handler),
        fn(
            id="concurrency-account",
            trigger=EVENT,
            retries=4,
            concurrency=[Concurrency(limit=50, scope="account"), Concurrency(limit=0)],
        )(_handler),
        fn(
            id="throttle",
            trigger=EVENT,
            retries=4,
            throttle=Throttle(limit=10, period=MINUTE, burst=3, key="event.data.shop_id"),
        )(_handler),
        fn(
            id="throttle-no-burst",
            trigger=EVENT,
            retries=4,
            throttle=Throttle(limit=5, period=SECONDS_90),
        )(_handler),
        fn(
            id="rate-limit",
            trigger=EVENT,
            retries=4,
            rate_limit=RateLimit(limit=1, period=HOURS_36, key="event.data.user_id"),
        )(_handler),
        fn(
            id="rate-limit-plain",
            trigger=EVENT,
            retries=4,
            rate_limit=RateLimit(limit=100, period=DAY),
        )(_handler),
        fn(
            id="debounce",
            trigger=EVENT,
            retries=4,
            debounce=Debounce(period=MINUTE, key="event.data.doc_id", timeout=HOUR),
        )(_handler),
        fn(
            id="debounce-plain",
            trigger=EVENT,
            retries=4,
            debounce=Debounce(period=SECONDS_5),
        )(_handler),
        fn(
            id="batch",
            trigger=EVENT,
            retries=4,
            batch_events=Batch(
                max_size=100,
                timeout=SECONDS_5,
                key="event.data.shop_id",
                if_="event.data.bulk == true",
            ),
        )(_handler),
        fn(
            id="batch-plain",
            trigger=EVENT,
            retries=4,
            batch_events=Batch(max_size=2, timeout=WEEK),
        )(_handler),
        fn(id="idempotency", trigger=EVENT, retries=4, idempotency="event.data.order_id")(_handler),
        fn(
            id="priority",
            trigger=EVENT,
            retries=4,
            priority=Priority(run="event.data.plan == 'pro' ? 120 : 0"),
        )(_handler),
        fn(
            id="singleton-skip",
            trigger=EVENT,
            retries=4,
            singleton=Singleton(mode="skip", key="event.data.user_id"),
        )(_handler),
        fn(
            id="singleton-cancel",
            trigger=EVENT,
            retries=4,
            singleton=Singleton(mode="cancel"),
        )(_handler),
        fn(
            id="cancel",
            trigger=EVENT,
            retries=4,
            cancel=[
                Cancel(
                    event="shop/order.cancelled",
                    if_="async.data.order_id == event.data.order_id",
                    timeout=DAY,
                ),
                Cancel(event="shop/closed"),
            ],
        )(_handler),
        fn(
            id="timeouts",
            trigger=EVENT,
            retries=4,
            timeouts=Timeouts(start=MINUTE, finish=HOUR),
        )(_handler),
        fn(
            id="timeouts-finish",
            trigger=EVENT,
            retries=4,
            timeouts=Timeouts(finish=SECONDS_90),
        )(_handler),
        fn(id="on-failure", trigger=EVENT, retries=5, on_failure=_failed)(_handler),
        fn(
            id="everything",
            name="Everything at once",
            trigger=[EVENT_IF, CRON_TZ],
            retries=7,
            concurrency=[
                Concurrency(limit=2, key="event.data.user_id"),
                Concurrency(limit=20, scope="env"),
            ],
            throttle=Throttle(limit=30, period=HOUR, burst=5),
            rate_limit=RateLimit(limit=60, period=MINUTE, key="event.data.ip"),
            debounce=Debounce(period=SECONDS_5, timeout=MINUTE),
            batch_events=Batch(max_size=10, timeout=MINUTE),
            idempotency="event.data.request_id",
            priority=Priority(run="event.data.priority"),
            singleton=Singleton(mode="skip"),
            cancel=[Cancel(event="shop/order.cancelled", timeout=HOURS_36)],
            timeouts=Timeouts(start=SECONDS_90, finish=DAY),
            on_failure=_failed,
        )(_handler),
    ]
    assert len(functions) == len(durable.functions)
    app = FastAPI()
    Serve(app, durable, embedded=False)  # the SDK alone: the test plays the orchestrator
    return app
