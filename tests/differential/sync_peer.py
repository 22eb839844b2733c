"""The sync-payload functions written with the `inngest` SDK (0.5.19), served at /api/inngest.

Each function mirrors the one with the same id in `sync_ours.py`: every trigger kind and every
flow-control option both SDKs accept. Durations are timedeltas, which both SDKs take alike.
"""

from __future__ import annotations

import datetime

from fastapi import FastAPI

from .inngest_sdk import inngest

APP_ID = "sync"
SECONDS_5 = datetime.timedelta(seconds=5)
SECONDS_90 = datetime.timedelta(seconds=90)
MINUTE = datetime.timedelta(minutes=1)
HOUR = datetime.timedelta(hours=1)
HOURS_36 = datetime.timedelta(hours=36)
DAY = datetime.timedelta(days=1)
WEEK = datetime.timedelta(weeks=1)

EVENT = inngest.TriggerEvent(event="shop/order.created")
EVENT_IF = inngest.TriggerEvent(event="shop/order.paid", expression="event.data.total > 100")
CRON = inngest.TriggerCron(cron="0 9 * * 1-5")
CRON_TZ = inngest.TriggerCron(cron="TZ=Europe/Paris 30 2 * * *")


def _handler(ctx: inngest.Context) -> None:
    return None


def _failed(ctx: inngest.Context) -> None:
    return None


def build(api_origin: str, signing_key: str | None, serve_origin: str | None) -> FastAPI:
    """A FastAPI app serving the functions, registering with the orchestrator at `api_origin`;
    in production mode when given a signing key."""
    client = inngest.Inngest(
        app_id=APP_ID,
        is_production=signing_key is not None,
        signing_key=signing_key,
        api_base_url=api_origin,
    )
    fn = client.create_function
    functions = [
        # -- triggers -----------------------------------------------------------------------
        fn(fn_id="event", trigger=EVENT)(_handler),
        fn(fn_id="event-if", trigger=EVENT_IF, retries=0)(_handler),
        fn(fn_id="cron", trigger=CRON, retries=3)(_handler),
        fn(fn_id="cron-tz", trigger=CRON_TZ, retries=1)(_handler),
        fn(fn_id="multi", trigger=[EVENT, EVENT_IF, CRON], retries=2)(_handler),
        fn(fn_id="named", name="Send the receipt", trigger=EVENT, retries=20)(_handler),
        # -- flow control -------------------------------------------------------------------
        fn(
            fn_id="concurrency",
            trigger=EVENT,
            retries=4,
            concurrency=[inngest.Concurrency(limit=3)],
        )(_handler),
        fn(
            fn_id="concurrency-keyed",
            trigger=EVENT,
            retries=4,
            concurrency=[
                inngest.Concurrency(limit=1, key="event.data.user_id", scope="fn"),
                inngest.Concurrency(limit=10, key="event.data.shop_id", scope="env"),
            ],
        )(_handler),
        fn(
            fn_id="concurrency-account",
            trigger=EVENT,
            retries=4,
            concurrency=[
                inngest.Concurrency(limit=50, scope="account"),
                inngest.Concurrency(limit=0),
            ],
        )(_handler),
        fn(
            fn_id="throttle",
            trigger=EVENT,
            retries=4,
            throttle=inngest.Throttle(limit=10, period=MINUTE, burst=3, key="event.data.shop_id"),
        )(_handler),
        fn(
            fn_id="throttle-no-burst",
            trigger=EVENT,
            retries=4,
            throttle=inngest.Throttle(limit=5, period=SECONDS_90),
        )(_handler),
        fn(
            fn_id="rate-limit",
            trigger=EVENT,
            retries=4,
            rate_limit=inngest.RateLimit(limit=1, period=HOURS_36, key="event.data.user_id"),
        )(_handler),
        fn(
            fn_id="rate-limit-plain",
            trigger=EVENT,
            retries=4,
            rate_limit=inngest.RateLimit(limit=100, period=DAY),
        )(_handler),
        fn(
            fn_id="debounce",
            trigger=EVENT,
            retries=4,
            debounce=inngest.Debounce(period=MINUTE, key="event.data.doc_id", timeout=HOUR),
        )(_handler),
        fn(
            fn_id="debounce-plain",
            trigger=EVENT,
            retries=4,
            debounce=inngest.Debounce(period=SECONDS_5),
        )(_handler),
        fn(
            fn_id="batch",
            trigger=EVENT,
            retries=4,
            batch_events=inngest.Batch(
                max_size=100,
                timeout=SECONDS_5,
                key="event.data.shop_id",
                if_exp="event.data.bulk == true",
            ),
        )(_handler),
        fn(
            fn_id="batch-plain",
            trigger=EVENT,
            retries=4,
            batch_events=inngest.Batch(max_size=2, timeout=WEEK),
        )(_handler),
        fn(fn_id="idempotency", trigger=EVENT, retries=4, idempotency="event.data.order_id")(
            _handler
        ),
        fn(
            fn_id="priority",
            trigger=EVENT,
            retries=4,
            priority=inngest.Priority(run="event.data.plan == 'pro' ? 120 : 0"),
        )(_handler),
        fn(
            fn_id="singleton-skip",
            trigger=EVENT,
            retries=4,
            singleton=inngest.Singleton(mode="skip", key="event.data.user_id"),
        )(_handler),
        fn(
            fn_id="singleton-cancel",
            trigger=EVENT,
            retries=4,
            singleton=inngest.Singleton(mode="cancel"),
        )(_handler),
        fn(
            fn_id="cancel",
            trigger=EVENT,
            retries=4,
            cancel=[
                inngest.Cancel(
                    event="shop/order.cancelled",
                    if_exp="async.data.order_id == event.data.order_id",
                    timeout=DAY,
                ),
                inngest.Cancel(event="shop/closed"),
            ],
        )(_handler),
        fn(
            fn_id="timeouts",
            trigger=EVENT,
            retries=4,
            timeouts=inngest.Timeouts(start=MINUTE, finish=HOUR),
        )(_handler),
        fn(
            fn_id="timeouts-finish",
            trigger=EVENT,
            retries=4,
            timeouts=inngest.Timeouts(finish=SECONDS_90),
        )(_handler),
        fn(fn_id="on-failure", trigger=EVENT, retries=5, on_failure=_failed)(_handler),
        fn(
            fn_id="everything",
            name="Everything at once",
            trigger=[EVENT_IF, CRON_TZ],
            retries=7,
            concurrency=[
                inngest.Concurrency(limit=2, key="event.data.user_id"),
                inngest.Concurrency(limit=20, scope="env"),
            ],
            throttle=inngest.Throttle(limit=30, period=HOUR, burst=5),
            rate_limit=inngest.RateLimit(limit=60, period=MINUTE, key="event.data.ip"),
            debounce=inngest.Debounce(period=SECONDS_5, timeout=MINUTE),
            batch_events=inngest.Batch(max_size=10, timeout=MINUTE),
            idempotency="event.data.request_id",
            priority=inngest.Priority(run="event.data.priority"),
            singleton=inngest.Singleton(mode="skip"),
            cancel=[inngest.Cancel(event="shop/order.cancelled", timeout=HOURS_36)],
            timeouts=inngest.Timeouts(start=SECONDS_90, finish=DAY),
            on_failure=_failed,
        )(_handler),
    ]
    app = FastAPI()
    inngest.fast_api.serve(app, client, functions, serve_origin=serve_origin)
    return app
