"""One settings system: each setting declared once, with its default, range or choices and help.

A setting is a field of a dataclass (:class:`wbc_nnabla.recipe.TrainConfig`, the solver and
augmentation settings inside it, :class:`wbc_nnabla.presets.Config`, the wing's
:mod:`wbc_nnabla.sites.settings`) declared with :func:`setting`. From that one declaration:

* :func:`check` validates an instance (every range and choice; nested settings too) and raises
  the class's error naming the first setting out of range: ``"alpha must be a finite number > 0,
  got -1"``;
* :func:`from_dict` builds an instance from a JSON object (a recipe file, a run's saved
  ``config.json``, ``--set`` values), refusing unknown keys and values of the wrong type by name;
* :mod:`wbc_nnabla.cli` builds each command's flags (:func:`flag_fields`) and ``--set KEY=VALUE``.

Recipes are data: ``wbc_nnabla/recipes/*.json`` (:func:`wbc_nnabla.recipe.load_recipe`), as
nnabla-examples keeps ``cfg/*.yaml``. Standard library only, so the command line can show every
default without loading nnabla.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import typing
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import InputError, PathLike

#: Key of a field's metadata holding its :class:`Declared` (see :func:`setting`).
KEY = "setting"


@dataclasses.dataclass(frozen=True)
class Rule:
    """A range: ``holds(value)`` is the test (written so that NaN fails it), ``text`` what the range is,
    completing "NAME must be ...", e.g. ``"in [0, 1] (a share of images)"``."""
    holds: Callable[[Any], bool]
    text: str


@dataclasses.dataclass(frozen=True)
class Declared:
    """What :func:`setting` records of a field: help, a :class:`Rule` or choices, and whether the field is
    a command-line flag (``flag``) or a config key only (``--set`` / ``--config``)."""
    help: Optional[str] = None
    rule: Optional[Rule] = None
    choices: Optional[Tuple[str, ...]] = None
    flag: bool = True
    metavar: Optional[str] = None


def setting(default=dataclasses.MISSING, help: Optional[str] = None, *, rule: Optional[Rule] = None,
            choices: Optional[Sequence[str]] = None, flag: bool = True, metavar: Optional[str] = None,
            factory=dataclasses.MISSING):
    """A dataclass field that is a setting (see the module docstring).

    flag: also a ``--field-name`` flag of the commands that take the dataclass; False: a config key only.
    """
    meta = {KEY: Declared(help, rule, tuple(choices) if choices else None, flag, metavar)}
    return dataclasses.field(default=default, default_factory=factory, metadata=meta)


# ----------------------------------------------------------------------------- ranges


#: Largest seed accepted: nnabla's random functions take a C ``int`` seed, and NumPy's legacy
#: ``RandomState`` at most 2**32 - 1; a seed must be valid for both.
MAX_SEED = 2 ** 31 - 1


def finite(v) -> bool:
    """Whether ``v`` is a finite number (False for NaN, infinities, booleans and non-numbers)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def whole(v) -> bool:
    """Whether ``v`` is an integer (NumPy's too; not a boolean)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


#: A seed: every random draw of a run derives from it (:func:`wbc_nnabla.sampling.derive_seed`).
SEED = Rule(lambda v: whole(v) and 0 <= v <= MAX_SEED, f"an integer in [0, {MAX_SEED}]")


def between(lo: float, hi: float, note: str = "", hi_open: bool = False, lo_open: bool = False) -> Rule:
    """``lo <= v <= hi`` (open ends with ``lo_open``/``hi_open``; ``hi`` may be ``math.inf``)."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    if hi == math.inf:      # "finite": an infinity is refused too, and "weight must be >= 0, got inf" reads wrong
        text = f"a finite number > {lo:g}" if lo_open else f"a finite number >= {lo:g}"
    else:
        text = f"in {left}{lo:g}, {hi:g}{right}"

    def holds(v) -> bool:
        return finite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    return Rule(holds, text + (f" ({note})" if note else ""))


def positive(note: str = "a finite number > 0") -> Rule:
    """A finite number > 0."""
    return Rule(lambda v: finite(v) and v > 0, note)


def at_least(lo: int, note: str = "", optional: bool = False) -> Rule:
    """A whole number >= ``lo`` (or None with ``optional``)."""
    return Rule(lambda v: (optional and v is None) or (whole(v) and v >= lo), f">= {lo}" + (f" {note}" if note else ""))


# ----------------------------------------------------------------------------- validation


def declared(f: dataclasses.Field) -> Optional[Declared]:
    """The :class:`Declared` of a field, or None for a field that is not a setting."""
    return f.metadata.get(KEY)


def check(obj, error=InputError, prefix: str = "", only: Optional[Iterable[str]] = None) -> None:
    """Raise ``error`` naming the first setting of ``obj`` (and of its nested settings) out of its range.

    Choices first: ``"norm 'x': choose one of batch, group, ibn"``; ranges: ``"NAME must be RULE, got V"``.
    only: check these settings of ``obj`` and no other (e.g. the settings of one augmentation term).
    """
    for f in dataclasses.fields(obj):
        if only is not None and f.name not in only:
            continue
        value, d = getattr(obj, f.name), declared(f)
        if dataclasses.is_dataclass(value):
            check(value, error, prefix)
        elif d is not None and d.choices and value not in d.choices:
            raise error(f"{prefix}{f.name} {value!r}: choose one of {', '.join(d.choices)}")
        elif d is not None and d.rule is not None and not d.rule.holds(value):
            raise error(f"{prefix}{f.name} must be {d.rule.text}, got {value}")


# ----------------------------------------------------------------------------- from data


def _has_type(value, kind) -> bool:
    """Whether a setting's ``value`` fits its field type ``kind`` (int, float, str, bool, a path, or an
    Optional of one; an int fits a float field, a bool only a bool field: JSON's ``true`` is no count)."""
    if typing.get_origin(kind) is typing.Union:                  # Optional[X], Union[str, Path]
        return value is None and type(None) in typing.get_args(kind) or \
            any(_has_type(value, k) for k in typing.get_args(kind) if k is not type(None))
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    if kind is Path:
        return isinstance(value, str)
    return isinstance(value, kind)


def type_name(kind) -> str:
    """``int`` -> "an integer", ``Optional[int]`` -> "an integer or null", ..."""
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false", Path: "a path"}
    if typing.get_origin(kind) is typing.Union:
        args = typing.get_args(kind)
        return " or ".join(dict.fromkeys(words[k] for k in args if k is not type(None))) + \
            (" or null" if type(None) in args else "")
    return words.get(kind, getattr(kind, "__name__", str(kind)))


def from_dict(cls, data: dict, where: str = "", ignore: Iterable[str] = (), base=None):
    """An instance of dataclass ``cls`` from ``data``: ``base`` (default ``cls()``) with ``data`` on top.

    Nested settings (a dataclass field) take a JSON object of their own fields, merged into the
    base's. Unknown keys (other than ``ignore``), and values of the wrong type, raise
    :class:`~wbc_nnabla.errors.InputError` naming ``where`` and the key. Ranges are not checked
    here (:func:`check` does, once every source of settings is applied).
    """
    if not isinstance(data, dict):
        raise InputError(f"{where}: expected a JSON object of settings, got a {type(data).__name__}")
    base = base if base is not None else cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields) - set(ignore))
    if unknown:
        raise InputError(f"{where}: unknown setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")
    values = {}
    for name, value in data.items():
        if name not in fields:
            continue
        current = getattr(base, name)
        if dataclasses.is_dataclass(current):
            values[name] = from_dict(type(current), value, f"{where}: {name}", base=current)
        elif not _has_type(value, hints[name]):
            raise InputError(f"{where}: {name} must be {type_name(hints[name])}, got {value!r}")
        else:
            values[name] = value
    return dataclasses.replace(base, **values)


def to_dict(obj) -> dict:
    """The settings of ``obj`` as JSON values (paths as strings), nested settings as objects."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out[f.name] = to_dict(value) if dataclasses.is_dataclass(value) else \
            (str(value) if isinstance(value, Path) else value)
    return out


def read_json(path: PathLike, what: str = "a JSON object of settings") -> dict:
    """The JSON object in ``path``; :class:`~wbc_nnabla.errors.InputError` naming the file otherwise."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected {what}, got a {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- --set KEY=VALUE


def parse_value(text: str):
    """A ``--set`` value: a JSON literal (``0.2``, ``true``, ``null``, ``"x"``) or, failing that, the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def leaf_paths(cls, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], dataclasses.Field]:
    """Every setting of dataclass ``cls``, nested ones included, by its path of field names."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            out.update(leaf_paths(kind, prefix + (f.name,)))
        else:
            out[prefix + (f.name,)] = f
    return out


def parse_sets(cls, items: Sequence[str]) -> dict:
    """``--set KEY=VALUE`` items as a nested dict for :func:`from_dict`.

    KEY is a field name (``norm``), a dotted path into nested settings (``augmentation.hue``), or the
    name of a nested field that no other field shares (``hue``).
    """
    paths = leaf_paths(cls)
    data: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set {item!r}: expected KEY=VALUE, e.g. --set augmentation.hue=30")
        parts = tuple(key.strip().split("."))
        matches = [p for p in paths if p == parts or (len(parts) == 1 and p[-1] == parts[0])]
        if len(matches) != 1:
            what = "is ambiguous: write " + " or ".join(".".join(m) for m in matches) if matches else "is no setting"
            raise InputError(f"--set {key}: {what} (settings: {', '.join('.'.join(p) for p in sorted(paths))})")
        node = data
        for name in matches[0][:-1]:
            node = node.setdefault(name, {})
        node[matches[0][-1]] = parse_value(text)
    return data


def merge(*layers: dict) -> dict:
    """Nested dicts merged left to right (a later layer's value wins; nested objects merge key by key)."""
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def flag_fields(cls, flags_only: bool = True) -> List[dataclasses.Field]:
    """The setting fields of dataclass ``cls`` (with ``flags_only``, those declared as command-line flags)."""
    return [f for f in dataclasses.fields(cls) if declared(f) is not None and (declared(f).flag or not flags_only)]
