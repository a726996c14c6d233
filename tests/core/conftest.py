"""Core tests run against the real URL conf plus the convention test views."""

import pytest


@pytest.fixture(autouse=True)
def _test_urls(settings):
    settings.ROOT_URLCONF = "tests.core.urls"
