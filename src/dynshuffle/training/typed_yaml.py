"""Typed YAML sections: a dataclass of dataclasses read from and written to YAML, with every value checked.

The engine behind `training.config`, which holds the schema. A config is a root dataclass whose fields are
sections (dataclasses), whose fields are keys. A key's field metadata (`key(...)`) can give its YAML name
when it differs from the attribute (`lambda` for `lambda_`), its allowed values (a tuple, or a callable
looked up when a value is set) and a line of documentation. Values are checked against the annotations
(`int`, `float`, `bool`, `str`, `list[...]`, `Optional[...]`); a wrong type, a value outside the choices,
an unknown section or key raises ValueError naming `section.key`.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Optional

import yaml

__all__ = ["key", "yaml_key", "to_dict", "to_yaml", "lookup", "get", "set_value", "load_mapping",
           "load_overrides", "parse_override", "read_yaml", "suggest"]


def key(name: str | None = None, choices=None, doc: str = "") -> dict:
    """Field metadata: the YAML key when it differs from the attribute (e.g. `lambda`), the allowed values (a
    tuple, or a callable returning them), a line of documentation."""
    meta: dict[str, Any] = {"doc": doc}
    if name:
        meta["key"] = name
    if choices:
        meta["choices"] = choices
    return meta


def yaml_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def to_dict(root: Any) -> dict:
    """{section: {yaml key: value}} of every key."""
    return {sec.name: {yaml_key(f): _plain(getattr(getattr(root, sec.name), f.name))
                       for f in dataclasses.fields(getattr(root, sec.name))}
            for sec in dataclasses.fields(root)}


def to_yaml(root: Any) -> str:
    return yaml.safe_dump(to_dict(root), sort_keys=False, default_flow_style=False)


def _fields_by_key(section: Any) -> dict[str, dataclasses.Field]:
    return {yaml_key(f): f for f in dataclasses.fields(section)}


def _hints(section: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(section))


def suggest(word: str, options, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f"; did you mean '{prefix}{close[0]}'?" if close else ""


def _section_names(root: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(root)]


def _unknown_section(root: Any, name: str) -> ValueError:
    sections = _section_names(root)
    return ValueError(f"unknown config section {name!r}{suggest(str(name), sections)} "
                      f"(sections: {', '.join(sections)})")


def lookup(root: Any, dotted: str) -> tuple[Any, dataclasses.Field]:
    """(section object, field) of `section.key`; ValueError naming an unknown section or key."""
    parts = dotted.split(".")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"config key {dotted!r}: expected 'section.key', e.g. 'optim.lr' "
                         f"(sections: {', '.join(_section_names(root))})")
    sec_name, name = parts
    if sec_name not in _section_names(root):
        raise _unknown_section(root, sec_name)
    section = getattr(root, sec_name)
    fields = _fields_by_key(section)
    if name not in fields:
        raise ValueError(f"unknown config key '{sec_name}.{name}'{suggest(name, fields, sec_name + '.')} "
                         f"(keys of {sec_name}: {', '.join(fields)})")
    return section, fields[name]


def get(root: Any, dotted: str) -> Any:
    section, f = lookup(root, dotted)
    return getattr(section, f.name)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        (inner,) = typing.get_args(tp)
        return f"list of {_type_name(inner)}"
    return getattr(tp, "__name__", str(tp))


def _coerce(dotted: str, tp: Any, value: Any) -> Any:
    """Check `value` against the annotation `tp`; return it converted (int -> float, list/tuple -> list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        try:
            return _coerce(dotted, inner, value)
        except ValueError:
            raise ValueError(f"config key {dotted!r}: expected {_type_name(tp)}, got {value!r} "
                             f"({type(value).__name__})") from None
    bad = ValueError(f"config key {dotted!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(dotted, inner, v) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise TypeError(f"unsupported config type {tp!r} for {dotted!r}")


def set_value(root: Any, dotted: str, value: Any) -> None:
    """Set one key (`section.key`) with type and choice checks."""
    section, f = lookup(root, dotted)
    value = _coerce(dotted, _hints(section)[f.name], value)
    choices = f.metadata.get("choices")
    if callable(choices):  # looked up when used, e.g. the data registry's names
        choices = tuple(choices())
    if choices and value is not None and value not in choices:
        raise ValueError(f"config key {dotted!r}: {value!r} is not one of {', '.join(map(str, choices))}")
    setattr(section, f.name, value)


def load_mapping(root: Any, data: Any) -> Any:
    """Set every key of a nested mapping {section: {key: value}} (a parsed YAML file) on `root`."""
    if not isinstance(data, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(data).__name__}")
    for sec_name, values in data.items():
        if sec_name not in _section_names(root):
            raise _unknown_section(root, sec_name)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ValueError(f"config section {sec_name!r}: expected a mapping of keys, got {values!r}")
        for name, value in values.items():
            set_value(root, f"{sec_name}.{name}", value)
    return root


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ValueError(f"--set {text!r}: expected key=value, e.g. optim.lr=0.1")
    dotted, raw = text.split("=", 1)
    return dotted.strip(), raw.strip()


def load_overrides(root: Any, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Set `section.key=value` strings on `root`. Values are read as YAML scalars (`0.1`, `true`, `null`,
    `[2, 3]`); a string-typed key takes the text as it is."""
    for text in overrides:
        dotted, raw = parse_override(text)
        section, f = lookup(root, dotted)
        tp = _hints(section)[f.name]
        if raw.lower() in ("null", "none", "~"):
            value: Any = None
        elif tp is str or tp == Optional[str]:
            value = raw
        else:
            try:
                value = yaml.safe_load(raw)
            except yaml.YAMLError:
                value = raw
        set_value(root, dotted, value)
    return root


def read_yaml(path: str | Path) -> Any:
    """The parsed YAML file; FileNotFoundError or a ValueError naming `file:line:column` and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"{where}: not valid YAML ({problem})") from None
