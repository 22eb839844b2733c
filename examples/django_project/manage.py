#!/usr/bin/env python
"""A Django project serving shop workflows, with the orchestrator embedded (its API at /durable).

Run it from the repository root, with the development server, with gunicorn (WSGI) or with
uvicorn (ASGI):

    .venv/bin/python examples/django_project/manage.py runserver 8000
    .venv/bin/gunicorn --pythonpath examples/django_project shopsite.wsgi --bind 127.0.0.1:8000
    .venv/bin/uvicorn --app-dir examples/django_project shopsite.asgi:application --port 8000

Start a checkout (a route workflow); it announces the order, which starts `process-order`,
and that run waits for an approval event:

    curl -X POST localhost:8000/api/checkout -H 'content-type: application/json' \\
         -d '{"order_id": "o-1", "items": ["sku-1", "sku-2"], "email": "ada@example.com"}'
    curl -X POST localhost:8000/durable/e/dev \\
         -d '{"name": "shop/order.approved", "data": {"order_id": "o-1"}}'
    curl 'localhost:8000/durable/v1/runs?function_id=django-shop-process-order'

A sync function, started by an event:

    curl -X POST localhost:8000/durable/e/dev -d '{"name": "shop/stock.low", "data": {"sku": "sku-1"}}'
    curl 'localhost:8000/durable/v1/runs?function_id=django-shop-restock'

The orchestrator starts in the process that serves requests (runserver's reloaded child, each
server's worker), never in other management commands. Runs are kept in SQLite under .durable/
(or $DURABLE_DIR). settings.DURABLE turns dev mode on: unsigned requests, any event key.

One process hosts the orchestrator (it owns the SQLite file): under gunicorn with several
workers, the others answer 503 to requests that need it (events, the API, starting a
checkout); serve with one worker, or run `durable dev` and set DURABLE_ORCHESTRATOR_URL.
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
