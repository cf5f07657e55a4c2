"""``wbc-nnabla``: a thin command line over the Python API, a module per command group.

Each command is call-and-print: parse flags, call the stage's API, print where the outputs are.
Stage modules are imported inside each command, so ``--help`` and the commands that need no
network (classes, cells, score, compare, ...) never load nnabla. Only :func:`main` catches the
package's errors (:class:`~wbc_nnabla.errors.WBCError`) and prints each as one line, exit code 2.

* :mod:`~wbc_nnabla.cli.data`: ``classes``, ``cells``, ``segment``, ``locate``, ``build-dataset``;
* :mod:`~wbc_nnabla.cli.train`: ``train``;
* :mod:`~wbc_nnabla.cli.predict`: ``predict``, ``export``, ``ensemble``;
* :mod:`~wbc_nnabla.cli.sites`: ``adapt``, ``infomax``, ``finetune``, ``self-train``, ``domain-reference``;
* :mod:`~wbc_nnabla.cli.score`: ``score``, ``compare``, ``gradcam``;
* :mod:`~wbc_nnabla.cli.review`: ``review``, ``review-export``, ``review-order``;
* :mod:`~wbc_nnabla.cli.run`: ``reproduce``, ``demo``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional

from .. import __version__
from ..errors import WBCError
from . import data, predict, review, run, score, sites, train
from .common import CLIError  # noqa: F401  (the CLI's own error, re-exported)

#: The command groups in the order ``--help`` lists them.
GROUPS = (data, train, predict, sites, score, review, run)


def build_parser() -> argparse.ArgumentParser:
    """The ``wbc-nnabla`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="wbc-nnabla",
        description="CNN white-blood-cell screening on nnabla (Sasaki et al., 2020).")
    parser.add_argument("--version", action="version", version=f"wbc-nnabla {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (and show tracebacks)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def help_markdown(width: int = 100) -> str:
    """The CLI reference (``docs/cli.md``): every sub-command's ``--help``, at a fixed width."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps help to the terminal width
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["# Command-line reference", "",
                 "Generated from `wbc-nnabla --help` by `wbc_nnabla.cli.help_markdown()`; "
                 "a test checks that it matches the installed command.", "",
                 "```text", parser.format_help().rstrip(), "```", ""]
        for name, p in sub.choices.items():
            parts += [f"## wbc-nnabla {name}", "", "```text", p.format_help().rstrip(), "```", ""]
        return "\n".join(parts)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; a bad input is one line on stderr and exit code 2 (1 for an output that cannot be
    written), with ``--verbose`` the traceback too."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    # ValueError: nnabla's own for a file it cannot read, named by the message
    except (WBCError, ValueError, FileExistsError, FileNotFoundError) as e:
        if args.verbose:
            raise
        print(f"wbc-nnabla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written: permissions, read-only or full file system
        print(f"wbc-nnabla {args.command}: error: {_os_error_text(e, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: outputs are written to temporaries and renamed, so none is partial
        print(f"wbc-nnabla {args.command}: interrupted (Ctrl-C); no output was written or replaced", file=sys.stderr)
        return 130


def _os_error_text(e: OSError, args) -> str:
    """``PATH: cause`` of an OSError, naming the output rather than its temporary (one line)."""
    from .. import outputs
    names = [n for n in (e.filename, getattr(e, "filename2", None)) if n is not None]
    names = [os.fsdecode(n) if isinstance(n, (str, bytes)) else str(n) for n in names]
    meant = [outputs.output_of_temporary(n) for n in names]
    # os.replace(temporary, output) names both: the output is the one to report
    path = next((o for n, o in zip(names, meant) if str(o) != n), meant[-1] if meant else None)
    if path is None:
        path = next((getattr(args, k) for k in ("out", "out_dir", "onnx") if getattr(args, k, None)), "output")
    cause = e.strerror or str(e) or type(e).__name__
    return f"{path}: {cause}"
