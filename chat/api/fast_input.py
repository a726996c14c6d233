"""The base of the input serializers on the path to a stream's first token (``/v1`` completions
and responses, ``POST /api/v1/chat``).

DRF gives every serializer instance deep copies of all its declared fields (each field's constructor
runs again), then validates each of them, raising and catching ``SkipField`` for every optional
field the body leaves out. A completion request names three of the twenty fields the OpenAI
surface accepts, and this ran on the event loop for every stream that starts: 0.4 ms in place
(``bench/stream_fanout.py``), most of the body's handling.

Here validation looks only at the fields that can add something to the result or an error: the
ones the body names, and the ones that act when absent (required, or with a default). Any other
optional field would raise ``SkipField`` and be left out, so leaving it out at once gives the same
``validated_data`` and the same errors, in the declared order. Those fields are shallow clones of
the declared ones (a new field object with the declared one's attributes, bound to this
serializer as usual), made as they are needed; what a clone shares with the declared field
(validators, error messages, a ``ListField``'s child) is never mutated by validation. ``copy.copy``
would do the same through ``__reduce_ex__`` at three times the cost; DRF's ``Field.__new__``
(which records the constructor's arguments for ``deepcopy``) is not run again, and the clone keeps
the recorded ones. ``serializer.fields`` (schemas, representations) still holds every field.

Partial validation, HTML form input, a ``get_fields`` of a subclass's own and read-only fields
with defaults go DRF's own way; ``Meta.validators``, ``validate_<field>`` and ``validate`` run as in
DRF.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache

from rest_framework import serializers
from rest_framework.fields import empty
from rest_framework.utils import html


def _clone(declared: serializers.Field) -> serializers.Field:
    clone = object.__new__(type(declared))
    clone.__dict__.update(declared.__dict__)
    return clone


@cache
def _plan(cls: type[FastInputSerializer]) -> tuple[tuple[str, ...], frozenset[str]] | None:
    """The writable field names of ``cls`` in declared order and those that act when absent, or
    None when the class must validate DRF's way (a read-only field with a default)."""
    declared = cls._declared_fields
    if any(field.read_only and field.default is not empty for field in declared.values()):
        return None
    writable = tuple(name for name, field in declared.items() if not field.read_only)
    acting = frozenset(
        name for name in writable if declared[name].required or declared[name].default is not empty
    )
    return writable, acting


class FastInputSerializer(serializers.Serializer):
    """A ``Serializer`` that validates only the fields a body can be decided by (see the module
    doc); its fields are shallow clones of the declared ones."""

    def get_fields(self):
        return {name: _clone(declared) for name, declared in self._declared_fields.items()}

    def _fast_plan(self) -> tuple[tuple[str, ...], frozenset[str]] | None:
        """The class's plan (:func:`_plan`) when this body can be validated by it, else None."""
        data = getattr(self, "initial_data", None)
        if (
            self.partial
            or not isinstance(data, Mapping)
            or html.is_html_input(data)
            or type(self).get_fields is not FastInputSerializer.get_fields
        ):
            return None
        return _plan(type(self))

    @property
    def _writable_fields(self):
        plan = self._fast_plan()
        if plan is None:
            yield from super()._writable_fields
            return
        writable, acting = plan
        built = self.__dict__.get("fields")  # already made for someone else: use those
        for name in writable:
            if name in acting or name in self.initial_data:
                if built is not None:
                    yield built[name]
                    continue
                field = _clone(self._declared_fields[name])
                field.bind(field_name=name, parent=self)
                yield field

    def run_validators(self, value):
        # DRF adds the read-only fields' defaults for the validators; without validators there is
        # nothing to add them for, and finding them would make every field.
        if self.validators:
            super().run_validators(value)
