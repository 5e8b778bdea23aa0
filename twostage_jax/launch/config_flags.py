"""The launcher's `--config=FILE[:variants]` and `--config.a.b=VALUE` flags.

A config file is a Python file whose `get_config(variants) -> LaunchConfig` builds the config
(`experiments/configs/`); `--config.a.b=VALUE` replaces one field. Hand-written because the
config is frozen dataclasses: ml_collections' config flags set attributes, which frozen
dataclasses refuse, so here each VALUE is parsed by the type its field declares and the tree
is rebuilt with `dataclasses.replace` (`config.replace_path`), which runs each dataclass's checks.

Paths: any field by its dotted name (`--config.stage1.network.mlp_hidden=16`); stage 2's method
fields (`tj.Stage2Config`) also directly under `stage2` (`--config.stage2.crop_size=16` is
`--config.stage2.stage2.crop_size=16`). Values: ints, floats (`nan`, `1e-3`), `True`/`False`,
strings (quotes optional), tuples as literals (`(2,)`, `(1, 1, 1, 0, 0, 0, 1)`), `None` where the
field allows it.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import sys
import types
import typing
from pathlib import Path
from typing import Any

import twostage_jax as tj
from twostage_jax.launch.config import (ConfigError, LaunchConfig, StageConfig, UnknownFieldError,
                                        field_types, nested_names, replace_path)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "experiments" / "configs" / "quickstart.py"
"""The quickstart config of this checkout (the launcher's default `--config`)."""


@dataclasses.dataclass(frozen=True)
class Override:
    """One `--config.a.b=VALUE` flag: `flag` as given, the field's canonical dotted `path`, and
    the parsed `value`."""

    flag: str
    path: str
    value: Any


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """argv without its `--config.a.b=VALUE` flags, and those flags as (name after '--', text).

    Raises:
      ValueError: a `--config.a.b` without '=VALUE'.
    """
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith("--config."):
            name, eq, text = arg[2:].partition("=")
            if not eq:
                raise ValueError(f"--{name}: give its value as --{name}=VALUE.")
            overrides.append((name, text))
        else:
            rest.append(arg)
    return rest, overrides


def resolve(dotted: str) -> tuple[str, Any]:
    """The canonical dotted path of a field named after `config.`, and its annotation.

    Raises:
      UnknownFieldError: no such field (with the closest name that could stand there).
    """
    cls: Any = LaunchConfig
    done: list[str] = []
    names = dotted.split(".")
    kind: Any = None
    for i, name in enumerate(names):
        if cls is None:
            raise UnknownFieldError(".".join(done + [name]), name, [])
        types_ = field_types(cls)
        known = list(types_)
        if cls is StageConfig and done == ["stage2"] and name not in types_:  # the shorthand
            inner = field_types(tj.Stage2Config)
            if name in inner:
                done.append("stage2")
                types_ = inner
            known += list(inner)
        if name not in types_:
            raise UnknownFieldError(".".join(done + [name]), name, known, nested_names(cls, name))
        kind = types_[name]
        done.append(name)
        cls = kind if dataclasses.is_dataclass(kind) else None
    return ".".join(done), kind


def parse_value(text: str, kind: Any, path: str) -> Any:
    """The command-line text of a field as its declared type `kind`.

    Raises:
      ConfigError: naming `config.PATH`, what was expected and the text given.
    """
    parent, _, leaf = f"config.{path}".rpartition(".")

    def bad(expected: str) -> ConfigError:
        return ConfigError(parent, leaf, f"must be {expected}; got {text!r}.")

    def literal() -> Any:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if text.strip() == "None" and type(None) in args:
            return None
        options = sorted((a for a in args if a is not type(None)), key=lambda a: a is str)  # str: last
        for option in options[:-1]:
            try:
                return parse_value(text, option, path)
            except ConfigError:
                pass
        return parse_value(text, options[-1], path)
    if dataclasses.is_dataclass(kind):
        first = dataclasses.fields(kind)[0].name
        raise ConfigError(parent, leaf, f"is a group of fields; set one of them, e.g. "
                          f"--config.{path}.{first}=VALUE.")
    if kind is bool:
        if text.strip().lower() in ("true", "1"):
            return True
        if text.strip().lower() in ("false", "0"):
            return False
        raise bad("True or False")
    if kind is int:
        value = literal()
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an int")
        return value
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if kind is str:
        value = literal()
        return value if isinstance(value, str) else text
    if origin is tuple:
        value = literal()
        if isinstance(value, str) and (args[0] if args else Any) is float:
            value = _float_tuple(text)  # with nan or inf, which are no Python literals
        if not isinstance(value, (tuple, list)):
            raise bad("a tuple, e.g. (2,) or (1, 2)")
        inner = args[0] if args else Any
        if inner in (int, float) and not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             for v in value):
            raise bad(f"a tuple of {'ints' if inner is int else 'numbers'}")
        if inner is int and not all(isinstance(v, int) for v in value):
            raise bad("a tuple of ints")
        return tuple(float(v) if inner is float else v for v in value)
    return literal()


def _float_tuple(text: str) -> tuple[float, ...] | str:
    """'(0.1, nan, 1)' as a tuple of floats (`float` reads nan and inf), or `text` if it is none."""
    inner = text.strip()
    if len(inner) >= 2 and (inner[0], inner[-1]) in (("(", ")"), ("[", "]")):
        inner = inner[1:-1]
    items = [x.strip() for x in inner.split(",")]
    if items and not items[-1] and len(items) > 1:  # '(2,)'
        items = items[:-1]
    try:
        return tuple(float(x) for x in items)
    except ValueError:
        return text


def parse_overrides(overrides: list[tuple[str, str]]) -> list[Override]:
    """`split_overrides`'s flags with their fields resolved and values parsed.

    Raises:
      ValueError: one line naming the flag: an unknown field (`--config.a.b: the config has no
        field 'b'; did you mean 'c'?`) or a value of the wrong type.
    """
    parsed = []
    for name, text in overrides:
        try:
            path, kind = resolve(name[len("config."):])
        except UnknownFieldError as e:
            hint = (f"; did you mean {' or '.join(repr(n) for n in e.suggestions)}?"
                    if e.suggestions else ".")
            raise ValueError(f"--{name}: the config has no field {e.name!r}{hint}") from None
        parsed.append(Override(f"--{name}", path, parse_value(text, kind, path)))
    return parsed


def apply_overrides(config: LaunchConfig, overrides: list[Override]) -> LaunchConfig:
    """`config` with every override applied at once (the later of two on one field wins).

    Raises:
      ConfigError: a value a dataclass refuses, naming the field's dotted path.
    """
    try:
        return replace_path(config, {o.path: o.value for o in overrides}) if overrides else config
    except ConfigError as e:
        field = f"{e.owner}.{e.field}" if e.owner else e.field
        given = [o.flag for o in overrides if f"config.{o.path}" == field and o.flag != f"--{field}"]
        if given:  # set through a shorthand (--config.stage2.sigma): name the flag as typed too
            raise ConfigError(e.owner, e.field, f"(set by {given[-1]}) {e.message}") from None
        raise


def load_config_file(spec: str) -> LaunchConfig:
    """`FILE[:variants]`: the file's `get_config(variants)`.

    A config file inside a package folder (experiments/configs/) imports its siblings by their
    package name, so the folder holding that package is put on `sys.path` first.

    Raises:
      ValueError: the file is missing, has no `get_config`, or returns no `LaunchConfig`
        (errors of `get_config` itself, such as an unknown variant, pass through).
    """
    path_text, _, arg = spec.partition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ValueError(f"--config: no config file at {path}" + (
            " (the default config is the quickstart of a source checkout; give --config=FILE)"
            if path == DEFAULT_CONFIG else "."))
    root = path.resolve().parent
    while (root / "__init__.py").exists():
        root = root.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    module_spec = importlib.util.spec_from_file_location(f"_launch_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # a syntax error, a failed import: one line naming the file
        raise ValueError(f"--config: {path} failed to load ({type(e).__name__}: {e}).") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config: {path} has no get_config(variants) function.")
    config = module.get_config(arg or None)
    if not isinstance(config, LaunchConfig):
        raise ValueError(f"--config: {path}'s get_config returned {type(config).__name__}, not a "
                         "LaunchConfig.")
    return config
