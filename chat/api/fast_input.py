"""The base of the input serializers on the path to a stream's first token (``/v1`` completions
and responses, ``POST /api/v1/chat``).

DRF gives every serializer instance deep copies of the declared fields (each field's constructor
runs again); for these bodies that was most of the validation's time, on the event loop, for every
stream that starts (``bench/stream_fanout.py``). Here each instance gets shallow clones instead:
a new field object with the declared one's attributes, bound to this serializer as usual. What a
clone shares with the declared field (validators, error messages, a ``ListField``'s child) is never
mutated by validation. ``copy.copy`` would do the same through ``__reduce_ex__`` at three times the
cost; DRF's ``Field.__new__`` (which records the constructor's arguments for ``deepcopy``) is not
run again, and the clone keeps the recorded ones.
"""

from __future__ import annotations

from rest_framework import serializers


class FastInputSerializer(serializers.Serializer):
    """A ``Serializer`` whose fields are shallow clones of the declared ones (see the module doc)."""

    def get_fields(self):
        fields = {}
        for name, declared in self._declared_fields.items():
            clone = object.__new__(type(declared))
            clone.__dict__.update(declared.__dict__)
            fields[name] = clone
        return fields
