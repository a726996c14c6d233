"""Users, organisations and memberships: who someone is and which tenants they act in."""

from __future__ import annotations

import uuid

from django.contrib.auth.base_user import AbstractBaseUser, BaseUserManager
from django.contrib.auth.models import PermissionsMixin
from django.db import models
from django.utils.timezone import now


class UserManager(BaseUserManager["User"]):
    """Creates users keyed by email."""

    use_in_migrations = True

    def _create(self, email: str, password: str | None, **fields) -> User:
        if not email:
            raise ValueError("an email address is required")
        user = self.model(email=self.normalize_email(email).lower(), **fields)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email: str, password: str | None = None, **fields) -> User:
        fields.setdefault("is_staff", False)
        fields.setdefault("is_superuser", False)
        return self._create(email, password, **fields)

    def create_superuser(self, email: str, password: str | None = None, **fields) -> User:
        fields["is_staff"] = True
        fields["is_superuser"] = True
        return self._create(email, password, **fields)


class User(AbstractBaseUser, PermissionsMixin):
    """A person who signs in with an email address."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    display_name = models.CharField(max_length=150, blank=True)
    avatar_url = models.URLField(max_length=500, blank=True)
    language = models.CharField(max_length=16, default="en")
    timezone = models.CharField(max_length=64, default="UTC")
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False, help_text="May use the Django admin.")
    date_joined = models.DateTimeField(default=now)
    active_org = models.ForeignKey(
        "accounts.Organization",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="The org a session acts in when no X-Org-Id header says otherwise.",
    )

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    class Meta:
        ordering = ["email"]

    def __str__(self) -> str:
        return self.email

    def get_full_name(self) -> str:
        return self.display_name or self.email

    def get_short_name(self) -> str:
        return self.display_name or self.email.split("@")[0]


class Organization(models.Model):
    """A tenant: every org-owned row of the platform points at one."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    deletion_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="Set when deletion starts; the org is gone when its job ends."
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    """Org roles, strongest first; compare with ``Role.rank``."""

    OWNER = "OWNER", "Owner"
    ADMIN = "ADMIN", "Admin"
    MEMBER = "MEMBER", "Member"
    VIEWER = "VIEWER", "Viewer"

    @classmethod
    def rank(cls, role: str) -> int:
        return {cls.VIEWER: 1, cls.MEMBER: 2, cls.ADMIN: 3, cls.OWNER: 4}.get(role, 0)


class Membership(models.Model):
    """A user's role in one org."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["org", "user"], name="membership_org_user"),
        ]
        indexes = [models.Index(fields=["user", "org"], name="membership_user_org")]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} as {self.role}"


class Group(models.Model):
    """A named set of an org's members, for sharing and permissions."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="groups")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=500, blank=True)
    members = models.ManyToManyField(User, through="GroupMembership", related_name="org_groups")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["org", "name"], name="group_org_name")]

    def __str__(self) -> str:
        return self.name


class GroupMembership(models.Model):
    """A user in a group (the user must be a member of the group's org)."""

    group = models.ForeignKey(Group, on_delete=models.CASCADE, related_name="group_memberships")
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="group_memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "user"], name="group_member_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.group}"


class Invite(models.Model):
    """An emailed, single-use token (valid 7 days) to join an org, or to sign up at all.

    Only a SHA-256 of the token is stored; ``org`` is empty for a platform signup invitation
    (what an approved waitlist entry receives).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(
        Organization, on_delete=models.CASCADE, null=True, blank=True, related_name="invites"
    )
    email = models.EmailField()
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["org", "-created_at"], name="invite_org_created")]

    def __str__(self) -> str:
        return f"invite {self.email} to {self.org or 'the platform'}"


class SignupMode(models.TextChoices):
    OPEN = "open", "Open"
    INVITE_ONLY = "invite_only", "Invite only"
    WAITLIST = "waitlist", "Waitlist"
    CLOSED = "closed", "Closed"


class PlatformSettings(models.Model):
    """Platform-wide settings that staff change at run time (one row)."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    signup_mode = models.CharField(max_length=16, choices=SignupMode.choices, default=SignupMode.INVITE_ONLY)
    bootstrapped_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "platform settings"
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="platform_settings_singleton")]

    def __str__(self) -> str:
        return f"signup {self.signup_mode}"


class WaitlistEntry(models.Model):
    """Someone asking to join while signup is by waitlist; staff approve or reject."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=150, blank=True)
    note = models.CharField(max_length=1000, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    invite = models.ForeignKey(Invite, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")

    class Meta:
        ordering = ["created_at"]
        verbose_name_plural = "waitlist entries"
        indexes = [models.Index(fields=["status", "created_at"], name="waitlist_status_created")]

    def __str__(self) -> str:
        return f"{self.email} ({self.status})"


class ApiKey(models.Model):
    """A credential for scripts and agents: ``<kind prefix>_<public id>_<secret>``.

    Only a SHA-256 of the secret is stored (the secret is 190 random bits, so a fast hash is
    safe). During a rotation's grace window the previous secret's hash stays valid until
    ``previous_secret_expires_at``.
    """

    class Kind(models.TextChoices):
        PERSONAL = "personal", "Personal"
        SERVICE = "service", "Service"
        AGENT = "agent", "Agent"

    class Autonomy(models.TextChoices):
        SUGGEST = "suggest", "Suggest"
        ACT = "act", "Act"
        AUTONOMOUS = "autonomous", "Autonomous"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, related_name="api_keys")
    user = models.ForeignKey(
        User,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="api_keys",
        help_text="The person a personal key acts as; the creator of a service or agent key.",
    )
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PERSONAL)
    name = models.CharField(max_length=100)
    public_id = models.CharField(max_length=24, unique=True)
    secret_hash = models.CharField(max_length=64)
    previous_secret_hash = models.CharField(max_length=64, blank=True)
    previous_secret_expires_at = models.DateTimeField(null=True, blank=True)
    role = models.CharField(
        max_length=8,
        choices=Role.choices,
        blank=True,
        help_text="Service/agent keys: their role. Personal keys: an optional ceiling below the user's.",
    )
    scopes = models.JSONField(default=list, blank=True, help_text='e.g. ["agents:read"]; empty = all.')
    agent_id = models.UUIDField(null=True, blank=True, help_text="The agent an agent key is bound to.")
    autonomy = models.CharField(max_length=16, choices=Autonomy.choices, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    is_active = models.BooleanField(default=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    deleted_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    last_used_ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["org", "-created_at"], name="apikey_org_created"),
            models.Index(fields=["user", "-created_at"], name="apikey_user_created"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind} {self.public_id})"


class ApiKeyUsage(models.Model):
    """One request made with an API key (the per-key request log)."""

    id = models.BigAutoField(primary_key=True)
    key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="usage")
    at = models.DateTimeField(default=now)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    status = models.PositiveSmallIntegerField()
    duration_ms = models.FloatField(default=0)
    ip = models.GenericIPAddressField(null=True, blank=True)
    request_id = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ["-at"]
        indexes = [models.Index(fields=["key", "-at"], name="apikeyusage_key_at")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.status}"


class AuditLog(models.Model):
    """Who changed what, when, from where: written by every mutating service."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    org_name = models.CharField(max_length=200, blank=True, help_text="Kept after the org is deleted.")
    actor = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    actor_email = models.CharField(max_length=254, blank=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    action = models.CharField(max_length=64)
    entity_type = models.CharField(max_length=64)
    entity_id = models.CharField(max_length=64, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text="field → [before, after]")
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["org", "-created_at"], name="audit_org_created"),
            models.Index(fields=["org", "action", "-created_at"], name="audit_org_action"),
            models.Index(fields=["org", "entity_type", "entity_id"], name="audit_org_entity"),
            models.Index(fields=["org", "actor", "-created_at"], name="audit_org_actor"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.entity_type}:{self.entity_id}"


class SecurityEvent(models.Model):
    """A security-relevant failure: failed login, bad or revoked key, denial, bad signature."""

    class Kind(models.TextChoices):
        LOGIN_FAILED = "login_failed", "Failed login"
        KEY_INVALID = "key_invalid", "Invalid API key"
        KEY_REVOKED = "key_revoked", "Revoked API key used"
        KEY_EXPIRED = "key_expired", "Expired API key used"
        PERMISSION_DENIED = "permission_denied", "Permission denied"
        SIGNATURE_FAILED = "signature_failed", "Signature check failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    org = models.ForeignKey(Organization, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    user = models.ForeignKey(User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    identifier = models.CharField(max_length=254, blank=True, help_text="Email or key id tried.")
    ip = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=400, blank=True)
    path = models.CharField(max_length=500, blank=True)
    details = models.JSONField(default=dict, blank=True)
    request_id = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["org", "-created_at"], name="secevent_org_created"),
            models.Index(fields=["kind", "-created_at"], name="secevent_kind_created"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.identifier}"
