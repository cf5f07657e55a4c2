"""What the commands share: flag types, flags made from declared settings, ``--config``/``--set``.

The settings of a command that runs a recipe come in layers, each over the one before: the
defaults, the recipe, ``--config FILE``, ``--set KEY=VALUE`` items, then the flags given on the
command line (:func:`settings_from`). A flag is made from a setting declared with ``flag=True``
(:func:`wbc_nnabla.settings.setting`); every other setting is a config key.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import typing
from typing import Callable, Optional

from .. import settings
from ..errors import WBCError


class CLIError(WBCError):
    """An error the CLI reports as one line (no traceback), exit code 2."""


def seed(text: str) -> int:
    """``--seed``: an integer in [0, :data:`~wbc_nnabla.settings.MAX_SEED`] (argparse names the flag)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= settings.MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**31 - 1], got {text!r}")
    return value


def fraction(text: str) -> float:
    """A number in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


def cutoff(text: str):
    """``--pending-threshold`` of ``score`` and ``review``: a number in [0, 1], or ``model`` (the cut-off set on
    the model's own calibration cells, :data:`wbc_nnabla.pending.MODEL_CUTOFF`)."""
    return "model" if text.strip().lower() == "model" else fraction(text)


def _flag_type(kind, name: str) -> Optional[Callable]:
    """The argparse ``type`` of a setting of field type ``kind`` (``Optional[X]`` gives ``X``); None: a switch."""
    if typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        return None
    return seed if name == "seed" else (str if kind not in (int, float) else kind)


def add_setting_flags(group, cls, defaults: bool = True, skip=()) -> None:
    """A ``--field-name`` flag in ``group`` for each flag setting of dataclass ``cls`` (not ``skip``).

    defaults: the flag shows the setting's default in its help, and holds None when not given, so that
    the layers under the flags (recipe, ``--config``, ``--set``) decide (:func:`settings_from`); without
    ``defaults`` the help shows no default (a preset decides).
    """
    hints = typing.get_type_hints(cls)
    for f in settings.flag_fields(cls):
        if f.name in skip:
            continue
        d = settings.declared(f)
        text = d.help or ""
        if defaults and f.default not in (dataclasses.MISSING, None) and hints[f.name] is not bool \
                and "(paper: " not in text:
            text += f" (default {f.default})"
        kind = _flag_type(hints[f.name], f.name)
        name = "--" + f.name.replace("_", "-")
        extra = dict(choices=d.choices) if d.choices else {}
        if d.metavar:
            extra["metavar"] = d.metavar
        if kind is None:
            group.add_argument(name, action="store_true", default=None, help=text)
        else:
            group.add_argument(name, type=kind, default=None, help=text, **extra)


def add_config_flags(p, what: str) -> None:
    """``--config FILE`` and ``--set KEY=VALUE`` of a command whose settings are ``what``."""
    p.add_argument("--config", metavar="FILE",
                   help=f"a JSON file of {what} (a recipe file, or the config.json a run saved: it reproduces "
                        f"that run); applied before --set and the flags")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting that has no flag, e.g. --set norm=group --set augmentation.hue=30 (repeatable; "
                        "the keys: docs/training.md, \"Settings\")")


def flag_values(cls, args) -> dict:
    """The flags of ``cls``'s settings given on the command line, nested as the settings are."""
    out: dict = {}
    for path, f in settings.leaf_paths(cls).items():
        d = settings.declared(f)
        value = getattr(args, f.name, None) if d is not None and d.flag else None
        if value is None:
            continue
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = value
    return out


def settings_from(cls, args, base=None, record: Callable[[dict], dict] = lambda d: d, extra: Optional[dict] = None):
    """``cls``'s settings from the layers: ``base`` (default ``cls()``), ``--config`` (read through ``record``,
    e.g. a run's ``config.json``), ``--set``, ``extra`` (values the command sets itself), then the flags."""
    layers = [record(settings.read_json(args.config))] if getattr(args, "config", None) else []
    layers += [settings.parse_sets(cls, getattr(args, "set", None) or []), extra or {}, flag_values(cls, args)]
    where = args.config if getattr(args, "config", None) else "the command line"
    return settings.from_dict(cls, settings.merge(*layers), str(where), base=base)


def stain_reference(method: str, source) -> Optional[dict]:
    """The ``--stain`` target computed from the ``--stain-reference`` cells (None without them)."""
    if method == "none" or source is None:
        if source is not None:
            raise CLIError("--stain-reference is given but --stain is none")
        return None
    from .. import fileio
    from ..sites import stain
    return stain.reference(list(fileio.read_cell_images(source, dedupe_flag=None)["path"]))


def add_stain_arguments(p, note: str) -> None:
    """``--stain`` and ``--stain-reference`` of ``predict`` and ``adapt``; ``note`` ends the first's help."""
    from ..sites.settings import STAIN_METHODS
    p.add_argument("--stain", choices=STAIN_METHODS, default="none",
                   help="colour standardisation of each cell towards --stain-reference: white-balance "
                        "(background gains), reinhard (L*a*b* mean/std) or macenko (stain separation); default "
                        f"none {note}. See docs/cross_site.md")
    p.add_argument("--stain-reference", default=None, metavar="CELLS",
                   help="cells whose colours are the target of --stain: the model's training cells, e.g. "
                        "its dataset's train.csv")


def p_text(p) -> str:
    """A p-value for the console: 3 significant digits, ``n/a`` when the test reports none (NaN)."""
    return "n/a" if p is None or p != p else f"{p:.3g}"


def command(sub, name: str, func, help: str, describe: bool = False):
    """A sub-command's parser, running ``func``; ``describe``: its ``--help`` description is ``func``'s docstring."""
    p = sub.add_parser(name, help=help, description=inspect.getdoc(func) if describe else None)
    p.set_defaults(func=func)
    return p
