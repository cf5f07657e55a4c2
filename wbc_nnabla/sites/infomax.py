"""Information maximisation on a site's unlabelled cells, after AdaBN (SHOT-IM, Liang et al., ICML 2020).

Every parameter but the classifier is trained so that each cell's prediction is sure (low
entropy) while the mean prediction over a batch stays near a class prior (a healthy
differential by default; SHOT's uniform one with ``prior="none"``), so the sure answers cannot
all be one class: a loss (:func:`infomax_loss`) plus the engine's loop. Not in Sasaki et al.
(2020); measured for cells of other labs and not adopted (docs/cross_site.md). CLI:
``wbc-nnabla infomax``.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from .. import engine, fileio, modelfile, predictions, settings
from ..errors import InputError
from ..loader import ImageLoader, batches
from ..recipe import AdaBoundConfig, Augmentation
from . import derived, framing
from .adaptation import AdaptationError, draw_cells, estimate_statistics, bn_statistics
from .settings import ADABN_BATCH, MAX_ADAPT_IMAGES, MIN_ADAPT_IMAGES, InfoMaxConfig

log = logging.getLogger(__name__)


def prior_shares(class_names: List[str], prior: str) -> np.ndarray:
    """Target share ``(C,)`` of each of ``class_names`` (sums to 1) for :func:`infomax`'s prior term.

    prior: ``none`` (equal shares), ``normal`` or ``Class=share,...``
    (:func:`wbc_nnabla.predictions.parse_prior`; ``Neutrophil`` for Band + Segment).
    """
    shares = predictions.parse_prior(prior)
    if shares is None:
        return np.full(len(class_names), 1.0 / len(class_names))
    w = predictions.prior_weights(class_names, shares)            # target share x C (balanced training)
    return w / w.sum()


def infomax_loss(logits: nn.Variable, shares: np.ndarray, weight: float) -> Tuple[nn.Variable, nn.Variable,
                                                                                  nn.Variable]:
    """(loss, mean entropy, KL) of information maximisation on a batch of logits ``(B, C)``.

    Mean entropy: ``mean_i -sum_c p_ic log p_ic`` (nats), low when each cell's call is sure.
    KL: ``sum_c m_c log(m_c / s_c)`` of the batch-mean prediction ``m`` from ``shares`` ``(C,)``;
    with equal shares it is ``log C`` minus SHOT's diversity term. Loss: entropy + ``weight`` x KL.
    """
    p = F.softmax(logits, axis=1)
    entropy = F.mean(-F.sum(p * F.log_softmax(logits, axis=1), axis=1))
    m = F.mean(p, axis=0)
    log_s = nn.Variable.from_numpy_array(np.log(np.asarray(shares, np.float32)))
    kl = F.sum(m * (F.log(m + 1e-7) - log_s))
    return entropy + weight * kl, entropy, kl


def _maximise(params: Dict[str, np.ndarray], meta: dict, loader: ImageLoader, cfg: InfoMaxConfig,
              size: int, shares: np.ndarray, progress: bool, what: str = "infomax"
              ) -> Tuple[Dict[str, np.ndarray], List[dict]]:
    """(parameters after ``cfg.iterations`` updates, per-update ``loss``/``entropy``/``kl``): the loss
    :func:`infomax_loss` and the engine's loop (:func:`wbc_nnabla.engine.fit`).

    BatchNorm runs on batch statistics (the site's), with the paper's geometric augmentation;
    the classifier ``fc``, BatchNorm running statistics and ``preprocess`` stay fixed.
    ``meta``: as :func:`wbc_nnabla.modelfile.read_model` returns it (``norm`` always set).
    A non-finite loss stops it before that update (:class:`AdaptationError` naming ``what``).
    """
    with nn.parameter_scope("", {}):
        nn.random.seed(cfg.seed)
        graph = engine.build_graph(meta["arch"], int(meta["num_classes"]), cfg.batch_size, size,
                                   aug=Augmentation(), aug_seed=cfg.seed, norm=meta["norm"])
        loss, entropy, kl = infomax_loss(graph.logits, shares, cfg.weight)
        entropy.persistent = kl.persistent = True          # read after backward(clear_buffer=True)
        variables = engine.set_parameters(params, lambda k: not (k.startswith("fc/") or engine.is_fixed(k)))
        solver = engine.make_solver(AdaBoundConfig(alpha=cfg.alpha, final_lr=cfg.final_lr))
        history: List[dict] = []

        def feed(xb, yb):
            graph.x.d = xb

        def record(i, cost):
            history.append(dict(loss=cost, entropy=float(entropy.d), kl=float(kl.d)))

        engine.fit(loss, solver, batches(loader, cfg.batch_size, cfg.iterations, True, cfg.seed), feed,
                   cfg.iterations, "infomax", progress, after=[record],
                   nonfinite=engine.stop_nonfinite(what, AdaptationError))
        tuned = {k: v.d.copy() for k, v in variables.items()}
    for k in bn_statistics(params):      # the forward passes moved them; they are re-estimated after
        tuned[k] = params[k]
    return tuned, history


def _record(model: Path, cells: Path, meta: dict, paths: List[str], n_listed: int, skipped: List[str],
            shares: np.ndarray, cfg: InfoMaxConfig, size: int, max_images: int, history: List[dict]) -> dict:
    """The ``infomax`` record stored in the output's description."""
    return dict(method="information maximisation (SHOT-IM) with a class prior, then AdaBN",
                  model=str(model.resolve()), model_sha256=modelfile.file_sha256(model),
                  source=str(cells.resolve()), n_cells=len(paths), n_listed=n_listed, n_skipped=len(skipped),
                  cells_sha256=modelfile.paths_sha256(paths), prior_shares=dict(zip(meta["class_names"],
                                                                                   shares.round(4).tolist())),
                  settings=dict(dataclasses.asdict(cfg), size=size, max_images=int(max_images)),
                  first=history[0], last=history[-1],
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))


def infomax(model, cells, out, config: Optional[InfoMaxConfig] = None, overwrite: bool = False,
            progress: bool = True, skip_bad: bool = False, max_images: int = MAX_ADAPT_IMAGES) -> dict:
    """Write ``out``: ``model`` adapted to the unlabelled ``cells`` by information maximisation.

    SHOT-IM (Liang et al., ICML 2020) with a class prior: every parameter but the
    classifier ``fc`` is trained (AdaBound, :class:`~wbc_nnabla.sites.settings.InfoMaxConfig`) to
    lower :func:`infomax_loss` on batches of the site's cells; then, for a BatchNorm
    model, every BatchNorm's running statistics are re-estimated on the same cells (AdaBN).
    Best run on a model ``adapt`` made first (its site zoom is applied to each crop).

    model: a ``.nnp``/``.h5`` model file. cells: the site's cells, any source
        :func:`wbc_nnabla.fileio.read_cell_images` reads; labels are ignored. A seeded sample of at
        most ``max_images`` readable cells is used (at least :data:`MIN_ADAPT_IMAGES` and
        one batch). out: the ``.nnp`` to write (not the model, not inside the cells folder;
        an existing file only with ``overwrite``). skip_bad: leave out unreadable cells.

    Pseudo-labels are not used, yet the same caution holds as for ``self-train``: a class the
    model confuses on this site with high confidence is learnt more firmly; check the result on
    some labelled cells of the site. Raises :class:`AdaptationError` (or another
    :class:`~wbc_nnabla.errors.WBCError` naming the file) before writing anything. Returns the
    ``infomax`` record stored in the output's metadata, plus ``out``, ``history`` (``loss``,
    ``entropy`` and ``kl`` per update) and ``skipped`` (reasons).
    """
    cfg = config or InfoMaxConfig()
    model, cells, out = Path(model), Path(cells), Path(out)
    settings.check(cfg, InputError)
    if not max_images >= 1:
        raise InputError(f"max_images must be >= 1, got {max_images}")
    params, meta, size = derived.read_for_derived(model, cells, out, overwrite, "infomax", "adapted", cfg.size)
    try:
        shares = prior_shares(meta["class_names"], cfg.prior)
    except predictions.PredictionsError as e:
        raise AdaptationError(f"{model}: --prior {cfg.prior}: {e}") from None
    table = fileio.read_cell_images(cells, dedupe_flag=None)
    loader = ImageLoader(list(table["path"]), np.zeros(len(table), np.int32), size, transform=framing.model_view(meta))
    readable, skipped = draw_cells(loader, max_images, cfg.seed, skip_bad)
    need = max(int(MIN_ADAPT_IMAGES), cfg.batch_size)
    if len(readable) < need:
        raise AdaptationError(f"{cells}: {len(readable)} readable cells ({len(table)} listed, {len(skipped)} "
                              f"unreadable); infomax needs at least {need} (the mean prediction of a batch)")
    paths = [loader.paths[i] for i in readable]
    site = ImageLoader(paths, np.zeros(len(paths), np.int32), size, transform=framing.model_view(meta))
    site.cache = {j: loader.image(int(i)) for j, i in enumerate(readable)}   # read once, by _draw
    tuned, history = _maximise(params, meta, site, cfg, size, shares, progress, f"{model}: infomax")
    if bn_statistics(params):
        rows = np.arange(len(paths) // ADABN_BATCH * ADABN_BATCH)
        tuned.update(estimate_statistics(tuned, meta, site, rows, ADABN_BATCH, size))
    record = _record(model, cells, meta, paths, len(table), skipped, shares, cfg, size, max_images, history)
    modelfile.save_nnp(out, tuned, derived.derived_meta(meta, size, "infomax", record, tuned=True))
    log.info("infomax on %d cells of %s (%d updates; entropy %.3f -> %.3f, KL %.3f -> %.3f) -> %s", len(paths),
             cells, cfg.iterations, history[0]["entropy"], history[-1]["entropy"], history[0]["kl"],
             history[-1]["kl"], out)
    return dict(record, out=str(out), history=history, skipped=skipped)
