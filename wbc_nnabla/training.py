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
``model.nnp`` (best Validation Error, :func:`wbc_nnabla.modelfile.save_nnp`),
``model.h5``, ``config.json``, ``learning_curve.csv``/``.png``,
``monitor/`` (nnabla ``MonitorSeries`` files and ``MonitorImageTile`` tiles of
augmented batches) and ``checkpoints/`` (+ ``checkpoint.json``) for ``resume``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import classes, io, modelfile, models, sampling
from .pretrained import find_pretrained, load_imagenet

log = logging.getLogger(__name__)

#: Parameter scope of the training graphs (kept apart from a user's own parameters).
SCOPE = "wbc_train"


class TrainingError(ValueError):
    """A training run that cannot start or continue (bad dataset, config, diverged loss)."""


# ----------------------------------------------------------------------------- configuration


# The settings live in an nnabla-free module so the CLI can show their defaults
# without importing nnabla; they are re-exported here as part of this stage's API.
from .recipe import BN_RECALIBRATION_IMAGES, AdaBoundConfig, Augmentation  # noqa: E402,F401


# ----------------------------------------------------------------------------- graph pieces


def augment(x, aug: Augmentation, seed: int = -1):
    """The training graph's ImageAugmentation of a [0, 1] batch ``(N, 3, H, W)`` (same shape out).

    ``seed`` >= 0 gives the function its own Mersenne Twister seeded at graph
    construction (reproducible; :func:`train` builds a new one per epoch).
    """
    import nnabla.functions as F
    return F.image_augmentation(
        x, shape=x.shape[1:], pad=(0, 0), min_scale=aug.min_scale, max_scale=aug.max_scale,
        angle=math.radians(aug.angle), aspect_ratio=1.0, distortion=0.0,
        flip_lr=aug.flip_lr, flip_ud=aug.flip_ud, brightness=aug.brightness, brightness_each=False,
        contrast=aug.contrast, contrast_center=aug.contrast_center, contrast_each=False,
        noise=0.0, seed=int(seed))


class Graphs:
    """Training and validation networks sharing the parameters of scope :data:`SCOPE`.

    train: x (B,3,S,S) [0,1] -> [augmentation] -> ResNet (batch-stat BN) -> mean softmax CE ``loss``.
    test:  x (B,3,S,S) -> ResNet (running-stat BN) -> ``logits`` and per-sample ``losses`` (B,1).
    """

    def __init__(self, arch: str, num_classes: int, batch_size: int, size: int,
                 aug: Optional[Augmentation], aug_seed: int = -1, weight_init: str = "glorot"):
        import nnabla as nn
        import nnabla.functions as F
        with nn.parameter_scope(SCOPE):
            self.x = nn.Variable(models.input_shape(batch_size, size))
            self.t = nn.Variable((batch_size, 1))
            h = self.x
            if aug is not None and aug.enabled:
                h = augment(h, aug, aug_seed)
            h.persistent = True             # kept for the augmentation monitor
            self.x_aug = h
            logits = models.resnet(h, arch, num_classes, test=False, weight_init=weight_init)
            self.loss = F.mean(F.softmax_cross_entropy(logits, self.t))
            self.vx = nn.Variable(models.input_shape(batch_size, size))
            self.vt = nn.Variable((batch_size, 1))
            self.logits = models.resnet(self.vx, arch, num_classes, test=True, weight_init=weight_init)
            self.logits.persistent = True
            self.losses = F.softmax_cross_entropy(self.logits, self.vt)
            # clean (un-augmented) batch-statistics graph, for recalibrate_bn
            self.rx = nn.Variable(models.input_shape(batch_size, size))
            self.rlogits = models.resnet(self.rx, arch, num_classes, test=False, weight_init=weight_init)


def parameters(grad_only: bool = False) -> Dict[str, "object"]:
    """The training parameters ``{name: nn.Variable}`` (names as in :mod:`models`)."""
    import nnabla as nn
    with nn.parameter_scope(SCOPE):
        return dict(nn.get_parameters(grad_only=grad_only))


def make_solver(cfg: AdaBoundConfig):
    """``nnabla.solvers.AdaBound`` over the trainable parameters of :data:`SCOPE`."""
    import nnabla.solvers as S
    solver = S.AdaBound(alpha=cfg.alpha, beta1=cfg.beta1, beta2=cfg.beta2, eps=cfg.eps,
                        final_lr=cfg.final_lr, gamma=cfg.gamma)
    solver.set_parameters(parameters(grad_only=True))
    return solver


def get_context(name: str = "cpu"):
    """nnabla extension context for ``cpu`` or ``cudnn``; a clear error when the CUDA extension is missing."""
    from nnabla.ext_utils import get_extension_context
    if name not in ("cpu", "cudnn", "cuda"):
        raise TrainingError(f"--context {name!r}: expected cpu or cudnn")
    if name != "cpu":
        try:
            import nnabla_ext.cuda  # noqa: F401
        except ImportError:
            raise TrainingError(f"--context {name} needs the nnabla CUDA extension (nnabla-ext-cuda), "
                                f"which is not installed: pip install -e '.[cuda120]' (CUDA 12; "
                                f"'.[cuda116]' for CUDA 11.6), or use --context cpu") from None
    return get_extension_context(name)


# ----------------------------------------------------------------------------- data


def read_split(csv_path) -> Tuple[List[str], np.ndarray]:
    """(image paths, six-class indices) of an NNC dataset CSV (``x:image,y:label``)."""
    df = io.read_nnc_csv(csv_path)
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

    def __init__(self, paths: Sequence[str], labels: np.ndarray, size: int, cache: bool = True):
        self.paths, self.labels, self.size, self.cache = list(paths), labels, int(size), {} if cache else None
        self.error: Optional[Exception] = None

    def __len__(self):
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        rgb = io.resize_square(io.read_rgb(self.paths[i]), self.size)
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


def batches(loader: ImageLoader, batch_size: int, n_batches: int, shuffle: bool, seed: int):
    """Yield ``n_batches`` (x float32 [0,1], y int32 (B,1), n_valid) from nnabla's ``data_iterator_simple``.

    The iterator prefetches the next batch in a background thread. Its order is
    a function of ``seed`` only, so a resumed epoch sees the same order.
    Without shuffling the last batch wraps around; ``n_valid`` counts its new rows.
    """
    from nnabla.utils.data_iterator import data_iterator_simple
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


def _derive_seed(*keys: int) -> int:
    """A 31-bit seed from (run seed, epoch, stream); independent streams per key."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] % (2 ** 31 - 1))


def sample_rows(labels: np.ndarray, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of a split for BatchNorm re-estimation or a Training Error subset, whatever the CSV order.

    A seeded sample stratified by class (:func:`wbc_nnabla.sampling.shuffled_sample`)
    of ``n`` rows rounded down to whole batches (at least one batch), in random
    order so every batch mixes the classes as training batches do.
    """
    n = max(batch_size, (min(int(n), len(labels)) // batch_size) * batch_size)
    return sampling.shuffled_sample(labels, min(n, len(labels)), seed)


def recalibrate_bn(g: Graphs, loader: ImageLoader, batch_size: int, rows: Sequence[int]) -> int:
    """Re-estimate every BatchNorm's running mean/var on clean training images ("precise BN").

    The running statistics accumulated during training come from augmented
    batches and lag the weights; the validation graph and the exported model use
    them (benchmarks/bn_diagnosis.py: this costs about 0.06 of 6-class accuracy
    at 64 px). Here the training images ``rows`` (:func:`sample_rows`: a seeded
    class-stratified sample, never "the first N" of a CSV that may be sorted by
    class) go through the batch-statistics graph without augmentation, and each
    layer's running statistics are set to the mean of the per-batch statistics.
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
        g.rx.d = xb
        g.rlogits.forward(clear_buffer=True)
        for k, v in stats.items():
            sums[k] += (v.d - decay * before[k]) / (1.0 - decay)
    for k, v in stats.items():
        # float32 like every parameter: a float64 array would change the stored dtype
        v.d = (sums[k] / n_batches).astype(np.float32)
    return n_batches


def evaluate(g: Graphs, loader: ImageLoader, batch_size: int, rows: Optional[Sequence[int]] = None
             ) -> Tuple[float, float, np.ndarray]:
    """(mean loss, misclassification rate, probabilities ``(n, C)``) of the test-mode network.

    This is NNC's "Error" of a dataset: the validation network's cost over it.
    ``rows`` evaluates only those items (e.g. :func:`sample_rows`), in that order.
    """
    from scipy.special import softmax
    sub = loader if rows is None else _Subset(loader, rows)
    n = len(sub)
    losses, probs = [], []
    for xb, yb, k in batches(sub, batch_size, -(-n // batch_size), shuffle=False, seed=0):
        g.vx.d, g.vt.d = xb, yb
        g.losses.forward(clear_buffer=True)
        losses.append(g.losses.d[:k, 0].copy())
        probs.append(softmax(g.logits.d[:k], axis=1))
    p = np.concatenate(probs)
    y = np.asarray(sub.labels)
    return float(np.concatenate(losses).mean()), float((p.argmax(1) != y).mean()), p


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


# ----------------------------------------------------------------------------- monitors and outputs

CURVE_COLUMNS = ("epoch", "cost", "training_error", "validation_error", "training_misclassification",
                 "validation_misclassification", "seconds", "images_per_s", "outside_share")
_SERIES = {"cost": "Cost", "training_error": "Training Error", "validation_error": "Validation Error",
           "training_misclassification": "Training Misclassification",
           "validation_misclassification": "Validation Misclassification"}


class Monitors:
    """nnabla ``MonitorSeries`` per curve, ``MonitorImageTile`` of augmented batches, CSV and PNG."""

    def __init__(self, out_dir: Path, history: List[dict]):
        from nnabla.monitor import Monitor, MonitorImageTile, MonitorSeries
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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    df = pd.DataFrame(history, columns=list(CURVE_COLUMNS))
    with io.atomic_path(Path(out_dir) / "learning_curve.csv") as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
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
    with io.atomic_path(Path(out_dir) / "learning_curve.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


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


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_pointer(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoint.json"


def save_checkpoint(out_dir: Path, epoch: int, solver, state: dict) -> Path:
    """Write ``checkpoints/epochNNNN/`` (params.h5, solver.h5, state.json) then point ``checkpoint.json`` at it.

    The pointer is replaced atomically after the folder is complete, and older
    folders are removed only afterwards, so a crash at any moment leaves the
    last good checkpoint usable.
    """
    import nnabla as nn
    out_dir = Path(out_dir)
    name = f"epoch{epoch:04d}"
    final = out_dir / "checkpoints" / name
    with io.atomic_dir(final, overwrite=True) as tmp:
        nn.save_parameters(str(tmp / "params.h5"), parameters(), extension=".h5")
        solver.save_states(str(tmp / "solver.h5"))
        io.write_json(tmp / "state.json", state)
    io.write_json(_checkpoint_pointer(out_dir), {"epoch": epoch, "dir": f"checkpoints/{name}"})
    for old in (out_dir / "checkpoints").iterdir():
        if old.name != name and old.name.startswith("epoch"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: Path) -> Tuple[Path, dict]:
    """(checkpoint folder, state) of the last complete checkpoint in ``out_dir``."""
    ptr = _checkpoint_pointer(out_dir)
    if not ptr.is_file():
        raise TrainingError(f"{out_dir}: nothing to resume (no checkpoint.json); start without --resume")
    d = Path(out_dir) / json.loads(ptr.read_text())["dir"]
    state = json.loads((d / "state.json").read_text())
    return d, state


# ----------------------------------------------------------------------------- training


#: Config keys that must match for ``resume`` (the rest, e.g. ``epochs``, may change).
_RESUME_KEYS = ("arch", "size", "batch_size", "seed", "augmentation", "solver", "dataset_dir", "bn_recalibration",
                "bn_sample", "weight_init")
# Keys added after runs were already written: a config without the key had this value.
_RESUME_KEY_DEFAULTS = {"bn_recalibration": 0, "weight_init": "glorot"}


def train(dataset_dir, out_dir, epochs: int = 300, batch_size: int = 16, size: int = 480, seed: int = 0,
          pretrained: str = "imagenet", init=None, arch: str = "resnet18",
          solver: Optional[AdaBoundConfig] = None, augmentation: Optional[Augmentation] = None,
          context: str = "cpu", resume: bool = False, train_eval_limit: Optional[int] = None,
          export_size: Optional[int] = None, cache_images: bool = True, tile_every: int = 1,
          progress: bool = True, max_iterations: Optional[int] = None,
          bn_recalibration: int = BN_RECALIBRATION_IMAGES, weight_init: str = "glorot") -> dict:
    """Train WBC Model A (``pretrained``) or fine-tune Model B (``init=model_A.nnp``); section II.4.

    dataset_dir: NNC dataset folder with ``train.csv`` and ``valid.csv`` (``x:image,y:label``,
        y = six-class index in :data:`wbc_nnabla.classes.CLASSES6` order); images of any size,
        resized to ``size`` x ``size`` pixels.
    out_dir: output folder (see module docstring); must not hold a run unless ``resume``.
    epochs: total epochs (the paper: 300). batch_size: images per iteration.
    pretrained: ``"imagenet"`` (cached zoo/nnabla-examples file), a weight file path, or ``"none"``.
    init: a model ``.nnp``/``.h5`` whose every parameter (head included) starts the run
        (fine-tuning: Model B from Model A); overrides ``pretrained``.
    solver / augmentation: :class:`AdaBoundConfig` / :class:`Augmentation` (defaults documented there).
    context: ``cpu`` or ``cudnn``. resume: continue the last checkpoint in ``out_dir``.
    train_eval_limit: evaluate Training Error on a seeded class-stratified sample of N training
        images (None: all, as NNC); the sample is recorded in ``config.json`` (``train_eval_sample``).
    export_size: input size of the exported ``model.nnp`` (default ``size``).
    tile_every: write a tile of the augmented batch every this many epochs (0: never).
    max_iterations: stop each epoch after this many iterations (for smoke tests/benchmarks).
    bn_recalibration: before each epoch's evaluation and export, re-estimate the BatchNorm
        running statistics on this many clean training images (:func:`recalibrate_bn`;
        default 960), a seeded class-stratified sample whatever the order of ``train.csv``,
        recorded in ``config.json`` (``bn_sample``); 0 keeps Neural Network Console's
        behaviour. See docs/training.md, "BatchNorm".
    weight_init: initialiser of the convolution weights a run does not load: ``glorot``
        (nnabla's default) or ``he`` (Kaiming normal, fan_out, as torchvision);
        :func:`wbc_nnabla.models.conv_initializer`. Recorded in ``config.json``.

    Returns the summary written to ``config.json`` (config, environment, best epoch, history).
    """
    from nnabla.logger import logger as nn_logger
    level = nn_logger.level
    if progress:
        # nnabla logs every data iterator and file save at INFO, which breaks the progress bar.
        nn_logger.setLevel(logging.WARNING)
    try:
        return _train(dataset_dir, out_dir, epochs, batch_size, size, seed, pretrained, init, arch, solver,
                      augmentation, context, resume, train_eval_limit, export_size, cache_images, tile_every,
                      progress, max_iterations, bn_recalibration, weight_init)
    finally:
        nn_logger.setLevel(level)


def _train(dataset_dir, out_dir, epochs, batch_size, size, seed, pretrained, init, arch, solver, augmentation,
           context, resume, train_eval_limit, export_size, cache_images, tile_every, progress, max_iterations,
           bn_recalibration, weight_init):
    import nnabla as nn
    from tqdm import tqdm

    solver_cfg = solver or AdaBoundConfig()
    aug = augmentation or Augmentation()
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    if arch not in models.ARCHS:
        raise TrainingError(f"arch {arch!r}: choose one of {', '.join(models.ARCHS)}")
    if weight_init not in models.WEIGHT_INITS:
        raise TrainingError(f"weight_init {weight_init!r}: choose one of {', '.join(models.WEIGHT_INITS)}")
    if size < 32 or batch_size < 1 or epochs < 1:
        raise TrainingError(f"size must be >= 32 px, batch_size and epochs >= 1 (got {size}, {batch_size}, {epochs})")
    for n in ("train.csv", "valid.csv"):
        if not (dataset_dir / n).is_file():
            raise TrainingError(f"{dataset_dir}: no {n} (expected an NNC dataset folder with train.csv "
                                f"and valid.csv, e.g. from `wbc-nnabla build-dataset`)")
    io.check_not_inside(out_dir, [dataset_dir])
    train_paths, train_y = read_split(dataset_dir / "train.csv")
    valid_paths, valid_y = read_split(dataset_dir / "valid.csv")
    if len(train_paths) < batch_size:
        raise TrainingError(f"{dataset_dir / 'train.csv'}: {len(train_paths)} images, fewer than "
                            f"batch_size {batch_size}; lower --batch-size")

    config = dict(dataset_dir=str(dataset_dir.resolve()), out_dir=str(out_dir.resolve()), epochs=epochs,
                  batch_size=batch_size, size=size, seed=seed, arch=arch, num_classes=len(classes.CLASSES6),
                  class_names=list(classes.CLASSES6), pretrained=str(pretrained), init=str(init) if init else None,
                  solver=dataclasses.asdict(solver_cfg), augmentation=dataclasses.asdict(aug), context=context,
                  train_eval_limit=train_eval_limit, export_size=export_size or size,
                  n_train=len(train_paths), n_valid=len(valid_paths), max_iterations=max_iterations,
                  bn_recalibration=int(bn_recalibration), weight_init=weight_init)

    bn_rows = sample_rows(train_y, bn_recalibration, batch_size, _derive_seed(seed, 0, 5)) \
        if bn_recalibration else None
    eval_rows = None if train_eval_limit is None or train_eval_limit >= len(train_y) else \
        sampling.shuffled_sample(train_y, train_eval_limit, _derive_seed(seed, 0, 6))
    config.update(bn_sample=_describe_rows(bn_rows, train_y), train_eval_sample=_describe_rows(eval_rows, train_y))

    if resume:
        ck_dir, state = load_checkpoint(out_dir)
        saved = json.loads((out_dir / "config.json").read_text())
        old = {k: saved["config"].get(k, _RESUME_KEY_DEFAULTS.get(k)) for k in _RESUME_KEYS}
        diff = [k for k in _RESUME_KEYS if old[k] != config.get(k)]
        if diff:
            raise TrainingError(f"{out_dir}: cannot resume with a different {', '.join(diff)} "
                                f"(was {', '.join(repr(old[k])[:80] for k in diff)})")
    elif _checkpoint_pointer(out_dir).exists() or (out_dir / "model.nnp").exists():
        raise TrainingError(f"{out_dir}: already holds a training run; use --resume to continue it "
                            f"or choose another output folder")

    nn.set_default_context(get_context(context))
    models.clear_scope(SCOPE)
    # nnabla's initialisers draw from nnabla.random.prng, not NumPy's global state.
    import nnabla.random
    nnabla.random.set_parameter_seed(_derive_seed(seed, 0, 0))
    nnabla.random.seed(_derive_seed(seed, 0, 3))
    np.random.seed(_derive_seed(seed, 0, 4))
    g, g_epoch = Graphs(arch, len(classes.CLASSES6), batch_size, size, aug, _derive_seed(seed, 0, 1),
                        weight_init), 0
    params = parameters()
    start_epoch, history, best = 0, [], {"epoch": None, "validation_error": float("inf")}
    if resume:
        _load_into(params, modelfile.load_parameters(ck_dir / "params.h5"), str(ck_dir / "params.h5"))
        init_info = saved.get("initialisation", "")
    else:
        init_info = initialise(params, pretrained, init, arch)
    opt = make_solver(solver_cfg)
    if resume:
        opt.load_states(str(ck_dir / "solver.h5"))
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        np.random.set_state(tuple(state["numpy_rng"][:1]) + (np.array(state["numpy_rng"][1], np.uint32),)
                            + tuple(state["numpy_rng"][2:]))
        log.info("resuming %s after epoch %d", out_dir, start_epoch)

    out_dir.mkdir(parents=True, exist_ok=True)
    summary = dict(config=config, environment=io.environment(), initialisation=init_info)
    io.write_json(out_dir / "config.json", summary)
    mon = Monitors(out_dir, history)
    train_loader = ImageLoader(train_paths, train_y, size, cache_images)
    valid_loader = ImageLoader(valid_paths, valid_y, size, cache_images)
    iters = len(train_paths) // batch_size
    if max_iterations:
        iters = min(iters, max_iterations)
    meta_size = export_size or size

    for epoch in range(start_epoch, epochs):
        if epoch != g_epoch:
            # F.image_augmentation's generator lives inside the C++ function and
            # cannot be saved: a new function seeded from (seed, epoch) per epoch
            # makes a resumed run draw exactly the same augmentations.
            g, g_epoch = Graphs(arch, len(classes.CLASSES6), batch_size, size, aug,
                                _derive_seed(seed, epoch, 1), weight_init), epoch
        t0 = time.perf_counter()
        compute, costs = 0.0, []
        bar = tqdm(total=iters, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False)
        for i, (xb, yb, _) in enumerate(batches(train_loader, batch_size, iters, True, _derive_seed(seed, epoch, 2))):
            g.x.d, g.t.d = xb, yb
            c0 = time.perf_counter()
            g.loss.forward(clear_no_need_grad=True)
            cost = float(g.loss.d)
            if not np.isfinite(cost):
                bar.close()
                last = json.loads(_checkpoint_pointer(out_dir).read_text())["dir"] \
                    if _checkpoint_pointer(out_dir).exists() else "none"
                raise TrainingError(f"non-finite Cost ({cost}) at epoch {epoch + 1}, iteration {i + 1}: "
                                    f"training stopped; last good checkpoint kept: {last} "
                                    f"(lower --alpha/--final-lr or check the images)")
            opt.zero_grad()
            g.loss.backward(clear_buffer=True)
            if solver_cfg.weight_decay:
                opt.weight_decay(solver_cfg.weight_decay)
            opt.update()
            compute += time.perf_counter() - c0
            costs.append(cost)
            if i == 0 and tile_every and epoch % tile_every == 0:
                mon.add_tile(epoch * iters, g.x_aug.d)
            bar.set_postfix(cost=f"{cost:.4f}")
            bar.update(1)
        bar.close()
        train_time = time.perf_counter() - t0
        if bn_rows is not None:
            recalibrate_bn(g, train_loader, batch_size, bn_rows)
        tr_loss, tr_mis, _ = evaluate(g, train_loader, batch_size, eval_rows)
        va_loss, va_mis, _ = evaluate(g, valid_loader, batch_size)
        row = dict(epoch=epoch + 1, cost=float(np.mean(costs)), training_error=tr_loss, validation_error=va_loss,
                   training_misclassification=tr_mis, validation_misclassification=va_mis,
                   seconds=time.perf_counter() - t0, images_per_s=iters * batch_size / train_time,
                   outside_share=1.0 - compute / train_time)
        history.append(row)
        log.info("epoch %d/%d  Cost %.4f  Training Error %.4f  Validation Error %.4f  "
                 "validation misclassification %.3f  (%.0f s)", epoch + 1, epochs, row["cost"], tr_loss,
                 va_loss, va_mis, row["seconds"])
        if va_loss < best["validation_error"]:
            best = {"epoch": epoch + 1, "validation_error": va_loss, "validation_misclassification": va_mis}
            _export(out_dir, params, arch, meta_size, dict(best, trained_size=size, epochs=epochs,
                                                            initialisation=init_info, seed=seed))
        mon.add_epoch(row, history)
        rng = np.random.get_state()
        save_checkpoint(out_dir, epoch + 1, opt, dict(
            epoch=epoch + 1, history=history, best=best,
            numpy_rng=[rng[0], rng[1].tolist(), int(rng[2]), int(rng[3]), float(rng[4])]))

    summary.update(best=best, history=history)
    io.write_json(out_dir / "config.json", summary)
    return summary


def _describe_rows(rows: Optional[np.ndarray], labels: np.ndarray) -> Optional[dict]:
    """``config.json`` record of a sample of ``train.csv``: its data rows (0-based) and images per class."""
    if rows is None:
        return None
    counts = np.bincount(labels[rows], minlength=len(classes.CLASSES6))
    return dict(n=len(rows), per_class={c: int(k) for c, k in zip(classes.CLASSES6, counts)},
                rows=[int(r) for r in rows])


def initialise(params: dict, pretrained: str = "none", init=None, arch: str = "resnet18") -> str:
    """Set the starting parameters; returns a description for ``config.json``.

    init: model ``.nnp``/``.h5``: every parameter (head, BN statistics and
        ``preprocess`` included) is copied exactly; names and shapes must match.
    pretrained: ``none``, ``imagenet`` or a weight file (see :func:`wbc_nnabla.pretrained.find_pretrained`):
        the backbone is copied, ``fc`` keeps its fresh initialisation.
    """
    if init:
        try:
            values = modelfile.load_parameters(init)
        except Exception as e:  # nnabla raises bare RuntimeErrors for unreadable files
            raise TrainingError(f"--init {init}: cannot read parameters ({type(e).__name__}: {e})") from None
        _load_into(params, values, f"--init {init}")
        return f"init {init}"
    path = find_pretrained(pretrained, arch)
    if not path:
        return "scratch"
    loaded = _load_into(params, load_imagenet(path, arch), f"--pretrained {path}", strict=False)
    return f"ImageNet {path} ({len(loaded)} tensors; new head fc)"


def _export(out_dir: Path, params: dict, arch: str, size: int, training: dict) -> None:
    """``model.nnp`` (self-describing inference model) and ``model.h5`` (parameters) of the best epoch."""
    import nnabla as nn
    meta = modelfile.model_meta(arch, classes.CLASSES6, size, training=training)
    modelfile.save_nnp(out_dir / "model.nnp", params, meta)
    with io.atomic_path(out_dir / "model.h5") as tmp:
        nn.save_parameters(str(tmp), params, extension=".h5")
