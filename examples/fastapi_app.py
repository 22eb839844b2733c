"""A FastAPI app serving the shop workflows at /api/durable.

.venv/bin/uvicorn examples.fastapi_app:app --port 8000
"""

from __future__ import annotations

from fastapi import FastAPI

from adapters.fastapi import Serve
from examples.shop import durable

app = FastAPI(title="shop")
Serve(app, durable)


@app.get("/")
async def index() -> dict[str, str]:
    return {"hello": "shop", "durable endpoint": "/api/durable"}
