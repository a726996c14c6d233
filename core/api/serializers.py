"""Serializers of `core`'s API."""

from rest_framework import serializers

from core.models import Job


class JobErrorSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class JobSerializer(serializers.ModelSerializer):
    """A background job as clients poll it."""

    org = serializers.UUIDField(source="org_id", read_only=True, allow_null=True)
    error = JobErrorSerializer(read_only=True, allow_null=True)
    result = serializers.JSONField(read_only=True, allow_null=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "status",
            "percent",
            "message",
            "result",
            "error",
            "org",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
            "updated_at",
        ]
        read_only_fields = fields


class HealthCheckSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "error"])
    latency_ms = serializers.FloatField(required=False)
    error = serializers.CharField(required=False)


class HealthChecksSerializer(serializers.Serializer):
    db = HealthCheckSerializer()
    cache = HealthCheckSerializer()
    broker = HealthCheckSerializer()


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded", "down"])
    version = serializers.CharField()
    checks = HealthChecksSerializer()


class ReadySerializer(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ready", "not_ready"])


class VersionSerializer(serializers.Serializer):
    version = serializers.CharField()
    commit = serializers.CharField()
    uptime_s = serializers.FloatField()
