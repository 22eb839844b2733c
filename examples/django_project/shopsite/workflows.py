"""The shop's durable functions: an async order flow, a sync restock, a checkout route workflow."""

from __future__ import annotations

import asyncio
from typing import Any

from durable_core import Context, Durable, SyncContext, SyncWorkflowContext, TriggerEvent

PRICES = {"sku-1": 12.5, "sku-2": 30.0}

durable = Durable("django-shop")  # dev mode comes from settings.DURABLE


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


def place_order(context: SyncWorkflowContext[dict[str, Any]]) -> dict[str, Any]:
    cart = context.request_payload
    amount = context.run("price-cart", price_cart, cart["items"])
    context.notify(
        "announce-order",
        "shop/order.created",
        {"order_id": cart["order_id"], "amount": amount, "email": cart["email"]},
    )
    return {"order_id": cart["order_id"], "amount": amount}


checkout = durable.workflow("/api/checkout")(place_order)
