"""The example workflows: an order that is reserved, paid for, approved and shipped."""

from __future__ import annotations

import asyncio

import pydantic

from durable_core import Context, Durable, SyncContext, TriggerEvent

durable = Durable("shop", dev=True)


class Receipt(pydantic.BaseModel):
    order_id: str
    amount: float
    charge_id: str


def reserve_stock(items: list[str]) -> dict[str, int]:
    return {sku: 1 for sku in items}


async def charge_card(order_id: str, amount: float) -> Receipt:
    return Receipt(order_id=order_id, amount=amount, charge_id=f"ch_{order_id}")


@durable.function(id="process-order", trigger=TriggerEvent("shop/order.created"), retries=3)
async def process_order(ctx: Context) -> dict[str, object]:
    order = ctx.event.data
    reserved = await ctx.step.run("reserve-stock", reserve_stock, order["items"])
    receipt = await ctx.step.run("charge-card", charge_card, order["id"], order["amount"])
    await ctx.step.sleep("cool-off", "2s")
    approval = await ctx.step.wait_for_event(
        "wait-for-approval",
        event="shop/order.approved",
        if_="async.data.order_id == event.data.id",
        timeout="1h",
    )
    if approval is None:
        return {"order": order["id"], "status": "expired"}
    label, email = await asyncio.gather(
        ctx.step.run("print-label", lambda: f"label-{order['id']}"),
        ctx.step.run("email-customer", lambda: f"sent to {order['email']}"),
    )
    return {
        "order": order["id"],
        "status": "shipped",
        "reserved": reserved,
        "charge": receipt.charge_id,
        "label": label,
        "email": email,
    }


@durable.function(id="nightly-report", trigger=TriggerEvent("shop/report.requested"))
def nightly_report(ctx: SyncContext) -> dict[str, int]:
    orders, refunds = ctx.step.parallel(
        lambda: ctx.step.run("count-orders", lambda: 42),
        lambda: ctx.step.run("count-refunds", lambda: 3),
    )
    return {"orders": orders, "refunds": refunds}
