"""Dataclass configs: strict loading from dicts/YAML, dotted CLI overrides, saving.

One mechanism fills every config: defaults, then a YAML file, then `--section.field value`
flags, all validated against the dataclass fields. An unknown key is an error that names it and
suggests the nearest valid one, because a typo that is silently ignored costs a whole run.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lmforge.errors import LmforgeError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(options))}"


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert `value` (from YAML or a CLI string) to type `tp`, or raise naming `where`."""
    base, optional = _unwrap_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() in ("none", "null")):
        if optional or base is Any:
            return None
        raise LmforgeError(f"config key '{where}' cannot be null; give a {getattr(base, '__name__', base)}")
    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise LmforgeError(f"config key '{where}' must be a mapping of {base.__name__} fields")
        return from_dict(base, value, prefix=where + ".")
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if base is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") and not value.isdigit() else value
                return int(float(value)) if isinstance(value, float) else int(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError(value)
            return str(value)
        if origin is typing.Literal:
            choices = typing.get_args(base)
            if value not in choices:
                raise LmforgeError(
                    f"config key '{where}' is {value!r}; choose one of {', '.join(map(str, choices))}"
                )
            return value
        if origin in (list, tuple):
            (item_tp, *_) = typing.get_args(base) or (Any,)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v != ""]
            return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        if origin is dict:
            if not isinstance(value, dict):
                raise ValueError(value)
            return dict(value)
    except (TypeError, ValueError):
        name = getattr(base, "__name__", str(base))
        raise LmforgeError(f"config key '{where}' expects {name}, got {value!r}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass `cls` from a (possibly nested) dict, rejecting unknown keys."""
    data = dict(data or {})
    ftypes = _field_types(cls)
    unknown = [k for k in data if k not in ftypes]
    if unknown:
        key = unknown[0]
        raise LmforgeError(f"unknown config key '{prefix}{key}'{_suggest(key, list(ftypes))}")
    # A nested section given in part starts from the parent's own default for it, not the nested
    # class's: PretrainConfig's tokenizer defaults to kind=auto, TokenizerConfig alone to bpe, and
    # `--tokenizer.vocab_size 200` must not silently switch the kind.
    for f in dataclasses.fields(cls):
        value = data.get(f.name)
        if isinstance(value, dict) and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                data[f.name] = deep_merge(to_dict(default), value)
    kwargs = {k: coerce(v, ftypes[k], prefix + k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"invalid config for {prefix.rstrip('.') or cls.__name__}: {e}") from None
    return obj


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON friendly) of a dataclass."""
    return dataclasses.asdict(obj)


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise LmforgeError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmforgeError(f"{path}: not valid YAML ({first}); fix the file or pass flags instead") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LmforgeError(f"{path}: a config file must be a mapping of keys, got {type(data).__name__}")
    return data


def config_source(config: str | Path | dict[str, Any] | Any | None) -> dict[str, Any]:
    """One layer of a config as a nested dict: a YAML file's path, a dict, or a config dataclass."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return to_dict(config)
    if isinstance(config, dict):
        return config
    return load_yaml(config)


def saved_run_config(run_dir: Path) -> dict[str, Any]:
    """The config.yaml a run directory was started with, for --resume."""
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise LmforgeError(f"{run_dir}: nothing to resume (no config.yaml); drop --resume to start a new run")
    return load_yaml(saved)


def save_yaml(obj: Any, path: str | Path) -> None:
    from lmforge.utils.io import atomic_write_text

    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c = value` in a nested dict, creating levels as needed."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise LmforgeError(f"config key '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def nest_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """API keyword overrides as one nested dict: dotted keys (`**{"train.lr": 1e-4}`) and nested
    dicts (`train={"lr": 1e-4}`) may be mixed; later keys win."""
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        if "." in key:
            set_dotted(nested, key, value)
        elif isinstance(value, dict):
            nested[key] = deep_merge(nested.get(key, {}), value)
        else:
            nested[key] = value
    return nested


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def flat_fields(cls: type, prefix: str = "", instance: Any = None) -> dict[str, tuple[Any, Any, str]]:
    """Map 'section.field' -> (type, default, help) for every leaf field of a dataclass tree.

    The defaults are those of `cls()`'s tree when it can be built with no arguments, so a nested
    section whose parent gives it other defaults (fine-tuning's `train`: lr 5e-5, not pretraining's
    6e-4) shows the values that really apply.
    """
    if instance is None:
        try:
            instance = cls()
        except (TypeError, ValueError):
            instance = None
    out: dict[str, tuple[Any, Any, str]] = {}
    ftypes = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = ftypes[f.name]
        base, _ = _unwrap_optional(tp)
        name = prefix + f.name
        value = getattr(instance, f.name) if instance is not None else _field_default(f)
        if dataclasses.is_dataclass(base):
            out.update(flat_fields(base, name + ".", value if dataclasses.is_dataclass(value) else None))
        else:
            out[name] = (tp, value, f.metadata.get("help", ""))
    return out


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def field_comments(cls: type) -> dict[str, str]:
    """Help text for each field, taken from the `# comment` on or just above its line.

    The dataclass source is the one place a default is explained; `--help` reads it from there
    so the two cannot drift apart.
    """
    import inspect

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, str] = {}
    pending: list[str] = []
    for raw in lines:
        line = raw.strip()
        if line.startswith("#"):
            pending.append(line.lstrip("# ").strip())
            continue
        head = line.split(":", 1)[0].strip()
        if head in names and ":" in line:
            _, _, trailing = line.partition("  #")
            text = trailing.strip() or " ".join(pending)
            if text:
                out[head] = text
        pending = []
    return out


def all_field_help(cls: type, prefix: str = "") -> dict[str, str]:
    """'section.field' -> help text, for a dataclass tree."""
    out: dict[str, str] = {}
    comments = field_comments(cls)
    ftypes = _field_types(cls)
    for f in dataclasses.fields(cls):
        base, _ = _unwrap_optional(ftypes[f.name])
        if dataclasses.is_dataclass(base):
            out.update(all_field_help(base, prefix + f.name + "."))
        else:
            out[prefix + f.name] = f.metadata.get("help") or comments.get(f.name, "")
    return out


def add_dataclass_flags(
    parser: Any, cls: type, *, skip: tuple[str, ...] = (), shown_defaults: dict[str, str] | None = None
) -> None:
    """Add `--a.b` flags for every leaf field of dataclass `cls` to an argparse parser.

    Values arrive as strings and are converted by `from_dict`, so the CLI and YAML share one set of
    rules; defaults are suppressed so that only the flags a user typed override the YAML.
    `shown_defaults` describes the defaults a command works out itself (from other options or the
    data), so that `--help` says what will really apply.
    """
    import argparse

    helps = all_field_help(cls)
    groups: dict[str, Any] = {}
    for name, (tp, default, _) in flat_fields(cls).items():
        if name in skip:
            continue
        section = name.split(".")[0] if "." in name else ""
        group = parser
        if section:
            if section not in groups:
                groups[section] = parser.add_argument_group(f"{section} options")
            group = groups[section]
        base, _ = _unwrap_optional(tp)
        metavar = "BOOL" if base is bool else (getattr(base, "__name__", None) or "VALUE").upper()
        if typing.get_origin(base) is typing.Literal:
            metavar = "{" + ",".join(map(str, typing.get_args(base))) + "}"
        text = helps.get(name, "")
        default = (shown_defaults or {}).get(name, default)
        text = f"{text} (default: {default})" if text else f"(default: {default})"
        text = text.replace("%", "%%")  # argparse formats help strings with %
        kwargs: dict[str, Any] = {
            "dest": name,
            "default": argparse.SUPPRESS,
            "metavar": metavar,
            "help": text,
        }
        if base is bool:
            kwargs.update(nargs="?", const="true")
        group.add_argument(f"--{name}", **kwargs)


def unknown_option_error(parser: Any, rest: list[str]) -> LmforgeError:
    """The error for arguments argparse did not recognise, with the nearest valid option."""
    bad = next((a for a in rest if a.startswith("-")), rest[0])
    key = bad.split("=", 1)[0]
    options = [o for a in parser._actions for o in a.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else "; see --help for the valid options"
    what = "unknown option" if bad.startswith("-") else "unexpected argument"
    return LmforgeError(f"{what} '{bad}'{hint}")


def namespace_overrides(ns: Any, cls: type) -> dict[str, Any]:
    """Nested dict of only the dataclass flags present in an argparse namespace."""
    out: dict[str, Any] = {}
    for name in flat_fields(cls):
        if hasattr(ns, name):
            set_dotted(out, name, getattr(ns, name))
    return out
