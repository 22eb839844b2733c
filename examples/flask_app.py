"""A Flask app serving shop workflows, with the orchestrator embedded (its API at /durable).

Run it from the repository root, with the development server or with gunicorn:

    .venv/bin/flask --app examples/flask_app.py run --port 5000
    .venv/bin/gunicorn examples.flask_app:app --bind 127.0.0.1:5000

Start a checkout (a route workflow); it announces the order, which starts `process-order`,
and that run waits for an approval event:

    curl -X POST localhost:5000/api/checkout -H 'content-type: application/json' \\
         -d '{"order_id": "o-1", "items": ["sku-1", "sku-2"], "email": "ada@example.com"}'
    curl -X POST localhost:5000/durable/e/dev \\
         -d '{"name": "shop/order.approved", "data": {"order_id": "o-1"}}'
    curl 'localhost:5000/durable/v1/runs?function_id=flask-shop-process-order'

A sync function, started by an event:

    curl -X POST localhost:5000/durable/e/dev -d '{"name": "shop/stock.low", "data": {"sku": "sku-1"}}'
    curl 'localhost:5000/durable/v1/runs?function_id=flask-shop-restock'

Runs are kept in SQLite under .durable/ (or $DURABLE_DIR). The app is in dev mode: the
endpoint accepts unsigned requests and the orchestrator takes any event key.

One process hosts the orchestrator (it owns the SQLite file): under gunicorn with several
workers, the others answer 503 to requests that need it (events, the API, starting a
checkout); serve with one worker, or run `durable dev` and set DURABLE_ORCHESTRATOR_URL.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flask import Flask

from adapters.flask import durable_blueprint
from durable_core import Context, Durable, SyncContext, SyncWorkflowContext, TriggerEvent

PRICES = {"sku-1": 12.5, "sku-2": 30.0}

durable = Durable("flask-shop", dev=True)


def price_cart(items: list[str]) -> float:
    return sum(PRICES.get(sku, 10.0) for sku in items)


async def charge_card(order_id: str, amount: float) -> str:
    await asyncio.sleep(0)
    return f"ch_{order_id}"


@durable.function(id="process-order", trigger=TriggerEvent("shop/order.created"), retries=3)
async def process_order(ctx: Context) -> dict[str, Any]:
    order = ctx.event.data
    charge = await ctx.step.run("charge-card", charge_card, order["order_id"], order["amount"])
    await ctx.step.sleep("cool-off", "1s")
    approval = await ctx.step.wait_for_event(
        "wait-for-approval",
        event="shop/order.approved",
        if_="async.data.order_id == event.data.order_id",
        timeout="1h",
    )
    if approval is None:
        return {"order": order["order_id"], "status": "expired"}
    label, email = await asyncio.gather(
        ctx.step.run("print-label", lambda: f"label-{order['order_id']}"),
        ctx.step.run("email-customer", lambda: f"sent to {order['email']}"),
    )
    return {
        "order": order["order_id"],
        "status": "shipped",
        "charge": charge,
        "label": label,
        "email": email,
    }


@durable.function(id="restock", trigger=TriggerEvent("shop/stock.low"))
def restock(ctx: SyncContext) -> dict[str, Any]:
    sku = ctx.event.data["sku"]
    supplier, quantity = ctx.step.parallel(
        lambda: ctx.step.run("pick-supplier", lambda: f"supplier-of-{sku}"),
        lambda: ctx.step.run("count-shortfall", lambda: 24),
    )
    po = ctx.step.run("order-stock", lambda: f"po-{sku}-{quantity}")
    return {"sku": sku, "supplier": supplier, "quantity": quantity, "purchase_order": po}


bp = durable_blueprint(durable)


@bp.workflow("/api/checkout")
def checkout(context: SyncWorkflowContext[dict[str, Any]]) -> dict[str, Any]:
    cart = context.request_payload
    amount = context.run("price-cart", price_cart, cart["items"])
    context.notify(
        "announce-order",
        "shop/order.created",
        {"order_id": cart["order_id"], "amount": amount, "email": cart["email"]},
    )
    return {"order_id": cart["order_id"], "amount": amount}


app = Flask(__name__)
app.register_blueprint(bp)


@app.get("/")
def index() -> dict[str, str]:
    return {"hello": "flask-shop", "durable endpoint": "/api/durable", "runs": "/durable/v1/runs"}
