"""Reads behind authentication: the membership a request acts through, and key lookup."""

from __future__ import annotations

import threading

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import OuterRef, QuerySet, Subquery
from django.db.models.query import get_related_populators

from accounts import auth_cache
from accounts.models import ApiKey, Membership, User


def membership_for_request(*, user: User, org_id: str | None = None) -> Membership | None:
    """The membership a request acts through: the named org, else the active org, else the first."""
    memberships = Membership.objects.select_related("org").filter(
        user=user, org__deletion_requested_at__isnull=True
    )
    if org_id:
        return memberships.filter(org_id=org_id).first()
    if user.active_org_id:
        found = memberships.filter(org_id=user.active_org_id).first()
        if found is not None:
            return found
    return memberships.first()


def _api_key_auth_queryset(public_id: str) -> QuerySet[ApiKey]:
    """The key with its org, its user and the user's current role in the org (``member_role``)."""
    member_role = Membership.objects.filter(org_id=OuterRef("org_id"), user_id=OuterRef("user_id")).values(
        "role"
    )[:1]
    return (
        ApiKey.objects.select_related("org", "user")
        .annotate(member_role=Subquery(member_role))
        .filter(public_id=public_id, deleted_at__isnull=True)
        .order_by()
    )


class _CompiledKeyLookup:
    """``_api_key_auth_queryset`` turned into SQL once per database, then only run and hydrated.

    Building the SQL of that queryset costs the ORM ~1.5-2 ms, several times what the indexed
    query itself costs, and every keyed request paid it. The hydration below is what Django's
    ModelIterable does for a ``select_related`` row.
    """

    _MARK = "\x00public-id\x00"

    def __init__(self, using: str) -> None:
        compiler = _api_key_auth_queryset(self._MARK).query.get_compiler(using)
        self.sql, params = compiler.as_sql()
        self.params = list(params)
        self.slot = self.params.index(self._MARK)
        self.compiler = compiler
        klass_info = compiler.klass_info
        self.start, self.end = klass_info["select_fields"][0], klass_info["select_fields"][-1] + 1
        self.init_list = [column[0].target.attname for column in compiler.select[self.start : self.end]]
        self.populators = get_related_populators(klass_info, compiler.select, using)
        self.annotations = dict(compiler.annotation_col_map)
        self.using = using

    def run(self, public_id: str) -> ApiKey | None:
        params = list(self.params)
        params[self.slot] = public_id
        with connections[self.using].cursor() as cursor:
            cursor.execute(self.sql, params)
            rows = cursor.fetchmany(1)
        if not rows:
            return None
        row = next(iter(self.compiler.results_iter(results=[rows])))  # applies the db converters
        key = ApiKey.from_db(self.using, self.init_list, row[self.start : self.end])
        for populator in self.populators:
            populator.populate(row, key)
        for name, position in self.annotations.items():
            setattr(key, name, row[position])
        return key


_compiled: dict[str, _CompiledKeyLookup] = {}
_compile_lock = threading.Lock()


def api_key_for_auth(*, public_id: str) -> ApiKey | None:
    """The key row with its org, user and the user's current role in that org.

    A cache hit (see ``accounts.auth_cache``), else one indexed query. ``member_role`` is None when
    the key's user is no longer a member of the key's org.
    """
    cached, generation = auth_cache.cached_lookup(public_id)
    if cached is not None:
        return cached
    lookup = _compiled.get(DEFAULT_DB_ALIAS)
    if lookup is None:
        with _compile_lock:
            lookup = _compiled.setdefault(DEFAULT_DB_ALIAS, _CompiledKeyLookup(DEFAULT_DB_ALIAS))
    key = lookup.run(public_id)
    if key is not None:
        auth_cache.store(public_id, key, generation)
    return key
