"""A DAG's trigger form (its Params) made from the pydantic model that validates the params, so
that each constraint is written once: type, enum, bounds, description and default come from
the model's JSON schema."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Param
from pydantic import BaseModel

# JSON-schema keys a Param carries over (the form renders them; Airflow validates with them).
_KEEP = (
    "type",
    "enum",
    "items",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minLength",
    "maxLength",
    "properties",
    "additionalProperties",
    "required",
    "description",
    "title",
)


def params_of(
    model: type[BaseModel],
    defaults: dict[str, Any] | None = None,
    schema_extra: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Param]:
    """One Param per field of `model`, with `defaults` (else the field's own default) and
    `schema_extra`'s keys per field (what only the config knows, such as the enum of model
    ids)."""
    schema = model.model_json_schema()
    definitions = schema.get("$defs", {})
    params = {}
    for name, field in schema["properties"].items():
        spec = _inline(field, definitions)
        if "anyOf" in spec:  # X | None: the form's type list
            options = [_inline(o, definitions) for o in spec.pop("anyOf")]
            types = [o.get("type") for o in options if o.get("type")]
            spec["type"] = types
            for option in options:
                spec.update({k: v for k, v in option.items() if k != "type"})
        if defaults and name in defaults:
            default = defaults[name]
        else:
            default = model.model_fields[name].get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                default = default.model_dump()
        spec.update((schema_extra or {}).get(name, {}))
        params[name] = Param(default, **{k: v for k, v in spec.items() if k in _KEEP})
    return params


def _inline(spec: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """The field's schema with a $ref to a nested model replaced by that model's schema."""
    spec = dict(spec)
    ref = spec.pop("$ref", None)
    if ref is None and "allOf" in spec and len(spec["allOf"]) == 1:
        ref = spec.pop("allOf")[0].get("$ref")
    if ref is not None:
        resolved = dict(definitions[ref.rsplit("/", 1)[-1]])
        resolved.update(spec)
        spec = resolved
    if "properties" in spec:
        spec["properties"] = {k: _inline(v, definitions) for k, v in spec["properties"].items()}
    return spec
