"""Job handler: deleting an organisation and all its data.

``DELETE /api/v1/org`` marks the org and starts this job (with no org of its own, so the job row
survives the cascade); the work itself is ``accounts.services.orgs.org_purge``.
"""

from __future__ import annotations

from typing import Any

from accounts.services.orgs import ORG_DELETE_JOB_KIND, org_purge
from core.errors import ValidationError
from core.registries import register_job


@register_job(ORG_DELETE_JOB_KIND)
def org_delete_job(job: Any, reporter: Any) -> dict[str, Any]:
    """Purge the org named in the payload, reporting progress per table."""
    org_id = (job.payload or {}).get("org_id")
    if not org_id:
        raise ValidationError("The job payload names no org.", code="ERR_JOB_PAYLOAD")
    return org_purge(org_id=org_id, progress=reporter.progress, actor=job.actor)
