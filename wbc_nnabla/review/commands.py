"""The review's command-line functions (``wbc-nnabla review``, ``review-export``, ``review-order``).

Each takes plain values, calls the review API and prints what it did; the argument parsing is
the CLI's. Nothing here imports nnabla: Grad-CAM reaches the page as a callable the CLI builds
(``cam(image_path, class_name) -> PNG bytes``).
"""
from __future__ import annotations

import getpass
import logging
import secrets
import sys
import threading
import webbrowser
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import pandas as pd

from .. import outputs
from ..predictions import PROB_COLUMNS
from . import labels, load, order, server
from .db import ReviewDB, ReviewError, check_reviewer

from ..errors import PathLike


def order_ranks(review: ReviewDB, how: str, seed: int = 0) -> Optional[Dict[int, int]]:
    """``{cell_id: rank}`` of ``how`` (``active`` / ``random``) within each smear; None for ``ai``."""
    if order.check_order(how) == "ai":
        return None
    cells = pd.DataFrame(review.cells())
    probs = pd.DataFrame(cells["probs"].tolist(), columns=list(PROB_COLUMNS))
    frame = pd.concat([cells[["cell_id", "smear"]], probs], axis=1)
    out: Dict[int, int] = {}
    for _, group in frame.groupby("smear", sort=False):
        out.update(zip(group["cell_id"].tolist(), order.ranks(group.reset_index(drop=True), how, seed).tolist()))
    return out


def default_reviewer() -> str:
    """The login name (the page can change it; every decision records who made it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def review(predictions: PathLike, db: Optional[PathLike] = None, pending_threshold=None, how: str = "ai",
           seed: int = 0, host: str = "127.0.0.1", port: int = 0, browser: bool = True,
           reviewer: Optional[str] = None, cam: Optional[Callable[[str, str], bytes]] = None) -> int:
    """``wbc-nnabla review``: open (or create) the review database and serve the page until Ctrl+C."""
    order.check_order(how)
    warning = None if server.is_loopback(host) else (
        f"warning: --host {host} lets other machines reach this review; anyone with the token can change it")
    review_db = load.open_review(predictions, db, pending_threshold)
    name = check_reviewer(reviewer if reviewer is not None else default_reviewer())
    token = secrets.token_urlsafe(24)
    app = server.create_app(review_db, token, name, order_ranks(review_db, how, seed), how, cam)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)     # no line per request on the terminal
    srv = server.make_server(app, host, port)
    url = server.page_url(srv, token)
    smears = review_db.smears()
    cut = review_db.meta().get("pending_cutoff")
    print(f"review database: {review_db.path} ({sum(s['cells'] for s in smears)} cells in {len(smears)} smear(s); "
          f"{sum(s['reviewed'] for s in smears)} reviewed, {sum(1 for s in smears if s['signed_at'])} signed; "
          f"pending cut-off {'none' if cut is None else format(cut['threshold'], '.4f') + ' (' + cut['source'] + ')'})")
    if warning:
        print(warning, file=sys.stderr)
    print(f"open the review page at:\n    {url}\n(Ctrl+C stops the server; every decision is already stored)",
          flush=True)
    if browser:
        threading.Timer(0.5, webbrowser.open, (url,)).start()
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        print("stopped")
    finally:
        srv.server_close()
    return 0


def export(db: PathLike, out: PathLike, include_unsigned: bool = False, smears: Sequence[str] = (),
           overwrite: bool = False) -> int:
    """``wbc-nnabla review-export``: the reviewed cells as a ``path,label,smear`` cell source."""
    r = labels.export_labels(db, out, include_unsigned, smears, overwrite)
    counts = ", ".join(f"{c} {n}" for c, n in r["per_class"].items() if n)
    print(f"{r['n_cells']} reviewed cells of {len(r['smears'])} smear(s) ({counts}) -> {out} "
          f"(+ {Path(out).with_suffix('.json').name}); {r['left_out_unusable']} unusable cell(s) left out"
          + ("" if include_unsigned else "; unsigned smears left out"))
    return 0


def write_order(predictions: PathLike, out: PathLike, how: str = "active", seed: int = 0,
                smears: Sequence[str] = (), first: Optional[int] = None, overwrite: bool = False) -> int:
    """``wbc-nnabla review-order``: the cells in the order to label them (``path,label,smear,rank,pred6``,
    labels empty for the lab to fill in), the first ``first`` only when given."""
    cells = load.read(predictions)
    table = order.ordered(cells.assign(path=load.image_paths(cells)), how, seed, smears)
    if first is not None:
        if first < 1:
            raise ReviewError(f"--first {first}: expected a positive number of cells")
        table = table.head(first)
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ReviewError(f"{out}: the order must be written as a .csv file")
    outputs.check_output(out, "review-order", overwrite, [predictions], folder=False)
    with outputs.atomic_path(out) as tmp:
        table.assign(label="")[["path", "label", "smear", "rank", "pred6"]].to_csv(tmp, index=False, lineterminator="\n")
    print(f"{len(table)} cells of {predictions} in {how} order -> {out} (fill in the labels of the first ones, "
          f"then `wbc-nnabla finetune MODEL {out.name} OUT.nnp`)")
    return 0


def agreement_lines(a: labels.Agreement) -> str:
    """The console lines of ``score --reviewed``."""
    s = a.summary

    def pct(v):
        return "n/a" if v is None else f"{v:.3f}"
    text = (f"AI vs reviewer ({s['review_source']}): {s['n_reviewed']} of {s['n_cells']} cells reviewed; the AI's "
            f"call kept for {pct(s['agreement6'])} (6 classes, {s['n_agreement6']} cells), {pct(s['agreement5'])} "
            f"(5 classes); anchor: CellaVision DM96 {labels.ANCHOR_AGREEMENT:.2f}; {s['n_unusable']} out of the count")
    if s["pending_from"] != "none":
        text += (f"\npending cells ({s['pending_from']}): {s['n_pending']}: {s['pending_confirmed']} confirmed, "
                 f"{s['pending_reclassified']} reclassified, {s['pending_unusable']} out of the count, "
                 f"{s['pending_undecided']} not reviewed")
    return text
