"""Claiming flow-controlled requests: concurrency parks them, throttles delay run starts.

A claim runs under one lock per store (an advisory lock on PostgreSQL), so several
orchestrators sharing a database enforce one limit. Requests over a concurrency limit are
parked in line order and unparked as slots free; a throttle (GCRA) delays a run's first request
to its slot. Items of functions without flow control never come here.
"""

from __future__ import annotations

import math
from collections import Counter

from .flow_options import iso
from .store import QueueItem, Tx, now_ms


async def claim(tx: Tx, limit: int, lease_ms: int) -> list[QueueItem]:
    """Lease up to `limit` flow-controlled items that their limits allow, in line order;
    park those a concurrency limit holds and delay those a throttle holds."""
    await tx.lock_flow()
    now = now_ms()  # read under the lock, so starts are stamped in the order they were allowed
    busy: Counter[str] = Counter()
    for flow in await tx.flow_leased(now):
        for key, _limit, _label in flow.get("c", []):
            busy[key] += 1
    for key, flow in await tx.parked_keys():
        cap = next((c[1] for c in flow.get("c", []) if c[0] == key), 0)
        if cap > busy[key]:
            await tx.unpark(key, cap - busy[key])
    taken: list[QueueItem] = []
    tats: dict[str, float] = {}
    held: Counter[str] = Counter()  # items this claim delayed, per throttle key
    for item in await tx.flow_items(now, max(4 * limit, 64)):
        if len(taken) >= limit:
            break
        flow = item.flow or {}
        full = next((c for c in flow.get("c", []) if busy[c[0]] >= c[1]), None)
        if full is not None:
            flow["w"] = 1
            await tx.park(item, full[0])
            await tx.update_run(item.run_id, reason=full[2])
            continue
        if flow.get("t"):
            key, rate, period, burst, label = flow["t"]
            state = "throttle:" + key
            if state not in tats:
                stored = await tx.get_state(state)
                tats[state] = float(stored) if stored is not None else now
            interval = period / rate
            allowed = tats[state] - (rate + burst - 1) * interval  # GCRA: the earliest start
            if now < allowed:
                at = math.ceil(allowed + held[state] * interval)
                held[state] += 1
                flow["w"] = 1
                await tx.delay_item(item, at)
                await tx.update_run(item.run_id, reason=f"throttled until {iso(at)} ({label})")
                continue
            tats[state] = max(tats[state], now) + interval
        for c in flow.get("c", []):
            busy[c[0]] += 1
        taken.append(item)
    if taken:
        await tx.lease_items(taken, now, now + lease_ms)
        for item in taken:
            if (item.flow or {}).get("w"):
                await tx.update_run(item.run_id, reason=None)
    for state, tat in tats.items():
        await tx.set_state(state, tat)
    return taken
