"""``chat.api.fast_input``: the input serializers on the path to a stream's first token validate as
DRF's own would, each instance with fields of its own, the declared ones left untouched."""

from __future__ import annotations

from rest_framework import serializers

from chat.api.fast_input import FastInputSerializer
from chat.api.openai_serializers import ChatCompletionInputSerializer
from chat.api.serializers import ChatTurnInputSerializer


class _Plain(serializers.Serializer):
    name = serializers.CharField(max_length=5)
    count = serializers.IntegerField(min_value=1, default=3)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    mode = serializers.ChoiceField(choices=["a", "b"], default="a")


class _Fast(FastInputSerializer, _Plain):
    pass


def test_it_validates_and_refuses_exactly_as_drf_does():
    for body in (
        {"name": "ok", "tags": ["x"]},
        {"name": "too long", "count": 0, "mode": "c"},
        {"count": "x", "tags": "not a list"},
        {"name": "ok", "count": 2, "mode": "b", "ignored": True},
    ):
        plain, fast = _Plain(data=body), _Fast(data=body)
        assert fast.is_valid() == plain.is_valid()
        assert fast.errors == plain.errors
        if not fast.errors:
            assert fast.validated_data == plain.validated_data


def test_each_instance_binds_fields_of_its_own_and_the_declared_ones_stay_unbound():
    first, second = _Fast(data={"name": "a"}), _Fast(data={"name": "b"})
    assert first.fields["name"] is not second.fields["name"]
    assert first.fields["name"].parent is first and second.fields["name"].parent is second
    declared = _Fast._declared_fields["name"]
    assert first.fields["name"] is not declared
    assert getattr(declared, "parent", None) is None and getattr(declared, "field_name", None) is None
    assert first.is_valid() and second.is_valid()
    assert (first.validated_data["name"], second.validated_data["name"]) == ("a", "b")


def test_the_stream_inputs_are_fast_ones():
    assert issubclass(ChatCompletionInputSerializer, FastInputSerializer)
    assert issubclass(ChatTurnInputSerializer, FastInputSerializer)
    body = ChatTurnInputSerializer(data={"agent": "a", "message": " hi "})
    assert body.is_valid(), body.errors
    assert body.validated_data == {"agent": "a", "message": " hi ", "on_disconnect": "continue"}
