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
from tqdm.auto import tqdm

from . import classes, fileio, framing, modelfile, training
from .errors import WBCError
from .recipe import AdaBoundConfig, Augmentation, FinetuneConfig

log = logging.getLogger(__name__)

#: Fewest labelled cells accepted, and fewest distinct labels: one class alone teaches nothing.
MIN_FINETUNE_CELLS = 5
MIN_FINETUNE_CLASSES = 2
#: Band and Segment: the classes a ``Neutrophil`` label stands for.
NEUTROPHIL_SUBTYPES = tuple(c for c in classes.CLASSES6 if classes.to_class5(c) == classes.NEUTROPHIL)


class FinetuneError(WBCError, ValueError):
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
    table = fileio.read_cells(cells)
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


def _fit(params: Dict[str, np.ndarray], meta: dict, loader: training.ImageLoader, member: np.ndarray,
         cfg: FinetuneConfig, size: int, progress: bool) -> Tuple[Dict[str, np.ndarray], List[float]]:
    """(the fine-tuned parameters, Cost per iteration) in a parameter scope of their own."""
    batch = min(cfg.batch_size, len(loader))
    with nn.parameter_scope("", {}):
        nn.random.seed(cfg.seed)
        # the training graph with the paper's augmentation, BatchNorm in running-statistics mode
        graph = training.build_graph(meta["arch"], int(meta["num_classes"]), batch, size, test=True,
                                     aug=Augmentation(), aug_seed=cfg.seed, norm=meta.get("norm") or "batch")
        x, t, loss = graph.x, graph.t, _grouped_loss(graph.logits, graph.t, member)
        variables = training.parameters()
        missing = set(params) ^ set(variables)
        if missing:
            raise FinetuneError(f"parameters {', '.join(sorted(missing)[:4])} differ between the model and "
                                f"its {meta['arch']} graph")
        for k, v in variables.items():
            v.d = params[k]
            v.need_grad = not (k.endswith("/mean") or k.endswith("/var") or k.startswith("preprocess/"))
        solver = training.make_solver(AdaBoundConfig(alpha=cfg.alpha, final_lr=cfg.final_lr))
        costs = []
        stream = training.batches(loader, batch, cfg.iterations, True, cfg.seed)
        for xb, yb, _ in tqdm(stream, total=cfg.iterations, desc="finetune", disable=fileio.bar_disabled(progress)):
            x.d, t.d = xb, yb
            loss.forward(clear_no_need_grad=True)
            solver.zero_grad()
            loss.backward(clear_buffer=True)
            solver.update()
            costs.append(float(loss.d))
        return {k: v.d.copy() for k, v in variables.items()}, costs


def tune(params: Dict[str, np.ndarray], meta: dict, paths: Sequence[str], labels: np.ndarray,
         cfg: FinetuneConfig, size: int, progress: bool = True) -> Tuple[Dict[str, np.ndarray], List[float]]:
    """(``params`` fine-tuned on the cells ``paths``, Cost per iteration); nothing is written.

    labels: ``(N,)`` int, indices into :func:`target_groups` of ``meta['class_names']``.
    Every image is read (and a bad one named) before any training; each crop is seen as
    the model sees it (:func:`wbc_nnabla.framing.model_view`: the site's zoom).
    """
    _, member = target_groups(meta["class_names"])
    loader = training.ImageLoader(list(paths), np.asarray(labels, np.int32), size,
                                  transform=framing.model_view(meta))
    for i in range(len(loader)):
        loader.image(i)
    return _fit(params, meta, loader, member, cfg, size, progress)


def _record(model: Path, cells: Path, labels: np.ndarray, names: List[str], paths: List[str],
            cfg: FinetuneConfig, size: int, costs: List[float]) -> dict:
    counts = np.bincount(labels, minlength=len(names))
    return dict(method="fine-tuning (BatchNorm statistics frozen)", model=str(model.resolve()),
                model_sha256=modelfile.file_sha256(model), source=str(cells.resolve()), n_cells=len(paths),
                per_class={n: int(c) for n, c in zip(names, counts) if c},
                cells_sha256=modelfile.paths_sha256(paths), settings=dict(dataclasses.asdict(cfg), size=size),
                cost_first=costs[0], cost_last=costs[-1],
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def finetune(model, cells, out, config: Optional[FinetuneConfig] = None, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Write ``out``: ``model`` fine-tuned on the labelled ``cells`` of a new site.

    model: a ``.nnp``/``.h5`` model file (:func:`wbc_nnabla.modelfile.read_model`), best
        one adapted to the site first (:func:`wbc_nnabla.adaptation.adapt_batchnorm`).
    cells: labelled cells, any source :func:`wbc_nnabla.fileio.read_cells` reads
        (at least :data:`MIN_FINETUNE_CELLS` and :data:`MIN_FINETUNE_CLASSES` classes;
        labels: the model's classes, or ``Neutrophil`` for Band/Segment).
    out: the fine-tuned ``.nnp`` (not the model, not inside the cells folder; an existing
        file only with ``overwrite``).
    config: :class:`FinetuneConfig`.

    Raises :class:`FinetuneError` (or another :class:`~wbc_nnabla.errors.WBCError` naming
    the file) before writing anything. Returns the ``finetune`` record stored in the
    output's metadata, plus ``out`` and ``costs`` (Cost per iteration).
    """
    cfg = config or FinetuneConfig()
    model, cells, out = Path(model), Path(cells), Path(out)
    if cfg.iterations < 1 or cfg.batch_size < 1:
        raise FinetuneError(f"iterations and batch_size must be >= 1, got {cfg.iterations} and {cfg.batch_size}")
    modelfile.check_derived_output(model, cells, out, overwrite, "finetune", "fine-tuned", FinetuneError)
    params, meta = modelfile.read_model(model)
    try:
        size = modelfile.network_size(meta, cfg.size, model)
    except modelfile.ModelError as e:
        raise FinetuneError(str(e)) from None
    paths, labels, names = read_labelled(cells, meta["class_names"])
    tuned, costs = tune(params, meta, paths, labels, cfg, size, progress)
    record = _record(model, cells, labels, names, paths, cfg, size, costs)
    modelfile.save_nnp(out, tuned, modelfile.derived_meta(meta, size, "finetune", record))
    log.info("fine-tuned %s on %d cells of %s (%d iterations; Cost %.3f -> %.3f) -> %s", model, len(paths),
             cells, cfg.iterations, costs[0], costs[-1], out)
    return dict(record, out=str(out), costs=costs)
