"""Test settings: the base settings plus only what tests need (fast hashing, captured email)."""

from .base import *  # noqa: F403
from .base import env

PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
# Tests share one Redis database; each test run (and xdist worker) gets its own key space.
CACHES["default"]["KEY_PREFIX"] = "test-" + env.str("PYTEST_XDIST_WORKER", default="main")  # noqa: F405
# Each test run (and xdist worker) has its own queue, apart from a stack `make run` may have up.
CELERY_TASK_DEFAULT_QUEUE = "test-" + env.str("PYTEST_XDIST_WORKER", default="main")
LOG_LEVEL = "WARNING"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
STREAM_POLL_SECONDS = 0.2
# Out of the way, unless a test's server asks for a key limit (tests of the limit in a live server).
RATE_LIMITS = {
    "key": env.str("TEST_RATE_LIMIT_KEY", default="100000/minute"),
    "user": "100000/minute",
    "anon": "100000/minute",
}

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not memory, so that a real server started by a test (daphne) sees the same rows.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}  # noqa: F405

if CELERY_BROKER_URL.startswith("filesystem://"):  # noqa: F405
    # Tests never share the broker folder of a stack that `make run` may have running.
    _test_broker = VAR_DIR / "test-broker"  # noqa: F405
    for _sub in ("in", "processed", "control"):
        (_test_broker / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_test_broker / "in"),
        "data_folder_out": str(_test_broker / "in"),
        "processed_folder": str(_test_broker / "processed"),
        "control_folder": str(_test_broker / "control"),
        "store_processed": False,
    }

# Retry delays of the LLM choke point stay tiny in tests.
LLM_RETRY_BASE_SECONDS = 0.01
# Per-call reservations, which the cap tests count exactly; tests/billing/test_leases.py turns
# leases on where it tests them.
USAGE_CAP_LEASE_CALLS = 0
