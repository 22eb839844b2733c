"""Settings of the shop site: no database, one app (the durable adapter), dev mode."""

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["adapters.django.DurableConfig"]  # starts the embedded orchestrator
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "shopsite.urls"
WSGI_APPLICATION = "shopsite.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

DURABLE = {"DEV": True}  # dev mode: unsigned requests accepted, any event key
