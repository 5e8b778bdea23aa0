"""The launcher's config from its flags: `--config=NAME[:variants]` and `--config.a.b=VALUE`.

NAME is a built-in config (`twostage_jax/configs/NAME.py`: quickstart, paper, repro, smoke) or
a Python file of yours; either has `get_config(variants) -> LaunchConfig`. `--config.a.b=VALUE`
replaces the field at that dotted path, its text parsed by the type the field declares: ints,
floats (`nan`, `1e-3`), `True`/`False`, strings (quotes optional), tuples as literals (`(2,)`),
a tuple of names also as the names between commas (`front,wrist`), a tuple of pairs also as a
dict literal (`{'a': 'b'}`), and `None` where the field allows it.

Written here (under 150 lines) rather than taken from a library: ml_collections' config flags
set attributes, which frozen dataclasses refuse, and tyro or draccus would replace absl's flags
and change the spelling of every `--config.a.b=VALUE` command.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import sys
import types
import typing
from pathlib import Path
from typing import Any

from twostage_jax.launch.launch_config import ConfigError, LaunchConfig, UnknownFieldError, field_type, replace_path

BUILT_IN = ("quickstart", "paper", "repro", "smoke")
DEFAULT_CONFIG = "quickstart"


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """argv without its `--config.a.b=VALUE` flags, and those as (dotted path after 'config.', text).

    Raises:
      ValueError: a `--config.a.b` without '=VALUE'.
    """
    rest, overrides = [], []
    for arg in argv:
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        name, eq, text = arg[2:].partition("=")
        if not eq:
            raise ValueError(f"--{name}: give its value as --{name}=VALUE.")
        overrides.append((name.removeprefix("config."), text))
    return rest, overrides


def parse_value(text: str, kind: Any, path: str) -> Any:
    """The command-line `text` of the field at `path` as its declared type `kind`.

    Raises:
      ConfigError: naming `config.PATH`, what was expected and the text given.
    """
    parent, _, leaf = f"config.{path}".rpartition(".")
    try:
        literal = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        literal = text
    origin, args = typing.get_origin(kind), typing.get_args(kind)

    def bad(expected: str) -> ConfigError:
        return ConfigError(parent, leaf, f"must be {expected}; got {text!r}.")

    if origin in (typing.Union, types.UnionType):
        if text.strip() == "None" and type(None) in args:
            return None
        options = sorted((a for a in args if a is not type(None)), key=lambda a: a is str)  # str last
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
        if text.strip().lower() not in ("true", "false", "1", "0"):
            raise bad("True or False")
        return text.strip().lower() in ("true", "1")
    if kind is int:
        if isinstance(literal, bool) or not isinstance(literal, int):
            raise bad("an int")
        return literal
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise bad("a number") from None
    if kind is str:
        return literal if isinstance(literal, str) else text
    if origin is tuple:
        inner = args[0] if args else Any
        if isinstance(literal, str) and inner is float:  # nan and inf are no Python literals
            try:
                literal = tuple(float(x) for x in text.strip().strip("()[]").split(",") if x.strip())
            except ValueError:
                pass
        if isinstance(literal, str) and inner is str:  # names: a,b (no quotes needed)
            literal = tuple(x.strip() for x in text.strip().strip("()[]").split(",") if x.strip())
        pairs = typing.get_origin(inner) is tuple and len(typing.get_args(inner)) == 2
        if isinstance(literal, dict) and pairs:  # {'a': 'b'}: the pairs (a, b)
            literal = tuple(literal.items())
        if not isinstance(literal, (tuple, list)):
            raise bad("a tuple, e.g. (2,) or (1, 2)")
        if pairs:
            if not all(isinstance(v, (tuple, list)) and len(v) == 2 for v in literal):
                raise bad("pairs, e.g. {'a': 'b'} or (('a', 'b'),)")
            return tuple(tuple(v) for v in literal)
        if inner in (int, float) and not all(isinstance(v, inner if inner is int else (int, float))
                                             and not isinstance(v, bool) for v in literal):
            raise bad(f"a tuple of {'ints' if inner is int else 'numbers'}")
        return tuple(float(v) if inner is float else v for v in literal)
    return literal


def load_config(spec: str) -> LaunchConfig:
    """`NAME[:variants]`: a built-in config or a config file's `get_config(variants)`.

    Raises:
      ValueError: no such config, no `get_config`, or it returns no `LaunchConfig` (errors of
        `get_config` itself, such as an unknown variant, pass through).
    """
    name, _, variants = spec.partition(":")
    if name in BUILT_IN:
        module = importlib.import_module(f"twostage_jax.configs.{name}")
    else:
        path = Path(name).expanduser()
        if not path.is_file():
            raise ValueError(f"--config: no config file at {path}." if "/" in name or name.endswith(".py")
                             else f"--config: {name!r} is no built-in config; expected one of {BUILT_IN} "
                             "or a Python file.")
        root = path.resolve().parent  # a file in a package imports its siblings by package name
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
    config = module.get_config(variants or None)
    if not isinstance(config, LaunchConfig):
        raise ValueError(f"--config: {name}'s get_config returned {type(config).__name__}, not a LaunchConfig.")
    return config


def config_from_flags(spec: str, overrides: list[tuple[str, str]], changes: dict[str, Any]) -> LaunchConfig:
    """The config of `--config=spec`, with `changes` (the launcher's shortcut flags, by dotted
    path) and then the overrides applied, each dataclass rebuilt (and checked) once.

    Raises:
      ValueError: one line naming the flag or field at fault (`ConfigError` included).
    """
    values = dict(changes)
    for path, text in overrides:
        try:
            kind = field_type(path)
        except UnknownFieldError as e:
            raise ValueError(f"--config.{e.path}: {e.message}") from None
        values[path] = parse_value(text, kind, path)  # the later of two flags on one field wins
    return replace_path(load_config(spec), values)
