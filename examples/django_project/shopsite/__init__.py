"""The shop site: settings, URLs, the durable functions (workflows.py), WSGI and ASGI entry points."""
