"""Few-shot fine-tuning of a trained model on a new site's labelled cells.

The paper trains Model B by fine-tuning Model A on dataset ② (section II.4). A
lab whose smears differ from the training lab's (stain, camera) can label a
handful of its own cells (at most about 100) and fine-tune the model on them:
:func:`finetune` reads a model file and a labelled cell source and writes a new
self-describing ``.nnp`` whose ``wbc_nnabla.json`` records what it used
(``finetune``). CLI: ``wbc-nnabla finetune``.

Labels may be any of the model's classes, or ``Neutrophil`` for a six-class
model (labs that do not split Band/Segment, e.g. the five-class view of the
paper's Table 1): such a cell's loss is ``-log(p_Band + p_Segment)``, so the
model keeps its six outputs and learns only what the label says.

With a few cells per class, batch statistics are noise: BatchNorm stays in its
running-statistics mode (adapt the model first with ``wbc-nnabla adapt`` on the
site's unlabelled cells, which sets them), and its running mean/var are copied
unchanged. Every other parameter is trained with AdaBound (the paper's solver)
at a small step, with the paper's geometric ImageAugmentation.

The step and the number of updates can be chosen on the lab's own labelled cells
(``select``, CLI ``--select``): :func:`cross_validate` scores each candidate of
:func:`wbc_nnabla.sites.settings.select_candidates` on held-out folds of those cells and
:func:`best_setting` picks one; no other cell is used.

The labelled cells are training cells of the new model: their domain reference is stored
beside the training cells' (:func:`site_reference`), so the domain-shift check of
``predict`` stops flagging the lab's own smears (docs/inference.md, "Domain-shift warning").
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .. import classes, engine, fileio, modelfile, outputs, sampling, settings
from ..errors import WBCError
from ..loader import ImageLoader, batches
from ..recipe import AdaBoundConfig, Augmentation
from . import derived, domain, framing, reference
from .derived import SiteError
from .settings import SELECT_FOLDS, FinetuneConfig, select_candidates

log = logging.getLogger(__name__)

#: Fewest labelled cells accepted, and fewest distinct labels: one class alone teaches nothing.
MIN_FINETUNE_CELLS = 5
MIN_FINETUNE_CLASSES = 2
#: Fewest labelled cells whose domain reference ``finetune`` stores (:func:`site_reference`): each
#: half of the cells (25) at least 2.5 times the 10 descriptors the covariance is fitted on.
MIN_SITE_REFERENCE_CELLS = 50
#: Fewest labelled cells for ``select`` (each of the folds fine-tunes on two thirds and scores the rest).
MIN_SELECT_CELLS = 30
#: Band and Segment: the classes a ``Neutrophil`` label stands for.
NEUTROPHIL_SUBTYPES = tuple(c for c in classes.CLASSES6 if classes.to_class5(c) == classes.NEUTROPHIL)


class FinetuneError(SiteError):
    """Fine-tuning refused: labels the model cannot learn, too few cells, or an output that would lose a file."""


def target_groups(class_names: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """(label names, membership matrix ``(C, K)`` float32) of the labels a model of ``class_names`` learns.

    Each model class is a label of its own; ``Neutrophil`` is added when the model has
    Band and Segment (its column sums their probabilities).
    """
    names = list(class_names)
    member = np.eye(len(names), dtype=np.float32)
    if all(c in names for c in NEUTROPHIL_SUBTYPES):
        col = np.array([[1.0 if c in NEUTROPHIL_SUBTYPES else 0.0] for c in names], np.float32)
        names, member = names + [classes.NEUTROPHIL], np.hstack([member, col])
    return names, member


def read_labelled(cells: Path, class_names: Sequence[str]) -> Tuple[List[str], np.ndarray, List[str]]:
    """(paths, label index into :func:`target_groups`, label names) of a labelled cell source.

    Raises :class:`FinetuneError` naming the source and row for a missing label or one the
    model cannot learn, and for too few cells or classes.
    """
    table = fileio.read_cell_images(cells, by_content=True, dedupe_flag=None)   # --select splits them into folds
    names, _ = target_groups(class_names)
    if len(table) < MIN_FINETUNE_CELLS:
        raise FinetuneError(f"{cells}: {len(table)} cells; fine-tuning needs at least {MIN_FINETUNE_CELLS} "
                            f"labelled cells")
    for i, label in enumerate(table["label"]):
        if label not in names:
            what = "no label" if not label else f"label {label!r}"
            raise FinetuneError(f"{cells}: cell {i + 1} ({table['path'][i]}) has {what}; the model "
                                f"learns {', '.join(names)}")
    if table["label"].nunique() < MIN_FINETUNE_CLASSES:
        raise FinetuneError(f"{cells}: every cell is {table['label'][0]}; fine-tuning needs at least "
                            f"{MIN_FINETUNE_CLASSES} labelled classes")
    return list(table["path"]), np.array([names.index(v) for v in table["label"]], np.int32), names


def _grouped_loss(logits: nn.Variable, t: nn.Variable, member: np.ndarray) -> nn.Variable:
    """Mean of ``-log(sum of the probabilities of the label's classes)`` over the batch.

    logits: ``(B, C)``; t: labels ``(B, 1)`` indexing the columns of ``member`` ``(C, K)``.
    """
    probs = F.affine(F.softmax(logits, axis=1), nn.Variable.from_numpy_array(member))      # (B, K)
    onehot = F.one_hot(t, (member.shape[1],))
    return F.mean(-F.log(F.sum(probs * onehot, axis=1) + 1e-7))


def _accuracy(graph: engine.Graph, loader: ImageLoader, member: np.ndarray) -> float:
    """Share of ``loader``'s cells whose predicted class belongs to their label (a test-mode ``graph``)."""
    logits = engine.forward_logits(graph, loader)
    return float((member[logits.argmax(1), np.asarray(loader.labels)] > 0).mean())


def _fit(params: Dict[str, np.ndarray], meta: dict, loader: ImageLoader, member: np.ndarray,
         cfg: FinetuneConfig, size: int, progress: bool, held_out: Optional[ImageLoader] = None,
         checkpoints: Sequence[int] = (), what: str = "fine-tuning"
         ) -> Tuple[Dict[str, np.ndarray], List[float], Dict[int, float]]:
    """(the fine-tuned parameters, Cost per iteration, {iteration: accuracy on ``held_out``}): the loss
    :func:`_grouped_loss` and the engine's loop (:func:`wbc_nnabla.engine.fit`).

    Runs in a parameter scope of its own. With ``held_out``, the cells are scored by a
    test-mode graph sharing the parameters after each of the ``checkpoints`` updates.
    A non-finite Cost stops it before that update (:class:`FinetuneError` naming ``what``).
    """
    batch = min(cfg.batch_size, len(loader))
    norm = meta.get("norm") or "batch"
    with nn.parameter_scope("", {}):
        nn.random.seed(cfg.seed)
        # the training graph with the paper's augmentation, BatchNorm in running-statistics mode
        graph = engine.build_graph(meta["arch"], int(meta["num_classes"]), batch, size, test=True,
                                   aug=Augmentation(), aug_seed=cfg.seed, norm=norm)
        loss = _grouped_loss(graph.logits, graph.t, member)
        missing = set(params) ^ set(engine.parameters())
        if missing:
            raise FinetuneError(f"parameters {', '.join(sorted(missing)[:4])} differ between the model and "
                                f"its {meta['arch']} graph")
        variables = engine.set_parameters(params, lambda k: not engine.is_fixed(k))
        solver = engine.make_solver(AdaBoundConfig(alpha=cfg.alpha, final_lr=cfg.final_lr))
        scores: Dict[int, float] = {}
        after = []
        if held_out is not None:
            scorer = engine.build_graph(meta["arch"], int(meta["num_classes"]), min(32, len(held_out)), size,
                                        test=True, norm=norm)
            after.append(lambda i, cost: scores.update({i + 1: _accuracy(scorer, held_out, member)})
                         if i + 1 in checkpoints else None)

        def feed(xb, yb):
            graph.x.d, graph.t.d = xb, yb

        costs = engine.fit(loss, solver, batches(loader, batch, cfg.iterations, True, cfg.seed), feed,
                           cfg.iterations, "finetune", progress, after=after,
                           nonfinite=engine.stop_nonfinite(what, FinetuneError)).costs
        return {k: v.d.copy() for k, v in variables.items()}, costs, scores


def tune(params: Dict[str, np.ndarray], meta: dict, paths: Sequence[str], labels: np.ndarray,
         cfg: FinetuneConfig, size: int, progress: bool = True, what: str = "fine-tuning"
         ) -> Tuple[Dict[str, np.ndarray], List[float]]:
    """(``params`` fine-tuned on the cells ``paths``, Cost per iteration); nothing is written.
    ``what``: named in the error that a non-finite Cost raises (e.g. ``"MODEL: self-training round 2"``).

    labels: ``(N,)`` int, indices into :func:`target_groups` of ``meta['class_names']``.
    Every image is read (and a bad one named) before any training; each crop is seen as
    the model sees it (:func:`wbc_nnabla.sites.framing.model_view`: the site's zoom).
    """
    _, member = target_groups(meta["class_names"])
    tuned, costs, _ = _fit(params, meta, _loader(meta, paths, labels, size), member, cfg, size, progress,
                           what=what)
    return tuned, costs


def _loader(meta: dict, paths: Sequence[str], labels: np.ndarray, size: int) -> ImageLoader:
    """The cells as the model sees them (the site's zoom), every image read now (a bad one named)."""
    loader = ImageLoader(list(paths), np.asarray(labels, np.int32), size,
                                  transform=framing.model_view(meta))
    for i in range(len(loader)):
        loader.image(i)
    return loader


def assign_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """Fold ``(N,)`` int in ``[0, folds)`` of each cell, stratified by label.

    Each label's cells are shuffled (seeded) and dealt out in turn, continuing where the
    previous label stopped, so fold sizes differ by at most one.
    """
    labels = np.asarray(labels)
    rng = np.random.RandomState(seed)
    fold, start = np.empty(len(labels), int), 0
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        fold[rows] = (start + np.arange(len(rows))) % folds
        start += len(rows)
    return fold


def cross_validate(params: Dict[str, np.ndarray], meta: dict, paths: Sequence[str], labels: np.ndarray,
                   candidates: Sequence[FinetuneConfig], folds: int, size: int,
                   progress: bool = False) -> pd.DataFrame:
    """Held-out accuracy of each candidate setting, ``folds``-fold inside the labelled cells.

    Each fold fine-tunes on the other folds' cells and scores its own (a cell is right when
    its predicted class belongs to its label). Candidates that differ only in
    ``iterations`` share one run per fold, scored after each of their update counts: the
    first ``i`` updates of a longer run are the ``i``-update run (same seed, batches and
    augmentation draws). Returns one row per candidate and fold: ``alpha, final_lr,
    iterations, fold, n_held_out, accuracy``. Nothing is written.
    """
    paths, labels = list(paths), np.asarray(labels, np.int32)
    _, member = target_groups(meta["class_names"])
    fold = assign_folds(labels, folds, seed=candidates[0].seed)
    runs: Dict[tuple, Tuple[FinetuneConfig, List[int]]] = {}      # one run per setting but the update count
    for c in candidates:
        runs.setdefault(dataclasses.astuple(dataclasses.replace(c, iterations=0)), (c, []))[1].append(c.iterations)
    rows = []
    for f in tqdm(range(folds), desc="cross-validation", disable=outputs.bar_disabled(progress)):
        fit, held = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        train_cells = _loader(meta, [paths[i] for i in fit], labels[fit], size)
        held_cells = _loader(meta, [paths[i] for i in held], labels[held], size)
        for base, counts in runs.values():
            cfg = dataclasses.replace(base, iterations=max(counts))
            _, _, scores = _fit(params, meta, train_cells, member, cfg, size, False, held_cells, counts,
                                what=f"fine-tuning (cross-validation fold {f + 1})")
            rows += [dict(alpha=cfg.alpha, final_lr=cfg.final_lr, iterations=i, fold=f, n_held_out=len(held),
                          accuracy=scores[i]) for i in sorted(counts)]
        log.info("cross-validation fold %d of %d: %d cells fine-tuned, %d held out", f + 1, folds, len(fit), len(held))
    return pd.DataFrame(rows)


def best_setting(table: pd.DataFrame, base: FinetuneConfig) -> FinetuneConfig:
    """``base`` with the step and update count of the best mean held-out accuracy in ``table``.

    Ties go to fewer updates, then to the smaller step (the gentler fine-tuning).
    """
    mean = table.groupby(["alpha", "final_lr", "iterations"], as_index=False)["accuracy"].mean()
    best = mean.sort_values(["accuracy", "iterations", "alpha"], ascending=[False, True, True]).iloc[0]
    return dataclasses.replace(base, alpha=float(best["alpha"]), final_lr=float(best["final_lr"]),
                               iterations=int(best["iterations"]))


def _record(model: Path, cells: Path, labels: np.ndarray, names: List[str], paths: List[str],
            cfg: FinetuneConfig, size: int, costs: List[float]) -> dict:
    counts = np.bincount(labels, minlength=len(names))
    return dict(method="fine-tuning (BatchNorm statistics frozen)", model=str(model.resolve()),
                model_sha256=modelfile.file_sha256(model), source=str(cells.resolve()), n_cells=len(paths),
                per_class={n: int(c) for n, c in zip(names, counts) if c},
                cells_sha256=modelfile.paths_sha256(paths), settings=dict(dataclasses.asdict(cfg), size=size),
                cost_first=costs[0], cost_last=costs[-1],
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def site_reference(meta: dict, paths: Sequence[str], labels: np.ndarray, size: int, source: Path,
                   seed: int = 0) -> Optional[dict]:
    """The domain reference (:func:`wbc_nnabla.sites.domain.reference`) of a site's labelled cells, as the model
    sees them, which :func:`finetune` stores under :data:`wbc_nnabla.sites.domain.SITE_KEY`: the model has now
    been trained on cells like them, so ``predict`` no longer flags them outside its domain.

    None (logged) under :data:`MIN_SITE_REFERENCE_CELLS` cells: the reference's threshold comes from
    each half of the cells measured against the other half, and a covariance of
    ``len(wbc_nnabla.sites.domain.DESCRIPTORS)`` = 10 descriptors fitted on a handful of cells would make
    it so wide that another lab's cells would pass as the site's.
    """
    if _too_few_for_reference(len(paths)):
        return None
    return _site_reference(_loader(meta, paths, labels, size), source, seed)


def _too_few_for_reference(n: int) -> bool:
    """True (logged) when ``n`` labelled cells are under :data:`MIN_SITE_REFERENCE_CELLS`."""
    if n < MIN_SITE_REFERENCE_CELLS:
        log.info("%d labelled cells: fewer than %d, no site domain reference stored (predict keeps comparing "
                 "cells with the training cells only)", n, MIN_SITE_REFERENCE_CELLS)
        return True
    return False


def _site_reference(loader: ImageLoader, source: Path, seed: int) -> dict:
    """:func:`site_reference` of labelled cells already read (``loader``: as the model sees them)."""
    return reference.domain_reference(loader, seed, source=f"{len(loader)} labelled cells of {source} (finetune)")


def _select(params: Dict[str, np.ndarray], meta: dict, paths: List[str], labels: np.ndarray, cells: Path,
            cfg: FinetuneConfig, folds: int, size: int, progress: bool) -> pd.DataFrame:
    """:func:`cross_validate` of :func:`~wbc_nnabla.sites.settings.select_candidates`, after checking the cells suffice."""
    if folds < 2:
        raise FinetuneError(f"--folds must be >= 2 for --select, got {folds}")
    if len(paths) < max(MIN_SELECT_CELLS, MIN_FINETUNE_CELLS * folds):
        raise FinetuneError(f"{cells}: {len(paths)} cells; --select needs at least "
                            f"{max(MIN_SELECT_CELLS, MIN_FINETUNE_CELLS * folds)} labelled cells for {folds} folds "
                            f"(or fine-tune without --select)")
    return cross_validate(params, meta, paths, labels, select_candidates(cfg), folds, size, progress)


def finetune(model, cells, out, config: Optional[FinetuneConfig] = None, overwrite: bool = False,
             progress: bool = True, select: bool = False, folds: int = SELECT_FOLDS) -> dict:
    """Write ``out``: ``model`` fine-tuned on the labelled ``cells`` of a new site.

    model: a ``.nnp``/``.h5`` model file (:func:`wbc_nnabla.modelfile.read_model`), best
        one adapted to the site first (:func:`wbc_nnabla.sites.adaptation.adapt_batchnorm`).
    cells: labelled cells, any source :func:`wbc_nnabla.fileio.read_cell_images` reads
        (at least :data:`MIN_FINETUNE_CELLS` and :data:`MIN_FINETUNE_CLASSES` classes;
        labels: the model's classes, or ``Neutrophil`` for Band/Segment).
    out: the fine-tuned ``.nnp`` (not the model, not inside the cells folder; an existing
        file only with ``overwrite``).
    config: :class:`FinetuneConfig`.
    select: choose the step (``alpha``, ``final_lr``) and ``iterations`` among
        :func:`wbc_nnabla.sites.settings.select_candidates` by ``folds``-fold cross-validation inside
        ``cells`` (:func:`cross_validate`, :func:`best_setting`), then fine-tune on every cell
        with the winner; ``config``'s step and iterations are replaced, its batch, seed and
        size kept. The table is stored in the record (``selection``). Needs
        :data:`MIN_SELECT_CELLS` cells; costs about ``folds`` x 3 fine-tunings more.

    With at least :data:`MIN_SITE_REFERENCE_CELLS` cells the output also stores their domain
    reference (:func:`site_reference`; record key ``site_domain_reference``), so ``predict``
    counts cells like them as inside the model's domain.

    Raises :class:`FinetuneError` (or another :class:`~wbc_nnabla.errors.WBCError` naming
    the file) before writing anything. Returns the ``finetune`` record stored in the
    output's metadata, plus ``out`` and ``costs`` (Cost per iteration).
    """
    cfg = config or FinetuneConfig()
    model, cells, out = Path(model), Path(cells), Path(out)
    settings.check(cfg, FinetuneError)
    params, meta, size = derived.read_for_derived(model, cells, out, overwrite, "finetune", "fine-tuned", cfg.size)
    paths, labels, names = read_labelled(cells, meta["class_names"])
    selection = None
    if select:
        table = _select(params, meta, paths, labels, cells, cfg, folds, size, progress)
        cfg = best_setting(table, cfg)
        selection = dict(folds=folds, chosen=dict(alpha=cfg.alpha, final_lr=cfg.final_lr, iterations=cfg.iterations),
                         table=table.to_dict(orient="records"))
    loader = _loader(meta, paths, labels, size)          # read once: fine-tuning and the site reference
    tuned, costs, _ = _fit(params, meta, loader, target_groups(meta["class_names"])[1], cfg, size, progress,
                           what=f"{model}: fine-tuning")
    site = None if _too_few_for_reference(len(paths)) else _site_reference(loader, cells, cfg.seed)
    record = dict(_record(model, cells, labels, names, paths, cfg, size, costs), selection=selection,
                  site_domain_reference=site is not None)
    tuned_meta = derived.derived_meta(meta, size, "finetune", record, tuned=True)
    if site is not None:
        tuned_meta[domain.SITE_KEY] = list(meta.get(domain.SITE_KEY) or []) + [site]
    modelfile.save_nnp(out, tuned, tuned_meta)
    log.info("fine-tuned %s on %d cells of %s (%d iterations; Cost %.3f -> %.3f) -> %s", model, len(paths),
             cells, cfg.iterations, costs[0], costs[-1], out)
    return dict(record, out=str(out), costs=costs)
