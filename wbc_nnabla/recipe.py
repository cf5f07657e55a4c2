"""The paper's recipe as data: its numbers, the name registries and the training settings.

Sasaki et al. (2020) give the crop, the input sizes, the dataset totals and the
epochs in sections II.3 and II.4; :data:`PAPER` holds them once and every
default of the package (datasets, training, export, pipeline presets, CLI help)
reads them from here. :class:`TrainConfig` (with :class:`AdaBoundConfig` and
:class:`Augmentation`) is every setting of :func:`wbc_nnabla.training.train`, each declared
once with its default, range and help (:mod:`wbc_nnabla.settings`).

The named recipes are data files, ``wbc_nnabla/recipes/NAME.json`` (:func:`load_recipe`):
``paper`` (the paper's settings, every one written out) and ``robust`` (for cells of other
labs; docs/cross_site.md). Kept free of nnabla (standard library only) so the command line
can show these defaults without loading nnabla.
"""
from __future__ import annotations

import dataclasses
import json
import math
from importlib import resources
from pathlib import Path
from typing import ClassVar, Optional, Union

from . import settings
from .errors import WBCError
from .settings import SEED, at_least, between, positive, setting


@dataclasses.dataclass(frozen=True)
class PaperRecipe:
    """The numbers of Sasaki et al. (2020) this package follows (units: pixels, images, epochs)."""

    crop: int = 750           # II.3: square crop around each WBC (100x oil, 2560x1920 photos)
    train_size: int = 480     # II.3: crops resized to 480x480 for training and validation
    infer_size: int = 320     # II.3: the inference set resized to 320x320
    total_a: int = 2385       # II.3: dataset ① (background removed) after balancing
    total_b: int = 3284       # II.3: dataset ② (background kept) after balancing
    epochs: int = 300         # II.4: epochs of Model A and of Model B
    arch: str = "resnet18"    # II.4, Fig. 4: ResNet-18 with a six-output classifier


#: The paper's recipe; read it, never copy its numbers.
PAPER = PaperRecipe()

#: Images per iteration (not stated in the paper; NNC's usual 16 fits a 480 px ResNet-18 on a GPU).
BATCH_SIZE = 16

#: Network names (:mod:`wbc_nnabla.models` maps each to its blocks).
ARCH_NAMES = ("resnet18", "resnet34", "resnet50")
#: Initialisers of new convolution weights (:func:`wbc_nnabla.models.conv_initializer`).
WEIGHT_INIT_NAMES = ("glorot", "he")
#: Normalisation layer after every convolution (:func:`wbc_nnabla.models.norm_layer`): ``batch``
#: (BatchNorm, the paper's ResNet), ``group`` (GroupNorm, Wu & He 2018, :data:`GN_GROUPS` groups) or
#: ``ibn`` (IBN-Net's IBN-a, Pan et al. 2018: half the channels of the first normalisation of each
#: block of stages 1-3 instance-normalised, the rest BatchNorm).
NORM_NAMES = ("batch", "group", "ibn")
#: How AdaBound's step size moves over a run (:attr:`AdaBoundConfig.schedule`): ``constant`` (the
#: paper's: Neural Network Console keeps it fixed) or ``cosine`` (:func:`step_size`).
SCHEDULE_NAMES = ("constant", "cosine")
#: Groups of every GroupNorm layer: 32, as Wu & He (2018) recommend for ResNets and
#: Tsutsui et al. (2023) use; every ResNet width (64..2048 channels) is a multiple of it.
GN_GROUPS = 32
#: Inference backends (:mod:`wbc_nnabla.predictor`); ``auto`` picks one.
BACKEND_NAMES = ("auto", "nnabla", "opencv", "onnxruntime")
#: Arithmetic of the ONNX backends (:mod:`wbc_nnabla.quantize`): ``auto`` follows the measured choice,
#: ``int8`` is the export quantised statically on calibration cells (onnxruntime only).
PRECISION_NAMES = ("auto", "fp32", "int8")
#: nnabla contexts the training accepts (``cudnn`` needs nnabla-ext-cuda).
CONTEXT_NAMES = ("cpu", "cudnn")

#: Clean training images on which BatchNorm's running statistics are re-estimated before
#: every evaluation ("precise BN", :func:`wbc_nnabla.engine.recalibrate_bn`); 0 keeps
#: Neural Network Console's behaviour. A deviation from NNC: docs/training.md, "BatchNorm".
BN_RECALIBRATION_IMAGES = 960

#: Fewest images a BatchNorm layer computes batch statistics over: training graphs with ``norm``
#: batch or ibn, precise BN (:func:`wbc_nnabla.engine.recalibrate_bn`) and AdaBN. BatchNorm
#: normalises by the mean and variance of each channel across the images of a batch; one image
#: has no variance between images, so its running variance misses that part entirely, and where
#: a stage's map is 1x1 (the last stage of a ResNet at 32 px) it is the variance of a single value,
#: which nnabla's unbiased estimate n/(n-1) turns into NaN (0/0). GroupNorm normalises each image by
#: its own statistics and needs no batch (docs/training.md, "Normalisation").
MIN_BN_BATCH = 2

#: What the training graph's ImageAugmentation fills the area from outside an image with when it
#: zooms out or turns (:attr:`Augmentation.fill`): the border repeated (``edge``, NNC's) or the
#: image's background colour (``background``, like ``adapt --pad background``).
FILLS = ("edge", "background")

#: Largest input side (pixels) of the network and of a dataset's images: four times the paper's
#: 480 px. A ResNet-18 at 2048 px already needs about a GiB of activations per image; larger sides
#: only exhaust memory, deep inside nnabla or OpenCV, instead of failing with a message.
MAX_INPUT_SIZE = 2048
#: Smallest input side (pixels) a network is trained at.
MIN_TRAIN_SIZE = 32

#: The recipe files shipped in the package (``wbc_nnabla/recipes/NAME.json``).
RECIPE_NAMES = ("paper", "robust")


class TrainingError(WBCError, ValueError):
    """A training run that cannot start or continue (bad dataset, config, diverged loss)."""


def check_ranges(checks, error=TrainingError) -> None:
    """Raise ``error`` naming the first setting outside its range.

    checks: ``(name, value, holds, rule)`` tuples; ``holds`` is the range test (written so that
    NaN fails it), ``rule`` what the range is, e.g. ``"in [0, 1] (a share of images)"``. For the few
    rules that relate two settings; a setting's own range is declared with it (:func:`setting`).
    """
    for name, value, holds, rule in checks:
        if not holds:
            raise error(f"{name} must be {rule}, got {value}")


def check_bn_batch(batch_size: int, norm: str = "batch", error=TrainingError,
                   hint: str = "; GroupNorm (norm group) trains with batches of one") -> None:
    """Raise ``error`` when ``batch_size`` images are too few for BatchNorm's batch statistics
    (:data:`MIN_BN_BATCH`); ``norm`` group needs no batch. ``hint``: what the message ends with."""
    if norm != "group" and settings.whole(batch_size) and batch_size < MIN_BN_BATCH:
        raise error(f"batch_size must be >= {MIN_BN_BATCH} with norm {norm}, got {batch_size}: BatchNorm estimates "
                    f"its statistics across the images of a batch, and one image has no variance between images "
                    f"(NaN where a map is 1x1){hint}")


def check_step(cfg, error=TrainingError) -> None:
    """Raise ``error`` unless ``cfg.alpha`` and ``cfg.final_lr`` (AdaBound's steps) are finite and > 0."""
    check_ranges([(n, getattr(cfg, n), settings.finite(getattr(cfg, n)) and getattr(cfg, n) > 0,
                   "a finite number > 0") for n in ("alpha", "final_lr")], error)


_PER_IMAGE = between(0, 1, "a probability per image and iteration")


def off(help: str, rule: settings.Rule):
    """A term of the augmentation that is off (0.0) unless asked: a config key, not a flag."""
    return setting(0.0, help, rule=rule, flag=False)


@dataclasses.dataclass
class Augmentation:
    """The ranges of the training graph's augmentation terms, per image and iteration (section II.4).

    NNC's ImageAugmentation (``nnabla.functions.image_augmentation``; the paper's Contrast,
    Brightness, Magnification, Angle, plus random flips) and the terms this package adds for
    cells of other labs, all off (0) by default so that the graph is exactly NNC's. Each term,
    its formula and its random stream: :mod:`wbc_nnabla.augmentation` (``TERMS``).
    """
    contrast: float = setting(1.2, "Contrast: factor in [1/c, c]",
                              rule=between(1, math.inf, "a factor in [1/contrast, contrast]; 1: off"))
    contrast_center: float = setting(0.5, "Contrast: the pixel value it turns around",
                                     rule=between(0, 1, "a pixel value"), flag=False)
    brightness: float = setting(0.1, "Brightness: additive, in [-b, b] on [0,1] pixels",
                                rule=between(0, 1, "a shift of [0, 1] pixels"))
    min_scale: float = setting(0.9, "Magnification minimum", rule=positive("> 0 (Magnification, a zoom factor)"))
    max_scale: float = setting(1.1, "Magnification maximum")
    angle: float = setting(45.0, "Angle: rotation in [-angle, angle] degrees", rule=between(0, 180, "degrees"))
    fill: str = setting("edge", "what fills the area from outside the image when Magnification zooms out or "
                                "Angle turns: edge (NNC's: the border repeated) or background (the image's "
                                "background colour)", choices=FILLS, flag=False)
    flip_lr: bool = setting(True, "random left-right mirror (not in the paper; cells have no orientation)",
                            flag=False)
    flip_ud: bool = setting(True, "random up-down mirror", flag=False)
    enabled: bool = setting(True, "the augmentation is in the training graph at all", flag=False)
    od_scale: float = off("colour: optical density x s_c, s_c in [1-s, 1+s] per channel (0: off)",
                          between(0, 1, "optical density x [1-s, 1+s]: never negative"))
    od_shift: float = off("colour: optical density + b_c, b_c in [-b, b] per channel (0: off)",
                          between(0, math.inf, "optical density units"))
    saturation: float = off("colour: grey + (x - grey) x f, f in [1-s, 1+s] (0: off)",
                            between(0, 1, "the chroma x [1-s, 1+s]: never inverted"))
    log_gamma: float = off("colour: x ** gamma, ln(gamma) in [-g, g] (0: off)", between(0, math.inf, "natural log of gamma"))
    hue: float = off("colour: hue turned by [-h, h] degrees about the grey axis (0: off)", between(0, 180, "degrees"))
    color_prob: float = setting(1.0, "colour: share of images given the colour terms, drawn per image (1: all)",
                                rule=between(0, 1, "a share of images"), flag=False)
    blur: float = off("optics: the image mixed with its 5x5 Gaussian blur (sigma 1 px) by a weight in [0, b] per "
                      "image (0: off; b <= 1)", between(0, 1, "the largest weight of the blurred image"))
    randconv: float = off("texture: with this probability per image, a mix of the image and a random convolution "
                          "of it (RandConv; 0: off)", _PER_IMAGE)
    mixstyle: float = off("features: MixStyle after residual stages 1-3, with this probability per stage and "
                          "iteration (0: off)", between(0, 1, "a probability per stage and iteration"))
    fourier: float = off("another lab's look: with this probability per image, the lowest frequencies' amplitude "
                         "mixed with a style cell's (FDA; needs style_cells; 0: off)", _PER_IMAGE)

    @property
    def color(self) -> bool:
        """Whether any colour term is on (the colour step is in the training graph)."""
        return any((self.od_scale, self.od_shift, self.saturation, self.log_gamma, self.hue))

    def validate(self) -> None:
        """Raise :class:`TrainingError` naming the first field outside its declared range (e.g. a
        Magnification of 0, which crashes nnabla, or a negative colour range)."""
        settings.check(self, TrainingError)
        self.check_magnification()

    def check_magnification(self) -> None:
        """Raise :class:`TrainingError` unless Magnification's maximum is at least its minimum."""
        check_ranges([("max_scale", self.max_scale, self.min_scale <= self.max_scale < math.inf,
                       f">= min_scale = {self.min_scale} (Magnification, a zoom factor)")])


@dataclasses.dataclass
class AdaBoundConfig:
    """Hyper-parameters of ``nnabla.solvers.AdaBound`` plus L2 weight decay (``solver.weight_decay``).

    Defaults are nnabla's (= Luo et al.'s official code and NNC's). ``weight_decay`` adds
    ``weight_decay * w`` to every gradient before the update, as the official ``adabound.py`` does.
    Ranges: Luo et al. 2019 (steps and the bounds' speed > 0, betas in [0, 1), eps > 0).
    """
    alpha: float = setting(1e-3, "AdaBound step size (Adam learning rate)", rule=positive())
    final_lr: float = setting(0.1, "AdaBound final (SGD) learning rate", rule=positive())
    gamma: float = setting(1e-3, "convergence speed of the bounds", rule=positive(), flag=False)
    beta1: float = setting(0.9, "Adam's first-moment decay", rule=between(0, 1, hi_open=True), flag=False)
    beta2: float = setting(0.999, "Adam's second-moment decay", rule=between(0, 1, hi_open=True), flag=False)
    eps: float = setting(1e-8, "Adam's epsilon", rule=positive(), flag=False)
    weight_decay: float = setting(0.0, "L2 added to gradients", rule=between(0, math.inf), flag=False)
    schedule: str = setting("constant", "step size over the run: constant (the paper's) or cosine (alpha and "
                                        "final_lr fall to 0 along a half cosine over every iteration of the run; "
                                        "see docs/training.md)", choices=SCHEDULE_NAMES, flag=False)

    def validate(self) -> None:
        """Raise :class:`TrainingError` naming the first hyper-parameter outside its declared range."""
        settings.check(self, TrainingError)


def step_size(cfg: AdaBoundConfig, done: int, total: int) -> float:
    """AdaBound's step size ``alpha`` for the update after ``done`` of a run's ``total`` updates.

    ``constant``: ``cfg.alpha`` throughout. ``cosine`` (Loshchilov & Hutter 2017, without restarts):
    ``alpha / 2 * (1 + cos(pi * done / total))``, from ``alpha`` at the first update towards 0 at the
    last. nnabla's AdaBound scales ``final_lr`` (its SGD bounds) by the same factor when the step is
    set (``Solver.set_learning_rate``), so both fall together.
    """
    if cfg.schedule == "constant":
        return cfg.alpha
    return 0.5 * cfg.alpha * (1.0 + math.cos(math.pi * done / total))


_SIZES = f"in [{MIN_TRAIN_SIZE}, {MAX_INPUT_SIZE}] px"


@dataclasses.dataclass
class TrainConfig:
    """Every setting of :func:`wbc_nnabla.training.train` (section II.4; units: epochs, images, pixels).

    The fields marked below as research settings are config keys (``--config``, ``--set``), not
    flags: each was measured for cells of other labs and not adopted (docs/cross_site.md).

    epochs, batch_size, size: epochs (the paper: 300), images per iteration, training input side.
    seed: every random draw of the run (initialisation, shuffles, augmentation, samples) derives from it.
    pretrained: ``"imagenet"`` (cached zoo/nnabla-examples file), a weight file path, or ``"none"``.
    init: a model ``.nnp``/``.h5`` whose every parameter (head included) starts the run
        (fine-tuning: Model B from Model A); overrides ``pretrained``.
    arch, solver, augmentation, context: the network, :class:`AdaBoundConfig`, :class:`Augmentation`,
        ``cpu`` or ``cudnn``.
    train_eval_limit: Training Error on a seeded class-stratified sample of N training images
        (None: all, as NNC); the sample is recorded in ``config.json`` (``train_eval_sample``).
    export_size: input size of the exported ``model.nnp`` (default ``size``).
    cache_images, tile_every, progress, max_iterations: keep resized images in memory; a tile of the
        augmented batch every N epochs (0: never); a progress bar; stop each epoch after N iterations.
    bn_recalibration: before each epoch's evaluation and export, re-estimate the BatchNorm
        running statistics on this many clean training images (:func:`wbc_nnabla.engine.recalibrate_bn`),
        a seeded class-stratified sample recorded in ``config.json`` (``bn_sample``); 0 keeps NNC's
        behaviour. docs/training.md, "BatchNorm".
    site_record: store in the exported model the training cells' domain reference and WBC scale,
        which ``predict``'s domain-shift check and ``adapt``'s re-framing read (:mod:`wbc_nnabla.sites`).
        Off in the library (a paper run computes nothing only the wing uses); the command line and
        ``reproduce`` ask for it.
    Research settings (docs/training.md): ``weight_init`` (glorot or he), ``norm`` (batch, group, ibn),
    ``average_epochs`` (SWA over the last N epochs), ``label_smoothing``, ``mixup`` (Beta's alpha),
    ``style_cells`` (another lab's cells, for :attr:`Augmentation.fourier`).
    """
    epochs: int = setting(PAPER.epochs, f"epochs (paper: {PAPER.epochs})", rule=at_least(1))
    batch_size: int = setting(BATCH_SIZE, "images per iteration", rule=at_least(1))
    size: int = setting(PAPER.train_size, f"training input side in pixels (paper: {PAPER.train_size})",
                        rule=between(MIN_TRAIN_SIZE, MAX_INPUT_SIZE, "pixels"))
    seed: int = setting(0, "seed of every random draw of the run", rule=SEED)
    pretrained: str = setting("imagenet", "imagenet (file cached in ~/nnabla_data/nnp_models/imagenet/), a "
                                          ".nnp/.h5 path, or none")
    init: Optional[Union[str, Path]] = setting(
        None, "start from every parameter of this model (Model B: Model A's .nnp)", metavar="MODEL")
    arch: str = setting(PAPER.arch, f"network (paper: {PAPER.arch})", choices=ARCH_NAMES)
    solver: AdaBoundConfig = dataclasses.field(default_factory=AdaBoundConfig)
    augmentation: Augmentation = dataclasses.field(default_factory=Augmentation)
    context: str = setting("cpu", "nnabla context (cudnn needs nnabla-ext-cuda)", choices=CONTEXT_NAMES)
    train_eval_limit: Optional[int] = setting(
        None, "Training Error on a seeded class-stratified sample of N training images (default all)",
        rule=at_least(1, "image (or None: all)", optional=True), metavar="N")
    export_size: Optional[int] = setting(None, "input size of model.nnp (default --size)",
                                         rule=settings.Rule(lambda v: v is None or MIN_TRAIN_SIZE <= v <= MAX_INPUT_SIZE,
                                                            f"{_SIZES} (or None: size)"))
    cache_images: bool = setting(True, "keep the resized images in memory after the first read", flag=False)
    tile_every: int = setting(1, "a tile of the augmented batch every N epochs (0: never)",
                              rule=at_least(0, "epochs (0: never)"), flag=False)
    progress: bool = setting(True, "progress bar", flag=False)
    max_iterations: Optional[int] = setting(None, "stop each epoch after N iterations (smoke tests)",
                                            rule=at_least(1, "(or None: whole epochs)", optional=True), flag=False)
    bn_recalibration: int = setting(
        BN_RECALIBRATION_IMAGES, "re-estimate BatchNorm statistics on N clean training images before each "
                                 "evaluation and export (0: off, as NNC; see docs/training.md)",
        rule=at_least(0, "images (0: off)"), metavar="N")
    site_record: bool = setting(False, "store the training cells' domain reference and WBC scale in the model "
                                       "(predict's domain-shift check, adapt's re-framing)", flag=False)
    weight_init: str = setting("glorot", "initialiser of new convolution weights: glorot (nnabla's) or he",
                               choices=WEIGHT_INIT_NAMES, flag=False)
    norm: str = setting("batch", "normalisation after every convolution: batch (BatchNorm, the paper's), "
                                 "group (GroupNorm, 32 groups) or ibn (IBN-a)", choices=NORM_NAMES, flag=False)
    average_epochs: int = setting(0, "export the mean of the weights over every update of the last N epochs "
                                     "(SWA; 0: the best epoch, as the paper)", flag=False)
    label_smoothing: float = setting(0.0, "share of each training target spread evenly over the classes (0: off)",
                                     rule=between(0, 1, "a share of each target", hi_open=True), flag=False)
    mixup: float = setting(0.0, "mixup's Beta alpha (0: off)",
                           rule=settings.Rule(lambda v: settings.finite(v) and v >= 0,
                                              "a finite number >= 0 (0: off; Beta's alpha)"), flag=False)
    style_cells: Optional[Union[str, Path]] = setting(
        None, "another lab's cells whose look augmentation.fourier mixes in (labels ignored)", flag=False)

    ERROR: ClassVar[type] = TrainingError

    def validate(self) -> None:
        """Raise :class:`TrainingError` naming the first setting out of its declared range (nested
        settings included), or a pair of settings that do not go together."""
        self.augmentation.validate()
        settings.check(self, TrainingError)
        check_bn_batch(self.batch_size, self.norm)
        if not 0 <= self.average_epochs <= self.epochs:
            raise TrainingError(f"average_epochs must be in [0, epochs = {self.epochs}], got {self.average_epochs}")
        if bool(self.augmentation.fourier) != (self.style_cells is not None):
            raise TrainingError("fourier and style_cells go together: the Fourier step mixes in the style cells' "
                                "spectra, and style cells are read for nothing without it "
                                f"(got fourier {self.augmentation.fourier}, style_cells {self.style_cells})")
        if self.average_epochs and self.norm != "group" and not self.bn_recalibration:
            raise TrainingError("average_epochs needs bn_recalibration > 0 with BatchNorm: averaged weights need "
                                "BatchNorm statistics of their own")


#: Keys of a run's ``config.json`` ``config`` record that describe the run, not a setting
#: (:func:`train_config_from_file` reads the settings and passes over these).
RECORD_KEYS = ("dataset_dir", "out_dir", "num_classes", "class_names", "n_train", "n_valid", "wbc_share",
               "bn_sample", "train_eval_sample", "bn_recalibration_skipped", "dataset_sha256")


def recipe_file(name: str) -> Path:
    """The data file of recipe ``name`` (:data:`RECIPE_NAMES`) inside the package."""
    if name not in RECIPE_NAMES:
        raise TrainingError(f"recipe {name!r}: choose one of {', '.join(RECIPE_NAMES)}")
    return Path(str(resources.files("wbc_nnabla") / "recipes" / f"{name}.json"))


def load_recipe(name: str) -> dict:
    """The settings of recipe ``name`` as a JSON object (nested: ``solver``, ``augmentation``), with those
    of the recipe it ``extends`` underneath."""
    data = json.loads(recipe_file(name).read_text(encoding="utf-8"))
    data.pop("description", None)
    base = data.pop("extends", None)
    return settings.merge(load_recipe(base), data) if base else data


def recipe_config(name: str = "paper", base: Optional[TrainConfig] = None) -> TrainConfig:
    """``base`` (default :class:`TrainConfig`) with recipe ``name``'s settings on top."""
    return settings.from_dict(TrainConfig, load_recipe(name), str(recipe_file(name)), base=base)


def recipe_augmentation(recipe: str = "paper", **overrides) -> Augmentation:
    """The :class:`Augmentation` of ``recipe`` (:data:`RECIPE_NAMES`), with ``overrides`` (fields) on top."""
    return dataclasses.replace(recipe_config(recipe).augmentation, **overrides)


def config_record(data: dict) -> dict:
    """The settings in a saved run's ``config.json`` (its ``config`` object) or in a plain settings file.

    A run's record names its style cells by what was read (``{"source": ..., ...}``): the setting is
    the source. Record-only keys (:data:`RECORD_KEYS`) are dropped.
    """
    record = dict(data.get("config", data)) if isinstance(data.get("config"), dict) else dict(data)
    if isinstance(record.get("style_cells"), dict):
        record["style_cells"] = record["style_cells"]["source"]
    return {k: v for k, v in record.items() if k not in RECORD_KEYS}
