"""Self-training on a new site's unlabelled cells: the paper's semi-supervised proposal.

Sasaki et al. (2020, Discussion) propose semi-supervised learning to use the many
cells nobody labelled. :func:`self_train` does it for a new site: the model labels
the site's cells, keeps the ones it is most sure of as pseudo-labels, is fine-tuned
on them (:func:`wbc_nnabla.sites.finetune.tune`: BatchNorm statistics frozen, AdaBound at a
small step, the paper's geometric augmentation), and labels the cells again, for a
few rounds. The pick is class-balanced (Zou et al., ECCV 2018, "CBST"): per predicted
class the most confident ``portion`` of that class's cells, so the class the model
over-predicts on a new site does not fill the pseudo-labels alone; the portion grows
each round (:class:`~wbc_nnabla.sites.settings.SelfTrainConfig`).

A six-class model's Band and Segment are pseudo-labelled together as ``Neutrophil``
(the grouped loss of :mod:`wbc_nnabla.sites.finetune`): the Japanese Band/Segment line is
the least sure call on any site, the five-class view of Table 1.

Pseudo-labels repeat the model's own mistakes: a class the model confuses on this
site with high confidence is learnt more firmly. Best after ``adapt`` (which sets the
site's BatchNorm statistics and scale); check the result on some labelled cells of
the site. CLI: ``wbc-nnabla self-train``.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .. import classes, modelfile, predictions, predictor, sampling, settings
from ..errors import WBCError
from . import derived, finetune
from .derived import SiteError
from .settings import SelfTrainConfig

log = logging.getLogger(__name__)


class SelfTrainError(SiteError):
    """Self-training refused: bad settings, too few confident cells, or an output that would lose a file."""


def label_choices(class_names: Sequence[str]) -> Tuple[List[str], np.ndarray, List[int]]:
    """(label names, membership ``(C, K)``, the columns a pseudo-label may take) of a model's classes.

    The names and membership are :func:`wbc_nnabla.sites.finetune.target_groups`'; a model with
    Band and Segment takes ``Neutrophil`` in their place.
    """
    names, member = finetune.target_groups(class_names)
    grouped = classes.NEUTROPHIL in names
    cols = [j for j, n in enumerate(names) if not (grouped and n in finetune.NEUTROPHIL_SUBTYPES)]
    return names, member, cols


def pseudo_labels(probs: np.ndarray, class_names: Sequence[str], portion: float
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, label index into :func:`label_choices`' names, confidence) of the cells kept.

    probs: ``(N, C)`` class probabilities in ``class_names`` order. Each cell's label is its
    most probable choice (Band + Segment summed as Neutrophil); per label, the
    ``ceil(portion * n)`` most confident of its ``n`` cells are kept (class-balanced, CBST).
    Rows are returned in ascending order.
    """
    _, member, cols = label_choices(class_names)
    grouped = np.asarray(probs, np.float64) @ member[:, cols]             # (N, K') probability of each choice
    best, conf = grouped.argmax(1), grouped.max(1)
    keep = []
    for k in np.unique(best):
        rows = np.flatnonzero(best == k)
        n = math.ceil(portion * len(rows))
        keep.extend(rows[np.argsort(-conf[rows], kind="stable")[:n]])
    rows = np.sort(np.asarray(keep, np.int64))
    return rows, np.asarray(cols)[best[rows]].astype(np.int32), conf[rows]


def _round(current: Path, cells: Path, params: dict, meta: dict, cfg: SelfTrainConfig, r: int, size: int,
           skip_bad: bool, progress: bool) -> Tuple[dict, dict]:
    """One round: label the site's cells with the model file ``current``, fine-tune ``params`` on the sure ones."""
    portion = min(1.0, cfg.portion + r * cfg.portion_step)
    df = predictor.predict(current, cells, size=size, backend="nnabla", progress=False, skip_bad=skip_bad)
    probs = df[[predictions.PROB_PREFIX + c for c in meta["class_names"]]].to_numpy()
    rows, labels, conf = pseudo_labels(probs, meta["class_names"], portion)
    names = label_choices(meta["class_names"])[0]
    if len(rows) < finetune.MIN_FINETUNE_CELLS or len(set(labels.tolist())) < finetune.MIN_FINETUNE_CLASSES:
        raise SelfTrainError(f"{cells}: round {r + 1} keeps {len(rows)} cells of {len(set(labels.tolist()))} "
                             f"predicted classes; fine-tuning needs at least {finetune.MIN_FINETUNE_CELLS} "
                             f"cells of {finetune.MIN_FINETUNE_CLASSES} classes (more site cells, or a larger "
                             f"--portion)")
    tuned, costs = finetune.tune(params, meta, df["path"].iloc[rows].tolist(), labels,
                                 dataclasses.replace(cfg, seed=cfg.seed + r), size, progress,
                                 what=f"{current}: self-training round {r + 1}")
    counts = np.bincount(labels, minlength=len(names))
    return tuned, dict(round=r + 1, portion=portion, n_cells=len(df), n_pseudo=len(rows),
                       per_class={n: int(c) for n, c in zip(names, counts) if c},
                       confidence_min=float(conf.min()), cost_first=costs[0], cost_last=costs[-1])


def self_train(model, cells, out, config: Optional[SelfTrainConfig] = None, overwrite: bool = False,
               progress: bool = True, skip_bad: bool = False) -> dict:
    """Write ``out``: ``model`` self-trained on the unlabelled ``cells`` of a new site.

    model: a ``.nnp``/``.h5`` model file, best one adapted to the site first
        (:func:`wbc_nnabla.sites.adaptation.adapt_batchnorm`).
    cells: the site's cells, any source :func:`wbc_nnabla.fileio.read_cell_images` reads; labels
        are ignored.
    out: the self-trained ``.nnp`` (not the model, not inside the cells folder; an
        existing file only with ``overwrite``). Its ``wbc_nnabla.json`` records each
        round under ``self_training``.
    config: :class:`~wbc_nnabla.sites.settings.SelfTrainConfig`.
    skip_bad: leave out unreadable cells instead of stopping at the first.

    Raises :class:`SelfTrainError` (or another :class:`~wbc_nnabla.errors.WBCError` naming
    the file) before writing anything. Returns the record, plus ``out``.
    """
    cfg = config or SelfTrainConfig()
    settings.check(cfg, SelfTrainError)
    model, cells, out = Path(model), Path(cells), Path(out)
    params, meta, size = derived.read_for_derived(model, cells, out, overwrite, "self-train", "self-trained", cfg.size)
    rounds, current = [], model
    with tempfile.TemporaryDirectory(prefix="wbc_self_train_") as tmp:
        for r in range(cfg.rounds):
            params, done = _round(current, cells, params, meta, cfg, r, size, skip_bad, progress)
            rounds.append(done)
            log.info("self-training round %d: %d of %d cells pseudo-labelled (%s); Cost %.3f -> %.3f",
                     r + 1, done["n_pseudo"], done["n_cells"], done["per_class"], done["cost_first"],
                     done["cost_last"])
            current = Path(tmp) / f"round{r + 1}.nnp"          # the next round labels with this model
            modelfile.save_nnp(current, params, dict(meta, input_size=size))
    record = dict(method="class-balanced self-training (BatchNorm statistics frozen)", model=str(model.resolve()),
                  model_sha256=modelfile.file_sha256(model), source=str(cells.resolve()),
                  settings=dict(dataclasses.asdict(cfg), size=size), rounds=rounds,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    modelfile.save_nnp(out, params, derived.derived_meta(meta, size, "self_training", record, tuned=True))
    log.info("self-trained %s on %s (%d rounds) -> %s", model, cells, cfg.rounds, out)
    return dict(record, out=str(out))
