"""The paper's run: WBC Model A / Model B (section II.4, Fig. 4; learning curves Figs 5 and 7).

The recipe: ResNet-18 with a six-output classifier, started from ImageNet
weights (``pretrained``) or from another model (``init``: Model B fine-tunes
Model A), optimised by AdaBound, with Neural Network Console's per-iteration
ImageAugmentation (Contrast, Brightness, Magnification, Angle) in the training
graph only. Every epoch reports NNC's three curves:

* **Cost**: mean training loss of the augmented training graph over the epoch;
* **Training Error**: loss of the validation (test-mode) network over the training set;
* **Validation Error**: loss of the validation network over the validation set;

plus the misclassification rates of the last two. Outputs in ``out_dir``:
``model.nnp`` (best Validation Error, or with ``average_epochs`` the weight mean of the last
epochs, :func:`export_average`; :func:`wbc_nnabla.modelfile.save_nnp`),
``model.h5``, ``config.json``, ``learning_curve.csv``/``.png``,
``monitor/`` (nnabla ``MonitorSeries`` files and ``MonitorImageTile`` tiles of
augmented batches) and ``checkpoints/`` (+ ``checkpoint.json``, see
:mod:`wbc_nnabla.checkpoint`) for ``resume``.

:func:`train` orchestrates, as nnabla-examples' ``image-classification/imagenet``
does: :func:`load_data`, :func:`start_run`, then per epoch :func:`train_epoch` (the
engine's :func:`~wbc_nnabla.engine.fit`), precise BN, :func:`~wbc_nnabla.engine.evaluate` and
a checkpoint. The graph, solver, loop and evaluation are :mod:`wbc_nnabla.engine`'s; the data
loader is :mod:`wbc_nnabla.loader`'s. Every setting is a field of
:class:`~wbc_nnabla.recipe.TrainConfig`. With ``site_record`` the model also stores what the
cross-lab wing reads (the training cells' domain reference and WBC scale), through the wing's one
training seam, :func:`wbc_nnabla.sites.seams.training_record`.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import nnabla as nn
import nnabla.random
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from nnabla.logger import logger as nn_logger
from nnabla.monitor import Monitor, MonitorImageTile, MonitorSeries
from tqdm import tqdm

from . import checkpoint, classes, digests, modelfile, models, outputs, predictions, sampling
# Names of earlier releases, still importable here: the augmentation (moved after 0.1.0), the graph, solver,
# loop and evaluation (moved to engine in 0.2.0), the data loader (moved to loader) and the settings.
from .augmentation import (BLUR_KERNEL, BLUR_SIGMA, MIXSTYLE_ALPHA, MIXSTYLE_EPS, MIXSTYLE_STAGES,  # noqa: F401
                           OD_EPS, augment, blur_augment, color_augment, gaussian_kernel, low_band_amplitudes,
                           mixstyle, mixstyle_hook)
from .engine import (SCOPE, Graph, build_graph, evaluate, fit, get_context, load_values, make_solver,  # noqa: F401
                     parameters, recalibrate_bn, smoothed_cross_entropy)
from .loader import ImageLoader, batches, read_split, sample_rows, style_bank  # noqa: F401
from .pretrained import find_pretrained, load_imagenet
from .recipe import (BN_RECALIBRATION_IMAGES, CONTEXT_NAMES, AdaBoundConfig, Augmentation,  # noqa: F401
                     TrainConfig, TrainingError, step_size)
from .sites import seams

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainData:
    """A dataset folder opened for training: both splits and the seeded samples of ``train.csv``."""

    train: ImageLoader
    valid: ImageLoader
    bn_rows: Optional[np.ndarray]    # precise-BN sample (:func:`sample_rows`); None: off
    eval_rows: Optional[np.ndarray]  # Training Error sample; None: every training image
    iters: int                       # iterations per epoch
    site: dict = dataclasses.field(default_factory=dict)  # what the wing records (``site_record``), else {}
    styles: Optional[np.ndarray] = None  # the Fourier step's style bank (:func:`style_bank`)
    style_record: Optional[dict] = None  # what it was read from, for config.json
    dataset_sha256: str = ""         # train.csv, valid.csv and their images (:func:`wbc_nnabla.digests.dataset_digest`)


def load_data(dataset_dir: Path, out_dir: Path, cfg: TrainConfig) -> TrainData:
    """Check the settings and the dataset folder, read both splits and draw the seeded samples."""
    cfg.validate()
    for n in ("train.csv", "valid.csv"):
        if not (dataset_dir / n).is_file():
            raise TrainingError(f"{dataset_dir}: no {n} (expected an NNC dataset folder with train.csv "
                                f"and valid.csv, e.g. from `wbc-nnabla build-dataset`)")
    outputs.check_not_inside(out_dir, [dataset_dir] + ([Path(cfg.style_cells)] if cfg.style_cells else []))
    train_paths, train_y = read_split(dataset_dir / "train.csv")
    valid_paths, valid_y = read_split(dataset_dir / "valid.csv")
    if len(train_paths) < cfg.batch_size:
        raise TrainingError(f"{dataset_dir / 'train.csv'}: {len(train_paths)} images, fewer than "
                            f"batch_size {cfg.batch_size}; lower --batch-size")
    bn_rows = sample_rows(train_y, cfg.bn_recalibration, cfg.batch_size, sampling.derive_seed(cfg.seed, 0, 5)) \
        if bn_recalibration_images(cfg) else None
    limit = cfg.train_eval_limit
    eval_rows = None if limit is None or limit >= len(train_y) else \
        sampling.shuffled_sample(train_y, limit, sampling.derive_seed(cfg.seed, 0, 6))
    iters = len(train_paths) // cfg.batch_size
    styles, style_record = style_bank(cfg.style_cells, cfg.size, sampling.derive_seed(cfg.seed, 0, 9)) \
        if cfg.style_cells else (None, None)
    train = ImageLoader(train_paths, train_y, cfg.size, cfg.cache_images)
    # the wing's seam: the training cells' WBC scale and domain reference, only when asked
    site = seams.training_record(train, sampling.derive_seed(cfg.seed, 0, 8), sampling.derive_seed(cfg.seed, 0, 7)) \
        if cfg.site_record else {}
    return TrainData(train, ImageLoader(valid_paths, valid_y, cfg.size, cfg.cache_images), bn_rows, eval_rows,
                     min(iters, cfg.max_iterations) if cfg.max_iterations else iters, site, styles, style_record,
                     digests.dataset_digest(dataset_dir))


def bn_recalibration_images(cfg: TrainConfig) -> int:
    """Training images the BatchNorm statistics are re-estimated on: ``cfg.bn_recalibration``, or 0
    for a GroupNorm network (``norm='group'``), which has no running statistics to re-estimate."""
    return 0 if cfg.norm == "group" else int(cfg.bn_recalibration)


def run_config(dataset_dir: Path, out_dir: Path, cfg: TrainConfig, data: TrainData) -> dict:
    """The ``config`` record of ``config.json``: the settings, the dataset and its recorded samples.

    ``bn_recalibration`` is the effective count (0 for GroupNorm); a GroupNorm run given a
    count also records ``bn_recalibration_skipped``, saying why it was a no-op.
    """
    skipped = {} if bn_recalibration_images(cfg) or not cfg.bn_recalibration else dict(bn_recalibration_skipped=(
        f"--bn-recalibration {cfg.bn_recalibration} is a no-op with norm group: GroupNorm has no "
        f"running statistics to re-estimate"))
    return dict(dataset_dir=str(dataset_dir.resolve()), out_dir=str(out_dir.resolve()), epochs=cfg.epochs,
                batch_size=cfg.batch_size, size=cfg.size, seed=cfg.seed, arch=cfg.arch,
                num_classes=len(classes.CLASSES6), class_names=list(classes.CLASSES6),
                pretrained=str(cfg.pretrained), init=str(cfg.init) if cfg.init else None,
                solver=dataclasses.asdict(cfg.solver), augmentation=dataclasses.asdict(cfg.augmentation),
                context=cfg.context, train_eval_limit=cfg.train_eval_limit,
                export_size=cfg.export_size or cfg.size, n_train=len(data.train), n_valid=len(data.valid),
                max_iterations=cfg.max_iterations, bn_recalibration=bn_recalibration_images(cfg), **skipped,
                weight_init=cfg.weight_init, norm=cfg.norm, average_epochs=cfg.average_epochs,
                label_smoothing=cfg.label_smoothing, mixup=cfg.mixup,
                wbc_share=data.site.get("wbc_share"), style_cells=data.style_record,
                bn_sample=_describe_rows(data.bn_rows, data.train.labels),
                train_eval_sample=_describe_rows(data.eval_rows, data.train.labels), site_record=cfg.site_record,
                dataset_sha256=data.dataset_sha256)


def _describe_rows(rows: Optional[np.ndarray], labels: np.ndarray) -> Optional[dict]:
    """``config.json`` record of a sample of ``train.csv``: its data rows (0-based) and images per class."""
    if rows is None:
        return None
    counts = np.bincount(labels[rows], minlength=len(classes.CLASSES6))
    return dict(n=len(rows), per_class={c: int(k) for c, k in zip(classes.CLASSES6, counts)},
                rows=[int(r) for r in rows])


# ----------------------------------------------------------------------------- monitors and outputs

CURVE_COLUMNS = ("epoch", "cost", "training_error", "validation_error", "training_misclassification",
                 "validation_misclassification", "seconds", "images_per_s", "outside_share")
_SERIES = {"cost": "Cost", "training_error": "Training Error", "validation_error": "Validation Error",
           "training_misclassification": "Training Misclassification",
           "validation_misclassification": "Validation Misclassification"}


class Monitors:
    """nnabla ``MonitorSeries`` per curve, ``MonitorImageTile`` of augmented batches, CSV and PNG."""

    def __init__(self, out_dir: Path, history: List[dict]):
        self.out = Path(out_dir)
        self.monitor = Monitor(str(self.out / "monitor"))
        # MonitorSeries truncates its file when created: replaying the history
        # makes a resumed run's files identical to an uninterrupted one's.
        self.series = {k: MonitorSeries(name, self.monitor, interval=1, verbose=False)
                       for k, name in _SERIES.items()}
        self.tile = MonitorImageTile("Augmented training batch", self.monitor, num_images=16, interval=1,
                                     normalize_method=lambda a: np.clip(a, 0.0, 1.0))
        for row in history:
            self._add_series(row)

    def _add_series(self, row: dict) -> None:
        for k, s in self.series.items():
            if row.get(k) is not None and np.isfinite(row[k]):
                s.add(int(row["epoch"]), row[k])

    def add_epoch(self, row: dict, history: List[dict]) -> None:
        self._add_series(row)
        write_curve(self.out, history)

    def add_tile(self, iteration: int, images: np.ndarray) -> None:
        self.tile.add(iteration, images)


def write_curve(out_dir: Path, history: List[dict]) -> None:
    """``learning_curve.csv`` and ``learning_curve.png`` (Cost, Training Error, Validation Error; Figs 5/7)."""
    df = pd.DataFrame(history, columns=list(CURVE_COLUMNS))
    with outputs.atomic_path(Path(out_dir) / "learning_curve.csv") as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    fig = Figure(figsize=(6.4, 4.0), dpi=100)   # no pyplot: the caller's matplotlib backend is untouched
    ax = fig.subplots()
    for col, name, style in (("cost", "Cost", "-"), ("training_error", "Training Error", "-"),
                             ("validation_error", "Validation Error", "-")):
        d = df[["epoch", col]].dropna()
        ax.plot(d["epoch"], d[col], style, label=name, marker="." if len(d) < 30 else None)
    ax.set_xlabel("Epoch")
    ax.set_ylabel("Cost / Error (cross-entropy)")
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title("Learning curve")
    fig.tight_layout()
    with outputs.atomic_path(Path(out_dir) / "learning_curve.png") as tmp:
        fig.savefig(tmp, format="png")


# ----------------------------------------------------------------------------- initialisation, export


def initialise(params: dict, pretrained: str = "none", init=None, arch: str = "resnet18",
               norm: str = "batch") -> str:
    """Set the starting parameters; returns a description for ``config.json``.

    init: model ``.nnp``/``.h5``: every parameter (head, BN statistics and
        ``preprocess`` included) is copied exactly; names and shapes must match, and its
        normalisation must be ``norm``.
    pretrained: ``none``, ``imagenet`` or a weight file (see :func:`wbc_nnabla.pretrained.find_pretrained`):
        the backbone is copied, ``fc`` keeps its fresh initialisation. ImageNet weights are
        BatchNorm weights: a GroupNorm network (``norm='group'``) takes only their convolutions
        (:func:`wbc_nnabla.pretrained.load_imagenet`), its GroupNorm layers start at gamma 1, beta 0.
    """
    if init:
        try:
            values = modelfile.load_parameters(init)
            init_norm = models.norm_of(values)
        except Exception as e:  # nnabla raises bare RuntimeErrors for unreadable files
            raise TrainingError(f"--init {init}: cannot read parameters ({type(e).__name__}: {e})") from None
        modelfile.check_finite(values, f"--init {init}", reading=True)
        if init_norm != norm:
            raise TrainingError(f"--init {init}: a norm {init_norm} model; this run has norm {norm} "
                                f"(give --set norm={init_norm}, or --pretrained instead of --init)")
        load_values(params, values, f"--init {init}")
        return f"init {init}"
    path = find_pretrained(pretrained, arch)
    if not path:
        return "scratch"
    loaded = load_values(params, load_imagenet(path, arch, norm), f"--pretrained {path}", strict=False)
    if norm == "group":
        return f"ImageNet {path} ({len(loaded)} tensors: convolutions only, GroupNorm gamma 1 beta 0; new head fc)"
    if norm == "ibn":
        return f"ImageNet {path} ({len(loaded)} tensors: IBN layers start afresh; new head fc)"
    return f"ImageNet {path} ({len(loaded)} tensors; new head fc)"


def _export(out_dir: Path, params: dict, arch: str, size: int, training: dict, norm: str = "batch",
            site: Optional[dict] = None, calibration: Optional[dict] = None) -> None:
    """``model.nnp`` (self-describing inference model) and ``model.h5`` (parameters) of the best epoch.

    site: what the wing records of the training cells (:func:`wbc_nnabla.sites.seams.training_record`:
    their WBC scale and domain reference), stored in the model's description as given.
    calibration: the exported epoch's validation cells and probabilities
    (:func:`wbc_nnabla.predictions.calibration_record`), stored under
    :data:`wbc_nnabla.predictions.CALIBRATION_KEY` (None: not stored).
    """
    extra = dict(site or {})
    if calibration:
        extra[predictions.CALIBRATION_KEY] = calibration
    meta = modelfile.model_meta(arch, classes.CLASSES6, size, norm=norm, training=training, **extra)
    modelfile.save_nnp(out_dir / "model.nnp", params, meta)
    modelfile.save_h5(out_dir / "model.h5", params)


# ----------------------------------------------------------------------------- weight averaging


@dataclasses.dataclass
class WeightAverage:
    """The running mean of the trainable weights over every update since ``first_epoch`` (SWA / SWAD).

    Written here because nnabla has no weight-averaging utility (as PyTorch's ``swa_utils``);
    BatchNorm's running statistics are not averaged but re-estimated for the mean weights
    (:func:`export_average`).
    """

    first_epoch: int                   # 0-based epoch whose first update starts the mean
    updates: int = 0                   # updates averaged so far
    mean: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def add(self, params: Dict[str, nn.Variable]) -> None:
        """Fold the current weights in: ``mean += (w - mean) / updates``."""
        self.updates += 1
        for k, v in params.items():
            if self.updates == 1:
                self.mean[k] = v.d.copy()
            else:
                self.mean[k] += (v.d - self.mean[k]) / self.updates


def average_start(cfg: TrainConfig) -> Optional[int]:
    """The 0-based epoch where weight averaging starts, or None when ``cfg.average_epochs`` is 0."""
    return cfg.epochs - cfg.average_epochs if cfg.average_epochs else None


# ----------------------------------------------------------------------------- a run


@dataclasses.dataclass
class RunState:
    """What a run carries from epoch to epoch, and what a checkpoint restores."""

    params: Dict[str, nn.Variable]
    solver: object                   # nnabla.solvers.AdaBound
    rng: np.random.RandomState       # the run's NumPy generator, saved in every checkpoint
    init_info: str                   # how the parameters started (config.json "initialisation")
    epoch: int = 0                   # epochs done
    history: List[dict] = dataclasses.field(default_factory=list)
    best: dict = dataclasses.field(default_factory=lambda: {"epoch": None, "validation_error": float("inf")})
    calibration: Optional[dict] = None  # the last epoch's validation probabilities (predictions.calibration_record)
    average: Optional[WeightAverage] = None  # the running weight mean (``average_epochs``), from its first epoch


def start_run(cfg: TrainConfig, previous: Optional[tuple] = None) -> RunState:
    """Fresh seeded parameters (initialised per ``cfg``) and solver, or those of ``previous``.

    previous: ``(checkpoint folder, state, saved config.json)`` from
    :func:`wbc_nnabla.checkpoint.check_resume`, or None for a new run.
    """
    models.clear_scope(SCOPE)
    # Parameter initialisers draw from nnabla's process-wide generator (nnabla.random.prng):
    # nnabla offers no local generator for them, so it is seeded here, once per run.
    nnabla.random.set_parameter_seed(sampling.derive_seed(cfg.seed, 0, 0))
    nnabla.random.seed(sampling.derive_seed(cfg.seed, 0, 3))
    # The run's own NumPy stream (never NumPy's global state). No step draws from it today:
    # each draws from its own (seed, epoch, stream) seed, see sampling.derive_seed.
    rng = np.random.RandomState(sampling.derive_seed(cfg.seed, 0, 4))
    build_graph(cfg.arch, len(classes.CLASSES6), cfg.batch_size, cfg.size,   # creates the parameters
                weight_init=cfg.weight_init, norm=cfg.norm)
    params = parameters()
    if previous is None:
        init_info = initialise(params, cfg.pretrained, cfg.init, cfg.arch, cfg.norm)
        return RunState(params, make_solver(cfg.solver), rng, init_info)
    ck_dir, state, saved = previous
    check_schedule(cfg, ck_dir, saved["config"])
    load_values(params, modelfile.load_parameters(ck_dir / "params.h5"), str(ck_dir / "params.h5"))
    solver = make_solver(cfg.solver)
    solver.load_states(str(ck_dir / "solver.h5"))
    checkpoint.set_rng_state(rng, state["numpy_rng"])
    return RunState(params, solver, rng, saved.get("initialisation", ""), state["epoch"], state["history"],
                    state["best"], average=resumed_average(cfg, ck_dir, state))


def check_schedule(cfg: TrainConfig, ck_dir: Path, saved: dict) -> None:
    """Refuse to resume a ``cosine`` run with other ``epochs``: its step size depends on the run's
    length, so the updates already made followed another schedule than the one asked for."""
    if cfg.solver.schedule != "constant" and saved.get("epochs") != cfg.epochs:
        raise TrainingError(f"{ck_dir}: cannot resume a {cfg.solver.schedule} schedule with epochs {cfg.epochs}: "
                            f"the run was scheduled over {saved.get('epochs')} epochs, and its step size so far "
                            f"followed that length")


def resumed_average(cfg: TrainConfig, ck_dir: Path, state: dict) -> Optional[WeightAverage]:
    """The weight mean a checkpoint holds, after checking it fits ``cfg``'s averaging window.

    A run may be resumed with more ``epochs``, but not once that would move a window already begun.
    """
    saved = state.get("average")
    start = average_start(cfg)
    if saved is None:
        if start is not None and start < state["epoch"]:
            raise TrainingError(f"{ck_dir}: cannot resume with average_epochs {cfg.average_epochs}: the window "
                                f"would start at epoch {start + 1}, before this checkpoint (epoch "
                                f"{state['epoch']}), and the weights of those updates are gone")
        return None
    if saved["first_epoch"] != start:
        raise TrainingError(f"{ck_dir}: weight averaging began at epoch {saved['first_epoch'] + 1}; resume with "
                            f"epochs and average_epochs that start it there (got epochs {cfg.epochs}, "
                            f"average_epochs {cfg.average_epochs})")
    return WeightAverage(saved["first_epoch"], saved["updates"],
                         modelfile.load_parameters(ck_dir / checkpoint.AVERAGE_FILE))


def train_epoch(graph: Graph, run: RunState, data: TrainData, cfg: TrainConfig, epoch: int, mon: Monitors,
                out_dir: Path) -> Tuple[List[float], float]:
    """AdaBound updates over one seeded shuffle of ``train.csv`` (:func:`wbc_nnabla.engine.fit`):
    (Cost per iteration, seconds inside nnabla).

    The first augmented batch goes to the image-tile monitor every ``tile_every`` epochs.
    A non-finite Cost stops the run before the update (the last checkpoint stays good).
    """
    stream = batches(data.train, cfg.batch_size, data.iters, True, sampling.derive_seed(cfg.seed, epoch, 2))

    def feed(xb, yb):
        graph.x.d, graph.t.d = xb, yb

    def stop(i, cost):
        return TrainingError(f"non-finite Cost ({cost}) at epoch {epoch + 1}, iteration {i + 1}: training stopped; "
                             f"last good checkpoint kept: {checkpoint.last_checkpoint(out_dir)} "
                             f"(lower --alpha/--final-lr or check the images)")

    def tile(i, cost):
        if i == 0 and cfg.tile_every and epoch % cfg.tile_every == 0:
            mon.add_tile(epoch * data.iters, graph.x_aug.d)

    # the weight mean is NumPy, outside nnabla: counted in outside_share (~20 ms)
    after = ([lambda i, cost: run.average.add(run.solver.get_parameters())] if run.average is not None else []) \
        + [tile]
    total = cfg.epochs * data.iters
    schedule = None if cfg.solver.schedule == "constant" else \
        (lambda i: step_size(cfg.solver, epoch * data.iters + i, total))
    with tqdm(total=data.iters, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=outputs.bar_disabled(cfg.progress),
              leave=False) as bar:
        result = fit(graph.loss, run.solver, stream, feed, data.iters, progress=cfg.progress, step_size=schedule,
                     weight_decay=cfg.solver.weight_decay, after=after, nonfinite=stop, bar=bar)
    return result.costs, result.compute


def test_graph(cfg: TrainConfig, data: TrainData) -> Graph:
    """The test-mode graph of the current weights, after precise BN on the run's BN sample (when on)."""
    n_classes = len(classes.CLASSES6)
    if data.bn_rows is not None:        # None for GroupNorm (nothing to re-estimate) or when off
        recalibrate_bn(build_graph(cfg.arch, n_classes, cfg.batch_size, cfg.size, norm=cfg.norm), data.train,
                       cfg.batch_size, data.bn_rows)
    return build_graph(cfg.arch, n_classes, cfg.batch_size, cfg.size, test=True, norm=cfg.norm)


def validation_cells(data: TrainData, probs: np.ndarray, which: str) -> Optional[dict]:
    """The validation cells stored with an exported model (:func:`wbc_nnabla.predictions.calibration_record`),
    ``which``: the weights they were measured with; None when the network gives non-finite outputs
    (the next update stops the run)."""
    if not np.isfinite(probs).all():
        return None
    return predictions.calibration_record(data.valid.labels, probs, classes.CLASSES6,
                                          f"valid.csv of the training dataset, {which}")


def export_run(out_dir: Path, cfg: TrainConfig, run: RunState, calibration: Optional[dict], site: dict) -> None:
    """Export the run's current weights as the model of ``run.best`` (:func:`_export`)."""
    _export(out_dir, run.params, cfg.arch, cfg.export_size or cfg.size,
            dict(run.best, trained_size=cfg.size, epochs=cfg.epochs, initialisation=run.init_info, seed=cfg.seed),
            norm=cfg.norm, site=site, calibration=calibration)


def stop_if_nonfinite(run: RunState, epoch: int, out_dir: Path) -> None:
    """Stop the run when an update left a weight, or precise BN a statistic, NaN or infinite (a finite Cost
    can still step to an infinity), as a non-finite Cost does: nothing of the epoch is exported or saved."""
    bad = modelfile.first_nonfinite(run.params)
    if bad is not None:
        raise TrainingError(f"non-finite parameter {bad[0]} ({bad[1]}) after epoch {epoch + 1}: training stopped; last "
                            f"good checkpoint kept: {checkpoint.last_checkpoint(out_dir)} (lower --alpha/--final-lr "
                            f"or check the images)")


def run_epoch(epoch: int, cfg: TrainConfig, data: TrainData, run: RunState, mon: Monitors, out_dir: Path) -> dict:
    """One epoch: :func:`train_epoch`, precise BN, then NNC's errors; returns its learning-curve row."""
    n_classes = len(classes.CLASSES6)
    # F.image_augmentation's generator lives inside the C++ function and cannot be
    # saved: a new function seeded from (seed, epoch) per epoch makes a resumed run
    # draw exactly the same augmentations.
    graph = build_graph(cfg.arch, n_classes, cfg.batch_size, cfg.size, aug=cfg.augmentation,
                        aug_seed=sampling.derive_seed(cfg.seed, epoch, 1), norm=cfg.norm, styles=data.styles,
                        label_smoothing=cfg.label_smoothing, mixup=cfg.mixup)
    if epoch == average_start(cfg) and run.average is None:
        run.average = WeightAverage(epoch)
    t0 = time.perf_counter()
    costs, compute = train_epoch(graph, run, data, cfg, epoch, mon, out_dir)
    train_time = time.perf_counter() - t0
    test = test_graph(cfg, data)
    stop_if_nonfinite(run, epoch, out_dir)
    tr_loss, tr_mis, _ = evaluate(test, data.train, cfg.batch_size, data.eval_rows)
    va_loss, va_mis, va_probs = evaluate(test, data.valid, cfg.batch_size)
    # stored with the model if this epoch is exported: the cut-off of `score --pending-threshold model`
    run.calibration = validation_cells(data, va_probs, f"epoch {epoch + 1}")
    return dict(epoch=epoch + 1, cost=float(np.mean(costs)), training_error=tr_loss, validation_error=va_loss,
                training_misclassification=tr_mis, validation_misclassification=va_mis,
                seconds=time.perf_counter() - t0, images_per_s=data.iters * cfg.batch_size / train_time,
                outside_share=1.0 - compute / train_time)


def end_epoch(out_dir: Path, cfg: TrainConfig, run: RunState, row: dict, mon: Monitors, site: dict) -> None:
    """Record an epoch's row: log, export the model when Validation Error improved, curves, checkpoint."""
    run.history.append(row)
    run.epoch = row["epoch"]
    log.info("epoch %d/%d  Cost %.4f  Training Error %.4f  Validation Error %.4f  "
             "validation misclassification %.3f  (%.0f s)", row["epoch"], cfg.epochs, row["cost"],
             row["training_error"], row["validation_error"], row["validation_misclassification"], row["seconds"])
    if row["validation_error"] < run.best["validation_error"]:
        run.best = {"epoch": row["epoch"], "validation_error": row["validation_error"],
                    "validation_misclassification": row["validation_misclassification"]}
        export_run(out_dir, cfg, run, run.calibration, site)
    mon.add_epoch(row, run.history)
    state = dict(epoch=run.epoch, history=run.history, best=run.best, numpy_rng=checkpoint.rng_state(run.rng))
    avg = run.average
    if avg is not None:
        state["average"] = dict(first_epoch=avg.first_epoch, updates=avg.updates)
    checkpoint.save_checkpoint(out_dir, run.epoch, run.params, run.solver, state,
                               average=avg.mean if avg is not None else None)


def export_average(out_dir: Path, cfg: TrainConfig, data: TrainData, run: RunState) -> None:
    """Export the weight mean of the last ``cfg.average_epochs`` epochs as ``model.nnp`` (SWA).

    The mean replaces the run's weights, its BatchNorm statistics are re-estimated on the run's
    BN sample (:func:`recalibrate_bn`; averaged weights need their own), then its Validation Error
    and validation cells are measured and stored as the exported model's (``run.best``).
    Called after the last epoch's checkpoint, so a resumed or repeated call gives the same model.
    """
    avg = run.average
    load_values(run.params, avg.mean, "the weight mean", strict=False)
    va_loss, va_mis, va_probs = evaluate(test_graph(cfg, data), data.valid, cfg.batch_size)
    first = avg.first_epoch + 1
    run.best = {"epoch": cfg.epochs, "validation_error": va_loss, "validation_misclassification": va_mis,
                "averaged_epochs": [first, cfg.epochs], "averaged_updates": avg.updates}
    log.info("weights averaged over epochs %d-%d (%d updates): Validation Error %.4f, misclassification %.3f",
             first, cfg.epochs, avg.updates, va_loss, va_mis)
    cells = validation_cells(data, va_probs, f"weights averaged over epochs {first}-{cfg.epochs}")
    export_run(out_dir, cfg, run, cells, data.site)


# ----------------------------------------------------------------------------- training


def train(dataset_dir, out_dir, config: Optional[TrainConfig] = None, resume: bool = False) -> dict:
    """Train WBC Model A (``pretrained``) or fine-tune Model B (``init=model_A.nnp``); section II.4.

    dataset_dir: NNC dataset folder with ``train.csv`` and ``valid.csv`` (``x:image,y:label``,
        y = six-class index in :data:`wbc_nnabla.classes.CLASSES6` order); images of any size,
        resized to ``config.size`` x ``config.size`` pixels.
    out_dir: output folder (see module docstring); must not hold a run unless ``resume``.
    config: every setting (:class:`~wbc_nnabla.recipe.TrainConfig`; default: the paper's recipe),
        e.g. ``train(ds, out, TrainConfig(epochs=3, init="model_A.nnp"))``.
    resume: continue the last checkpoint in ``out_dir``; the settings that shape the
        result (:data:`wbc_nnabla.checkpoint.RESUME_KEYS`) must match the saved run's,
        and the resumed run equals an uninterrupted one.

    nnabla's context applies inside this call only (``nn.context_scope``).
    Returns the summary written to ``config.json`` (config, environment, best epoch, history).
    """
    cfg = config or TrainConfig()
    level = nn_logger.level
    if cfg.progress:
        # nnabla logs every data iterator and file save at INFO, which breaks the progress bar.
        nn_logger.setLevel(logging.WARNING)
    try:
        return _run_epochs(Path(dataset_dir), Path(out_dir), cfg, resume)
    finally:
        nn_logger.setLevel(level)


def _run_epochs(dataset_dir: Path, out_dir: Path, cfg: TrainConfig, resume: bool) -> dict:
    """The run behind :func:`train`: data, config, checkpoint or fresh start, then every epoch (:func:`_epochs`).

    On any failure (a full disk, Ctrl-C, a refused export) the folder is left as
    :func:`wbc_nnabla.checkpoint.after_failure` decides: a resumable run, or nothing partial; an
    ``OSError`` is raised again with that decision added to its message.
    """
    data = load_data(dataset_dir, out_dir, cfg)
    config = run_config(dataset_dir, out_dir, cfg, data)
    if resume:
        previous = checkpoint.check_resume(out_dir, config)
    else:
        checkpoint.check_fresh(out_dir)
        previous = None
    created = not (out_dir.exists() or out_dir.is_symlink())
    try:
        return _epochs(out_dir, cfg, data, config, previous)
    except BaseException as e:
        left = checkpoint.after_failure(out_dir, created)
        if left is None:
            raise
        log.warning("%s", left)
        if isinstance(e, OSError) and e.strerror:
            raise OSError(e.errno, f"{e.strerror}; {left}", e.filename) from None
        raise


def _epochs(out_dir: Path, cfg: TrainConfig, data: TrainData, config: dict, previous: Optional[tuple]) -> dict:
    """Start (or resume ``previous``) and run every epoch into ``out_dir``; returns the summary of ``config.json``."""
    with nn.context_scope(get_context(cfg.context)):
        run = start_run(cfg, previous)
        if previous:
            log.info("resuming %s after epoch %d", out_dir, run.epoch)
        checkpoint.open_run_folder(out_dir, fresh=previous is None)
        summary = dict(config=config, environment=outputs.environment(), initialisation=run.init_info)
        outputs.write_json(out_dir / "config.json", summary)
        mon = Monitors(out_dir, run.history)
        for epoch in range(run.epoch, cfg.epochs):
            end_epoch(out_dir, cfg, run, run_epoch(epoch, cfg, data, run, mon, out_dir), mon, data.site)
        if run.average is not None and run.epoch == cfg.epochs:
            export_average(out_dir, cfg, data, run)
    summary.update(best=run.best, history=run.history)
    outputs.write_json(out_dir / "config.json", summary)
    return summary
