"""``chat.api.fast_input``: the input serializers on the path to a stream's first token validate as
DRF's own would (looking only at the fields a body can be decided by), each instance with fields
of its own, the declared ones left untouched."""

from __future__ import annotations

from django.http import QueryDict
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


class _PlainWithNulls(_Plain):
    note = serializers.CharField(required=False, allow_null=True)
    flag = serializers.BooleanField(required=False)

    def validate_note(self, value):
        if value == "bad":
            raise serializers.ValidationError("Not that note.")
        return value.upper() if value else value


class _FastWithNulls(FastInputSerializer, _PlainWithNulls):
    pass


BODIES = (
    {"name": "ok", "tags": ["x"]},
    {"name": "too long", "count": 0, "mode": "c"},
    {"count": "x", "tags": "not a list"},
    {"name": "ok", "count": 2, "mode": "b", "ignored": True},
    {},
    {"name": None, "note": None, "flag": None},
    {"name": "ok", "note": "hi", "flag": "true"},
    {"name": "ok", "note": "bad", "tags": None},
    ["not", "a", "mapping"],
    "not a mapping",
)


def _same(plain_class, fast_class, body, **kwargs):
    plain, fast = plain_class(data=body, **kwargs), fast_class(data=body, **kwargs)
    assert fast.is_valid() == plain.is_valid(), body
    assert fast.errors == plain.errors, body
    assert list(fast.errors) == list(plain.errors), body  # the same order
    if not fast.errors:
        assert fast.validated_data == plain.validated_data, body
        assert list(fast.validated_data) == list(plain.validated_data), body


def test_it_validates_and_refuses_exactly_as_drf_does():
    for body in BODIES:
        _same(_Plain, _Fast, body)
        _same(_PlainWithNulls, _FastWithNulls, body)


def test_partial_and_html_form_input_validate_exactly_as_drf_does():
    for body in BODIES[:8]:
        _same(_PlainWithNulls, _FastWithNulls, body, partial=True)
    form = QueryDict("name=ok&tags=a&tags=b&flag=on&note=")
    _same(_PlainWithNulls, _FastWithNulls, form)
    assert _FastWithNulls(data=form).is_valid()


def test_a_valid_body_makes_only_the_fields_it_is_decided_by():
    made = []

    class Counted(serializers.CharField):
        def bind(self, field_name, parent):
            made.append(field_name)
            super().bind(field_name, parent)

    class Input(FastInputSerializer):
        model = Counted()
        stream = serializers.BooleanField(default=False)
        user = Counted(required=False)
        seed = Counted(required=False)

    body = Input(data={"model": "m", "seed": "1"})
    assert body.is_valid(), body.errors
    assert body.validated_data == {"model": "m", "stream": False, "seed": "1"}
    assert made == ["model", "seed"]
    assert list(body.fields) == ["model", "stream", "user", "seed"]  # every field, when asked


def test_validators_and_read_only_defaults_still_apply():
    class Checked(FastInputSerializer):
        low = serializers.IntegerField()
        high = serializers.IntegerField()

        class Meta:
            validators = [lambda attrs: None]

        def validate(self, attrs):
            if attrs["low"] > attrs["high"]:
                raise serializers.ValidationError("low must not exceed high")
            return attrs

    class WithReadOnlyDefault(FastInputSerializer):
        name = serializers.CharField()
        kind = serializers.CharField(read_only=True, default="fixed")

        class Meta:
            validators = []

    refused = Checked(data={"low": 3, "high": 1})
    assert not refused.is_valid()
    assert refused.errors == {"non_field_errors": ["low must not exceed high"]}
    assert Checked(data={"low": 1, "high": 3}).is_valid()
    body = WithReadOnlyDefault(data={"name": "a", "kind": "ignored"})
    assert body.is_valid(), body.errors
    assert body.validated_data == {"name": "a"}


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
