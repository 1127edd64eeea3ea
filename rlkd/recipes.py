"""Typed recipes: dataclasses filled from YAML and ``--set`` overrides, each field carrying its help.

The machinery every job's configuration uses (:mod:`rlkd.config` holds the jobs themselves), knowing
nothing of the method:

1. :func:`option` and :func:`section` declare a field with its help text (and allowed values) in the
   metadata, so ``--help`` epilogs (:func:`fields_help`) and recipes share one owner per default.
2. :func:`read_recipe` / :func:`load_yaml` read YAML safely and in bounded time (no aliases, no repeated
   keys, at most :data:`MAX_RECIPE_BYTES`); :func:`merge_overrides` applies ``--set a.b=value`` (the
   value read as YAML).
3. :func:`build_dataclass` builds the (nested) dataclass, converting and checking every value; every
   error is a :class:`~rlkd.errors.ConfigError` whose message starts with the dotted field name.
4. :func:`dump_yaml` writes a job back as a recipe that reads back to an equal job.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Mapping, Sequence

from rlkd.errors import ConfigError
from rlkd.files import read_text


def option(default: Any, help: str, choices: Sequence[Any] | None = None, metavar: str | None = None) -> Any:
    """A dataclass field with its help text, allowed values and the placeholder a command line shows for its
    value (``metavar``, e.g. ``IN.jsonl``) in the metadata; ``dataclasses.MISSING`` as the default makes a
    required field. The command line's options are generated from these (``rlkd.cli.options.add_fields``)."""
    meta = {"help": help, "choices": tuple(choices) if choices else None, "metavar": metavar}
    if default is dataclasses.MISSING:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    if dataclasses.is_dataclass(default):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)  # no shared dicts
    return field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:
    """A nested configuration section (a dataclass field holding another dataclass)."""
    return field(default_factory=cls, metadata={"help": help, "choices": None, "metavar": None})


# --------------------------------------------------------------------------------------------------
# Field checks


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _require(job: Any, *dotted: str) -> None:
    for name in dotted:
        if not _get(job, name):
            raise ConfigError(f"{name}: required (set it in the recipe or with --set {name}=...)")


def _positive(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is not None and value <= 0:
            where = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{where}: must be > 0, got {value}")


def _within(obj: Any, prefix: str, name: str, low: float | None, high: float | None, low_open: bool = False) -> None:
    """Raise ConfigError naming ``prefix.name`` unless its value (None is skipped) lies in [low, high]
    (``(low, high]`` with ``low_open``); None for a bound means unbounded."""
    value = getattr(obj, name)
    if value is None:
        return
    where = f"{prefix}.{name}" if prefix else name
    too_low = low is not None and (value <= low if low_open else value < low)
    if too_low or (high is not None and value > high):
        left = "(" if low_open else "["
        shown = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
        raise ConfigError(f"{where}: must be within {shown}, got {value}")


# --------------------------------------------------------------------------------------------------
# Reading a recipe


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is Any:
        return "any value"
    return {"str": "string", "int": "integer", "float": "number", "bool": "true/false",
            "dict": "mapping", "list": "list"}.get(getattr(tp, "__name__", str(tp)), getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int accepted for float); raise naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got null")
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError:
                pass  # try the next type of the union
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {_describe(value)}")
        return build_dataclass(tp, value, where + ".")
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        (it,) = typing.get_args(tp)
        return [_convert(v, it, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: must be a finite number, got {value}")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}")


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{_type_name(type(value))} {text}"


def build_dataclass(cls: type, data: Mapping[str, Any], prefix: str = "") -> Any:
    """An instance of the dataclass ``cls`` from a mapping: nested sections built recursively, every value
    converted to the field's type, unknown keys (with a suggestion), wrong types and values outside the
    field's choices raised as ConfigError naming the dotted field."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        key = str(key)
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(f"{prefix}{key}: unknown field of {cls.__name__}{hint}; known fields: "
                              f"{', '.join(fields)}")
        where = prefix + key
        converted = _convert(value, hints[key], where)
        choices = fields[key].metadata.get("choices")
        if choices and converted is not None and converted not in choices:
            raise ConfigError(f"{where}: {converted!r} is not one of {', '.join(map(str, choices))}")
        kwargs[key] = converted
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value read as YAML)."""
    import yaml

    if "=" not in text:
        raise ConfigError(f"--set {text}: expected KEY=VALUE, e.g. --set training.max_steps=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text}: empty field name")
    try:
        value = load_yaml(raw, f"--set {key}") if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({' '.join(str(exc).split())})") from None
    return key.split("."), value


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of settings; anything far larger is a mistake
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$")


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML the safe way, in bounded time and memory: plain data only (``yaml.SafeLoader``), no
    aliases (``*name``, which can expand exponentially), no key given twice in one mapping, at most
    MAX_RECIPE_BYTES. Raises ConfigError naming ``source`` and the line; yaml.YAMLError for bad syntax."""
    import yaml

    if len(text.encode("utf-8", errors="replace")) > MAX_RECIPE_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_RECIPE_BYTES} bytes; a recipe is a page of settings")

    class RecipeLoader(yaml.SafeLoader):
        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ConfigError(f"{source}: line {event.start_mark.line + 1}: YAML aliases (*{event.anchor}) "
                                  "are not accepted; write the value out")
            return super().compose_node(parent, index)

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: the base class reports it
                    break
                if first is not None:
                    raise ConfigError(f"{source}: line {key_node.start_mark.line + 1}: key {key!r} appears twice "
                                      f"in one mapping (first on line {first})")
                seen[key] = key_node.start_mark.line + 1
            return super().construct_mapping(node, deep=deep)

    # YAML 1.2 reads 1e-3 as a number; PyYAML's YAML 1.1 rules would make it the string '1e-3'
    RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    loader = RecipeLoader(text)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None
    finally:
        loader.dispose()


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe as a mapping (an empty file is an empty mapping)."""
    import yaml

    if Path(path).is_file() and Path(path).stat().st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_RECIPE_BYTES} bytes; a recipe is a page of settings")
    text = read_text(path, "recipe file", ConfigError, "; save the recipe as UTF-8", dash_is_stdin=False)
    try:
        data = load_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of fields, got {type(data).__name__}")
    return data


def merge_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to a recipe mapping (a copy)."""
    import copy

    data = copy.deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {text}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return data


# --------------------------------------------------------------------------------------------------
# Printing


def to_dict(job: Any) -> dict[str, Any]:
    """The job as plain data, fields in declaration order."""
    return dataclasses.asdict(job)


def dump_yaml(job: Any) -> str:
    """The job as a YAML recipe that :func:`load_job` reads back to an equal job."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None  # multi-line strings (system prompts) as literal blocks
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(to_dict(job), Dumper=Dumper, sort_keys=False, allow_unicode=True, width=100)


def describe_fields(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, help) for every field of a job, nested sections flattened."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows += describe_fields(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_text += f" [{'|'.join(map(str, f.metadata['choices']))}]"
        rows.append((prefix + f.name, repr(default) if not isinstance(default, str) else default, help_text))
    return rows


def fields_help(cls: type) -> str:
    """Text listing every field of a job with its default and help (used as the --help epilog)."""
    lines = [f"{cls.__name__} fields (recipe keys; override with --set NAME=VALUE):"]
    for name, default, help_text in describe_fields(cls):
        shown = default if len(default) <= 40 else default[:37] + "..."
        shown = shown.replace("\n", "\\n")
        lines.append(f"  {name} = {shown}\n      {help_text}")
    return "\n".join(lines)
