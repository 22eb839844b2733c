"""The shop's URLs: the serve endpoint, the orchestrator's API, the checkout workflow."""

from django.http import HttpRequest, JsonResponse
from django.urls import include, path

from adapters.django import durable_api_urls, durable_urls, workflow_view

from .workflows import checkout, durable


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse(
        {"hello": "django-shop", "durable endpoint": "/api/durable/", "runs": "/durable/v1/runs"}
    )


urlpatterns = [
    path("", index),
    path("api/durable/", include(durable_urls(durable))),
    path("durable/", include(durable_api_urls(durable))),
    path("api/checkout", workflow_view(checkout)),
]
