"""API-key authentication on the event loop, for the views on the path of a stream's first token.

A DRF view is synchronous: under ASGI it runs in a thread, and the hop there and back (and the
GIL it then shares with the loop) is most of what such a view adds before a stream's first token
when tens of streams start at once (``bench/stream_fanout.py``). Views that can serve a request
without blocking (``chat.api.own_thread``) first ask :func:`aauthenticate` here.

It reads what ``ApiKeyAuthentication`` would read, the key's cached lookup and generation, and
counts the request against its key's rate limit (with the keys other apps ride along,
``core.aredis.ride_with_key_reads``), in one round trip on the loop (an asyncio Redis
client; the in-memory cache directly), then applies the same checks (``key_refusal``, ``X-Org-Id``,
the key limit) and stamps the key's ``last_used_at`` as often as the thread would (once a minute,
on a pool thread it does not wait for). A cache miss (the entry expired, or a change to some key,
member or user invalidated every entry) is read on a pool thread, once for all the requests of a
burst that ask for the same key at that moment (``core.db_threads.run_db_shared``), and stored
again: under load a burst does not fall to the view's thread as a whole every time the entry
expires. It answers the key only when all of that is settled: an unknown key, any refusal or any
other cache answers None, and the view runs as usual in its thread, which reads the database,
records the security event and answers the error exactly as before.
The request is counted once either way (the thread's throttle takes the count made here).
"""

from __future__ import annotations

import copy

from django.utils import timezone

from accounts import auth_cache, keys
from accounts.authentication import (
    _set_tenant,
    claim_last_used_stamp,
    effective_role,
    key_refusal,
    write_last_used,
)
from accounts.models import ApiKey
from accounts.selectors.auth import api_key_for_auth
from core import aredis, context, db_threads, throttling


async def aauthenticate(request, view) -> ApiKey | None:
    """The API key of ``request`` (a Django request) for ``view`` (class or instance), when the
    loop can settle it; None when the view must run as usual (see the module doc)."""
    scheme, _, raw = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        return None
    parsed = keys.parse_key(raw.strip())
    if parsed is None:
        return None
    counter = throttling.key_counter_for(view, parsed.public_id)
    lookup = auth_cache.lookup_keys(parsed.public_id)
    read = await aredis.cache_get_many_and_count(lookup + aredis.riders(), counter)
    if read is None:
        return None
    found, count = read
    request.cache_reads = found  # riders included: the view adopts them (``core.aredis``)
    if counter is not None:
        throttling.remember_count(request, counter, count)
    key, _generation = auth_cache.lookup_from(found, parsed.public_id)
    if key is None:  # expired or invalidated: one read for the whole burst that asks for it now
        shared = await db_threads.run_db_shared(
            ("api-key", parsed.public_id), api_key_for_auth, public_id=parsed.public_id
        )
        key = copy.deepcopy(shared)  # each request its own rows, as a cache hit gives it
    now = timezone.now()
    if key is None or key_refusal(parsed, key, now) is not None:
        return None
    requested_org = request.headers.get("X-Org-Id")
    if requested_org and requested_org != str(key.org_id):
        return None
    if count is not None and not throttling.key_limit_allows(view, count):
        return None
    if claim_last_used_stamp(key):  # once a minute: on a pool thread, not waited for
        db_threads.submit_db(write_last_used, key.pk, now, context.current().ip)
    return key


def bind(request, key: ApiKey) -> None:
    """Authenticate the DRF ``request`` as ``key``, as ``ApiKeyAuthentication`` does."""
    request.user = key.user
    request.auth = key
    context.note_api_key(key.pk)
    _set_tenant(request, org=key.org, role=effective_role(key), api_key=key)
