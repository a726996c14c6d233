"""Routes of `accounts` under /api/v1/."""

from . import activity, keys, me, orgs, setup

urlpatterns = [
    *setup.urlpatterns,
    *me.urlpatterns,
    *orgs.urlpatterns,
    *keys.urlpatterns,
    *activity.urlpatterns,
]
