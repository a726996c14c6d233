"""Log levels the settings give to chatty libraries (``LOGGING`` in config.settings.base)."""

import logging

import pytest


@pytest.fixture
def root_at_info():
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)  # as in production (LOG_LEVEL=INFO); the tests run quieter
    yield
    root.setLevel(level)


def test_httpx_request_lines_are_not_logged_but_its_warnings_are(root_at_info):
    """One INFO line per outgoing request (every LLM call and stream) would flood the log."""
    httpx_logger = logging.getLogger("httpx")

    assert not httpx_logger.isEnabledFor(logging.INFO)
    assert httpx_logger.isEnabledFor(logging.WARNING)
