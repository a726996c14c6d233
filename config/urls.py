"""Root URL configuration: probes, the API, its schema and docs, the admin."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.api.urls import urlpatterns as accounts_api
from agents.api.urls import urlpatterns as agents_api
from billing.api.urls import urlpatterns as billing_api
from chat.api.ai_urls import urlpatterns as chat_ai_api
from chat.api.openai_urls import urlpatterns as openai_api
from chat.api.urls import urlpatterns as chat_api
from core.api.urls import api_urlpatterns as core_api
from core.api.urls import probe_urlpatterns
from knowledge.api.urls import urlpatterns as knowledge_api

urlpatterns = [
    *probe_urlpatterns,
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/v1/", include(core_api)),
    path("api/v1/", include(accounts_api)),
    path("api/v1/", include(agents_api)),
    path("api/v1/", include(chat_api)),
    path("api/v1/ai/", include(chat_ai_api)),
    path("api/v1/", include(knowledge_api)),
    path("api/v1/", include("knowledge.memory.api.urls")),
    path("api/v1/", include(billing_api)),
    path("v1/", include(openai_api)),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("_allauth/", include("allauth.headless.urls")),
    path("", include("accounts.urls_pages")),
]

handler400 = "core.errors.handlers.handler400"
handler403 = "core.errors.handlers.handler403"
handler404 = "core.errors.handlers.handler404"
handler500 = "core.errors.handlers.handler500"
