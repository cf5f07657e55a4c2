"""``wbc-nnabla``: a thin command line over the Python API.

Each sub-command is a few lines: parse flags, call the stage's API, print
where the outputs are. Sections are grouped by pipeline stage.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import List, Optional

from . import __version__


class CLIError(Exception):
    """An error the CLI reports as one line (no traceback), exit code 2."""


# ----------------------------------------------------------------------------- classes / io (issue 2)


def _cmd_classes(args) -> int:
    from . import classes
    print("six classes (Table 1 order):", ", ".join(f"{i} {c}" for i, c in enumerate(classes.CLASSES6)))
    print("five classes:", ", ".join(classes.CLASSES5))
    for cat in classes.TAXONOMY:
        print(f"  {cat.name:12s} -> {str(cat.class6):10s} / {cat.class5:10s}  synonyms: {', '.join(cat.synonyms)}")
    return 0


def _cmd_cells(args) -> int:
    from . import io
    df = io.read_cells(args.source)
    print(f"{len(df)} cells from {args.source}")
    print(df["label"].replace("", "(unlabeled)").value_counts().sort_index().to_string())
    return 0


def _add_io(sub) -> None:
    p = sub.add_parser("classes", help="list the class taxonomy (names, synonyms, five-class view)")
    p.set_defaults(func=_cmd_classes)
    p = sub.add_parser("cells", help="read a labeled cell source and print its class counts")
    p.add_argument("source", help="class folder tree, path,label CSV or NNC dataset CSV/folder")
    p.set_defaults(func=_cmd_cells)


# ----------------------------------------------------------------------------- cells: segment, locate (issue 3)


def _add_cells(sub) -> None:
    pass


# ----------------------------------------------------------------------------- datasets: build-dataset (issue 3)


def _add_datasets(sub) -> None:
    pass


# ----------------------------------------------------------------------------- training (issue 4)


def _add_training(sub) -> None:
    pass


# ----------------------------------------------------------------------------- inference, export (issues 5, 6)


def _add_inference(sub) -> None:
    pass


# ----------------------------------------------------------------------------- scoring, report (issue 5)


def _add_scoring(sub) -> None:
    pass


# ----------------------------------------------------------------------------- Grad-CAM (issue 7)


def _add_gradcam(sub) -> None:
    pass


# ----------------------------------------------------------------------------- pipeline: reproduce, demo (issue 7)


def _cmd_demo(args) -> int:
    from . import io
    df = io.read_cells(io.demo_data())
    print(f"embedded demo data: {len(df)} cells in {io.demo_data()}")
    print(df["label"].value_counts().sort_index().to_string())
    return 0


def _add_pipeline(sub) -> None:
    p = sub.add_parser("demo", help="run the paper's pipeline on the embedded demo data")
    p.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``wbc-nnabla`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="wbc-nnabla",
        description="CNN white-blood-cell screening on nnabla (Sasaki et al., 2020).")
    parser.add_argument("--version", action="version", version=f"wbc-nnabla {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_io, _add_cells, _add_datasets, _add_training, _add_inference, _add_scoring,
                _add_gradcam, _add_pipeline):
        add(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from .classes import LabelError
    from .io import ImageReadError, SourceError
    try:
        return int(args.func(args) or 0)
    except (CLIError, LabelError, SourceError, ImageReadError, FileExistsError, FileNotFoundError) as e:
        print(f"wbc-nnabla {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
