"""API of the speech and vision utilities under /api/v1/ai (MEMBER; API keys need the ``ai`` scope).

- ``POST /transcribe`` (multipart ``file`` ≤ 25 MB, ``language?``, ``model?``): 201 with the stored
  transcript; ``GET /transcripts[/{id}]``, ``DELETE /transcripts/{id}``: the caller's own only.
- ``POST /tts`` ``{text ≤ 500, voice?, model?, format?}``: 200 with the audio bytes.
- ``POST /extract`` (multipart ``image`` ≤ 10 MB + ``schema``): fields read by a vision model.
- ``POST /execute`` ``{prompt, …}``: one completion with no conversation, or one run of an agent.

Uploads of the wrong kind answer 415 (``ERR_UNSUPPORTED_MEDIA_TYPE``, ``ERR_MEDIA_TYPE_MISMATCH``),
too large ones 413; no provider 424 (``ERR_NO_PROVIDER``), upstream failures as the choke point
maps them (502 ``ERR_PROVIDER_UNAVAILABLE`` / ``ERR_PROVIDER_BAD_REQUEST``, 424 ``ERR_PROVIDER_AUTH``).
"""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response

from accounts.api.base import TenantAPIView, TenantViewSet
from accounts.models import Role
from agents.api.agents import viewer_of
from agents.llm import SPEECH_FORMATS
from agents.selectors.agents import agent_get
from chat.models import Transcript
from chat.selectors.transcripts import transcript_get, transcript_list
from chat.services import ai_extract, ai_utils

from .ai_serializers import (
    AIExecuteInputSerializer,
    AIExecuteOutputSerializer,
    AIExtractInputSerializer,
    AIExtractOutputSerializer,
    AISpeechInputSerializer,
    AITranscribeInputSerializer,
    TranscriptCreatedOutputSerializer,
    TranscriptOutputSerializer,
)

_TAGS = ["ai"]
# Room for the multipart framing and the small fields next to the file.
_FORM_OVERHEAD = 256 * 1024
_PROVIDER_ERRORS = (
    " 424 `ERR_NO_PROVIDER` / `ERR_PROVIDER_AUTH`, 502 `ERR_PROVIDER_UNAVAILABLE` / "
    "`ERR_PROVIDER_BAD_REQUEST`."
)
_EXTENSIONS = {"mp3": "mp3", "wav": "wav", "opus": "ogg", "flac": "flac", "aac": "aac"}


class AudioRenderer(BaseRenderer):
    """Lets ``Accept: audio/…`` reach the speech endpoint (the view answers the bytes itself)."""

    media_type = "audio/*"
    format = "audio"
    charset = None
    render_style = "binary"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return data


class JsonErrorsMixin:
    """Errors answer JSON even when the client asked for audio."""

    def handle_exception(self, exc):
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = "application/json"
        return super().handle_exception(exc)


class AIView(TenantAPIView):
    """The utilities' common ground: MEMBER, ``ai`` scope."""

    read_role = Role.MEMBER
    write_role = Role.MEMBER
    scope_area = "ai"


class TranscribeView(AIView):
    """``POST /api/v1/ai/transcribe``."""

    parser_classes = [MultiPartParser, FormParser]
    max_body_size = ai_utils.MAX_AUDIO_BYTES + _FORM_OVERHEAD

    @extend_schema(
        operation_id="ai_transcribe",
        tags=_TAGS,
        summary="Transcribe an audio file (multipart field `file`, at most 25 MB); the transcript is kept.",
        description=(
            "The declared type and the file's first bytes must both be a supported format (mp3, wav, "
            "ogg/opus, webm, flac, m4a): otherwise 415 `ERR_UNSUPPORTED_MEDIA_TYPE`, or "
            "`ERR_MEDIA_TYPE_MISMATCH` when they disagree (`application/octet-stream` declares nothing). "
            "Over 25 MB: 413." + _PROVIDER_ERRORS
        ),
        request={"multipart/form-data": AITranscribeInputSerializer},
        responses={201: TranscriptCreatedOutputSerializer},
    )
    def post(self, request):
        data = AITranscribeInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        if upload.size > ai_utils.MAX_AUDIO_BYTES:  # before reading it into memory
            raise ai_utils.UploadTooLarge(
                f"The audio file is {upload.size} bytes; at most {ai_utils.MAX_AUDIO_BYTES} are accepted.",
                details={"limit_bytes": ai_utils.MAX_AUDIO_BYTES, "received_bytes": upload.size},
            )
        transcript, result = ai_utils.transcribe_audio(
            org=request.org,
            user=request.user,
            data=upload.read(),
            filename=upload.name or "",
            declared_type=upload.content_type or "",
            language=data.validated_data.get("language") or None,
            model=data.validated_data.get("model") or None,
        )
        transcript.usage = ai_utils.usage_of(result)
        return Response(TranscriptCreatedOutputSerializer(transcript).data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(
        operation_id="ai_transcripts_list", tags=_TAGS, summary="Your transcripts, newest first."
    ),
    retrieve=extend_schema(
        operation_id="ai_transcripts_retrieve", tags=_TAGS, summary="One of your transcripts."
    ),
    destroy=extend_schema(
        operation_id="ai_transcripts_destroy",
        tags=_TAGS,
        summary="Delete one of your transcripts.",
        responses={204: OpenApiResponse(description="Deleted.")},
    ),
)
class TranscriptViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, TenantViewSet
):
    """``/api/v1/ai/transcripts[/{id}]``: only the caller's own; anyone else's answers 404."""

    queryset = Transcript.objects.all()
    serializer_class = TranscriptOutputSerializer
    read_role = Role.MEMBER
    write_role = Role.MEMBER
    scope_area = "ai"

    def base_queryset(self):
        return transcript_list(org=self.request.org, user=self.request.user)

    def get_object(self):
        return transcript_get(org=self.request.org, user=self.request.user, transcript_id=self.kwargs["id"])

    def perform_destroy(self, instance):
        ai_utils.transcript_delete(transcript=instance, actor=self.request.user)


class SpeechView(JsonErrorsMixin, AIView):
    """``POST /api/v1/ai/tts``."""

    parser_classes = [JSONParser, FormParser, MultiPartParser]
    renderer_classes = [JSONRenderer, AudioRenderer]

    @extend_schema(
        operation_id="ai_tts",
        tags=_TAGS,
        summary="Speak a text (at most 500 characters): the audio bytes.",
        description=(
            "`format`: mp3 (`audio/mpeg`, default), wav (`audio/wav`), opus (`audio/ogg`), flac "
            "(`audio/flac`), aac (`audio/aac`). Longer text: 400 `ERR_VALIDATION`." + _PROVIDER_ERRORS
        ),
        request=AISpeechInputSerializer,
        responses={
            (200, content_type): OpenApiResponse(OpenApiTypes.BINARY, description=f"{fmt} audio.")
            for fmt, content_type in SPEECH_FORMATS.items()
        },
    )
    def post(self, request):
        data = AISpeechInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        result = ai_utils.synthesize_speech(
            org=request.org,
            user=request.user,
            text=values["text"],
            voice=values.get("voice") or None,
            model=values.get("model") or None,
            format=values["format"],
        )
        response = HttpResponse(result.audio, content_type=result.content_type)
        response["Content-Length"] = str(len(result.audio))
        response["Content-Disposition"] = f'inline; filename="speech.{_EXTENSIONS[values["format"]]}"'
        response["X-Model"] = result.model
        return response


class ExtractView(AIView):
    """``POST /api/v1/ai/extract``."""

    parser_classes = [MultiPartParser, FormParser]
    max_body_size = ai_extract.MAX_IMAGE_BYTES + ai_extract.MAX_SCHEMA_CHARS + _FORM_OVERHEAD

    @extend_schema(
        operation_id="ai_extract",
        tags=_TAGS,
        summary="Read the fields a JSON Schema describes from an image (e.g. a passport).",
        description=(
            "Multipart: `image` (png, jpeg, webp, gif by content, at most 10 MB: else 415 / 413), "
            "`schema` (a JSON Schema of an object, as a JSON string; invalid: 400 `ERR_INVALID_SCHEMA`), "
            "`instructions?`, `model?`. `data` has exactly the schema's properties: keys the model "
            "invented are dropped, fields it could not read are null, values that break the schema are "
            "null with a note in `warnings`. A model answer that is not JSON: 502 `ERR_EXTRACTION_FAILED`."
            + _PROVIDER_ERRORS
        ),
        request={"multipart/form-data": AIExtractInputSerializer},
        responses={200: AIExtractOutputSerializer},
    )
    def post(self, request):
        data = AIExtractInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        upload = values["image"]
        if upload.size > ai_extract.MAX_IMAGE_BYTES:
            raise ai_utils.UploadTooLarge(
                f"The image is {upload.size} bytes; at most {ai_extract.MAX_IMAGE_BYTES} are accepted.",
                details={"limit_bytes": ai_extract.MAX_IMAGE_BYTES, "received_bytes": upload.size},
            )
        answer = ai_extract.extract_from_image(
            org=request.org,
            user=request.user,
            image=upload.read(),
            declared_type=upload.content_type or "",
            schema=values["schema"],
            instructions=values.get("instructions") or "",
            model=values.get("model") or None,
        )
        return Response(AIExtractOutputSerializer(answer).data)


class ExecuteView(AIView):
    """``POST /api/v1/ai/execute``."""

    @extend_schema(
        operation_id="ai_execute",
        tags=_TAGS,
        summary="One completion with no conversation (automations), or one run of an agent.",
        description=(
            "`{prompt, system?, model?, max_tokens?, temperature?, response_format?}` → "
            "`{content, model, usage, finish_reason}`. With `agent` (an agent you can see; another "
            "org's answers 404) the agent runs on the prompt with its own prompt, model and tools "
            "(then only `prompt` may be given) and `run_id` names the AgentRun." + _PROVIDER_ERRORS
        ),
        request=AIExecuteInputSerializer,
        responses={200: AIExecuteOutputSerializer},
    )
    def post(self, request):
        data = AIExecuteInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        if values.get("agent"):
            agent = agent_get(org=request.org, viewer=viewer_of(request), agent_id=values["agent"])
            answer = ai_utils.execute_agent(agent=agent, user=request.user, prompt=values["prompt"])
        else:
            answer = ai_utils.execute_prompt(
                org=request.org,
                user=request.user,
                prompt=values["prompt"],
                system=values.get("system") or "",
                model=values.get("model") or None,
                max_tokens=values.get("max_tokens"),
                temperature=values.get("temperature"),
                response_format=values.get("response_format"),
            )
        return Response(AIExecuteOutputSerializer(answer).data)
