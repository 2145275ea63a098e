"""Request-body schemas of the POST routes for the OpenAPI document at ``/openapi.json`` (documentation
and fuzzing; bodies are parsed by :mod:`.requests` and validated by the backend, not by these)."""

from __future__ import annotations

from typing import Any

_ANY_ID = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
_TASK = {
    "type": "object",
    "properties": {"id": {"type": "integer"}, "data": {"type": "object", "additionalProperties": True}},
    "required": ["data"],
}
_REGION = {"type": "object", "additionalProperties": True}
_ERRORS = {
    str(code): {"description": text}
    for code, text in [
        (400, "malformed request"),
        (401, "authentication required"),
        (413, "over a size limit"),
        (415, "not application/json"),
        (422, "cannot be served (prompt, label, image)"),
        (424, "the task's image could not be fetched"),
    ]
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
        "responses": _ERRORS,
    }


SETUP = _body(
    {
        "type": "object",
        "properties": {
            "project": _ANY_ID,
            "schema": {"type": "string", "description": "the project's label config XML"},
            "hostname": {"type": "string"},
            "access_token": {"type": "string"},
            "extra_params": {"anyOf": [{"type": "object"}, {"type": "string"}]},
        },
        "required": ["schema"],
    }
)
PREDICT = _body(
    {
        "type": "object",
        "properties": {
            "tasks": {"type": "array", "items": _TASK, "minItems": 1},
            "project": _ANY_ID,
            "label_config": {"type": "string"},
            "params": {
                "type": "object",
                "properties": {
                    "context": {
                        "anyOf": [
                            {"type": "null"},
                            {"type": "object", "properties": {"result": {"type": "array", "items": _REGION}}},
                        ]
                    }
                },
            },
        },
        "required": ["tasks"],
    }
)
WEBHOOK = _body(
    {
        "type": "object",
        "properties": {
            "action": {"type": "string"},
            "project": {"anyOf": [{"type": "object"}, {"type": "integer"}]},
            "tasks": {"type": "array", "items": _TASK},
        },
        "required": ["action"],
    }
)
