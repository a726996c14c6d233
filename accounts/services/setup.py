"""First-run setup: the first owner and the first org, exactly once.

Three doors lead here: ``POST /api/v1/auth/setup`` (the browser's first call), ``manage.py
bootstrap`` (scripted installs; may run again and reuses what exists) and ``manage.py
ensure_admin`` (``make run`` with ``ADMIN_EMAIL``/``ADMIN_PASSWORD``). All of them serialise on
the locked ``PlatformSettings`` row, so concurrent callers cannot create two first owners.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import password_validation
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone

from accounts.models import Membership, Organization, Role, User
from accounts.services.audit import audit_record
from accounts.services.signup import platform_settings_get, platform_settings_lock
from core.errors import ConflictError, ValidationError


def platform_is_bootstrapped() -> bool:
    """Whether the first owner exists (setup or bootstrap has run)."""
    return platform_settings_get().bootstrapped_at is not None


def _normalised_email(email: str) -> str:
    return User.objects.normalize_email((email or "").strip()).lower()


def _check_password(password: str, user: User) -> None:
    """Django's password validators, as field errors of ``password``."""
    try:
        password_validation.validate_password(password, user=user)
    except DjangoValidationError as exc:
        raise ValidationError(
            "The password is too weak.", details={"fields": {"password": list(exc.messages)}}
        ) from exc


def _check_org_name(org_name: str) -> str:
    name = (org_name or "").strip()
    if not name or len(name) > Organization._meta.get_field("name").max_length:
        raise ValidationError(
            "The organisation needs a name of at most 200 characters.",
            details={"fields": {"org_name": ["Give a name of 1 to 200 characters."]}},
        )
    return name


def _full_clean(user: User) -> None:
    """The model's own checks (address format, lengths) as field errors."""
    try:
        user.full_clean()
    except DjangoValidationError as exc:
        raise ValidationError("The owner is not valid.", details={"fields": exc.message_dict}) from exc


def _make_platform_admin(user: User) -> None:
    user.is_staff = True
    user.is_superuser = True
    user.is_active = True


@transaction.atomic
def platform_setup(*, email: str, password: str, org_name: str) -> tuple[User, Organization]:
    """Create the first owner (platform staff and superuser) and their org; only once.

    Raises 409 ``ERR_ALREADY_SET_UP`` once the platform is bootstrapped, and 400 with field errors
    for a weak password, a taken address or a bad org name.
    """
    from accounts.services.orgs import org_create

    row = platform_settings_lock()
    if row.bootstrapped_at is not None:
        raise ConflictError("The platform is already set up.", code="ERR_ALREADY_SET_UP")
    email = _normalised_email(email)
    name = _check_org_name(org_name)
    if User.objects.filter(email__iexact=email).exists():
        raise ValidationError(
            "A user with this email already exists.",
            details={"fields": {"email": ["A user with this email already exists."]}},
        )
    user = User(email=email)
    _make_platform_admin(user)
    _check_password(password, user)
    user.set_password(password)
    _full_clean(user)
    user.save()
    org = org_create(name=name, owner=user, actor=user)
    row.bootstrapped_at = timezone.now()
    row.full_clean()
    row.save()
    audit_record(
        org=org,
        actor=user,
        action="platform.setup",
        entity_type="platform_settings",
        entity_id=row.pk,
        after={"owner": user.email, "org": org.name, "org_id": str(org.pk)},
    )
    return user, org


@transaction.atomic
def platform_bootstrap(*, email: str, password: str, org_name: str) -> tuple[User, Organization]:
    """Scripted setup that may run again: create or reuse the user and the org.

    The user becomes (or stays) staff and superuser with the given password; the org is the one
    of that name the user already owns, else a new one; the platform is marked bootstrapped.
    """
    from accounts.services.orgs import org_create

    row = platform_settings_lock()
    email = _normalised_email(email)
    name = _check_org_name(org_name)
    user = User.objects.filter(email__iexact=email).first()
    created_user = user is None
    if user is None:
        user = User(email=email)
    before = None if created_user else {"is_staff": user.is_staff, "is_superuser": user.is_superuser}
    _make_platform_admin(user)
    _check_password(password, user)
    user.set_password(password)
    _full_clean(user)
    user.save()
    membership = (
        Membership.objects.select_related("org")
        .filter(user=user, role=Role.OWNER, org__name=name, org__deletion_requested_at__isnull=True)
        .order_by("created_at")
        .first()
    )
    org = membership.org if membership is not None else org_create(name=name, owner=user, actor=user)
    first_time = row.bootstrapped_at is None
    if first_time:
        row.bootstrapped_at = timezone.now()
        row.full_clean()
        row.save()
    audit_record(
        org=org,
        actor=user,
        action="platform.bootstrap",
        entity_type="platform_settings",
        entity_id=row.pk,
        before=before,
        after={
            "owner": user.email,
            "org": org.name,
            "org_id": str(org.pk),
            "created_user": created_user,
            "created_org": membership is None,
            "first_time": first_time,
        },
    )
    return user, org


def platform_setup_status() -> dict[str, Any]:
    """What a first screen needs: set up yet? how may people sign up and sign in?"""
    from allauth.mfa import app_settings as mfa_settings
    from allauth.socialaccount.adapter import get_adapter as get_social_adapter

    methods = ["email"]
    for provider in get_social_adapter().list_providers(None):
        if provider.id not in methods:
            methods.append(provider.id)
    row = platform_settings_get()
    return {
        "bootstrapped": row.bootstrapped_at is not None,
        "signup_mode": row.signup_mode,
        "login_methods": methods,
        "mfa": list(mfa_settings.SUPPORTED_TYPES),
    }
