"""cMCP benchmark harness: ``python -m bench run [--quick]``."""
