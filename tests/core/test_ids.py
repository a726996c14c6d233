"""Version 7 ids (``core.ids``): the layout of RFC 9562, and the age a lookup reads off them."""

from __future__ import annotations

import time
import uuid

from core.ids import minted_seconds_ago, uuid7


def test_a_uuid7_has_version_7_the_rfc_variant_and_now_in_its_first_48_bits():
    before = time.time_ns() // 1_000_000
    value = uuid7()
    after = time.time_ns() // 1_000_000
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after
    assert uuid.UUID(str(value)) == value


def test_uuid7s_are_unique_and_sort_by_the_millisecond_they_were_minted():
    values = [uuid7() for _ in range(2000)]
    assert len(set(values)) == len(values)
    stamps = [v.int >> 80 for v in values]
    assert stamps == sorted(stamps)
    time.sleep(0.002)  # the next millisecond
    assert uuid7() > max(values)


def test_the_age_of_an_id_is_read_off_version_7_only():
    assert 0 <= minted_seconds_ago(uuid7()) < 1
    assert 0 <= minted_seconds_ago(str(uuid7())) < 1
    old = uuid.UUID(int=(uuid7().int & ~(((1 << 48) - 1) << 80)) | (1_600_000_000_000 << 80))
    assert abs(minted_seconds_ago(old) - (time.time() - 1_600_000_000)) < 5
    for other in (uuid.uuid4(), uuid.uuid1(), str(uuid.uuid4()), "not an id", None, 42):
        assert minted_seconds_ago(other) is None
