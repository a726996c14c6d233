"""Secrets at rest: provider and personal keys are Fernet tokens in their columns, readable under
any configured key, and ``rotate_encryption_keys`` re-encrypts every encrypted column under the
newest key so the old one can be dropped."""

from __future__ import annotations

from io import StringIO

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection

from agents.models import PersonalAIConfig, Provider
from core import crypto
from core.management.commands.rotate_encryption_keys import encrypted_columns
from tests.agents.test_providers import make_provider
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
SECRET = "sk-at-rest-0123456789abcdefghijklmnopqrstuv"


@pytest.fixture
def use_keys(settings):
    """Switch SECRET_ENCRYPTION_KEYS for the test (and forget cached keys either way)."""

    def switch(*keys):
        settings.SECRET_ENCRYPTION_KEYS = list(keys)
        crypto.reset_keys()

    yield switch
    crypto.reset_keys()


def raw_column(table, column, pk):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column} FROM {table} WHERE id = %s", [pk])  # noqa: S608 - test constants
        return cursor.fetchone()[0]


def read_provider_key(pk):
    return Provider.objects.get(pk=pk).api_key


# --- at rest ---------------------------------------------------------------------------------------------


def test_the_column_holds_a_fernet_token_not_the_key(org, use_keys):
    use_keys(KEY_A)
    provider = make_provider(org, api_key=SECRET)
    raw = raw_column("agents_provider", "api_key", provider.pk)
    assert raw.startswith("gAAAA") and SECRET not in raw
    assert Fernet(KEY_A.encode()).decrypt(raw.encode()).decode() == SECRET
    assert read_provider_key(provider.pk) == SECRET


def test_empty_values_stay_empty(org, use_keys):
    use_keys(KEY_A)
    provider = make_provider(org, api_key="")
    assert raw_column("agents_provider", "api_key", provider.pk) == ""
    assert read_provider_key(provider.pk) == ""


def test_every_key_in_the_list_decrypts_but_only_the_first_encrypts(org, use_keys):
    use_keys(KEY_A)
    provider = make_provider(org, api_key=SECRET)
    use_keys(KEY_B, KEY_A)
    assert read_provider_key(provider.pk) == SECRET
    token = crypto.encrypt("x")
    assert Fernet(KEY_B.encode()).decrypt(token.encode()) == b"x"


def test_a_value_under_a_dropped_key_cannot_be_read(org, use_keys):
    use_keys(KEY_A)
    provider = make_provider(org, api_key=SECRET)
    use_keys(KEY_B)
    with pytest.raises(crypto.DecryptionError):
        read_provider_key(provider.pk)


def test_a_malformed_key_setting_is_a_clear_configuration_error(use_keys):
    use_keys("not-a-fernet-key")
    with pytest.raises(ImproperlyConfigured, match="entry 1"):
        crypto.encrypt("x")


def test_mask_shows_little_of_any_secret():
    assert crypto.mask("") == ""
    assert crypto.mask("short") == "…"
    assert crypto.mask("abcdefghij") == "…ij"
    assert crypto.mask("sk-0123456789abcdef") == "sk-…cdef"


# --- rotation -----------------------------------------------------------------------------------------------


def test_rotation_command_finds_every_encrypted_column():
    found = {label for label, _table, _pk, _column in encrypted_columns()}
    assert {
        "agents.Provider.api_key",
        "agents.Provider.extra_headers",
        "agents.PersonalAIConfig.api_key",
    } <= found


def test_rotation_re_encrypts_everything_under_the_newest_key(org, use_keys):
    use_keys(KEY_A)
    providers = [make_provider(org, api_key=f"{SECRET}-{n}", extra_headers='{"X-A": "1"}') for n in range(5)]
    blank = make_provider(org, api_key="")
    personal = PersonalAIConfig.objects.create(user=UserFactory(), api_key=SECRET)
    before = raw_column("agents_provider", "api_key", providers[0].pk)

    use_keys(KEY_B, KEY_A)
    out = StringIO()
    call_command("rotate_encryption_keys", "--batch-size", "2", stdout=out)
    report = out.getvalue()
    assert "agents.Provider.api_key: 5 re-encrypted, 0 already current" in report
    assert "agents.Provider.extra_headers: 5 re-encrypted" in report
    assert "agents.PersonalAIConfig.api_key: 1 re-encrypted" in report
    assert raw_column("agents_provider", "api_key", providers[0].pk) != before

    use_keys(KEY_B)  # the old key is gone: everything still reads
    for n, provider in enumerate(providers):
        provider = Provider.objects.get(pk=provider.pk)
        assert provider.api_key == f"{SECRET}-{n}"
        assert provider.extra_headers == '{"X-A": "1"}'
    assert Provider.objects.get(pk=blank.pk).api_key == ""
    assert PersonalAIConfig.objects.get(pk=personal.pk).api_key == SECRET


def test_rotation_is_idempotent(org, use_keys):
    use_keys(KEY_A)
    provider = make_provider(org, api_key=SECRET)
    use_keys(KEY_B, KEY_A)
    call_command("rotate_encryption_keys", stdout=StringIO())
    token = raw_column("agents_provider", "api_key", provider.pk)
    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "agents.Provider.api_key: 0 re-encrypted, 1 already current" in out.getvalue()
    assert raw_column("agents_provider", "api_key", provider.pk) == token


def test_dry_run_changes_nothing(org, use_keys):
    use_keys(KEY_A)
    provider = make_provider(org, api_key=SECRET)
    token = raw_column("agents_provider", "api_key", provider.pk)
    use_keys(KEY_B, KEY_A)
    out = StringIO()
    call_command("rotate_encryption_keys", "--dry-run", stdout=out)
    assert "would be re-encrypted" in out.getvalue()
    assert raw_column("agents_provider", "api_key", provider.pk) == token


def test_undecryptable_values_are_reported_and_the_rest_still_rotate(org, use_keys):
    use_keys(KEY_A)
    lost = make_provider(org, api_key=SECRET)
    key_c = Fernet.generate_key().decode()
    use_keys(key_c)
    kept = make_provider(org, api_key="sk-kept-000000000000000000000")
    use_keys(KEY_B, key_c)  # KEY_A is missing: `lost` cannot be read
    with pytest.raises(CommandError, match="1 value"):
        call_command("rotate_encryption_keys", stdout=StringIO(), stderr=StringIO())
    use_keys(KEY_B)
    assert read_provider_key(kept.pk) == "sk-kept-000000000000000000000"
    assert raw_column("agents_provider", "api_key", lost.pk).startswith("gAAAA")


def test_rotation_with_nothing_stored_reports_zero(use_keys):
    use_keys(KEY_B, KEY_A)
    out = StringIO()
    call_command("rotate_encryption_keys", stdout=out)
    assert "total: 0 re-encrypted" in out.getvalue()
