"""Dataclass configs: the ``Config`` base, command-line parsing, ``--help`` from attribute docstrings, YAML.

A config is a ``@dataclass(kw_only=True)`` (usually a ``Config``); each field is documented by a string literal
on the line after it. ``parse_config`` builds one from ``sys.argv``::

    python -m examples.var_rename --preset=small --num_layers=4 --compile --max_minutes=none

The base config comes from ``--config=run.yaml`` (a saved run config), else from ``--preset=name``, else
from the default preset (or ``cls()``); then every ``--field=value`` is parsed by the field's annotated type
and applied in order. Bad input exits with status 2 and a one-line ``error: ...`` on stderr, before any work.

One concept in one module: a config's three faces (command line, YAML, ``--help``) share the field parser, the
aliases and the error messages, so they cannot drift apart.
"""

import ast
import collections.abc
import dataclasses
import difflib
import inspect
import sys
import textwrap
import types
import typing
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal, Mapping, NoReturn, TypeVar

import yaml

C = TypeVar("C")


@dataclass(kw_only=True)
class Config:
    """Base of every config part (trainer, model, optimiser, data, task): validation, task name, field aliases.

    Each part checks its own fields in ``validate()`` and calls ``super().validate()``, so a config that
    combines several parts checks all of them. ``validate()`` runs once, when the config is constructed (also
    through ``dataclasses.replace``), so a bad value fails before any work starts. Before the check, every
    field named in a part's ``TASK_DEFAULTS`` that is left empty gets its task-derived value.
    """

    TASK: ClassVar[str] = "default"
    """Name of the task: log directories default to ``logs/<TASK>``, dataset caches to ``data/<TASK>``."""
    ALIASES: ClassVar[Mapping[str, str]] = {}
    """Earlier names of this class's fields (``{old: new}``), accepted on the command line and in YAML."""
    TASK_DEFAULTS: ClassVar[Mapping[str, str]] = {}
    """Fields whose empty value means a value derived from the task: ``{field: template with {task}}``."""

    def __post_init__(self) -> None:
        for klass in type(self).__mro__:
            for name, template in vars(klass).get("TASK_DEFAULTS", {}).items():
                if not getattr(self, name):
                    setattr(self, name, template.format(task=self.TASK))
        self.validate()

    def validate(self) -> None:
        """Check this part's fields; raises ``ValueError`` naming the first bad one."""

    def data_fields(self) -> list[str]:
        """Fields that choose the training data: a run resumed with other values would train on other data."""
        return []


def declared_config_class(cls: type[Any], generic_base: type[Any]) -> type[Any]:
    """The config class ``cls`` declares by subclassing ``generic_base[TheConfig]`` (searched along its MRO).

    Raises:
        TypeError: when no class along the MRO names a concrete config class.
    """
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is generic_base:
                args = typing.get_args(base)
                if args and isinstance(args[0], type):
                    return args[0]
    raise TypeError(f"{cls.__name__} does not name its config class: subclass {generic_base.__name__}[TheConfig]")


def field_aliases(cls: type[Any]) -> dict[str, str]:
    """Every ``ALIASES`` entry along the MRO of ``cls`` (subclasses win), limited to fields ``cls`` has."""
    merged: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        merged.update(vars(klass).get("ALIASES", {}))
    names = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return {old: new for old, new in merged.items() if new in names and old not in names}


_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}
_NONE = {"none", "null", "~"}
_SPECIAL_OPTIONS = ("help", "preset", "config", "print_config", "debug")

PARSED_ARGS = "_parsed_from_argv"
"""Attribute set on a config built by ``parse_config``: the arguments it was parsed from."""


# ----------------------------------------------------------------------------------------------------------
# Introspection


def _check_dataclass(cls: type[Any]) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"expected a dataclass type, got {cls!r}")


def config_fields(cls: type[Any]) -> dict[str, Any]:
    """Map each init field of the dataclass ``cls`` to its resolved type annotation (in declaration order)."""
    _check_dataclass(cls)
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def field_docs(cls: type[Any]) -> dict[str, str]:
    """Attribute docstrings of every class in the MRO of ``cls`` (subclasses win), read from the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
            tree = ast.parse(source)
        except (OSError, TypeError, SyntaxError):
            continue  # classes without reachable source (built-ins, REPL, exec) simply have no docs
        class_defs = [node for node in tree.body if isinstance(node, ast.ClassDef)]
        if not class_defs:
            continue
        body = class_defs[0].body
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def type_name(tp: Any) -> str:
    """A short human-readable name for a type annotation, e.g. ``int | None`` or ``{fp32,bf16}``."""
    if tp is type(None):
        return "None"
    if _is_union(tp):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(tp)) + "}"
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = type_name(args[0]) if args else "str"
        return f"{origin.__name__}[{inner}]"
    return getattr(tp, "__name__", str(tp))


# ----------------------------------------------------------------------------------------------------------
# Values: command-line text -> typed value, and YAML value -> typed value


def _first_member(union: Any, convert: Callable[[Any], Any], error: str) -> Any:
    """``convert`` by the first non-None member type of ``union`` that accepts the value."""
    for arg in typing.get_args(union):
        if arg is type(None):
            continue
        try:
            return convert(arg)
        except ValueError:
            pass
    raise ValueError(error)


def parse_value(text: str, tp: Any) -> Any:
    """Parse command-line text as a value of the annotated type ``tp``.

    Raises:
        ValueError: if the text is not a valid value of that type.
    """
    if tp is Any:
        return text
    if tp is type(None):
        if text.strip().lower() in _NONE:
            return None
        raise ValueError("expected none")
    if _is_union(tp):
        if type(None) in typing.get_args(tp) and text.strip().lower() in _NONE:
            return None
        return _first_member(tp, lambda arg: parse_value(text, arg), f"expected {type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        for option in typing.get_args(tp):
            if str(option) == text or (isinstance(option, str) and option.lower() == text.lower()):
                return option
        raise ValueError(f"expected one of {type_name(tp)}")
    if origin in (list, tuple):
        elem_types = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = elem_types[0] if elem_types else str
        stripped = text.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            stripped = stripped[1:-1]
        items = [parse_value(item.strip(), inner) for item in stripped.split(",")] if stripped else []
        return items if origin is list else tuple(items)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError("expected a bool (true/false, 1/0, yes/no)")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:
            # Accept 1e6 for counts, but never silently truncate 2.5.
            as_float = float(text)
        except ValueError:
            raise ValueError("expected an int") from None
        if as_float.is_integer():
            return int(as_float)
        raise ValueError("expected an int")
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a float") from None
    if tp is str:
        return text
    raise ValueError(f"fields of type {type_name(tp)} cannot be set from the command line")


def coerce_value(value: Any, tp: Any) -> Any:
    """Check a loaded (YAML) value against the annotated type ``tp``, converting where lossless.

    Ints are accepted for floats, strings are parsed (YAML reads ``1e-3`` as a string), lists for tuples.

    Raises:
        ValueError: if the value does not fit the type.
    """
    if tp is Any:
        return value
    if isinstance(value, str) and tp is not str and not (_is_union(tp) and str in typing.get_args(tp)):
        if typing.get_origin(tp) is not Literal or value not in typing.get_args(tp):
            return parse_value(value, tp)
    if value is None:
        if tp is type(None) or (_is_union(tp) and type(None) in typing.get_args(tp)):
            return None
        raise ValueError(f"got null, expected {type_name(tp)}")
    if _is_union(tp):
        return _first_member(
            tp, lambda arg: coerce_value(value, arg), f"got {short_repr(value)}, expected {type_name(tp)}"
        )
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ValueError(f"got {short_repr(value)}, expected one of {type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"got {short_repr(value)}, expected {type_name(tp)}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = args[0] if args else Any
        items = [coerce_value(v, inner) for v in value]
        return items if origin is list else tuple(items)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ValueError(f"got {short_repr(value)}, expected {type_name(tp)}")


# ----------------------------------------------------------------------------------------------------------
# Dict / YAML


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The init fields of a config dataclass instance as a plain dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"expected a dataclass instance, got {config!r}")
    return {f.name: _plain(getattr(config, f.name)) for f in dataclasses.fields(config) if f.init}


def _suggest(name: str, cls: type[Any], extra: tuple[str, ...] = ()) -> list[str]:
    """Field names close to ``name``; an earlier name (alias) that is close suggests its field."""
    aliases = field_aliases(cls)
    candidates = [*config_fields(cls), *aliases, *extra]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return list(dict.fromkeys(aliases.get(c, c) for c in close))


def config_from_dict(
    d: Mapping[str, Any],
    cls: type[C],
    base: C | None = None,
    on_alias: Callable[[str, str], None] | None = None,
) -> C:
    """Build a ``cls`` from a dict of field values; missing fields come from ``base`` (default: the class defaults).

    Keys may use a field's earlier name (see ``Config.ALIASES``); ``on_alias(old, new)`` is called for each
    (default: a ``FutureWarning``).

    Raises:
        ValueError: naming unknown keys, a field given twice (by its name and an alias), or a key whose value
            does not fit the field's type.
    """
    hints = config_fields(cls)
    aliases = field_aliases(cls)
    unknown = [str(k) for k in d if aliases.get(k, k) not in hints]
    if unknown:
        close = _suggest(unknown[0][:100], cls)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        listed = ", ".join(short_repr(k, 40) if len(k) > 40 else k for k in unknown[:10])
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(f"unknown config key(s) for {cls.__name__}: {listed}{more}{hint}")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        name = aliases.get(key, key)
        if name in kwargs:
            raise ValueError(f"config keys {key!r} and {name!r} both set {name!r}; keep one")
        if name != key:
            if on_alias is None:
                warnings.warn(f"config key {key!r} is an earlier name of {name!r}", FutureWarning, stacklevel=2)
            else:
                on_alias(key, name)
        try:
            kwargs[name] = coerce_value(value, hints[name])
        except ValueError as e:
            raise ValueError(f"config key {key!r}: {e}") from None
    if base is None:
        return cls(**kwargs)
    return dataclasses.replace(base, **kwargs)  # type: ignore[type-var]


def get_yaml_string(config: Any) -> str:
    """The config as YAML, fields in declaration order; ``load_config_from_yaml`` reads it back exactly."""
    text: str = yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
    return text


MAX_YAML_BYTES = 1 << 20
"""The largest config YAML read (a run's config is a few kilobytes)."""


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages never hold an unbounded value."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a mapping with the same key twice (PyYAML keeps the last silently) and
    aliases (``*name``): a config never needs them, and nested aliases expand exponentially (a "billion laughs")."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.events.AliasEvent):
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a config", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, collections.abc.Hashable):
                raise yaml.constructor.ConstructorError(None, None, "a key must be a name", key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short_repr(key)}", key_node.start_mark
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def config_from_yaml_string(
    text: str,
    cls: type[C],
    source: str = "<string>",
    base: C | None = None,
    on_alias: Callable[[str, str], None] | None = None,
) -> C:
    """Parse YAML text (as written by ``get_yaml_string``) into a ``cls``; keys it lacks come from ``base``.

    Raises:
        ValueError: for invalid YAML, a key given twice, a non-mapping document, unknown keys or ill-typed values.
    """
    if len(text) > MAX_YAML_BYTES:
        raise ValueError(f"{source} holds {len(text):,} characters: a config is at most {MAX_YAML_BYTES:,}")
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise ValueError(f"{source} is not valid YAML: {' '.join(str(e).split())}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{source} must hold a mapping of config fields, got {type(data).__name__}")
    try:
        return config_from_dict(data, cls, base=base, on_alias=on_alias)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_config_from_yaml(
    path: str, cls: type[C], base: C | None = None, on_alias: Callable[[str, str], None] | None = None
) -> C:
    """Load a config saved by ``get_yaml_string`` (for example a run's ``run_<N>_<name>.yaml``).

    Args:
        path: the YAML file.
        cls: the config class.
        base: where the keys the file lacks come from (default: the class defaults).
        on_alias: told of each key that uses a field's earlier name (default: a ``FutureWarning``).

    Raises:
        FileNotFoundError: if the file does not exist.
        IsADirectoryError: if the path is a directory.
        ValueError: for unknown keys (named) or values that do not fit their field's type.
    """
    with open(path, "rb") as f:
        raw = f.read(MAX_YAML_BYTES + 1)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a UTF-8 text file (YAML): byte {e.start} is {raw[e.start]:#04x}") from None
    return config_from_yaml_string(text, cls, source=str(path), base=base, on_alias=on_alias)


# ----------------------------------------------------------------------------------------------------------
# Command line


class _CLIError(Exception):
    pass


def _fail(message: str) -> NoReturn:
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    raise SystemExit(2)


def _split_arg(arg: str) -> tuple[str, str | None]:
    """``--some-field=v`` -> (``some_field``, ``v``); ``--flag`` -> (``flag``, None)."""
    if not arg.startswith("--") or len(arg) == 2:
        raise _CLIError(f"unexpected argument {arg!r}: options look like --field=value (or --flag for a bool)")
    body = arg[2:]
    name, sep, value = body.partition("=")
    return name.replace("-", "_"), (value if sep else None)


def _format_default(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "[]"
    return str(value).lower() if value is None or isinstance(value, bool) else str(value)


def format_help(
    cls: type[Any],
    config: Any,
    *,
    prog: str,
    presets: Mapping[str, Callable[[], Any]] | None,
    preset_name: str | None,
) -> str:
    """The ``--help`` text: usage, presets, and every field with type, default (of ``config``) and doc."""
    hints = config_fields(cls)
    docs = field_docs(cls)
    lines = [f"usage: {prog} [--preset=NAME] [--config=PATH] [--print_config] [--FIELD=VALUE ...]", ""]
    class_doc = inspect.getdoc(cls)
    if class_doc:
        lines += [class_doc.splitlines()[0], ""]
    lines.append("options:")
    lines.append("  --help               show this message and exit")
    if presets:
        lines.append("  --preset=NAME        start from a named preset (see below)")
    lines.append(
        "  --config=PATH        start from a saved run config (YAML); fields it lacks come from "
        + ("the default preset" if presets and preset_name else "the defaults")
        + "; later flags override it"
    )
    lines.append("  --print_config       print the resolved config as YAML and exit")
    lines.append("  --debug              show the traceback of an error")
    if presets:
        lines += ["", "presets:"]
        for name in presets:
            marker = "  (chosen)" if name == preset_name else ""
            lines.append(f"  {name}{marker}")
    source = f"preset {preset_name!r}" if preset_name else cls.__name__
    lines += ["", f"fields (defaults from {source}; bools: --flag or --flag=false; optional: --field=none):"]
    for name, tp in hints.items():
        lines.append(f"  --{name}: {type_name(tp)} = {_format_default(getattr(config, name))}")
        for doc_line in docs.get(name, "").splitlines():
            lines.append(f"      {doc_line}")
    aliases = field_aliases(cls)
    if aliases:
        lines += ["", "earlier names (accepted on the command line and in YAML, with a note):"]
        lines += [f"  --{old} -> --{new}" for old, new in sorted(aliases.items())]
    return "\n".join(lines) + "\n"


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _note_alias(old: str, new: str) -> None:
    _note(f"config key {old!r} is an earlier name of {new!r}")


def _apply_overrides(config: C, cls: type[C], overrides: list[tuple[str, str | None]]) -> C:
    hints = config_fields(cls)
    aliases = field_aliases(cls)
    values: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for given, text in overrides:
        name = aliases.get(given, given)
        if name not in hints:
            close = _suggest(given, cls, _SPECIAL_OPTIONS)
            hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else "; see --help"
            raise _CLIError(f"unknown option --{given}{hint}")
        if name in spelled:
            # One value per field: a silent "last one wins" hides a typo or a sweep override that never applies.
            first = spelled[name]
            both = f"--{given} is given twice" if first == given else f"--{first} and --{given} both set --{name}"
            raise _CLIError(f"{both}; give it once")
        spelled[name] = given
        if name != given:
            _note(f"--{given} is an earlier name of --{name}")
        tp = hints[name]
        if text is None:
            if tp is bool or (_is_union(tp) and bool in typing.get_args(tp)):
                values[name] = True
                continue
            raise _CLIError(f"--{name} needs a value: --{name}=<{type_name(tp)}>")
        try:
            values[name] = parse_value(text, tp)
        except ValueError as e:
            raise _CLIError(f"invalid value {short_repr(text, 200)} for --{name} ({type_name(tp)}): {e}") from None
    try:
        return dataclasses.replace(config, **values)  # type: ignore[type-var]
    except (ValueError, TypeError) as e:
        raise _CLIError(str(e)) from None


def parse_config(
    cls: type[C],
    argv: list[str] | None = None,
    *,
    presets: Mapping[str, Callable[[], C]] | None = None,
    default_preset: str | None = None,
    prog: str | None = None,
) -> C:
    """Build a config of type ``cls`` from command-line arguments.

    Args:
        cls: the config dataclass.
        argv: arguments without the program name; ``sys.argv[1:]`` when None.
        presets: named factories for base configs, chosen by ``--preset=name``.
        default_preset: the preset used when ``--preset`` is absent (else ``cls()``).
        prog: program name for ``--help`` (defaults to ``sys.argv[0]``).

    Returns:
        The resolved config. If the class defines ``validate(self)``, it has been called.

    Raises:
        SystemExit: 0 after ``--help`` / ``--print_config``; 2 after a one-line ``error: ...`` on stderr.
    """
    _check_dataclass(cls)
    args = list(sys.argv[1:] if argv is None else argv)
    if prog is None:
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        prog = f"python -m {spec.name.removesuffix('.__main__')}" if spec is not None else sys.argv[0]
    if default_preset is not None and (presets is None or default_preset not in presets):
        raise ValueError(f"default_preset {default_preset!r} is not one of the presets")

    want_help = any(a in ("--help", "-h") for a in args)
    preset_name: str | None = default_preset
    preset_given = False
    config_path: str | None = None
    print_config = False
    overrides: list[tuple[str, str | None]] = []
    try:
        for arg in args:
            if arg in ("--help", "-h"):
                continue
            name, value = _split_arg(arg)
            if name == "preset":
                if not presets:
                    raise _CLIError("--preset: this program defines no presets")
                if value is None or value not in presets:
                    raise _CLIError(f"unknown preset {short_repr(value)}; choose from {', '.join(presets)}")
                if preset_given:
                    raise _CLIError("--preset is given twice; give it once")
                preset_name, preset_given = value, True
            elif name == "config":
                if not value:
                    raise _CLIError("--config needs a path: --config=path/to/run.yaml")
                if config_path is not None:
                    raise _CLIError("--config is given twice; give it once")
                config_path = value
            elif name == "print_config":
                if value is not None and parse_value(value, bool) is False:
                    continue
                print_config = True
            elif name == "debug":
                continue  # tracebacks on errors: the program's entry point reads it (trainer.run_from_command_line)
            else:
                overrides.append((name, value))
        if config_path is not None and any(_split_arg(a)[0] == "preset" for a in args if a not in ("--help", "-h")):
            raise _CLIError("use either --preset or --config, not both")

        base: C
        if config_path is not None:
            # A partial YAML starts from the default preset (a bounded run), not from the class defaults.
            start = presets[default_preset]() if presets and default_preset is not None else None
            try:
                base = load_config_from_yaml(config_path, cls, base=start, on_alias=_note_alias)
            except FileNotFoundError:
                raise _CLIError(f"--config: no such file {config_path!r}") from None
            except IsADirectoryError:
                raise _CLIError(f"--config: {config_path!r} is a directory, not a YAML file") from None
            except (ValueError, TypeError) as e:
                raise _CLIError(f"--config: {e}") from None
        elif presets and preset_name is not None:
            base = presets[preset_name]()
            if not isinstance(base, cls):
                raise TypeError(f"preset {preset_name!r} returned {type(base).__name__}, not {cls.__name__}")
        else:
            try:
                base = cls()
            except TypeError as e:
                raise TypeError(f"{cls.__name__} needs a default for every field to be parsed: {e}") from None

        if want_help:
            print(format_help(cls, base, prog=prog, presets=presets, preset_name=preset_name), end="")
            raise SystemExit(0)

        config = _apply_overrides(base, cls, overrides)
        validate = getattr(config, "validate", None)
        if callable(validate) and not isinstance(config, Config):  # a Config checked itself when it was built
            try:
                validate()
            except ValueError as e:
                raise _CLIError(f"invalid config: {e}") from None
    except _CLIError as e:
        _fail(str(e))
    except ValueError as e:
        _fail(str(e))

    if print_config:
        print(get_yaml_string(config), end="")
        raise SystemExit(0)
    object.__setattr__(config, PARSED_ARGS, tuple(args))
    return config


def unparsed_options(config: Any, argv: list[str]) -> list[str]:
    """The ``--field=value`` arguments in ``argv`` that name a field of ``config`` (or an earlier name of one) and
    that ``parse_config`` did not build ``config`` from: flags that nothing read."""
    parsed = set(getattr(config, PARSED_ARGS, ()))
    names = {*config_fields(type(config)), *field_aliases(type(config))}
    return [
        arg
        for arg in argv
        if arg.startswith("--") and arg[2:].partition("=")[0].replace("-", "_") in names and arg not in parsed
    ]
