"""Training of WBC Model A / Model B (paper section II.4, Fig. 4; learning curves Figs 5 and 7).

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
does: :func:`load_data`, :func:`start_run`, then per epoch :func:`train_epoch`,
:func:`recalibrate_bn`, :func:`evaluate` and a checkpoint. The training graph's augmentation
is built by :mod:`wbc_nnabla.augmentation`. Every setting is a
field of :class:`~wbc_nnabla.recipe.TrainConfig`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.random
import nnabla.solvers as S
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from nnabla.ext_utils import get_extension_context
from nnabla.logger import logger as nn_logger
from nnabla.monitor import Monitor, MonitorImageTile, MonitorSeries
from nnabla.utils.data_iterator import data_iterator_simple
from scipy.special import softmax
from tqdm import tqdm

from . import checkpoint, classes, domain, fileio, framing, modelfile, models, outputs, predictions, sampling
# The training graph's augmentation moved to its own module after 0.1.0; its names stay importable here.
from .augmentation import (BLUR_KERNEL, BLUR_SIGMA, MIXSTYLE_ALPHA, MIXSTYLE_EPS, MIXSTYLE_STAGES,  # noqa: F401
                           OD_EPS, augment, blur_augment, color_augment, gaussian_kernel, low_band_amplitudes,
                           mixstyle, mixstyle_hook, mixup as mix_batch)
from .errors import InputError
from .pretrained import find_pretrained, load_imagenet
# The settings live in an nnabla-free module so the CLI can show their defaults
# without importing nnabla; they are re-exported here as part of this stage's API.
from .recipe import (BN_RECALIBRATION_IMAGES, CONTEXT_NAMES, AdaBoundConfig, Augmentation,  # noqa: F401
                     TrainConfig, TrainingError, step_size)

log = logging.getLogger(__name__)

#: Parameter scope of the training graphs (kept apart from a user's own parameters).
SCOPE = "wbc_train"
#: Training images (seeded, class-stratified) the stored domain reference is computed on.
DOMAIN_SAMPLE = 1000
#: Most style cells (:attr:`TrainConfig.style_cells`) read, a seeded sample of a larger source, and
#: fewest accepted: the Fourier step draws one per image, and a handful would stand for no lab.
MAX_STYLE_CELLS = 500
MIN_STYLE_CELLS = 8


# ----------------------------------------------------------------------------- graph pieces


Graph = collections.namedtuple("Graph", "x t x_aug logits losses loss")
Graph.__doc__ = """One network on the parameters of scope :data:`SCOPE` (:func:`build_graph`).

x: input ``(B, 3, S, S)`` RGB in [0, 1].
t: labels ``(B, 1)`` int.
x_aug: the network's input after augmentation and mixup (``x`` without).
logits: ``(B, C)``.
losses: per-sample softmax cross-entropy ``(B, 1)`` (with ``label_smoothing``, the smoothed one; with
    ``mixup``, the mix of the two images' losses).
loss: their mean ``()``.
"""


def build_graph(arch: str, num_classes: int, batch_size: int, size: int, test: bool = False,
                aug: Optional[Augmentation] = None, aug_seed: int = -1, weight_init: str = "glorot",
                norm: str = "batch", styles: Optional[np.ndarray] = None, label_smoothing: float = 0.0,
                mixup: float = 0.0) -> Graph:
    """A ResNet graph sharing the parameters of :data:`SCOPE`, built for one use.

    * training: ``aug`` given (ImageAugmentation seeded with ``aug_seed``; MixStyle when
      ``aug.mixstyle``; the Fourier step with the style bank ``styles``, :func:`style_bank`,
      when ``aug.fourier``), batch-statistics BN;
    * test (validation, Training Error): ``test=True``, running-statistics BN, no ``aug``
      (``finetune`` gives ``aug`` with ``test=True``: augmented, BatchNorm frozen);
    * clean batch statistics (precise BN, :func:`recalibrate_bn`): neither.

    The first graph built after the scope is cleared creates the parameters, new
    convolution weights drawn by ``weight_init`` (:func:`wbc_nnabla.models.conv_initializer`).
    ``norm``: ``batch``, ``group`` (GroupNorm: per-image statistics whatever ``test``) or ``ibn``
    (IBN-a, :func:`wbc_nnabla.models.ibn_channels`).
    ``label_smoothing``: the loss of :func:`smoothed_cross_entropy` (training graphs only).
    ``mixup``: Beta's ``alpha`` of :func:`wbc_nnabla.augmentation.mixup`, which mixes each augmented
    image with another of its batch; the loss is mixed with the same weights (training graphs only).
    """
    with nn.parameter_scope(SCOPE):
        x = nn.Variable(models.input_shape(batch_size, size))
        t = nn.Variable((batch_size, 1))
        h = augment(x, aug, aug_seed, styles) if aug is not None and aug.enabled else x
        lam = None
        if mixup and aug is not None and not test:
            h, lam = mix_batch(h, mixup, aug_seed)
        h.persistent = True             # kept for the augmentation monitor
        logits = models.resnet(h, arch, num_classes, test=test, weight_init=weight_init, norm=norm,
                               after_stage=None if test else mixstyle_hook(aug, aug_seed))
        logits.persistent = True        # read after forward(clear_buffer=True) of the losses
        losses = smoothed_cross_entropy(logits, t, label_smoothing)
        if lam is not None:
            losses = lam * losses + (1.0 - lam) * smoothed_cross_entropy(logits, F.flip(t, axes=(0,)),
                                                                         label_smoothing)
        return Graph(x, t, h, logits, losses, F.mean(losses))


def smoothed_cross_entropy(logits: nn.Variable, t: nn.Variable, eps: float) -> nn.Variable:
    """Per-image loss ``(B, 1)`` of logits ``(B, C)`` for labels ``t`` ``(B, 1)`` with label smoothing ``eps``.

    ``(1 - eps) * CE(t) + eps * mean_c(-log softmax_c)``: the cross-entropy against a target of
    ``1 - eps + eps / C`` on the label and ``eps / C`` elsewhere (Szegedy et al. 2016, section 7).
    ``eps`` 0 is ``F.softmax_cross_entropy`` itself. nnabla has no smoothed variant of it.
    """
    ce = F.softmax_cross_entropy(logits, t)
    if not eps:
        return ce
    uniform = -F.mean(F.log_softmax(logits, axis=1), axis=1, keepdims=True)
    return (1.0 - eps) * ce + eps * uniform


def parameters(grad_only: bool = False) -> Dict[str, nn.Variable]:
    """The training parameters ``{name: nn.Variable}`` (names as in :mod:`models`)."""
    with nn.parameter_scope(SCOPE):
        return dict(nn.get_parameters(grad_only=grad_only))


def make_solver(cfg: AdaBoundConfig):
    """``nnabla.solvers.AdaBound`` over the trainable parameters of :data:`SCOPE`."""
    solver = S.AdaBound(alpha=cfg.alpha, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                        final_lr=cfg.final_lr, gamma=cfg.gamma)
    solver.set_parameters(parameters(grad_only=True))
    return solver


def get_context(name: str = "cpu"):
    """nnabla extension context for ``cpu`` or ``cudnn``; a clear error when the CUDA extension is missing."""
    if name not in CONTEXT_NAMES + ("cuda",):
        raise TrainingError(f"--context {name!r}: expected cpu or cudnn")
    if name != "cpu":
        try:
            import nnabla_ext.cuda  # noqa: F401  (optional package: probed, not required)
        except ImportError:
            raise TrainingError(f"--context {name} needs the nnabla CUDA extension (nnabla-ext-cuda), "
                                f"which is not installed: pip install -e '.[cuda120]' (CUDA 12; "
                                f"'.[cuda116]' for CUDA 11.6), or use --context cpu") from None
    return get_extension_context(name)


# ----------------------------------------------------------------------------- data


def read_split(csv_path) -> Tuple[List[str], np.ndarray]:
    """(image paths, six-class indices) of an NNC dataset CSV (``x:image,y:label``)."""
    df = fileio.read_nnc_csv(csv_path)
    if (df["label"] == "").any():
        row = df.index[df["label"] == ""][0]
        raise TrainingError(f"{df['source'][row]}: no y:label (every training/validation image needs one)")
    return list(df["path"]), np.array([classes.CLASSES6.index(v) for v in df["label"]], np.int32)


class ImageLoader:
    """``load_func`` for ``data_iterator_simple``: index -> (uint8 ``(3, S, S)`` RGB, label ``(1,)``).

    Images are resized to ``size`` x ``size`` (area interpolation when shrinking);
    with ``cache`` the resized uint8 images are kept in memory after the first
    read (480 px: 0.7 MB each).
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, size: int, cache: bool = True,
                 transform: Optional[Callable] = None):
        self.paths, self.labels, self.size, self.cache = list(paths), labels, int(size), {} if cache else None
        self.transform = transform      # uint8 (H, W, 3) RGB -> same, before the resize (e.g. framing.reframe)
        self.error: Optional[Exception] = None

    def __len__(self):
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        rgb = fileio.read_rgb(self.paths[i])
        rgb = fileio.resize_square(self.transform(rgb) if self.transform is not None else rgb, self.size)
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        if self.cache is not None:
            self.cache[i] = chw
        return chw

    def __call__(self, i: int):
        try:
            return self.image(i), np.array([self.labels[i]], np.int32)
        except Exception as e:
            # Runs in the iterator's background thread, where an exception would leave
            # the main thread waiting forever: keep it and let batches() raise it.
            self.error = e
            return np.zeros((3, self.size, self.size), np.uint8), np.array([self.labels[i]], np.int32)


class _Subset:
    """The items ``rows`` of an :class:`ImageLoader`, in that order (shares its cache)."""

    def __init__(self, loader: ImageLoader, rows: Sequence[int]):
        self.loader, self.rows = loader, np.asarray(rows, dtype=int)
        self.labels = np.asarray(loader.labels)[self.rows]

    def __len__(self):
        return len(self.rows)

    def __call__(self, i):
        return self.loader(int(self.rows[i]))

    @property
    def error(self):
        return self.loader.error


def batches(loader: ImageLoader, batch_size: int, n_batches: int, shuffle: bool, seed: int):
    """Yield ``n_batches`` (x float32 [0,1], y int32 (B,1), n_valid) from nnabla's ``data_iterator_simple``.

    The iterator prefetches the next batch in a background thread. Its order is
    a function of ``seed`` only, so a resumed epoch sees the same order.
    Without shuffling the last batch wraps around; ``n_valid`` counts its new rows.
    """
    n = len(loader)
    it = data_iterator_simple(loader, n, batch_size, shuffle=shuffle, rng=np.random.RandomState(seed),
                              use_thread=True, with_memory_cache=False)
    try:
        for b in range(n_batches):
            xb, yb = it.next()
            err = getattr(loader, "error", None) or getattr(getattr(loader, "loader", None), "error", None)
            if err is not None:
                raise err
            yield xb.astype(np.float32) * np.float32(1 / 255), yb, min(batch_size, n - b * batch_size)
    finally:
        it.close()


def sample_rows(labels: np.ndarray, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of a split for BatchNorm re-estimation or a Training Error subset, whatever the CSV order.

    A seeded sample stratified by class (:func:`wbc_nnabla.sampling.shuffled_sample`)
    of ``n`` rows rounded down to whole batches (at least one batch), in random
    order so every batch mixes the classes as training batches do.
    """
    n = max(batch_size, (min(int(n), len(labels)) // batch_size) * batch_size)
    return sampling.shuffled_sample(labels, min(n, len(labels)), seed)


@dataclasses.dataclass
class TrainData:
    """A dataset folder opened for training: both splits and the seeded samples of ``train.csv``."""

    train: ImageLoader
    valid: ImageLoader
    bn_rows: Optional[np.ndarray]    # precise-BN sample (:func:`sample_rows`); None: off
    eval_rows: Optional[np.ndarray]  # Training Error sample; None: every training image
    iters: int                       # iterations per epoch
    wbc_share: Optional[dict] = None  # median WBC share of the training crops (:func:`measure_scale`)
    styles: Optional[np.ndarray] = None  # the Fourier step's style bank (:func:`style_bank`)
    style_record: Optional[dict] = None  # what it was read from, for config.json


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
    return TrainData(ImageLoader(train_paths, train_y, cfg.size, cfg.cache_images),
                     ImageLoader(valid_paths, valid_y, cfg.size, cfg.cache_images), bn_rows, eval_rows,
                     min(iters, cfg.max_iterations) if cfg.max_iterations else iters,
                     measure_scale(train_paths, sampling.derive_seed(cfg.seed, 0, 8)), styles, style_record)


def style_bank(source, size: int, seed: int) -> Tuple[np.ndarray, dict]:
    """(bank, record): the low-frequency amplitude spectra ``(K, 3, 2b+1, 2b+1)``
    (:func:`~wbc_nnabla.augmentation.low_band_amplitudes`) of the cells of ``source`` resized to
    ``size`` px as training images are, and what they were read from (``config.json``'s ``style_cells``).

    A seeded sample of at most :data:`MAX_STYLE_CELLS` cells; labels are ignored. An unreadable cell
    or fewer than :data:`MIN_STYLE_CELLS` is a :class:`TrainingError` naming the file.
    """
    source = Path(source)
    table = fileio.read_cell_images(source, dedupe_flag=None)
    if len(table) < MIN_STYLE_CELLS:
        raise TrainingError(f"{source}: {len(table)} style cells (--style-cells); the Fourier step needs at "
                            f"least {MIN_STYLE_CELLS}: a handful of cells stands for no lab")
    paths = list(table["path"])
    rows = np.sort(np.random.RandomState(seed).permutation(len(paths))[:MAX_STYLE_CELLS])
    loader = ImageLoader([paths[i] for i in rows], np.zeros(len(rows), np.int32), size, cache=False)
    images = []
    for i in range(len(loader)):
        try:
            images.append(loader.image(i))
        except Exception as e:
            raise TrainingError(f"{loader.paths[i]}: style cell (--style-cells {source}) unreadable: {e}") from e
    bank = low_band_amplitudes(np.stack(images).astype(np.float32) / 255.0)
    return bank, dict(source=str(source.resolve()), n_cells=len(loader), n_listed=len(paths),
                      cells_sha256=modelfile.paths_sha256(loader.paths), half_band=(bank.shape[-1] - 1) // 2)


def measure_scale(paths: Sequence[str], seed: int) -> Optional[dict]:
    """The training crops' median WBC share (:func:`wbc_nnabla.framing.median_share`), stored in the model
    so that ``adapt`` can re-frame another lab's crops to it; None (logged) when too few WBCs are found."""
    try:
        return framing.median_share(paths, seed=seed)
    except InputError as e:
        log.warning("training cells' WBC scale not recorded: %s", e)
        return None


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
        f"--bn-recalibration {cfg.bn_recalibration} is a no-op with --norm group: GroupNorm has no "
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
                wbc_share=data.wbc_share, style_cells=data.style_record,
                bn_sample=_describe_rows(data.bn_rows, data.train.labels),
                train_eval_sample=_describe_rows(data.eval_rows, data.train.labels))


def _describe_rows(rows: Optional[np.ndarray], labels: np.ndarray) -> Optional[dict]:
    """``config.json`` record of a sample of ``train.csv``: its data rows (0-based) and images per class."""
    if rows is None:
        return None
    counts = np.bincount(labels[rows], minlength=len(classes.CLASSES6))
    return dict(n=len(rows), per_class={c: int(k) for c, k in zip(classes.CLASSES6, counts)},
                rows=[int(r) for r in rows])


# ----------------------------------------------------------------------------- BatchNorm, evaluation


def recalibrate_bn(graph: Graph, loader: ImageLoader, batch_size: int, rows: Sequence[int]) -> int:
    """Re-estimate every BatchNorm's running mean/var on clean training images ("precise BN").

    graph: a clean batch-statistics graph (:func:`build_graph` without ``test``
        or ``aug``) of batch ``batch_size``.
    rows: the training images used (:func:`sample_rows`: a seeded class-stratified sample,
        never "the first N" of a CSV that may be sorted by class).

    The running statistics accumulated during training come from augmented batches
    and lag the weights; the validation graph and the exported model use them
    (benchmarks/bn_diagnosis.py: this costs about 0.06 of 6-class accuracy at 64 px).
    Here the training images ``rows`` go through the graph, and each layer's running
    statistics are set to the mean of the per-batch statistics.
    Returns the number of batches used.
    """
    stats = {k: v for k, v in parameters().items() if k.endswith("/mean") or k.endswith("/var")}
    # nnabla's BatchNormalization only exposes its statistics through the moving
    # average r_t = d r_{t-1} + (1 - d) b_t (d = models.BN_DECAY); each batch's b_t
    # is recovered from two successive r, then averaged with equal weights.
    decay = models.BN_DECAY
    sums = {k: np.zeros(v.shape, np.float64) for k, v in stats.items()}
    sub = _Subset(loader, rows)
    n_batches = max(1, len(sub) // batch_size)
    for xb, _, _ in batches(sub, batch_size, n_batches, False, 0):
        before = {k: v.d.copy() for k, v in stats.items()}
        graph.x.d = xb
        graph.logits.forward(clear_buffer=True)
        for k, v in stats.items():
            sums[k] += (v.d - decay * before[k]) / (1.0 - decay)
    for k, v in stats.items():
        # float32 like every parameter: a float64 array would change the stored dtype
        v.d = (sums[k] / n_batches).astype(np.float32)
    return n_batches


def evaluate(graph: Graph, loader: ImageLoader, batch_size: int, rows: Optional[Sequence[int]] = None
             ) -> Tuple[float, float, np.ndarray]:
    """(mean loss, misclassification rate, probabilities ``(n, C)``) of a test-mode graph.

    graph: :func:`build_graph` with ``test=True`` and batch ``batch_size``.
    rows: evaluate only those items (e.g. :func:`sample_rows`), in that order.

    This is NNC's "Error" of a dataset: the validation network's cost over it.
    """
    sub = loader if rows is None else _Subset(loader, rows)
    n = len(sub)
    losses, probs = [], []
    for xb, yb, k in batches(sub, batch_size, -(-n // batch_size), shuffle=False, seed=0):
        graph.x.d, graph.t.d = xb, yb
        graph.losses.forward(clear_buffer=True)
        losses.append(graph.losses.d[:k, 0].copy())
        probs.append(softmax(graph.logits.d[:k], axis=1))
    p = np.concatenate(probs)
    y = np.asarray(sub.labels)
    return float(np.concatenate(losses).mean()), float((p.argmax(1) != y).mean()), p


def domain_reference(loader: ImageLoader, seed: int, n: int = DOMAIN_SAMPLE, source: str = "") -> Optional[dict]:
    """The domain reference (:func:`wbc_nnabla.domain.reference`) of a seeded class-stratified sample of ``loader``.

    loader: the clean (never augmented) training images, at the training size.
    n: images in the sample (all when fewer); read in chunks of 256, so memory
    stays small at any size. Stored in the exported model by :func:`train`.
    None (logged) when ``loader`` has fewer than :data:`wbc_nnabla.domain.MIN_CELLS` images.
    """
    if len(loader) < domain.MIN_CELLS:
        log.warning("%d training images: fewer than %d, the model stores no domain reference (predict will "
                    "say the domain-shift check is unavailable)", len(loader), domain.MIN_CELLS)
        return None
    rows = sampling.shuffled_sample(np.asarray(loader.labels), min(int(n), len(loader)), seed)
    desc = [domain.descriptors(np.stack([loader.image(int(i)) for i in rows[k:k + 256]]))
            for k in range(0, len(rows), 256)]
    return domain.reference(np.concatenate(desc), source=source or
                            f"{len(rows)} of {len(loader)} training images (seeded, class-stratified)")


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
        if init_norm != norm:
            raise TrainingError(f"--init {init}: a --norm {init_norm} model; this run has --norm {norm} "
                                f"(give --norm {init_norm}, or --pretrained instead of --init)")
        _load_into(params, values, f"--init {init}")
        return f"init {init}"
    path = find_pretrained(pretrained, arch)
    if not path:
        return "scratch"
    loaded = _load_into(params, load_imagenet(path, arch, norm), f"--pretrained {path}", strict=False)
    if norm == "group":
        return f"ImageNet {path} ({len(loaded)} tensors: convolutions only, GroupNorm gamma 1 beta 0; new head fc)"
    if norm == "ibn":
        return f"ImageNet {path} ({len(loaded)} tensors: IBN layers start afresh; new head fc)"
    return f"ImageNet {path} ({len(loaded)} tensors; new head fc)"


def _load_into(params: dict, values: Dict[str, np.ndarray], what: str, strict: bool = True) -> List[str]:
    """Copy arrays into parameters; shape-checked. Returns the names loaded."""
    missing = [k for k in params if k not in values]
    if strict and missing:
        raise TrainingError(f"{what}: parameters missing: {', '.join(missing[:5])}"
                            f"{' ...' if len(missing) > 5 else ''}")
    done = []
    for k, v in values.items():
        if k not in params:
            if strict:
                raise TrainingError(f"{what}: unexpected parameter {k} (different architecture?)")
            continue
        if tuple(params[k].shape) != tuple(np.shape(v)):
            raise TrainingError(f"{what}: {k} has shape {tuple(np.shape(v))}, this network needs "
                                f"{tuple(params[k].shape)} (different architecture or class count?)")
        params[k].d = np.asarray(v, np.float32)
        done.append(k)
    return done


def _export(out_dir: Path, params: dict, arch: str, size: int, training: dict, norm: str = "batch",
            wbc_share: Optional[dict] = None, domain_ref: Optional[dict] = None,
            calibration: Optional[dict] = None) -> None:
    """``model.nnp`` (self-describing inference model) and ``model.h5`` (parameters) of the best epoch.

    wbc_share: the training crops' median WBC share (:func:`measure_scale`), for ``adapt``.
    domain_ref: the training cells' :func:`domain_reference`, stored in the model's
    description under :data:`wbc_nnabla.domain.META_KEY` (None: not stored).
    calibration: the exported epoch's validation cells and probabilities
    (:func:`wbc_nnabla.predictions.calibration_record`), stored under
    :data:`wbc_nnabla.predictions.CALIBRATION_KEY` (None: not stored).
    """
    extra = {domain.META_KEY: domain_ref} if domain_ref else {}
    if calibration:
        extra[predictions.CALIBRATION_KEY] = calibration
    meta = modelfile.model_meta(arch, classes.CLASSES6, size, norm=norm, training=training, wbc_share=wbc_share,
                                **extra)
    modelfile.save_nnp(out_dir / "model.nnp", params, meta)
    with outputs.atomic_path(out_dir / "model.h5") as tmp:
        nn.save_parameters(str(tmp), params, extension=".h5")


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
    domain_ref: Optional[dict] = None  # the training cells' domain reference, stored in model.nnp
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
    _load_into(params, modelfile.load_parameters(ck_dir / "params.h5"), str(ck_dir / "params.h5"))
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
    """AdaBound updates over one seeded shuffle of ``train.csv``: (Cost per iteration, seconds inside nnabla).

    The first augmented batch goes to the image-tile monitor every ``tile_every`` epochs.
    A non-finite Cost stops the run before the update (the last checkpoint stays good).
    """
    compute, costs = 0.0, []
    stream = batches(data.train, cfg.batch_size, data.iters, True, sampling.derive_seed(cfg.seed, epoch, 2))
    with tqdm(total=data.iters, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=outputs.bar_disabled(cfg.progress),
              leave=False) as bar:
        for i, (xb, yb, _) in enumerate(stream):
            graph.x.d, graph.t.d = xb, yb
            c0 = time.perf_counter()
            graph.loss.forward(clear_no_need_grad=True)
            cost = float(graph.loss.d)
            if not np.isfinite(cost):
                raise TrainingError(f"non-finite Cost ({cost}) at epoch {epoch + 1}, iteration {i + 1}: "
                                    f"training stopped; last good checkpoint kept: "
                                    f"{checkpoint.last_checkpoint(out_dir)} "
                                    f"(lower --alpha/--final-lr or check the images)")
            if cfg.solver.schedule != "constant":
                run.solver.set_learning_rate(step_size(cfg.solver, epoch * data.iters + i, cfg.epochs * data.iters))
            run.solver.zero_grad()
            graph.loss.backward(clear_buffer=True)
            if cfg.solver.weight_decay:
                run.solver.weight_decay(cfg.solver.weight_decay)
            run.solver.update()
            compute += time.perf_counter() - c0
            if run.average is not None:     # NumPy, outside nnabla: counted in outside_share (~20 ms)
                run.average.add(run.solver.get_parameters())
            costs.append(cost)
            if i == 0 and cfg.tile_every and epoch % cfg.tile_every == 0:
                mon.add_tile(epoch * data.iters, graph.x_aug.d)
            bar.set_postfix(cost=f"{cost:.4f}")
            bar.update(1)
    return costs, compute


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


def export_run(out_dir: Path, cfg: TrainConfig, run: RunState, calibration: Optional[dict],
               wbc_share: Optional[dict] = None) -> None:
    """Export the run's current weights as the model of ``run.best`` (:func:`_export`)."""
    _export(out_dir, run.params, cfg.arch, cfg.export_size or cfg.size,
            dict(run.best, trained_size=cfg.size, epochs=cfg.epochs, initialisation=run.init_info, seed=cfg.seed),
            norm=cfg.norm, wbc_share=wbc_share, domain_ref=run.domain_ref, calibration=calibration)


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
    tr_loss, tr_mis, _ = evaluate(test, data.train, cfg.batch_size, data.eval_rows)
    va_loss, va_mis, va_probs = evaluate(test, data.valid, cfg.batch_size)
    # stored with the model if this epoch is exported: the cut-off of `score --pending-threshold model`
    run.calibration = validation_cells(data, va_probs, f"epoch {epoch + 1}")
    return dict(epoch=epoch + 1, cost=float(np.mean(costs)), training_error=tr_loss, validation_error=va_loss,
                training_misclassification=tr_mis, validation_misclassification=va_mis,
                seconds=time.perf_counter() - t0, images_per_s=data.iters * cfg.batch_size / train_time,
                outside_share=1.0 - compute / train_time)


def end_epoch(out_dir: Path, cfg: TrainConfig, run: RunState, row: dict, mon: Monitors,
              wbc_share: Optional[dict] = None) -> None:
    """Record an epoch's row: log, export the model when Validation Error improved, curves, checkpoint."""
    run.history.append(row)
    run.epoch = row["epoch"]
    log.info("epoch %d/%d  Cost %.4f  Training Error %.4f  Validation Error %.4f  "
             "validation misclassification %.3f  (%.0f s)", row["epoch"], cfg.epochs, row["cost"],
             row["training_error"], row["validation_error"], row["validation_misclassification"], row["seconds"])
    if row["validation_error"] < run.best["validation_error"]:
        run.best = {"epoch": row["epoch"], "validation_error": row["validation_error"],
                    "validation_misclassification": row["validation_misclassification"]}
        export_run(out_dir, cfg, run, run.calibration, wbc_share)
    mon.add_epoch(row, run.history)
    state = dict(epoch=run.epoch, history=run.history, best=run.best, numpy_rng=checkpoint.rng_state(run.rng))
    avg = run.average
    if avg is not None:
        state["average"] = dict(first_epoch=avg.first_epoch, updates=avg.updates)
    checkpoint.save_checkpoint(out_dir, run.epoch, run.params, run.solver, state,
                               average=avg.mean if avg is not None else None)


def export_average(out_dir: Path, cfg: TrainConfig, data: TrainData, run: RunState,
                   wbc_share: Optional[dict] = None) -> None:
    """Export the weight mean of the last ``cfg.average_epochs`` epochs as ``model.nnp`` (SWA).

    The mean replaces the run's weights, its BatchNorm statistics are re-estimated on the run's
    BN sample (:func:`recalibrate_bn`; averaged weights need their own), then its Validation Error
    and validation cells are measured and stored as the exported model's (``run.best``).
    Called after the last epoch's checkpoint, so a resumed or repeated call gives the same model.
    """
    avg = run.average
    _load_into(run.params, avg.mean, "the weight mean", strict=False)
    va_loss, va_mis, va_probs = evaluate(test_graph(cfg, data), data.valid, cfg.batch_size)
    first = avg.first_epoch + 1
    run.best = {"epoch": cfg.epochs, "validation_error": va_loss, "validation_misclassification": va_mis,
                "averaged_epochs": [first, cfg.epochs], "averaged_updates": avg.updates}
    log.info("weights averaged over epochs %d-%d (%d updates): Validation Error %.4f, misclassification %.3f",
             first, cfg.epochs, avg.updates, va_loss, va_mis)
    cells = validation_cells(data, va_probs, f"weights averaged over epochs {first}-{cfg.epochs}")
    export_run(out_dir, cfg, run, cells, wbc_share)


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
    """The run behind :func:`train`: data, config, checkpoint or fresh start, then every epoch."""
    data = load_data(dataset_dir, out_dir, cfg)
    config = run_config(dataset_dir, out_dir, cfg, data)
    if resume:
        previous = checkpoint.check_resume(out_dir, config)
    else:
        checkpoint.check_fresh(out_dir)
        previous = None
    with nn.context_scope(get_context(cfg.context)):
        run = start_run(cfg, previous)
        run.domain_ref = domain_reference(data.train, sampling.derive_seed(cfg.seed, 0, 7))
        if previous:
            log.info("resuming %s after epoch %d", out_dir, run.epoch)
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = dict(config=config, environment=outputs.environment(), initialisation=run.init_info)
        outputs.write_json(out_dir / "config.json", summary)
        mon = Monitors(out_dir, run.history)
        for epoch in range(run.epoch, cfg.epochs):
            end_epoch(out_dir, cfg, run, run_epoch(epoch, cfg, data, run, mon, out_dir), mon, data.wbc_share)
        if run.average is not None and run.epoch == cfg.epochs:
            export_average(out_dir, cfg, data, run, data.wbc_share)
    summary.update(best=run.best, history=run.history)
    outputs.write_json(out_dir / "config.json", summary)
    return summary
