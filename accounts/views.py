"""Server-rendered pages of `accounts`: the invite landing page an invite email links to.

``GET /invites/<token>`` shows what the invite is for and remembers the token in the session (so
a signup that follows may use it); a signed-in invitee accepts it with a plain POST form.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from accounts.adapters import PENDING_INVITE_SESSION_KEY
from accounts.selectors.orgs import InviteStatus, invite_by_token, invite_status
from accounts.services.invites import invite_accept
from core.errors import ApplicationError

STATUS_MESSAGES = {
    InviteStatus.ACCEPTED: "This invite has already been used.",
    InviteStatus.EXPIRED: "This invite has expired. Ask for a new one.",
    InviteStatus.REVOKED: "This invite was revoked.",
}


@require_http_methods(["GET", "POST"])
def invite_page(request: HttpRequest, token: str) -> HttpResponse:
    """Show an invite (GET) or accept it as the signed-in user (POST, CSRF-protected)."""
    invite = invite_by_token(token=token)
    if invite is None:
        return render(request, "accounts/invite.html", {"invite": None}, status=404)
    request.session[PENDING_INVITE_SESSION_KEY] = token
    user = request.user
    error, status = "", 200
    if request.method == "POST":
        if not user.is_authenticated:
            return HttpResponseRedirect("/accounts/login/?" + urlencode({"next": request.path}))
        try:
            invite_accept(token=token, user=user)
        except ApplicationError as exc:
            error, status = exc.message, exc.status_code
        else:
            request.session.pop(PENDING_INVITE_SESSION_KEY, None)
            return HttpResponseRedirect("/")
    current = invite_status(invite)
    email_matches = user.is_authenticated and user.email.lower() == invite.email.lower()
    context = {
        "invite": invite,
        "status": current,
        "status_message": STATUS_MESSAGES.get(current, ""),
        "can_accept": current == InviteStatus.PENDING and email_matches,
        "wrong_account": current == InviteStatus.PENDING and user.is_authenticated and not email_matches,
        "login_url": "/accounts/login/?" + urlencode({"next": request.path}),
        "signup_url": "/accounts/signup/",
        "error": error,
    }
    return render(request, "accounts/invite.html", context, status=status)
