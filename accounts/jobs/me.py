"""Job handler: the GDPR export of a user's data.

The handler gathers the sections (one JSON document per file of the archive) into the job's
result; ``GET /api/v1/me/export?job=<id>`` zips them for download. Keeping them on the Job row
means any web process can serve the archive, whichever worker built it.
"""

from __future__ import annotations

from typing import Any

from accounts.selectors.me import USER_EXPORT_JOB, user_export_data
from core.errors import ApplicationError
from core.registries import register_job


@register_job(USER_EXPORT_JOB)
def user_export(job, reporter) -> dict[str, Any]:
    """Collect everything the platform holds about the job's actor."""
    user = job.actor
    if user is None:
        raise ApplicationError("The account no longer exists.", code="ERR_USER_GONE")
    reporter.progress(10, "Collecting your data")
    files = user_export_data(user=user)
    reporter.progress(90, "Packing the archive")
    return {"files": files, "file_names": sorted(files)}
