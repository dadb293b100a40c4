"""Fixtures for the integration tests (none shared yet)."""
