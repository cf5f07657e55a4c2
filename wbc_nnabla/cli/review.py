"""Commands of the lab's review (:mod:`wbc_nnabla.review`): ``review`` (the browser page), ``review-export``
(the corrections as labelled cells) and ``review-order`` (which cells to label first); and ``score --reviewed``."""
from __future__ import annotations

from pathlib import Path

from .common import CLIError, command, cutoff, seed


def reviewed_agreement(result, reviewed):
    """``score --reviewed``: the review's agreement with the scored predictions (None without the flag)."""
    if not reviewed:
        return None
    from ..review import labels
    return labels.agreement(result.cells, reviewed)


def gradcam_png(model: str):
    """``cam(image_path, class_name) -> PNG bytes`` for the review page: Grad-CAM of ``model`` (loaded on
    first use) over the cell, for the AI's class. Built here so that the review package never imports nnabla."""
    if not Path(model).is_file():
        raise CLIError(f"{model}: no such model file (--model)")
    loaded = {}

    def cam(path: str, class_name: str) -> bytes:
        import cv2

        from .. import gradcam
        if "explainer" not in loaded:
            loaded["explainer"] = gradcam.GradCAM(model)
        r = loaded["explainer"].explain([path], class_name=class_name)[0]
        ok, buf = cv2.imencode(".png", cv2.cvtColor(gradcam.overlay(r.image, r.cam), cv2.COLOR_RGB2BGR))
        return buf.tobytes()
    return cam


def _cmd_review(args) -> int:
    """Serve a local page (Flask) over a review database: each smear's cells grouped by the AI's class with the
    pending ones first, confirm or reclassify by keyboard, mark what is no leukocyte, sign the smear's
    differential. Every decision is stored at once (SQLite) with who and when. See docs/review.md."""
    from ..review import commands
    cam = gradcam_png(args.model) if args.model else None
    return commands.review(args.predictions, db=args.db, pending_threshold=args.pending_threshold, how=args.order,
                           seed=args.seed, host=args.host, port=args.port, browser=not args.no_browser,
                           reviewer=args.reviewer, cam=cam)


def _cmd_review_export(args) -> int:
    from ..review import commands
    return commands.export(args.review, args.out, include_unsigned=args.include_unsigned, smears=args.smear or (),
                           overwrite=args.overwrite)


def _cmd_review_order(args) -> int:
    from ..review import commands
    return commands.write_order(args.predictions, args.out, how=args.order, seed=args.seed, smears=args.smear or (),
                                first=args.first, overwrite=args.overwrite)


def _add_review(sub) -> None:
    p = command(sub, "review", _cmd_review,
                "review the AI's calls in a browser page: confirm, reclassify, sign each smear", describe=True)
    p.add_argument("predictions", help="predictions CSV (wbc-nnabla predict); never written")
    p.add_argument("--db", default=None, help="review database (default: PREDICTIONS with .review.sqlite beside "
                                              "it; created the first time, reopened after)")
    p.add_argument("--pending-threshold", type=cutoff, metavar="T", default=None,
                   help="put cells whose top probability is below T (or 'model': the cut-off set on the model's "
                        "calibration cells, as score) in the Pending group; fixed when the database is created")
    p.add_argument("--model", default=None, help="model .nnp that made the predictions: Grad-CAM on demand (key c)")
    p.add_argument("--order", choices=("ai", "active", "random"), default="ai",
                   help="ai (default): the AI's groups, pending first; active: the order to label a new lab's "
                        "cells in for finetune; random: a seeded random order")
    p.add_argument("--seed", type=seed, default=0, help="seed of --order random (default 0)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; another is a risk, warned)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed)")
    p.add_argument("--no-browser", action="store_true", help="print the address only; do not open a browser")
    p.add_argument("--reviewer", default=None, help="name recorded with each decision (default: the login name)")
    p = command(sub, "review-export", _cmd_review_export,
                "write a review's decisions as labelled cells (path,label,smear) for finetune, build-dataset and score")
    p.add_argument("review", help="review database (wbc-nnabla review --db)")
    p.add_argument("out", help="cell source CSV to write (+ a .json saying what was exported)")
    p.add_argument("--include-unsigned", action="store_true",
                   help="also the decided cells of smears not signed yet (default: signed smears only)")
    p.add_argument("--smear", action="append", metavar="NAME", help="only this smear (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the database)")
    p = command(sub, "review-order", _cmd_review_order, "list a predictions CSV's cells in the order to label them "
                                                        "(active: for a few-shot finetune in a new lab)")
    p.add_argument("predictions", help="predictions CSV of the new lab's cells")
    p.add_argument("out", help="CSV to write: path,label,smear,rank,pred6 with empty labels, first to label first")
    p.add_argument("--order", choices=("active", "random", "ai"), default="active",
                   help="active (default; the rule in docs/review.md), random (seeded) or ai")
    p.add_argument("--seed", type=seed, default=0, help="seed of --order random (default 0)")
    p.add_argument("--smear", action="append", metavar="NAME", help="only this smear's cells (repeatable)")
    p.add_argument("--first", type=int, default=None, metavar="N", help="write the first N cells only")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def register(sub) -> None:
    """Add ``review``, ``review-export`` and ``review-order`` to the sub-command parsers."""
    _add_review(sub)
