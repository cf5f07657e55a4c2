"""The whole study in one command: ``reproduce`` (sections II-III) and ``demo`` (``make demo``)."""
from __future__ import annotations

import shlex
from pathlib import Path

from .. import settings
from .common import add_setting_flags, command, p_text


def _print_headline(summary: dict, out) -> None:
    out = Path(out)
    print(f"report: {out / 'report.html'}  (Markdown: {out / 'report.md'})")
    for tag in ("A", "B"):
        print(f"WBC Model {tag}: per-smear accuracy 6 classes {summary[f'accuracy6_mean_{tag}']:.3f} "
              f"± {summary[f'accuracy6_sd_{tag}']:.3f}, 5 classes {summary[f'accuracy5_mean_{tag}']:.3f} "
              f"± {summary[f'accuracy5_sd_{tag}']:.3f} (pooled {summary[f'accuracy6_pooled_{tag}']:.3f} / "
              f"{summary[f'accuracy5_pooled_{tag}']:.3f})")
    print(f"Wilcoxon rank-sum A vs B: p = {p_text(summary['p_ranksum5'])} (5 classes), "
          f"{p_text(summary['p_ranksum6'])} (6 classes); {summary['n_inference_cells']} cells in "
          f"{summary['n_smears']} smears; {summary['seconds']:.0f} s")


def config_overrides(args) -> dict:
    """The ``reproduce``/``demo`` settings given on the command line, ``--set`` items first (the preset and
    ``--config`` supply the rest)."""
    from ..presets import Config
    given = {f.name: getattr(args, f.name) for f in settings.flag_fields(Config) if getattr(args, f.name) is not None}
    return dict(settings.parse_sets(Config, args.set), **given)


def _cmd_reproduce(args) -> None:
    from .. import pipeline
    summary = pipeline.reproduce(args.source, args.out, preset=args.preset, inference=args.inference,
                                 config_file=args.config, progress=not args.quiet, **config_overrides(args))
    _print_headline(summary, args.out)


def review_command(out) -> str:
    """The command that opens a ``reproduce``/``demo`` run's Model B predictions in the review page
    (docs/review.md), with the pending cut-off set on the model's own calibration cells."""
    out = Path(out)
    return " ".join(["wbc-nnabla", "review", shlex.quote(str(out / "predictions_B.csv")), "--pending-threshold",
                     "model", "--model", shlex.quote(str(out / "model_B" / "model.nnp"))])


def _cmd_demo(args) -> None:
    from .. import pipeline
    summary = pipeline.demo(args.out, progress=not args.quiet, config_file=args.config, **config_overrides(args))
    _print_headline(summary, args.out)
    # printed, not run: the review page serves until Ctrl+C, and make demo must end (issue 47)
    print(f"review Model B's calls, cell by cell, in a browser page (docs/review.md):\n  {review_command(args.out)}")


def _add_run_flags(p) -> None:
    from ..presets import Config
    g = p.add_argument_group("settings (override the preset; see docs/method.md)")
    g.add_argument("--config", metavar="FILE", help="JSON file of settings (applied after the preset, before "
                                                    "--set and these flags)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting, e.g. --set epochs_a=10 (repeatable)")
    add_setting_flags(g, Config, defaults=False)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pipeline(sub) -> None:
    from ..presets import PRESETS
    p = command(sub, "reproduce", _cmd_reproduce, "run the paper's whole study: datasets, Model A/B, scoring, report")
    p.add_argument("source", help="labeled teacher cells (class folders, path,label[,smear] CSV, NNC CSV)")
    p.add_argument("out", help="output folder: new, empty or an earlier reproduce output (re-running skips "
                               "complete stages and runs again those whose inputs changed)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                   help="paper: the paper's settings; recommended: infer at the training scale; demo: minutes on a CPU")
    p.add_argument("--inference", help="labeled inference set; default: a held-out part of SOURCE")
    _add_run_flags(p)
    p = command(sub, "demo", _cmd_demo, "reproduce on the embedded demo cells with the demo preset (make demo)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    _add_run_flags(p)


def register(sub) -> None:
    """Add ``reproduce`` and ``demo`` to the sub-command parsers."""
    _add_pipeline(sub)
