"""`python -m durable_core.cli`."""

from . import main

main()
