"""Background job handlers of `accounts` (registered with ``core.registries.register_job``).
Imported from ``AccountsConfig.ready()`` so that web and worker processes both know them."""

from . import me, orgs  # noqa: F401
