"""Server-rendered pages of `accounts`, included at the root of the URL conf."""

from django.urls import path

from . import views

urlpatterns = [
    path("invites/<str:token>", views.invite_page, name="invite-page"),
]
