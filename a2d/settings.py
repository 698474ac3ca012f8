"""Configuration sections, each declared once as a frozen dataclass.

A section's fields carry everything about a setting: the annotation gives its JSON type, `setting()`
its default, bounds or choices and a one-line description. From that one declaration follow the
YAML schema of the section (`Section.schema`), validation whenever one is built (YAML, JSON or
Python alike), and the hand-over to a command (`to_json` on the Snakemake side, `from_json` in the
CLI). A field added to a section is therefore settable from YAML and reaches its command with no
change to a rule or to the CLI. Checks between fields stay in the section's `check()`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any

import jsonschema


class ConfigError(ValueError):
    pass


def setting(default: Any = dataclasses.MISSING, doc: str = "", *, derived: bool = False, **schema):
    """A section field: `schema` holds JSON-schema keywords beyond the type (minimum, enum, ...);
    `derived` fields are set by the pipeline (e.g. vocabulary sizes), not in YAML."""
    metadata = {"doc": doc, "schema": schema, "derived": derived}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _json_type(annotation) -> dict:
    """JSON schema of a field's annotation: int, float, bool, str, list[...] and `X | None`."""
    if isinstance(annotation, types.UnionType):
        options = [_json_type(a) for a in typing.get_args(annotation) if a is not type(None)]
        return {"anyOf": [*options, {"type": "null"}]}
    if typing.get_origin(annotation) is list:
        return {"type": "array", "items": _json_type(typing.get_args(annotation)[0])}
    return {"type": {int: "integer", float: "number", bool: "boolean", str: "string"}[annotation]}


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


@dataclasses.dataclass(frozen=True)
class Section:
    """Base of every configuration section."""

    def __post_init__(self):
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        try:
            self.validator().validate(values)
        except jsonschema.ValidationError as err:
            key = ".".join(map(str, err.absolute_path))
            raise ValueError(f"{key}: {err.message}" if key else err.message) from None
        self.check()

    def check(self) -> None:
        """Checks between fields (a section's own; the field bounds are in its declaration)."""

    @classmethod
    @functools.cache
    def validator(cls) -> jsonschema.protocols.Validator:
        return jsonschema.Draft202012Validator(cls.schema(include_derived=True))

    @classmethod
    @functools.cache
    def schema(cls, include_derived: bool = False) -> dict:
        hints = typing.get_type_hints(cls)
        properties = {}
        for f in dataclasses.fields(cls):
            if f.metadata.get("derived") and not include_derived:
                continue
            meta = f.metadata.get("schema", {})
            items = meta.get("items")
            prop = {**_json_type(hints[f.name]), **{k: v for k, v in meta.items() if k != "items"}}
            if items:
                prop["items"] = {**prop["items"], **items}
            if f.metadata.get("doc"):
                prop["description"] = f.metadata["doc"]
            properties[f.name] = prop
        required = [f.name for f in dataclasses.fields(cls) if f.name in properties
                    and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        return {"type": "object", "additionalProperties": False, "properties": properties,
                **({"required": required} if required else {}),
                "description": (cls.__doc__ or cls.__name__).strip().splitlines()[0]}

    @classmethod
    def build(cls, values: dict, where: str):
        """The section from a mapping (YAML or JSON); unknown keys and bad values name `where`."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where}: {err}") from None

    def non_default(self) -> dict:
        """The fields whose values differ from their defaults."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != default_of(f)}

    def to_json(self) -> str:
        """What a command is handed: only what differs from the defaults, so that a new field (with
        its default) changes no existing command line and re-runs no Snakemake job."""
        return json.dumps(self.non_default(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{where}: not JSON ({err})") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: a JSON object of {cls.__name__} fields, not {text!r}")
        return cls.build(values, where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
