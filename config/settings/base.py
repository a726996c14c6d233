"""Every setting of the platform, read from the environment through one django-environ `env`.

The embedded default (no environment at all) runs on SQLite, an in-memory channel layer, the
local-memory cache and a filesystem Celery broker, all under ``var/``. Production differs only by
environment values: ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` (cache, channel layer, broker).
`.env.example` lists every variable read here.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import environ
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
# A `.env` file next to manage.py is read when present; real environment variables win.
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

# --- Paths -------------------------------------------------------------------------------------
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _secret_key() -> str:
    """SECRET_KEY from the environment, else one generated once and kept in var/ (embedded)."""
    if value := env.str("SECRET_KEY", default=""):
        return value
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


# --- Core --------------------------------------------------------------------------------------
SECRET_KEY = _secret_key()
DEBUG = env.bool("DEBUG", default=False)
HOST = env.str("HOST", default="127.0.0.1")
PORT = env.int("PORT", default=8000)
WEB_BACKLOG = env.int("WEB_BACKLOG", default=2048)
# How long a thread of the web process may hold the GIL before another is let in (core.serve).
WEB_SWITCH_INTERVAL_MS = env.float("WEB_SWITCH_INTERVAL_MS", default=1.0)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
if HOST not in ("0.0.0.0", "::") and HOST not in ALLOWED_HOSTS:  # noqa: S104 - compared, not bound
    ALLOWED_HOSTS.append(HOST)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "core.errors.handlers.csrf_failure"
SITE_URL = env.str("SITE_URL", default=f"http://{HOST}:{PORT}")
PLATFORM_VERSION = env.str("PLATFORM_VERSION", default="0.1.0")
GIT_COMMIT = env.str("GIT_COMMIT", default="")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "servestatic.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "channels",
    "allauth",
    "allauth.account",
    "allauth.mfa",
    "allauth.headless",
    "allauth.socialaccount",
    # Platform apps, lowest layer first (see ARCHITECTURE.md).
    "core",
    "accounts",
    "agents",
    "chat",
    "knowledge",
    "knowledge.memory",
    "billing",
    "boards",
    "config.apps.WiringConfig",  # last: connects the apps above (config/apps.py)
]

MIDDLEWARE = [
    "core.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "servestatic.middleware.ServeStaticMiddleware",
    "core.middleware.BodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.middleware.IdempotencyMiddleware",
    "accounts.middleware.ApiKeyUsageMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"
APPEND_SLASH = False

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ----------------------------------------------------------------------------------
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker and beat share one file: WAL lets readers run beside the writer, IMMEDIATE
    # transactions take the write lock up front instead of failing half-way with "locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every request runs in a fresh thread, so persistent connections (CONN_MAX_AGE)
    # would leak one per request; a psycopg pool per process reuses them instead.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    _pg_options = DATABASES["default"].setdefault("OPTIONS", {})
    DB_CONNECT_TIMEOUT = env.int("DB_CONNECT_TIMEOUT", default=5)
    _pg_options.setdefault("connect_timeout", DB_CONNECT_TIMEOUT)
    if DB_POOL_MAX_SIZE := env.int("DB_POOL_MAX_SIZE", default=10):
        _pg_options["pool"] = {"min_size": 1, "max_size": DB_POOL_MAX_SIZE, "timeout": DB_CONNECT_TIMEOUT}
# Threads per process for the short database steps of async code (spend-cap reserve and settle,
# usage records) so that concurrent LLM calls do not queue on one thread (core.db_threads).
DB_STEP_THREADS = env.int("DB_STEP_THREADS", default=4)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
# The tenant model, referenced by string like AUTH_USER_MODEL so that `core` imports no app.
TENANT_MODEL = "accounts.Organization"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Redis: cache, channel layer, broker -------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")

if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="platform"),
            # An unreachable Redis must fail a request (or /health) fast, not hang it. One pool
            # per process (not one per request context: see core.redis_pool).
            "OPTIONS": {
                "socket_connect_timeout": 2,
                "socket_timeout": 5,
                "pool_class": "core.redis_pool.SharedConnectionPool",
            },
        }
    }
    # channels_redis receives with a blocking BZPOPMIN of 5 s, and redis-py's default socket read
    # timeout is also 5 s: the read times out first and kills any stream idle for 5 s. The socket
    # timeout must stay well above the blocking pop.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 15}],
                "prefix": env.str("CHANNEL_PREFIX", default="asgi"),
            },
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Celery ------------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("in", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # One folder for both directions: every process of this machine reads and writes it.
        "data_folder_in": str(BROKER_DIR / "in"),
        "data_folder_out": str(BROKER_DIR / "in"),
        "processed_folder": str(BROKER_DIR / "processed"),
        # Exchange tables; kombu's default is ./control, i.e. wherever the process was started.
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # kombu polls the folder once a second by default, and a worker whose processes are all busy
        # waits for the next poll after each task: jobs that take milliseconds (those of documents
        # a bulk ingestion already finished) would run at one a second. Polling an empty folder
        # every 10 ms costs an idle worker about 1.5 % of a core (measured).
        "polling_interval": 0.01,
    }
    # Remote control (``celery inspect``/``control``) consumes a queue of its own that kombu's
    # filesystem transport polls by scanning every queued message's file, many times a second: with
    # thousands of jobs queued (a bulk upload) that scan took half a core.
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_TASK_IGNORE_RESULT = True  # results live on Job rows, not in a result backend
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = env.int("CELERY_TASK_TIME_LIMIT", default=30 * 60)
CELERY_TASK_SOFT_TIME_LIMIT = env.int("CELERY_TASK_SOFT_TIME_LIMIT", default=29 * 60)
CELERY_WORKER_CONCURRENCY = env.int("CELERY_CONCURRENCY", default=2)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False  # keep the JSON log format of LOGGING
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    # Hourly: forget Idempotency-Key answers older than their 24 h window.
    "purge-idempotency-records": {
        "task": "core.tasks.purge_idempotency_records",
        "schedule": crontab(minute=17),
        "options": {"expires": 55 * 60},
    },
    # Daily at 03:40: drop per-key request log rows older than API_KEY_USAGE_RETENTION_DAYS.
    "purge-api-key-usage": {
        "task": "accounts.tasks.purge_api_key_usage",
        "schedule": crontab(hour=3, minute=40),
        "options": {"expires": 23 * 3600},
    },
    # Every 6 hours: probe stored provider keys; a 401/403 clears their verified flag.
    "verify-ai-keys": {
        "task": "agents.tasks.verify_ai_keys",
        "schedule": crontab(minute=23, hour="*/6"),
        "options": {"expires": 5 * 3600},
    },
    # Every 5 minutes: chat turns left "streaming" by a web process that died are closed.
    "sweep-stale-turns": {
        "task": "chat.tasks.sweep_stale_turns",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 4 * 60},
    },
    # Every 5 minutes: jobs whose worker died mid-run are marked failed.
    "fail-stale-jobs": {
        "task": "core.tasks.fail_stale_jobs",
        "schedule": crontab(minute="*/5"),
        "options": {"expires": 4 * 60},
    },
    # Every minute: documents whose ingesting worker died (lease expired) or was never reached.
    "requeue-stale-documents": {
        "task": "knowledge.tasks.requeue_stale_documents",
        "schedule": crontab(minute="*"),
        "options": {"expires": 50},
    },
    # Every 10 minutes: summarise conversations idle for EPISODIC_IDLE_MINUTES (knowledge.memory).
    "episodic-summaries": {
        "task": "knowledge.memory.tasks.summarise_idle_conversations",
        "schedule": crontab(minute="*/10"),
        "options": {"expires": 9 * 60},
    },
    # Hourly at :05: roll the finished hour (and day) of usage records into rollups.
    "usage-rollup": {
        "task": "core.tasks.run_cron",
        "schedule": crontab(minute=5),
        "args": ["usage-rollup"],
        "options": {"expires": 55 * 60},
    },
    # Every 10 minutes: release expired cap reservations, repair drifted cap counters.
    "reconcile-budgets": {
        "task": "core.tasks.run_cron",
        "schedule": crontab(minute="*/10"),
        "args": ["reconcile-budgets"],
        "options": {"expires": 9 * 60},
    },
}

# --- Sign-in: django-allauth (pages under /accounts/, headless JSON API under /_allauth/) ---------
ACCOUNT_ADAPTER = "accounts.adapters.AccountAdapter"
SOCIALACCOUNT_ADAPTER = "accounts.adapters.SocialAccountAdapter"
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_UNIQUE_EMAIL = True
# "mandatory" makes new users confirm their address before they can sign in.
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="optional")
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_PASSWORD_CHANGE = False
ACCOUNT_EMAIL_SUBJECT_PREFIX = "[Agent Platform] "
# allauth's own login/signup/reset rate limits stay on (kept in the cache).
ACCOUNT_RATE_LIMITS = {
    "login_failed": env.str("LOGIN_RATE_LIMIT", default="10/m/ip,5/5m/key"),
}
MFA_SUPPORTED_TYPES = ["totp", "recovery_codes"]
MFA_TOTP_ISSUER = env.str("MFA_TOTP_ISSUER", default="Agent Platform")
HEADLESS_SERVE_SPECIFICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True

# Social login providers are installed only when configured, so only those show up.
SOCIALACCOUNT_PROVIDERS: dict = {}
if env.str("GOOGLE_CLIENT_ID", default=""):
    INSTALLED_APPS.append("allauth.socialaccount.providers.google")
    SOCIALACCOUNT_PROVIDERS["google"] = {
        "APPS": [{"client_id": env.str("GOOGLE_CLIENT_ID"), "secret": env.str("GOOGLE_CLIENT_SECRET")}],
        "SCOPE": ["profile", "email"],
    }
if env.str("MICROSOFT_CLIENT_ID", default=""):
    INSTALLED_APPS.append("allauth.socialaccount.providers.microsoft")
    SOCIALACCOUNT_PROVIDERS["microsoft"] = {
        "APPS": [
            {
                "client_id": env.str("MICROSOFT_CLIENT_ID"),
                "secret": env.str("MICROSOFT_CLIENT_SECRET"),
                "settings": {"tenant": env.str("MICROSOFT_TENANT", default="common")},
            }
        ]
    }
if env.str("GITHUB_CLIENT_ID", default=""):
    INSTALLED_APPS.append("allauth.socialaccount.providers.github")
    SOCIALACCOUNT_PROVIDERS["github"] = {
        "APPS": [{"client_id": env.str("GITHUB_CLIENT_ID"), "secret": env.str("GITHUB_CLIENT_SECRET")}],
        "SCOPE": ["user:email"],
    }
if env.str("OIDC_CLIENT_ID", default=""):
    INSTALLED_APPS.append("allauth.socialaccount.providers.openid_connect")
    SOCIALACCOUNT_PROVIDERS["openid_connect"] = {
        "APPS": [
            {
                "provider_id": "oidc",
                "name": env.str("OIDC_NAME", default="Single sign-on"),
                "client_id": env.str("OIDC_CLIENT_ID"),
                "secret": env.str("OIDC_CLIENT_SECRET"),
                "settings": {"server_url": env.str("OIDC_SERVER_URL")},
            }
        ]
    }

# First owner created by `make run` when both are set and the platform is not set up yet.
ADMIN_EMAIL = env.str("ADMIN_EMAIL", default="")
ADMIN_PASSWORD = env.str("ADMIN_PASSWORD", default="")
ADMIN_ORG_NAME = env.str("ADMIN_ORG_NAME", default="My organisation")

# --- Internationalisation ----------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Static files ------------------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Serve straight from the apps' and project's static folders: no collectstatic step needed.
SERVESTATIC_USE_FINDERS = True
SERVESTATIC_AUTOREFRESH = DEBUG

# --- Security ----------------------------------------------------------------------------------
HTTPS = env.bool("HTTPS", default=False)
SECURE_SSL_REDIRECT = HTTPS
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=HTTPS)
if env.bool("TRUST_X_FORWARDED_PROTO", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^ready$", r"^metrics$"]
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

# Bodies over this answer 413; endpoints that take uploads declare their own limit.
MAX_REQUEST_BODY_BYTES = env.int("MAX_REQUEST_BODY_BYTES", default=1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = None  # the body-size middleware enforces the limit per endpoint

# --- REST framework and OpenAPI ----------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "accounts.authentication.ApiKeyAuthentication",
        "accounts.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_CLASSES": ["core.throttling.CallerRateThrottle"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "core.errors.handlers.api_exception_handler",
    # Proxies in front of the platform whose X-Forwarded-For hops to trust for client IPs.
    "NUM_PROXIES": env.int("NUM_PROXIES", default=0),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
if DEBUG:
    REST_FRAMEWORK["DEFAULT_RENDERER_CLASSES"].append("rest_framework.renderers.BrowsableAPIRenderer")

SPECTACULAR_SETTINGS = {
    "TITLE": "Agent Platform API",
    "DESCRIPTION": (
        "Multi-tenant AI agent platform. Errors use the envelope "
        '`{"error": {"code", "message", "details"}}`; lists are `{items, total, limit, offset}`.'
    ),
    "VERSION": PLATFORM_VERSION,
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Requests per window, per API key, signed-in user or client IP ("N/second|minute|hour|day").
RATE_LIMITS = {
    "key": env.str("RATE_LIMIT_KEY", default="1200/minute"),
    "user": env.str("RATE_LIMIT_USER", default="600/minute"),
    "anon": env.str("RATE_LIMIT_ANON", default="120/minute"),
}
RATE_LIMIT_ENABLED = env.bool("RATE_LIMIT_ENABLED", default=True)

IDEMPOTENCY_TTL_HOURS = 24
API_KEY_USAGE_RETENTION_DAYS = env.int("API_KEY_USAGE_RETENTION_DAYS", default=30)
# Longest life of a cached API-key lookup; any change to keys, members, users or orgs ends it
# at once anyway (accounts/auth_cache.py). 0 turns the cache off.
AUTH_CACHE_SECONDS = env.int("AUTH_CACHE_SECONDS", default=30)
AGENT_CACHE_SECONDS = env.int("AGENT_CACHE_SECONDS", default=30)

# Fernet keys for secrets stored encrypted (comma list: the first encrypts, all decrypt). Empty:
# one key is generated into var/encryption_keys. Rotate with `manage.py rotate_encryption_keys`.
SECRET_ENCRYPTION_KEYS = env.list("SECRET_ENCRYPTION_KEYS", default=[])
# Hosts (host, host:port or CIDR) that user-supplied URLs may reach although they are private,
# loopback or link-local, e.g. a local Ollama: "127.0.0.1,localhost,10.0.0.0/8".
OUTBOUND_ALLOWED_HOSTS = env.list("OUTBOUND_ALLOWED_HOSTS", default=[])
OUTBOUND_CONNECT_TIMEOUT = env.float("OUTBOUND_CONNECT_TIMEOUT", default=5.0)
OUTBOUND_READ_TIMEOUT = env.float("OUTBOUND_READ_TIMEOUT", default=60.0)

# --- LLM providers ------------------------------------------------------------------------------
# The platform default provider, used when neither the user, the agent nor the org has one.
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
# Retries of one provider on 429/5xx/timeouts (exponential backoff from the base, honouring
# Retry-After) before the choke point fails over to the org's next provider.
LLM_MAX_RETRIES = env.int("LLM_MAX_RETRIES", default=2)
LLM_RETRY_BASE_SECONDS = env.float("LLM_RETRY_BASE_SECONDS", default=0.5)
# Model used when neither the call, the agent nor the org names one.
LLM_DEFAULT_MODEL = env.str("LLM_DEFAULT_MODEL", default="gpt-4o-mini")
LLM_EMBEDDING_MODEL = env.str("LLM_EMBEDDING_MODEL", default="text-embedding-3-small")
# Models of /api/v1/ai when the caller names none: speech to text, text to speech, and image
# extraction (empty: the org's chat model, as for any completion).
LLM_TRANSCRIBE_MODEL = env.str("LLM_TRANSCRIBE_MODEL", default="whisper-1")
LLM_TTS_MODEL = env.str("LLM_TTS_MODEL", default="tts-1")
LLM_VISION_MODEL = env.str("LLM_VISION_MODEL", default="")
# Seconds provider resolution is cached per process (saves of providers and AI configs clear it).
LLM_RESOLVE_CACHE_SECONDS = env.int("LLM_RESOLVE_CACHE_SECONDS", default=5)
LLM_RESOLVE_STALE_SECONDS = env.int("LLM_RESOLVE_STALE_SECONDS", default=30)
# An agent without a heartbeat for this long shows offline.
AGENT_OFFLINE_AFTER = env.int("AGENT_OFFLINE_AFTER", default=300)
# /v1/chat/completions and /v1/responses may name a provider model (MEMBER+, not agent keys).
OPENAI_RAW_MODELS = env.bool("OPENAI_RAW_MODELS", default=True)
# Requests that start streams do their work before the model call a few at a time, in arrival
# order (core.admission): slots at once (0: no gate), and how long one may hold its slot at most.
STREAM_ADMISSION_SLOTS = env.int("STREAM_ADMISSION_SLOTS", default=2)
STREAM_ADMISSION_HOLD_MS = env.float("STREAM_ADMISSION_HOLD_MS", default=5.0)
STREAM_ADMISSION_MAX_WAIT_MS = env.float("STREAM_ADMISSION_MAX_WAIT_MS", default=100.0)
# bench/stream_fanout.py only: an upstream URL mounts a bare relay at /v1/_bench/relay/… (never in prod).
BENCH_RELAY_UPSTREAM = env.str("BENCH_RELAY_UPSTREAM", default="")

# --- Realtime and jobs -------------------------------------------------------------------------
# How often a stream re-reads the database when no push can reach it (in-memory channel layer).
STREAM_POLL_SECONDS = env.float("STREAM_POLL_SECONDS", default=0.5 if not REDIS_URL else 15.0)
SSE_KEEPALIVE_SECONDS = env.float("SSE_KEEPALIVE_SECONDS", default=15.0)
# Chat turns: their opening rows and event log commit without waiting for the WAL flush.
CHAT_ASYNC_COMMIT = env.bool("CHAT_ASYNC_COMMIT", default=True)
# WebSocket RPC (/ws): the largest frame a client may send (larger answers ERR_FRAME_TOO_LARGE), and
# how many requests and streaming turns one socket may have running (more: ERR_TOO_MANY_REQUESTS).
WS_MAX_FRAME_BYTES = env.int("WS_MAX_FRAME_BYTES", default=256 * 1024)
WS_MAX_IN_FLIGHT = env.int("WS_MAX_IN_FLIGHT", default=8)
JOB_STALE_AFTER_SECONDS = env.int("JOB_STALE_AFTER_SECONDS", default=CELERY_TASK_TIME_LIMIT + 60)

# --- Knowledge ---------------------------------------------------------------------------------
# Uploaded documents live in Django's default storage, under MEDIA_ROOT (inside VAR_DIR by default).
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
MEDIA_URL = "/media/"
# A worker holds a document this long; a document whose lease ran out is picked up again.
KNOWLEDGE_LEASE_SECONDS = env.int("KNOWLEDGE_LEASE_SECONDS", default=600)
KNOWLEDGE_MAX_ATTEMPTS = env.int("KNOWLEDGE_MAX_ATTEMPTS", default=3)
# A worker that takes a document also takes the pending documents of the same KB (a bulk upload),
# claimed a few at a time as it goes (other workers claim from the same queue), up to this many in all
# (0: no count limit; a quarter of the task's soft time limit bounds it anyway), and ingests them in
# waves whose embedding overlaps the next documents' parsing; 1 ingests every document on its own.
# No count limit by default: the jobs of the documents a bulk took stay queued ahead of the rest of
# the upload, and a bulk that stopped early would leave its worker running those (no-op) jobs before
# it reached a pending document again.
KNOWLEDGE_INGEST_BULK_DOCS = env.int("KNOWLEDGE_INGEST_BULK_DOCS", default=0)
# Inputs per embedding call (provider) or encoder batch (local model).
KNOWLEDGE_EMBED_BATCH = env.int("KNOWLEDGE_EMBED_BATCH", default=64)
# Local model: torch threads per process (0 = every core; 1 by default, since web and worker share
# the cores and spinning torch threads slow each other down ~10x) and int8 dynamic quantisation
# (about 2x faster, but vectors drift from the float model's: cosine ~0.93, so off by default).
KNOWLEDGE_LOCAL_THREADS = env.int("KNOWLEDGE_LOCAL_THREADS", default=1)
KNOWLEDGE_LOCAL_QUANTIZE = env.bool("KNOWLEDGE_LOCAL_QUANTIZE", default=False)
# Local model: texts per encoder batch (texts are sorted by length first, so small batches pad
# little) and copies of the model that encode at once (each on one core when the threads are 1;
# bulk ingestion keeps that many waves encoding). One copy by default: on the 2-vCPU development
# machine a second copy encoded no faster (its vCPUs share the matrix units) and cost more CPU.
KNOWLEDGE_LOCAL_BATCH = env.int("KNOWLEDGE_LOCAL_BATCH", default=16)
KNOWLEDGE_LOCAL_ENCODERS = env.int("KNOWLEDGE_LOCAL_ENCODERS", default=1)
# Local model arithmetic: auto (bfloat16 where the CPU has native bf16 units, ~3x faster at cosine
# > 0.9999 to float32; else fp32), fp32, or bf16.
KNOWLEDGE_LOCAL_PRECISION = env.str("KNOWLEDGE_LOCAL_PRECISION", default="auto")
# BLAS threads of the vector side of search (numpy's matrix-vector product; 0 = the library's default,
# every core). 1 by default: hybrid search ranks vectors while the database ranks by keyword, and a
# second BLAS thread fought the database for its core (hybrid p50 57 -> 44 ms over 100k chunks).
KNOWLEDGE_VECTOR_THREADS = env.int("KNOWLEDGE_VECTOR_THREADS", default=1)
# Reciprocal rank fusion of hybrid search: k and the weight of each side.
KNOWLEDGE_RRF_K = env.int("KNOWLEDGE_RRF_K", default=60)
KNOWLEDGE_RRF_KEYWORD_WEIGHT = env.float("KNOWLEDGE_RRF_KEYWORD_WEIGHT", default=1.0)
KNOWLEDGE_RRF_VECTOR_WEIGHT = env.float("KNOWLEDGE_RRF_VECTOR_WEIGHT", default=1.0)
# Agent memory: a conversation idle this long gets (or refreshes) its episodic summary.
EPISODIC_IDLE_MINUTES = env.int("EPISODIC_IDLE_MINUTES", default=30)

# --- Operations --------------------------------------------------------------------------------
METRICS_BASIC_AUTH = env.str("METRICS_BASIC_AUTH", default="")
HEALTH_CHECK_TIMEOUT_SECONDS = env.float("HEALTH_CHECK_TIMEOUT_SECONDS", default=2.0)

EMAIL_CONFIG = env.email_url("EMAIL_URL", default="consolemail://")
vars().update(EMAIL_CONFIG)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="platform@localhost")

# --- Billing: usage metering, spend caps, credits, plans, payments -------------------------------
# Worst-case output tokens reserved against spend caps when a call sets no max_tokens.
USAGE_CAP_DEFAULT_MAX_OUTPUT_TOKENS = env.int("USAGE_CAP_DEFAULT_MAX_OUTPUT_TOKENS", default=4096)
# A reservation not settled by then (its worker died) is released by the reconcile-budgets cron.
USAGE_CAP_RESERVATION_SECONDS = env.int("USAGE_CAP_RESERVATION_SECONDS", default=900)
# Seconds an org's policies/plan/price overrides are cached for the LLM guard (changes drop it).
USAGE_CAP_CACHE_SECONDS = env.int("USAGE_CAP_CACHE_SECONDS", default=30)
# ... and in each process for this long in front of that cache (no round trip per LLM call)
USAGE_CAP_LOCAL_SECONDS = env.float("USAGE_CAP_LOCAL_SECONDS", default=1.0)
# ... and, on a server loop, answered this much longer while a thread fetches the fresh one
USAGE_CAP_LOCAL_STALE_SECONDS = env.float("USAGE_CAP_LOCAL_STALE_SECONDS", default=10.0)
# Spend-cap leases (billing/services/leases.py): room for this many calls reserved at once and
# handed out from memory (0 or 1: a database reservation per call); flushed every FLUSH seconds,
# returned after IDLE seconds unused; a dead process's lease expires after EXPIRY seconds.
USAGE_CAP_LEASE_CALLS = env.int("USAGE_CAP_LEASE_CALLS", default=8)
USAGE_CAP_LEASE_MAX_CALLS = env.int("USAGE_CAP_LEASE_MAX_CALLS", default=64)  # grown when one runs full
USAGE_CAP_LEASE_FLUSH_SECONDS = env.float("USAGE_CAP_LEASE_FLUSH_SECONDS", default=0.2)
USAGE_CAP_LEASE_IDLE_SECONDS = env.float("USAGE_CAP_LEASE_IDLE_SECONDS", default=10.0)
USAGE_CAP_LEASE_EXPIRY_SECONDS = env.int("USAGE_CAP_LEASE_EXPIRY_SECONDS", default=60)
# Also log allowed calls (not only blocks) in /api/v1/usage-caps/events.
USAGE_CAP_LOG_ALLOWED = env.bool("USAGE_CAP_LOG_ALLOWED", default=True)
# Cap counter transactions skip the WAL flush wait on PostgreSQL (reconcile-budgets repairs a crash).
USAGE_CAP_ASYNC_COMMIT = env.bool("USAGE_CAP_ASYNC_COMMIT", default=True)
# Credits per US dollar of LLM cost for orgs on a credit plan (100: one credit is one cent).
CREDITS_PER_USD = env.int("CREDITS_PER_USD", default=100)
CREDITS_SIGNUP_BONUS = env.int("CREDITS_SIGNUP_BONUS", default=0)
# Auto top-up charges a saved card at most once per this many seconds (a declined card waits).
CREDITS_AUTO_TOPUP_COOLDOWN_SECONDS = env.int("CREDITS_AUTO_TOPUP_COOLDOWN_SECONDS", default=600)
# Plan of orgs without a subscription (billing/data/plans.json; empty: the file's default).
BILLING_DEFAULT_PLAN = env.str("BILLING_DEFAULT_PLAN", default="")
# Stripe: checkout answers 501 without the secret key; the webhook needs the signing secret.
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="")
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="")
STRIPE_PRICE_PRO = env.str("STRIPE_PRICE_PRO", default="")
STRIPE_PRICE_TEAM = env.str("STRIPE_PRICE_TEAM", default="")
STRIPE_API_BASE = env.str("STRIPE_API_BASE", default="")
# Secret that POST /api/cron/<job> callers present (empty: the endpoint answers 401).
CRON_SECRET = env.str("CRON_SECRET", default="")
SPECTACULAR_SETTINGS.setdefault("ENUM_NAME_OVERRIDES", {}).update(
    {
        "KnowledgeDocumentStatusEnum": [
            ("pending", "Pending"),
            ("processing", "Processing"),
            ("ready", "Ready"),
            ("failed", "Failed"),
        ],
    }
)

# --- Logging: one JSON object per line ---------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json")  # "json" or "text"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "core.logging.RequestContextFilter"}},
    "formatters": {
        "json": {
            "()": "core.logging.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": LOG_FORMAT,
            "filters": ["request_context"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # Request lines come from core.middleware; Django's own 4xx warnings would repeat them.
        "django.request": {"level": "ERROR", "propagate": True},
        "django.server": {"level": "WARNING", "propagate": True},
        "daphne": {"level": "WARNING", "propagate": True},
        # httpx logs every request it sends at INFO: a line per LLM call, stream and webhook, which
        # the usage events already record; its warnings and errors still show.
        "httpx": {"level": "WARNING", "propagate": True},
    },
}
