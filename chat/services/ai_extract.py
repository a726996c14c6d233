"""Structured extraction from an image (``POST /api/v1/ai/extract``): a vision model reads the
fields a JSON Schema describes, e.g. the name and birth date on a passport.

The model is asked through the choke point (``agents.llm.chat``) with the image as a data-URL
``image_url`` part and ``response_format`` ``json_schema``. Its answer is never trusted as is:

- keys the schema does not name are dropped (the answer never has keys the caller did not ask
  for), and every property the schema names is present, ``null`` when the model did not give it;
- the answer is validated with ``jsonschema``; a value that breaks the schema (a wrong type, a
  pattern, an enum) becomes ``null`` and a warning names the field and the rule it broke.

A schema that is not a valid JSON Schema, or that does not describe an object with properties,
answers 400 before anything is sent upstream. Only local ``$ref`` (``#/…``) are allowed: nothing
is ever fetched.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import jsonschema
from django.conf import settings
from jsonschema.validators import validator_for

from accounts.models import Organization, User
from agents import llm
from chat.services.ai_utils import IMAGE_KINDS, check_upload, sniff_image, usage_of
from core.errors import ApplicationError, ValidationError

logger = logging.getLogger(__name__)

MAX_IMAGE_BYTES = 10 * 1024 * 1024
MAX_SCHEMA_CHARS = 64 * 1024
MAX_INSTRUCTIONS_CHARS = 4000
MAX_PASSES = 5  # re-validations after nulling values (each pass nulls every offending value)

SYSTEM_PROMPT = (
    "You read documents and images and extract fields exactly as they appear. Answer with one JSON "
    "object that follows the given JSON Schema and nothing else. Use null for every field you "
    "cannot read with confidence; never guess or invent a value, and add no other keys."
)


class InvalidSchema(ValidationError):
    code = "ERR_INVALID_SCHEMA"
    message = "The schema is not a valid JSON Schema."


class ExtractionFailed(ApplicationError):
    """The model answered something that is not a JSON object."""

    status_code = 502
    code = "ERR_EXTRACTION_FAILED"
    message = "The model's answer was not a JSON object."


def _pointer(root: Any, ref: str) -> Any:
    """The part of ``root`` a local ``$ref`` (``#/a/b``) points at; KeyError when it is missing."""
    node = root
    for raw in ref[1:].lstrip("/").split("/") if ref not in ("#", "#/") else []:
        token = raw.replace("~1", "/").replace("~0", "~")
        node = node[int(token)] if isinstance(node, list) else node[token]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def parse_schema(raw: Any) -> dict[str, Any]:
    """The caller's schema (a JSON string or an object), checked; 400 ``ERR_INVALID_SCHEMA`` if bad."""
    if isinstance(raw, str):
        if len(raw) > MAX_SCHEMA_CHARS:
            raise InvalidSchema(f"schema: At most {MAX_SCHEMA_CHARS} characters.")
        try:
            schema = json.loads(raw)
        except ValueError as exc:
            raise InvalidSchema(f"schema: Not valid JSON ({exc}).") from None
    else:
        schema = raw
    if not isinstance(schema, dict):
        raise InvalidSchema("schema: A JSON Schema is a JSON object.")
    try:
        validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise InvalidSchema(
            f"schema: Not a valid JSON Schema: {exc.message}" + (f" (at {where})" if where else ""),
            details={"path": list(exc.path)},
        ) from None
    properties = schema.get("properties")
    if schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
        raise InvalidSchema('schema: Describe an object: {"type": "object", "properties": {…}}.')
    for ref in _refs(schema):
        if not ref.startswith("#"):
            raise InvalidSchema(f"schema: Only local references (#/…) are allowed, not {ref!r}.")
        try:
            _pointer(schema, ref)
        except (KeyError, IndexError, ValueError, TypeError):
            raise InvalidSchema(f"schema: The reference {ref!r} points at nothing.") from None
    return schema


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 20:
        schema = _pointer(root, schema["$ref"])
        seen += 1
    return schema


def _field(path: list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _prune(value: Any, schema: Any, root: dict[str, Any], path: list, warnings: list[dict]) -> Any:
    """Keep only the keys the schema names, and give every named property a value (null if none)."""
    schema = _resolve(schema, root)
    if not isinstance(schema, dict):
        return value
    properties = schema.get("properties")
    if isinstance(value, dict) and isinstance(properties, dict):
        for key in sorted(value.keys() - properties.keys()):
            warnings.append({"field": _field([*path, key]), "message": "Not in the schema; dropped."})
        return {
            key: _prune(value.get(key), sub, root, [*path, key], warnings) for key, sub in properties.items()
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_prune(item, schema["items"], root, [*path, i], warnings) for i, item in enumerate(value)]
    return value


def conform(answer: dict[str, Any], schema: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The answer cut to the schema, with values that break it set to null; and the warnings."""
    warnings: list[dict[str, str]] = []
    data = _prune(answer, schema, schema, [], warnings)
    validator = validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    for _ in range(MAX_PASSES):
        try:
            errors = sorted(validator.iter_errors(data), key=lambda e: len(e.absolute_path))
        except Exception as exc:  # a reference or keyword the validator could not apply
            logger.info("applying an extraction schema failed: %r", exc)
            raise InvalidSchema(f"schema: It could not be applied ({type(exc).__name__}).") from None
        changed = False
        for error in errors:
            path = list(error.absolute_path)
            if not path:
                continue  # the object itself: its properties are all present by construction
            parent: Any = data
            try:
                for part in path[:-1]:
                    parent = parent[part]
                current = parent[path[-1]]
            except (KeyError, IndexError, TypeError):
                continue  # inside a value an earlier error already nulled
            if current is None:
                continue  # not read: null is always an acceptable answer
            parent[path[-1]] = None
            warnings.append({"field": _field(path), "message": f"Set to null: {error.message}"})
            changed = True
        if not changed:
            break
    return data, warnings


def _parse_answer(text: str) -> dict[str, Any]:
    body = text.strip()
    if body.startswith("```"):  # a fenced block despite the instructions
        body = body.split("\n", 1)[1] if "\n" in body else ""
        body = body.rsplit("```", 1)[0]
    for candidate in (body, body[body.find("{") : body.rfind("}") + 1] if "{" in body else ""):
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    raise ExtractionFailed(details={"answer": text[:500]})


def extract_from_image(
    *,
    org: Organization,
    user: User,
    image: bytes,
    declared_type: str,
    schema: Any,
    instructions: str = "",
    model: str | None = None,
) -> dict[str, Any]:
    """Read the fields of ``schema`` from the image: ``{data, warnings, model, usage}``."""
    schema = parse_schema(schema)
    if len(instructions or "") > MAX_INSTRUCTIONS_CHARS:
        raise ValidationError(f"instructions: At most {MAX_INSTRUCTIONS_CHARS} characters.")
    kind = check_upload(
        data=image, declared_type=declared_type, kinds=IMAGE_KINDS, sniff=sniff_image,
        max_bytes=MAX_IMAGE_BYTES, what="image", field="image",
    )  # fmt: skip
    prompt = "Extract the fields of this JSON Schema from the image:\n" + json.dumps(schema)
    if instructions.strip():
        prompt += "\n\nInstructions: " + instructions.strip()
    data_url = f"data:{kind.content_type};base64,{base64.b64encode(image).decode()}"
    result = llm.chat(
        org=org,
        user=user,
        model=model or getattr(settings, "LLM_VISION_MODEL", "") or None,
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": prompt},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            },
        ],
        purpose="extraction",
        extra={
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "extraction", "schema": schema, "strict": False},
            }
        },
    )
    data, warnings = conform(_parse_answer(result.content or ""), schema)
    return {"data": data, "warnings": warnings, "model": result.model, "usage": usage_of(result)}
