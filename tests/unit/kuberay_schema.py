"""A small structural validator for KubeRay manifests against the CRD's OpenAPI v3 schema.

It walks a manifest and the ``openAPIV3Schema`` of the matching CRD version side by side and reports, as
``"<dotted.path>: <problem>"`` strings:

- fields the schema does not declare at that path (``properties``; ``additionalProperties`` as ``false``, ``true``
  or a schema; ``x-kubernetes-preserve-unknown-fields: true`` accepts anything below it);
- wrong types (object, array, string, integer, number, boolean; ``x-kubernetes-int-or-string`` accepts an integer
  or a string; ``nullable`` accepts null);
- values outside an ``enum``;
- missing ``required`` fields;
- and the simple bounds a CRD carries (``pattern``, ``minimum``, ``minLength``, ``maxLength``, ``minItems``).

CEL rules (``x-kubernetes-validations``) are not evaluated. The root ``metadata`` is declared as a bare ``object``
in every CRD (the API server validates it as ObjectMeta), so it is checked against a small ObjectMeta schema here.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["OBJECT_META_SCHEMA", "crd_schema", "validate", "validate_manifest"]

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

# The ObjectMeta fields a manifest author writes (the rest are set by the API server).
OBJECT_META_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253},
        "generateName": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}


def crd_schema(crd: dict[str, Any], api_version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the CRD version named by a manifest's ``apiVersion`` (``group/version``).

    Raises:
        KeyError: the CRD does not belong to that group or does not serve that version.
    """
    group, _, version = api_version.rpartition("/")
    spec = crd["spec"]
    if group != spec["group"]:
        raise KeyError(f"apiVersion {api_version!r} is not in the CRD's group {spec['group']!r}")
    for v in spec["versions"]:
        if v["name"] == version:
            if not v.get("served", False):
                raise KeyError(f"version {version!r} of {spec['names']['kind']} is not served")
            return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"{spec['names']['kind']} has no version {version!r}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_ok(value: Any, schema: dict[str, Any]) -> tuple[bool, str]:
    """Whether ``value`` has the schema's type; also returns the expected type for the message."""
    if value is None and schema.get("nullable"):
        return True, "null"
    if schema.get("x-kubernetes-int-or-string"):
        return _type_name(value) in ("integer", "string"), "integer or string"
    expected = schema.get("type")
    if expected is None:
        return True, "any"
    actual = _type_name(value)
    if expected == "number":
        return actual in ("integer", "number"), expected
    return actual == expected, expected


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def validate(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Errors of ``value`` against ``schema``; each names the dotted path (``a.b[0].c``) it concerns."""
    where = path or "(root)"
    ok, expected = _type_ok(value, schema)
    if not ok:
        return [f"{where}: expected {expected}, got {_type_name(value)} ({value!r})"]
    errors: list[str] = []

    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(repr(e) for e in schema["enum"])
        errors.append(f"{where}: {value!r} is not one of {allowed}")

    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{where}: {value!r} does not match pattern {schema['pattern']!r}")
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(f"{where}: shorter than {schema['minLength']} characters")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(f"{where}: longer than {schema['maxLength']} characters")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{where}: {value} is below the minimum {schema['minimum']}")

    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{where}: needs at least {schema['minItems']} item(s)")
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                errors.extend(validate(item, items, f"{path}[{i}]"))

    if isinstance(value, dict):
        errors.extend(_validate_object(value, schema, path))
    return errors


def _validate_object(value: dict[str, Any], schema: dict[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    where = path or "(root)"
    for name in schema.get("required", []):
        if name not in value:
            errors.append(f"{_join(path, name)}: missing required field (required by {where})")
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        # Anything is kept below this node; still check the fields that are declared.
        props = schema.get("properties", {})
        for key, child in value.items():
            if key in props:
                errors.extend(validate(child, props[key], _join(path, key)))
        return errors
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", False)
    for key, child in value.items():
        child_path = _join(path, str(key))
        if key in props:
            errors.extend(validate(child, props[key], child_path))
        elif isinstance(extra, dict):
            errors.extend(validate(child, extra, child_path))
        elif extra is True:
            continue
        else:
            errors.append(f"{child_path}: unknown field")
    return errors


def validate_manifest(manifest: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Errors of a whole manifest (apiVersion/kind/metadata/spec) against its CRD's ``openAPIV3Schema``."""
    if not isinstance(manifest, dict):
        return [f"(root): expected object, got {_type_name(manifest)}"]
    root = dict(schema)
    props = dict(root.get("properties", {}))
    meta = props.get("metadata", {})
    if meta.get("type") == "object" and "properties" not in meta and "additionalProperties" not in meta:
        props["metadata"] = OBJECT_META_SCHEMA
    root["properties"] = props
    errors = validate(manifest, root)
    for name in ("apiVersion", "kind", "metadata"):
        if name not in manifest:
            errors.append(f"{name}: missing required field")
    if isinstance(manifest.get("metadata"), dict) and not (
        manifest["metadata"].get("name") or manifest["metadata"].get("generateName")
    ):
        errors.append("metadata.name: missing required field")
    return errors
