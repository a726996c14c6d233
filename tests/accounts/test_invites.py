"""Invites: created by ADMINs (emailed, token shown once, stored hashed), listed, revoked; resolved
publicly by token; accepted once by the invited address (also under concurrency); and the small
server-rendered landing page the email links to."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.adapters import PENDING_INVITE_SESSION_KEY
from accounts.models import AuditLog, Invite, Membership, Role, User
from accounts.selectors.orgs import invite_by_token, invite_token_hash
from accounts.services.invites import invite_accept, invite_create
from core.errors import ConflictError
from tests.accounts.factories_orgs import client_with_role, make_invite, personal_key, role_of
from tests.conftest import client_for
from tests.core.test_errors import assert_envelope
from tests.factories import OrganizationFactory, UserFactory

pytestmark = pytest.mark.django_db

INVITEE = "invitee@example.com"


@pytest.fixture
def invitee(db):
    return UserFactory(email=INVITEE)


@pytest.fixture
def invitee_client(invitee):
    return client_for(invitee)


def expire(invite):
    Invite.objects.filter(pk=invite.pk).update(expires_at=timezone.now() - timedelta(seconds=1))


def revoke(invite):
    Invite.objects.filter(pk=invite.pk).update(revoked_at=timezone.now())


# --- POST /org/invites ----------------------------------------------------------------------------


def test_admin_invites_by_email(org, django_capture_on_commit_callbacks, settings):
    settings.SITE_URL = "https://platform.example"
    admin, client = client_with_role(org, Role.ADMIN)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/api/v1/org/invites", {"email": "New.Person@Example.com", "role": Role.VIEWER}
        )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["email"] == "new.person@example.com" and body["role"] == Role.VIEWER
    assert body["status"] == "pending" and body["invited_by"]["id"] == str(admin.pk)
    assert body["accept_url"].startswith("https://platform.example/invites/")
    token = body["accept_url"].rsplit("/", 1)[1]
    invite = Invite.objects.get(pk=body["id"])
    assert invite.token_hash == invite_token_hash(token) and token not in invite.token_hash
    assert timedelta(days=6, hours=23) < invite.expires_at - timezone.now() <= timedelta(days=7)
    assert len(mail.outbox) == 1
    assert mail.outbox[0].to == ["new.person@example.com"] and body["accept_url"] in mail.outbox[0].body
    assert org.name in mail.outbox[0].subject
    row = AuditLog.objects.get(action="invite.created")
    assert row.actor == admin and row.org == org and token not in str(row.after)


def test_invite_role_defaults_to_member(owner_client):
    assert owner_client.post("/api/v1/org/invites", {"email": "a@example.com"}).json()["role"] == Role.MEMBER


def test_no_email_is_sent_when_the_invite_is_not_created(
    owner_client, owner, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        owner_client.post("/api/v1/org/invites", {"email": owner.email})
    assert mail.outbox == []


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"email": "not-an-email"},
        {"email": "a@example.com", "role": "KING"},
        {"email": "x" * 250 + "@a.io"},
    ],
)
def test_bad_invite_input_is_400(owner_client, payload):
    assert_envelope(owner_client.post("/api/v1/org/invites", payload), 400, "ERR_VALIDATION")
    assert not Invite.objects.exists()


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 201), (Role.OWNER, 201)]
)
def test_create_invite_role_matrix(org, role, status):
    _user, client = client_with_role(org, role)
    response = client.post("/api/v1/org/invites", {"email": "matrix@example.com"})
    assert response.status_code == status, response.content
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


@pytest.mark.parametrize("role,status", [(Role.ADMIN, 403), (Role.OWNER, 201)])
def test_only_an_owner_invites_an_owner(org, role, status):
    _user, client = client_with_role(org, role)
    response = client.post("/api/v1/org/invites", {"email": "boss@example.com", "role": Role.OWNER})
    assert response.status_code == status, response.content
    if status == 403:
        assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_an_admin_service_key_cannot_invite_an_owner(org, owner):
    from tests.accounts.factories_orgs import service_key

    _key, raw = service_key(org, owner, Role.ADMIN)
    client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    response = client.post("/api/v1/org/invites", {"email": "boss@example.com", "role": Role.OWNER})
    assert_envelope(response, 403, "ERR_ROLE_REQUIRED")


def test_inviting_a_member_is_409(owner_client, member):
    response = owner_client.post("/api/v1/org/invites", {"email": member.email.upper()})
    assert_envelope(response, 409, "ERR_ALREADY_MEMBER")


def test_a_pending_invite_blocks_a_second_one(owner_client, org):
    make_invite(org, email="dup@example.com")
    response = owner_client.post("/api/v1/org/invites", {"email": "DUP@example.com"})
    assert_envelope(response, 409, "ERR_INVITE_PENDING")


def test_a_revoked_or_expired_invite_does_not_block_a_new_one(owner_client, org):
    first, _ = make_invite(org, email="again@example.com")
    revoke(first)
    assert owner_client.post("/api/v1/org/invites", {"email": "again@example.com"}).status_code == 201
    expire(Invite.objects.get(email="again@example.com", revoked_at__isnull=True))
    assert owner_client.post("/api/v1/org/invites", {"email": "again@example.com"}).status_code == 201


def test_the_same_address_may_be_invited_by_two_orgs(org, other_org):
    make_invite(org, email="both@example.com")
    make_invite(other_org, email="both@example.com")
    assert Invite.objects.filter(email="both@example.com").count() == 2


def test_invites_need_authentication(anon_client, org):
    invite, _ = make_invite(org)
    assert_envelope(anon_client.get("/api/v1/org/invites"), 401)
    assert_envelope(anon_client.post("/api/v1/org/invites", {"email": "a@example.com"}), 401)
    assert_envelope(anon_client.delete(f"/api/v1/org/invites/{invite.pk}"), 401)


# --- GET /org/invites -----------------------------------------------------------------------------


def test_admin_lists_invites_without_tokens(owner_client, org, other_org):
    pending, token = make_invite(org, email="p@example.com")
    expired, _ = make_invite(org, email="e@example.com")
    expire(expired)
    make_invite(other_org, email="foreign@example.com")
    response = owner_client.get("/api/v1/org/invites")
    body = response.json()
    assert body["total"] == 2
    assert {item["email"]: item["status"] for item in body["items"]} == {
        "p@example.com": "pending",
        "e@example.com": "expired",
    }
    assert token not in response.content.decode() and "accept_url" not in body["items"][0]
    filtered = owner_client.get("/api/v1/org/invites?status=expired").json()
    assert [item["email"] for item in filtered["items"]] == ["e@example.com"]


@pytest.mark.parametrize("role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 200)])
def test_listing_invites_needs_admin(org, role, status):
    _user, client = client_with_role(org, role)
    assert client.get("/api/v1/org/invites").status_code == status


# --- DELETE /org/invites/{id} ---------------------------------------------------------------------


def test_revoking_an_invite_kills_its_token(owner_client, owner, org, invitee_client):
    invite, token = make_invite(org)
    assert owner_client.delete(f"/api/v1/org/invites/{invite.pk}").status_code == 204
    invite.refresh_from_db()
    assert invite.revoked_at is not None
    row = AuditLog.objects.get(action="invite.revoked")
    assert row.actor == owner and row.entity_id == str(invite.pk)
    assert_envelope(invitee_client.post(f"/api/v1/invites/{token}/accept"), 410, "ERR_INVITE_REVOKED")
    assert owner_client.delete(f"/api/v1/org/invites/{invite.pk}").status_code == 204  # idempotent
    assert AuditLog.objects.filter(action="invite.revoked").count() == 1


@pytest.mark.parametrize(
    "role,status", [(Role.VIEWER, 403), (Role.MEMBER, 403), (Role.ADMIN, 204), (Role.OWNER, 204)]
)
def test_revoke_role_matrix(org, role, status):
    invite, _ = make_invite(org)
    _user, client = client_with_role(org, role)
    assert client.delete(f"/api/v1/org/invites/{invite.pk}").status_code == status


def test_revoking_an_accepted_invite_is_409(owner_client, org, invitee):
    invite, token = make_invite(org)
    invite_accept(token=token, user=invitee)
    assert_envelope(owner_client.delete(f"/api/v1/org/invites/{invite.pk}"), 409, "ERR_INVITE_USED")


def test_outsider_cannot_revoke_another_orgs_invite(outsider_client, org):
    invite, _ = make_invite(org)
    assert_envelope(outsider_client.delete(f"/api/v1/org/invites/{invite.pk}"), 404)
    invite.refresh_from_db()
    assert invite.revoked_at is None


# --- GET /invites/{token} -------------------------------------------------------------------------


def test_anyone_with_the_token_can_resolve_it(anon_client, org, owner):
    invite, token = make_invite(org, role=Role.ADMIN, invited_by=owner)
    response = anon_client.get(f"/api/v1/invites/{token}")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body == {
        "email": INVITEE,
        "role": Role.ADMIN,
        "org": {"id": str(org.pk), "name": org.name},
        "status": "pending",
        "expires_at": body["expires_at"],
    }
    assert anon_client.session[PENDING_INVITE_SESSION_KEY] == token


@pytest.mark.parametrize("change,status", [(expire, "expired"), (revoke, "revoked")])
def test_resolve_reports_the_status(anon_client, org, change, status):
    invite, token = make_invite(org)
    change(invite)
    assert anon_client.get(f"/api/v1/invites/{token}").json()["status"] == status


def test_resolve_reports_an_accepted_invite(anon_client, org, invitee):
    _invite, token = make_invite(org)
    invite_accept(token=token, user=invitee)
    assert anon_client.get(f"/api/v1/invites/{token}").json()["status"] == "accepted"


def test_resolve_a_signup_invite_has_no_org(anon_client, db):
    _invite, token = invite_create(org=None, email="new@example.com", role=Role.MEMBER, invited_by=None)
    assert anon_client.get(f"/api/v1/invites/{token}").json()["org"] is None


def test_unknown_token_is_404_and_not_remembered(anon_client, db):
    assert_envelope(anon_client.get("/api/v1/invites/not-a-token"), 404, "ERR_INVITE_NOT_FOUND")
    assert PENDING_INVITE_SESSION_KEY not in anon_client.session


# --- POST /invites/{token}/accept -----------------------------------------------------------------


def test_accepting_joins_the_org_with_the_invites_role(org, owner, invitee, invitee_client):
    invite, token = make_invite(org, role=Role.ADMIN, invited_by=owner)
    invitee_client.get(f"/api/v1/invites/{token}")
    response = invitee_client.post(f"/api/v1/invites/{token}/accept")
    assert response.status_code == 200, response.content
    assert response.json() == {"org": {"id": str(org.pk), "name": org.name}, "role": Role.ADMIN}
    assert role_of(org, invitee) == Role.ADMIN
    invitee.refresh_from_db()
    assert invitee.active_org_id == org.pk
    invite.refresh_from_db()
    assert invite.accepted_at is not None and invite.accepted_by == invitee
    row = AuditLog.objects.get(action="invite.accepted")
    assert row.actor == invitee and row.org == org and row.entity_id == str(invite.pk)
    assert PENDING_INVITE_SESSION_KEY not in invitee_client.session
    assert invitee_client.get("/api/v1/org").json()["id"] == str(org.pk)


def test_the_email_match_ignores_case(org, db):
    user = UserFactory(email="mixed@example.com")
    _invite, token = make_invite(org, email="MiXeD@Example.COM")
    assert client_for(user).post(f"/api/v1/invites/{token}/accept").status_code == 200


def test_accepting_as_someone_else_is_403(org, member_client, member):
    invite, token = make_invite(org, email="someone.else@example.com")
    assert_envelope(member_client.post(f"/api/v1/invites/{token}/accept"), 403, "ERR_INVITE_EMAIL_MISMATCH")
    invite.refresh_from_db()
    assert invite.accepted_at is None


def test_an_expired_invite_is_410(org, invitee, invitee_client):
    invite, token = make_invite(org)
    expire(invite)
    assert_envelope(invitee_client.post(f"/api/v1/invites/{token}/accept"), 410, "ERR_INVITE_EXPIRED")
    assert not Membership.objects.filter(org=org, user=invitee).exists()


def test_an_invite_is_single_use(org, invitee, invitee_client):
    _invite, token = make_invite(org)
    assert invitee_client.post(f"/api/v1/invites/{token}/accept").status_code == 200
    Membership.objects.filter(org=org, user=invitee).delete()  # even after leaving, no reuse
    assert_envelope(invitee_client.post(f"/api/v1/invites/{token}/accept"), 409, "ERR_INVITE_USED")
    assert not Membership.objects.filter(org=org, user=invitee).exists()


def test_an_existing_member_cannot_use_an_invite(org, invitee, invitee_client):
    invite, token = make_invite(org, role=Role.ADMIN)
    Membership.objects.create(org=org, user=invitee, role=Role.VIEWER)  # joined some other way since
    assert_envelope(invitee_client.post(f"/api/v1/invites/{token}/accept"), 409, "ERR_ALREADY_MEMBER")
    invite.refresh_from_db()
    assert invite.accepted_at is None and role_of(org, invitee) == Role.VIEWER


def test_an_invite_to_an_org_being_deleted_is_410(org, invitee, invitee_client):
    _invite, token = make_invite(org)
    type(org).objects.filter(pk=org.pk).update(deletion_requested_at=timezone.now())
    assert_envelope(invitee_client.post(f"/api/v1/invites/{token}/accept"), 410, "ERR_INVITE_REVOKED")


def test_unknown_token_accept_is_404(invitee_client):
    assert_envelope(invitee_client.post("/api/v1/invites/nope/accept"), 404)


def test_accept_needs_a_session(anon_client, org, owner, invitee):
    _invite, token = make_invite(org)
    assert_envelope(anon_client.post(f"/api/v1/invites/{token}/accept"), 401)
    Membership.objects.create(org=OrganizationFactory(), user=invitee, role=Role.OWNER)
    _key, raw = personal_key(invitee.memberships.get().org, invitee)
    key_client = APIClient(HTTP_AUTHORIZATION=f"Bearer {raw}")
    assert_envelope(key_client.post(f"/api/v1/invites/{token}/accept"), 403, "ERR_SESSION_REQUIRED")


def test_accept_enforces_csrf(org, invitee):
    _invite, token = make_invite(org)
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(invitee)
    assert client.post(f"/api/v1/invites/{token}/accept").status_code == 403
    assert not Membership.objects.filter(org=org, user=invitee).exists()


def test_a_signup_invite_is_marked_used_without_a_membership(db):
    user = UserFactory(email="signup@example.com")
    invite, token = invite_create(org=None, email="signup@example.com", role=Role.MEMBER, invited_by=None)
    assert invite_accept(token=token, user=user) is None
    invite.refresh_from_db()
    assert invite.accepted_by == user and not Membership.objects.filter(user=user).exists()
    with pytest.raises(ConflictError):
        invite_accept(token=token, user=user)


def test_invite_by_token_finds_only_the_right_invite(org):
    invite, token = make_invite(org)
    assert invite_by_token(token=token) == invite
    assert invite_by_token(token=token + "x") is None
    assert invite_by_token(token="") is None


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_accepts_create_exactly_one_membership():
    org = OrganizationFactory()
    invitee = UserFactory(email=INVITEE)
    _invite, token = make_invite(org)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def accept():
        try:
            barrier.wait(timeout=5)
            invite_accept(token=token, user=User.objects.get(pk=invitee.pk))
            outcomes.append("ok")
        except ConflictError as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=accept) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(outcomes) == ["ERR_INVITE_USED", "ok"]
    assert Membership.objects.filter(org=org, user=invitee).count() == 1
    assert AuditLog.objects.filter(action="invite.accepted").count() == 1


# --- the landing page /invites/{token} ------------------------------------------------------------


@pytest.fixture
def page_urls():
    """The page is served by the real URL conf (config/urls.py includes accounts.urls_pages)."""


def test_page_shows_the_invite_and_links_to_signup_and_login(page_urls, org):
    _invite, token = make_invite(org, role=Role.ADMIN)
    client = Client()
    response = client.get(f"/invites/{token}")
    assert response.status_code == 200
    html = response.content.decode()
    assert org.name in html and "Admin" in html and INVITEE in html
    assert 'href="/accounts/signup/"' in html
    assert f"/accounts/login/?next=%2Finvites%2F{token}" in html
    assert "<form" not in html
    assert client.session[PENDING_INVITE_SESSION_KEY] == token


def test_page_offers_accept_to_the_invitee_and_accepts(page_urls, org, invitee):
    _invite, token = make_invite(org)
    client = Client()
    client.force_login(invitee)
    html = client.get(f"/invites/{token}").content.decode()
    assert "<form" in html and "csrfmiddlewaretoken" in html
    response = client.post(f"/invites/{token}")
    assert response.status_code == 302 and response["Location"] == "/"
    assert role_of(org, invitee) == Role.MEMBER
    assert PENDING_INVITE_SESSION_KEY not in client.session


def test_page_accept_needs_the_csrf_token(page_urls, org, invitee):
    _invite, token = make_invite(org)
    client = Client(enforce_csrf_checks=True)
    client.force_login(invitee)
    assert client.post(f"/invites/{token}").status_code == 403
    assert not Membership.objects.filter(org=org, user=invitee).exists()


def test_page_hides_accept_from_another_account(page_urls, org, member):
    _invite, token = make_invite(org)
    client = Client()
    client.force_login(member)
    html = client.get(f"/invites/{token}").content.decode()
    assert "<form" not in html and member.email in html
    assert client.post(f"/invites/{token}").status_code == 403
    assert not Membership.objects.filter(org=org, user__email=INVITEE).exists()


def test_page_post_while_signed_out_goes_to_login(page_urls, org):
    _invite, token = make_invite(org)
    response = Client().post(f"/invites/{token}")
    assert response.status_code == 302
    assert response["Location"] == f"/accounts/login/?next=%2Finvites%2F{token}"


def test_page_says_when_an_invite_is_expired(page_urls, org, invitee):
    invite, token = make_invite(org)
    expire(invite)
    client = Client()
    client.force_login(invitee)
    html = client.get(f"/invites/{token}").content.decode()
    assert "expired" in html and "<form" not in html
    assert client.post(f"/invites/{token}").status_code == 410


def test_page_for_an_unknown_token_is_404(page_urls, db):
    response = Client().get("/invites/nope")
    assert response.status_code == 404 and b"not found" in response.content
