"""The `inngest` SDK (0.5.19), imported without the deprecation warning it raises on import."""

from __future__ import annotations

import warnings

from pydantic.warnings import PydanticDeprecatedSince20

with warnings.catch_warnings():
    # inngest 0.5.19 declares one pydantic model with a class-based `Config` (comm_lib/models.py).
    warnings.filterwarnings(
        "ignore",
        message="Support for class-based `config` is deprecated",
        category=PydanticDeprecatedSince20,
    )
    import inngest
    import inngest.fast_api

__all__ = ["inngest"]
