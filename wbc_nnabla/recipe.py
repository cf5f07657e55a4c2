"""The paper's recipe as data: its numbers, the name registries and the training settings.

Sasaki et al. (2020) give the crop, the input sizes, the dataset totals and the
epochs in sections II.3 and II.4; :data:`PAPER` holds them once and every
default of the package (datasets, training, export, pipeline presets, CLI help)
reads them from here. :class:`TrainConfig` (with :class:`AdaBoundConfig` and
:class:`Augmentation`) is every setting of :func:`wbc_nnabla.training.train`.

Kept free of nnabla (and of anything but the standard library) so the command
line can show these defaults without loading nnabla; :mod:`wbc_nnabla.training`
uses and re-exports the training settings.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import List, Optional, Union

from .errors import WBCError
from .sampling import check_seed


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
#: Colour standardisations ``predict --stain`` offers (:mod:`wbc_nnabla.stain`).
STAIN_METHODS = ("none", "white-balance", "reinhard", "macenko")
#: nnabla contexts the training accepts (``cudnn`` needs nnabla-ext-cuda).
CONTEXT_NAMES = ("cpu", "cudnn")

#: Clean training images on which BatchNorm's running statistics are re-estimated before
#: every evaluation ("precise BN", :func:`wbc_nnabla.training.recalibrate_bn`); 0 keeps
#: Neural Network Console's behaviour. A deviation from NNC: docs/training.md, "BatchNorm".
BN_RECALIBRATION_IMAGES = 960

#: Fewest readable site cells unlabelled site adaptation (AdaBN, :mod:`wbc_nnabla.adaptation`)
#: accepts: two batches of 16. The new statistics are the mean of per-batch statistics; with a
#: handful of cells they reflect which cells happened to be drawn (noise), yet would replace
#: the training site's estimates made from hundreds of images.
MIN_ADAPT_IMAGES = 32
#: Site cells below which ``adapt`` says that more would be safer: on average 32 cells gave within
#: 0.02 of all of a site's cells, but one draw of 32 up to 0.06 less, of 128 at most 0.033 less
#: (docs/cross_site.md, "How many cells `adapt` needs").
ADVISED_ADAPT_IMAGES = 128
#: Site cells AdaBN draws by default (60 batches of 16, as many as precise BN uses in training).
MAX_ADAPT_IMAGES = BN_RECALIBRATION_IMAGES
#: Cells per batch statistic of AdaBN (``adapt``'s default, and the re-estimation that ends ``infomax``).
ADABN_BATCH = 16
#: How ``adapt``'s re-framing (:func:`wbc_nnabla.framing.reframe`) fills the band it adds around a
#: crop it zooms out: the crop mirrored (``reflect``, what ``build-dataset`` does where a crop
#: leaves its field), its edge pixels repeated (``replicate``, what nnabla's ImageAugmentation fills
#: with when the training graph's Magnification zooms out) or its own slide-background colour
#: (``background``).
PADS = ("reflect", "replicate", "background")
#: The padding of a model adapted before ``adapt --pad`` existed (its metadata has no ``pad``).
LEGACY_PAD = "reflect"
#: The padding ``adapt`` stores when it measures a site's scale (docs/cross_site.md, "How each
#: constant was chosen").
DEFAULT_PAD = "background"
#: What the training graph's ImageAugmentation fills the area from outside an image with when it
#: zooms out or turns (:attr:`Augmentation.fill`): the border repeated (``edge``, NNC's) or the
#: image's background colour (``background``, like ``adapt --pad background``).
FILLS = ("edge", "background")

#: Largest input side (pixels) of the network and of a dataset's images: four times the paper's
#: 480 px. A ResNet-18 at 2048 px already needs about a GiB of activations per image; larger sides
#: only exhaust memory, deep inside nnabla or OpenCV, instead of failing with a message.
MAX_INPUT_SIZE = 2048

#: Key of a dataclass field's metadata that makes the field a command-line flag (see :func:`setting`).
FLAG = "flag"


def setting(default, help: Optional[str] = None, **flag):
    """A dataclass field that is also a command-line flag ``--field-name``.

    The flag's type and default come from the field; ``help`` and any other
    ``argparse`` keywords (``choices``, ``metavar``) are kept in the field's
    metadata under :data:`FLAG`, where :mod:`wbc_nnabla.cli` reads them.
    """
    return dataclasses.field(default=default, metadata={FLAG: dict(help=help, **flag)})


class TrainingError(WBCError, ValueError):
    """A training run that cannot start or continue (bad dataset, config, diverged loss)."""


def check_ranges(checks, error=TrainingError) -> None:
    """Raise ``error`` naming the first setting outside its range.

    checks: ``(name, value, holds, rule)`` tuples; ``holds`` is the range test (written so that
    NaN fails it), ``rule`` what the range is, e.g. ``"in [0, 1] (a share of images)"``.
    """
    for name, value, holds, rule in checks:
        if not holds:
            raise error(f"{name} must be {rule}, got {value}")


def positive(value) -> bool:
    """Whether ``value`` is a finite number > 0 (False for NaN and infinities)."""
    return math.isfinite(value) and value > 0


def positive_fields(obj, names) -> list:
    """:func:`check_ranges` tuples requiring each field ``names`` of ``obj`` to be finite and > 0."""
    return [(name, getattr(obj, name), positive(getattr(obj, name)), "a finite number > 0") for name in names]


def check_step(cfg, error=TrainingError) -> None:
    """Raise ``error`` unless ``cfg.alpha`` and ``cfg.final_lr`` (AdaBound's steps) are finite and > 0."""
    check_ranges(positive_fields(cfg, ("alpha", "final_lr")), error)


@dataclasses.dataclass
class Augmentation:
    """Ranges of NNC's ImageAugmentation (``nnabla.functions.image_augmentation``), per image and iteration.

    Semantics (nnabla ``image_augmentation.cpp``), input RGB in [0, 1]:

    * ``contrast``: factor drawn log-uniformly in ``[1/contrast, contrast]`` and applied
      around ``contrast_center``: ``y = (x + b - center) * c + center``;
    * ``brightness``: additive shift ``b`` uniform in ``[-brightness, brightness]`` (same units as x);
    * ``min_scale``/``max_scale`` (Magnification): zoom factor, log-uniform; >1 zooms in;
    * ``angle``: rotation uniform in ``[-angle, angle]`` **degrees** here (nnabla takes
      radians; converted);
    * ``fill``: what the area from outside the image holds when Magnification zooms out or Angle
      turns: ``edge`` (NNC's: the border pixels repeated, streaks of whatever touches the edge) or
      ``background`` (each image's slide-background colour, per channel the 90th percentile of its
      pixels after the colour terms, :func:`wbc_nnabla.augmentation.background_fill`; what
      ``adapt --pad background`` puts around a crop it zooms out);
    * ``flip_lr``/``flip_ud``: random mirror (cells have no orientation; not in the paper).

    Colour (stain/camera) terms, not in NNC nor the paper, all 0.0 = off (the default:
    then the graph is exactly NNC's). When any is non-zero they run before
    ImageAugmentation, in this order, each draw per image and iteration, each step
    clipped to [0, 1]:

    * ``od_scale``: optical density ``OD = -log(x + 1e-3)`` per channel (unitless,
      transmitted light / white) scaled by ``s_c`` uniform in ``[1-od_scale, 1+od_scale]``
      per image and channel; ``x' = exp(-OD') - 1e-3``;
    * ``od_shift``: ``b_c`` uniform in ``[-od_shift, od_shift]`` OD units added per image
      and channel: ``OD' = OD * s_c + b_c``;
    * ``saturation``: ``x' = g + (x - g) * f``, ``g`` the per-pixel grey (mean of R, G, B),
      ``f`` uniform in ``[1-saturation, 1+saturation]`` per image (0 = greyscale);
    * ``log_gamma``: ``x' = x ** gamma`` (as ``(x + 1e-3) ** gamma - 1e-3 ** gamma``, so 0 stays 0)
      with ``log(gamma)`` uniform in ``[-log_gamma, log_gamma]`` per image (natural log);
    * ``hue``: rotation of every pixel's colour about the grey axis ``(1, 1, 1)`` by ``theta``
      uniform in ``[-hue, hue]`` **degrees** per image (Rodrigues' formula:
      ``x' = x cos(theta) + (k x x) sin(theta) + g (1 - cos(theta))``, ``k`` the unit grey axis,
      ``g`` the per-pixel grey): the grey and the chroma's length are kept, the hue turns;
    * ``color_prob``: the share of images the colour step is applied to; each image is kept
      unchanged with probability ``1 - color_prob`` (drawn per image and iteration), so that
      part of every batch shows the training lab's own colours (1 = every image, the default).

    Optical and texture terms, not in NNC nor the paper, 0.0 = off (the default); after the colour
    terms, before ImageAugmentation (``color_prob`` does not apply):

    * ``blur``: a slight, per-image blur ``x' = x + w (G * x - x)``, ``G * x`` the image convolved
      with one fixed 5x5 Gaussian of sigma 1 input pixel (mirrored borders), ``w`` uniform in
      ``[0, blur]`` per image and iteration (``blur`` <= 1; :func:`wbc_nnabla.augmentation.blur_augment`);
    * ``randconv``: random convolutions (RandConv, Xu et al., ICLR 2021), after the blur: with
      probability ``randconv`` per image and iteration, ``x' = a x + (1 - a) conv(x)``, ``conv`` a
      random 3 -> 3 kernel of side 1, 3, 5 or 7 (weights normal, standard deviation
      ``1 / sqrt(3 k^2)``), ``a`` uniform in [0, 1]; not clipped
      (:func:`wbc_nnabla.augmentation.randconv_augment`).

    Another lab's look, not in NNC nor the paper, 0.0 = off (the default); first of all terms, and
    only with style cells (:attr:`TrainConfig.style_cells`, e.g. the new lab's unlabelled cells):

    * ``fourier``: with probability ``fourier`` per image and iteration, the amplitude spectrum of
      each channel at the lowest frequencies (``-b .. b`` cycles per image, ``b = floor(0.05 S)``,
      3 at 64 px) becomes ``(1 - lam) A + lam A_style``, ``A_style`` a style cell's drawn at random,
      ``lam`` uniform in [0, 1]; the phase and every other frequency are kept (FDA, Yang & Soatto,
      CVPR 2020; :func:`wbc_nnabla.augmentation.fourier_augment`; docs/training.md).

    Feature-style term, not in NNC nor the paper, 0.0 = off (the default):

    * ``mixstyle``: MixStyle (Zhou et al., ICLR 2021) after residual stages 1-3, each with
      probability ``mixstyle`` per iteration: every image's per-channel feature mean and standard
      deviation become a Beta(0.1, 0.1) mix of its own and another image's of the batch
      (:func:`wbc_nnabla.augmentation.mixstyle`; docs/training.md).
    """
    contrast: float = setting(1.2, "factor in [1/c, c]")
    contrast_center: float = setting(0.5)
    brightness: float = setting(0.1, "additive, in [-b, b] on [0,1] pixels")
    min_scale: float = setting(0.9, "Magnification minimum")
    max_scale: float = setting(1.1, "Magnification maximum")
    angle: float = setting(45.0, "rotation in [-angle, angle] degrees")
    fill: str = setting("edge", "what fills the area from outside the image when Magnification zooms out or "
                                "Angle turns: edge (NNC's: the border repeated) or background (the image's "
                                "background colour)", choices=FILLS)
    flip_lr: bool = True
    flip_ud: bool = True
    enabled: bool = True
    od_scale: float = setting(0.0, "colour: optical density x s_c, s_c in [1-s, 1+s] per channel (0: off)")
    od_shift: float = setting(0.0, "colour: optical density + b_c, b_c in [-b, b] per channel (0: off)")
    saturation: float = setting(0.0, "colour: grey + (x - grey) x f, f in [1-s, 1+s] (0: off)")
    log_gamma: float = setting(0.0, "colour: x ** gamma, ln(gamma) in [-g, g] (0: off)")
    hue: float = setting(0.0, "colour: hue turned by [-h, h] degrees about the grey axis (0: off)")
    color_prob: float = setting(1.0, "colour: share of images given the colour terms, drawn per image (1: all)")
    blur: float = setting(0.0, "optics: the image mixed with its 5x5 Gaussian blur (sigma 1 px) by a weight "
                                "in [0, b] per image (0: off; b <= 1)")
    randconv: float = setting(0.0, "texture: with this probability per image, a mix of the image and a random "
                                    "convolution of it (RandConv; 0: off)")
    mixstyle: float = setting(0.0, "features: MixStyle after residual stages 1-3, with this probability per "
                                    "stage and iteration (0: off)")
    fourier: float = setting(0.0, "another lab's look: with this probability per image, the lowest frequencies' "
                                   "amplitude mixed with a style cell's (FDA; needs --style-cells; 0: off)")

    @property
    def color(self) -> bool:
        """Whether any colour term is on (the colour step is in the training graph)."""
        return any((self.od_scale, self.od_shift, self.saturation, self.log_gamma, self.hue))

    def validate(self) -> None:
        """Raise :class:`TrainingError` naming the first field outside the range its formula above
        allows (e.g. a Magnification of 0, which crashes nnabla, or a negative colour range)."""
        if self.fill not in FILLS:
            raise TrainingError(f"fill {self.fill!r}: choose one of {', '.join(FILLS)}")
        unit = "in [0, 1]"
        check_ranges([
            ("contrast", self.contrast, 1.0 <= self.contrast < math.inf, ">= 1 (a factor in [1/contrast, contrast]; "
                                                                          "1: off)"),
            ("contrast_center", self.contrast_center, 0.0 <= self.contrast_center <= 1.0, f"{unit} (a pixel value)"),
            ("brightness", self.brightness, 0.0 <= self.brightness <= 1.0, f"{unit} (a shift of [0, 1] pixels)"),
            ("min_scale", self.min_scale, positive(self.min_scale), "> 0 (Magnification, a zoom factor)"),
            ("max_scale", self.max_scale, self.min_scale <= self.max_scale < math.inf,
             f">= min_scale = {self.min_scale} (Magnification, a zoom factor)"),
            ("angle", self.angle, 0.0 <= self.angle <= 180.0, "in [0, 180] (degrees)"),
            ("od_scale", self.od_scale, 0.0 <= self.od_scale <= 1.0,
             f"{unit} (optical density x [1-s, 1+s]: never negative)"),
            ("od_shift", self.od_shift, 0.0 <= self.od_shift < math.inf, ">= 0 (optical density units)"),
            ("saturation", self.saturation, 0.0 <= self.saturation <= 1.0,
             f"{unit} (the chroma x [1-s, 1+s]: never inverted)"),
            ("log_gamma", self.log_gamma, 0.0 <= self.log_gamma < math.inf, ">= 0 (natural log of gamma)"),
            ("hue", self.hue, 0.0 <= self.hue <= 180.0, "in [0, 180] (degrees)"),
            ("color_prob", self.color_prob, 0.0 <= self.color_prob <= 1.0, f"{unit} (a share of images)"),
            ("blur", self.blur, 0.0 <= self.blur <= 1.0, f"{unit} (the largest weight of the blurred image)"),
            ("randconv", self.randconv, 0.0 <= self.randconv <= 1.0, f"{unit} (a probability per image and iteration)"),
            ("mixstyle", self.mixstyle, 0.0 <= self.mixstyle <= 1.0, f"{unit} (a probability per stage and iteration)"),
            ("fourier", self.fourier, 0.0 <= self.fourier <= 1.0, f"{unit} (a probability per image and iteration)"),
        ])


#: ``train --recipe`` names: ``paper`` (the paper's ImageAugmentation, no colour term) and
#: ``robust`` (for cells from other labs; docs/cross_site.md).
RECIPE_NAMES = ("paper", "robust")
#: Augmentation of the ``robust`` recipe: the colour terms (optical density x0.6-1.4 and +-0.15 per
#: channel, saturation x0.6-1.4, gamma e^+-0.3, hue +-30 degrees) and a wide Magnification (0.6-1.6).
#: Chosen before any foreign-site result, to cover with margin the stain shifts of docs/cells.md's
#: robustness table (hue +-15 degrees: twice it) and the 1.6x scale difference measured between PBC
#: and Zheng 2018 crops by their WBC masks; the hue term was added by the rule in docs/cross_site.md.
ROBUST_AUGMENTATION = dict(od_scale=0.4, od_shift=0.15, saturation=0.4, log_gamma=0.3, hue=30.0,
                           min_scale=0.6, max_scale=1.6)


def recipe_augmentation(recipe: str = "paper", **overrides) -> "Augmentation":
    """The :class:`Augmentation` of ``recipe`` (:data:`RECIPE_NAMES`), with ``overrides`` (fields) on top."""
    if recipe not in RECIPE_NAMES:
        raise TrainingError(f"recipe {recipe!r}: choose one of {', '.join(RECIPE_NAMES)}")
    values = dict(ROBUST_AUGMENTATION) if recipe == "robust" else {}
    values.update(overrides)
    return Augmentation(**values)


@dataclasses.dataclass
class AdaBoundConfig:
    """Hyper-parameters of ``nnabla.solvers.AdaBound`` plus L2 weight decay (``solver.weight_decay``).

    Defaults are nnabla's (= Luo et al.'s official code and NNC's). ``weight_decay`` adds
    ``weight_decay * w`` to every gradient before the update, as the official
    ``adabound.py`` does.
    """
    alpha: float = setting(1e-3, "step size (Adam learning rate)")
    final_lr: float = setting(0.1, "final (SGD) learning rate")
    gamma: float = setting(1e-3, "convergence speed of the bounds")
    beta1: float = setting(0.9)
    beta2: float = setting(0.999)
    eps: float = setting(1e-8)
    weight_decay: float = setting(0.0, "L2 added to gradients")
    schedule: str = setting("constant", "step size over the run: constant (the paper's) or cosine (alpha and "
                                        "final_lr fall to 0 along a half cosine over every iteration of the run; "
                                        "see docs/training.md)", choices=SCHEDULE_NAMES)

    def validate(self) -> None:
        """Raise :class:`TrainingError` naming the first hyper-parameter outside AdaBound's range (Luo et
        al. 2019: steps and the bounds' speed > 0, betas in [0, 1), eps > 0, weight decay >= 0) or an
        unknown ``schedule``."""
        if self.schedule not in SCHEDULE_NAMES:
            raise TrainingError(f"schedule {self.schedule!r}: choose one of {', '.join(SCHEDULE_NAMES)}")
        check_ranges(positive_fields(self, ("alpha", "final_lr", "gamma", "eps"))
                     + [(name, getattr(self, name), 0.0 <= getattr(self, name) < 1.0, "in [0, 1)")
                        for name in ("beta1", "beta2")]
                     + [("weight_decay", self.weight_decay, 0.0 <= self.weight_decay < math.inf, ">= 0")])


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


@dataclasses.dataclass
class TrainConfig:
    """Every setting of :func:`wbc_nnabla.training.train` (section II.4; units: epochs, images, pixels).

    epochs: total epochs (the paper: 300).
    batch_size: images per iteration.
    size: training input side; images are resized to ``size`` x ``size``.
    seed: every random draw of the run (initialisation, shuffles, augmentation, samples) derives from it.
    pretrained: ``"imagenet"`` (cached zoo/nnabla-examples file), a weight file path, or ``"none"``.
    init: a model ``.nnp``/``.h5`` whose every parameter (head included) starts the run
        (fine-tuning: Model B from Model A); overrides ``pretrained``.
    arch: one of :data:`ARCH_NAMES`.
    solver: :class:`AdaBoundConfig` (defaults documented there).
    augmentation: :class:`Augmentation` (defaults documented there).
    context: ``cpu`` or ``cudnn``.
    train_eval_limit: evaluate Training Error on a seeded class-stratified sample of N training
        images (None: all, as NNC); the sample is recorded in ``config.json`` (``train_eval_sample``).
    export_size: input size of the exported ``model.nnp`` (default ``size``).
    cache_images: keep the resized training/validation images in memory after the first read.
    tile_every: write a tile of the augmented batch every this many epochs (0: never).
    progress: show a progress bar (and silence nnabla's INFO log meanwhile).
    max_iterations: stop each epoch after this many iterations (for smoke tests/benchmarks).
    bn_recalibration: before each epoch's evaluation and export, re-estimate the BatchNorm
        running statistics on this many clean training images
        (:func:`wbc_nnabla.training.recalibrate_bn`; default 960), a seeded class-stratified
        sample whatever the order of ``train.csv``, recorded in ``config.json``
        (``bn_sample``); 0 keeps Neural Network Console's behaviour. See docs/training.md, "BatchNorm".
    weight_init: initialiser of the convolution weights a run does not load (:data:`WEIGHT_INIT_NAMES`):
        ``glorot`` (nnabla's default, uniform) or ``he`` (Kaiming normal, fan_out, as torchvision);
        :func:`wbc_nnabla.models.conv_initializer`.
    norm: normalisation after every convolution (:data:`NORM_NAMES`): ``batch`` (BatchNorm, the
        paper's), ``group`` (GroupNorm with :data:`GN_GROUPS` groups: per-image statistics, so
        nothing depends on the training site's batch statistics; docs/training.md, "Normalisation")
        or ``ibn`` (IBN-a: instance normalisation on half the channels of the first normalisation
        of each block of stages 1-3, BatchNorm elsewhere).
        A GroupNorm network has no running statistics: ``bn_recalibration`` is then a no-op
        (recorded as such in ``config.json``).
    average_epochs: weight averaging (SWA, Izmailov et al. 2018, averaged after every update as
        SWAD, Cha et al. 2021): the exported model is the mean of the weights after each update of
        the last ``average_epochs`` epochs, its BatchNorm statistics re-estimated as above
        (``config.json`` ``best["averaged_epochs"]``); 0 (default, the paper's): the epoch with the
        lowest Validation Error. Not in the paper; docs/training.md, "Weight averaging".
    label_smoothing: share ``eps`` of each training target spread evenly over the classes (Szegedy et al.
        2016): the training graph's per-image loss is ``(1 - eps) * CE(t) + eps * mean_c(-log p_c)``, so
        Cost includes it; the test graph's (Training Error, Validation Error) stays the plain cross-entropy.
        0 (default): the paper's loss. Not in the paper; docs/training.md, "Label smoothing".
    mixup: Beta parameter ``alpha`` of mixup (Zhang et al. 2018): each augmented training image is
        mixed with its partner in the batch, ``lam * x_i + (1 - lam) * x_j`` with ``lam ~ Beta(alpha,
        alpha)`` per image, and its loss with the same weights; Cost includes it, Training Error and
        Validation Error do not (their graph has no mixup). 0 (default): off, the paper's training.
        Not in the paper; docs/training.md, "Mixup".
    style_cells: cells of another lab (any source :func:`wbc_nnabla.fileio.read_cell_images` reads; labels
        ignored), whose low-frequency amplitude spectra :attr:`Augmentation.fourier` mixes into the
        training images; read only, at most :data:`wbc_nnabla.training.MAX_STYLE_CELLS`, recorded in
        ``config.json`` (``style_cells``). Required by ``fourier`` > 0 and refused without it.
    """
    epochs: int = PAPER.epochs
    batch_size: int = BATCH_SIZE
    size: int = PAPER.train_size
    seed: int = 0
    pretrained: str = "imagenet"
    init: Optional[Union[str, Path]] = None
    arch: str = PAPER.arch
    solver: AdaBoundConfig = dataclasses.field(default_factory=AdaBoundConfig)
    augmentation: Augmentation = dataclasses.field(default_factory=Augmentation)
    context: str = "cpu"
    train_eval_limit: Optional[int] = None
    export_size: Optional[int] = None
    cache_images: bool = True
    tile_every: int = 1
    progress: bool = True
    max_iterations: Optional[int] = None
    bn_recalibration: int = BN_RECALIBRATION_IMAGES
    weight_init: str = "glorot"
    norm: str = setting("batch", "normalisation after every convolution: batch (BatchNorm, the paper's), "
                                 "group (GroupNorm, 32 groups) or ibn (IBN-a: half the channels of each early "
                                 "block's first normalisation per image; see docs/training.md)", choices=NORM_NAMES)
    average_epochs: int = setting(0, "export the mean of the weights over every update of the last N epochs, "
                                     "BatchNorm statistics re-estimated (SWA; 0: off, the best epoch as the "
                                     "paper; see docs/training.md)", metavar="N")
    label_smoothing: float = setting(0.0, "share of each training target spread evenly over the classes (0: off, "
                                          "the paper's loss; Cost includes it, Training/Validation Error do not; see "
                                          "docs/training.md)", metavar="EPS")
    mixup: float = setting(0.0, "mix each training image with another of its batch, weight ~ Beta(ALPHA, ALPHA), "
                                "and their losses alike (mixup; 0: off, the paper's training; see "
                                "docs/training.md)", metavar="ALPHA")
    style_cells: Optional[Union[str, Path]] = setting(
        None, "another lab's cells (a folder or cell CSV; labels ignored) whose look --fourier mixes in "
              "(e.g. the new lab's unlabelled cells; see docs/training.md)", metavar="CELLS")

    def validate(self) -> None:
        """Raise :class:`TrainingError` for an unknown arch or norm, a setting out of range (seed, sizes,
        batch size, epochs, samples, averaging window, :meth:`Augmentation.validate`,
        :meth:`AdaBoundConfig.validate`), and ``fourier`` without ``style_cells`` or the reverse."""
        if self.arch not in ARCH_NAMES:
            raise TrainingError(f"arch {self.arch!r}: choose one of {', '.join(ARCH_NAMES)}")
        try:
            check_seed(self.seed)
        except WBCError as e:
            raise TrainingError(str(e)) from None
        if self.norm not in NORM_NAMES:
            raise TrainingError(f"norm {self.norm!r}: choose one of {', '.join(NORM_NAMES)}")
        if self.weight_init not in WEIGHT_INIT_NAMES:
            raise TrainingError(f"weight_init {self.weight_init!r}: choose one of {', '.join(WEIGHT_INIT_NAMES)}")
        self.augmentation.validate()
        self.solver.validate()
        if self.size < 32 or self.batch_size < 1 or self.epochs < 1:
            raise TrainingError(f"size must be >= 32 px, batch_size and epochs >= 1 "
                                f"(got {self.size}, {self.batch_size}, {self.epochs})")
        sizes = f"in [32, {MAX_INPUT_SIZE}] px"
        check_ranges([
            ("size", self.size, self.size <= MAX_INPUT_SIZE, sizes),
            ("export_size", self.export_size, self.export_size is None or 32 <= self.export_size <= MAX_INPUT_SIZE,
             f"{sizes} (or None: size)"),
            ("train_eval_limit", self.train_eval_limit, self.train_eval_limit is None or self.train_eval_limit >= 1,
             ">= 1 image (or None: all)"),
            ("bn_recalibration", self.bn_recalibration, self.bn_recalibration >= 0, ">= 0 images (0: off)"),
            ("tile_every", self.tile_every, self.tile_every >= 0, ">= 0 epochs (0: never)"),
            ("max_iterations", self.max_iterations, self.max_iterations is None or self.max_iterations >= 1,
             ">= 1 (or None: whole epochs)"),
            ("label_smoothing", self.label_smoothing, 0.0 <= self.label_smoothing < 1.0,
             "in [0, 1) (a share of each target)"),
            ("mixup", self.mixup, math.isfinite(self.mixup) and self.mixup >= 0.0,
             "a finite number >= 0 (0: off; Beta's alpha)"),
        ])
        if not 0 <= self.average_epochs <= self.epochs:
            raise TrainingError(f"average_epochs must be in [0, epochs = {self.epochs}], got {self.average_epochs}")
        if bool(self.augmentation.fourier) != (self.style_cells is not None):
            raise TrainingError("fourier (--fourier) and style_cells (--style-cells) go together: the Fourier step "
                                "mixes in the style cells' spectra, and style cells are read for nothing without it "
                                f"(got fourier {self.augmentation.fourier}, style_cells {self.style_cells})")
        if self.average_epochs and self.norm != "group" and not self.bn_recalibration:
            raise TrainingError("average_epochs needs bn_recalibration > 0 with BatchNorm: averaged weights need "
                                "BatchNorm statistics of their own")


@dataclasses.dataclass
class FinetuneConfig:
    """Settings of :func:`wbc_nnabla.finetune.finetune` (units: iterations, images, pixels).

    Chosen before any foreign-site result (docs/cross_site.md): 100 iterations of 8 cells
    show each of 100 cells 8 times; AdaBound's step 1e-4 is a tenth of the training default
    (the usual fine-tuning rule), ``final_lr`` likewise.
    """
    iterations: int = setting(100, "AdaBound updates")
    batch_size: int = setting(8, "labelled cells per update")
    alpha: float = setting(1e-4, "AdaBound step size (Adam learning rate)")
    final_lr: float = setting(0.01, "AdaBound final (SGD) learning rate")
    seed: int = setting(0, "seed of shuffles and augmentation")
    size: Optional[int] = setting(None, "input side in pixels (default: the model's size)")


#: ``finetune --select``: the (AdaBound step, final_lr) pairs and update counts compared by
#: cross-validation inside the lab's labelled cells, and the number of folds. Fixed before any
#: run (docs/cross_site.md): the fine-tuning default (1e-4) and the training default (1e-3),
#: each with final_lr at 100 times the step as in :class:`FinetuneConfig`, at 100 and 200 updates.
SELECT_STEPS = ((1e-4, 0.01), (1e-3, 0.1))
SELECT_ITERATIONS = (100, 200)
SELECT_FOLDS = 3


def select_candidates(base: FinetuneConfig) -> List[FinetuneConfig]:
    """``base`` with each of :data:`SELECT_STEPS` x :data:`SELECT_ITERATIONS` (batch, seed and size kept)."""
    return [dataclasses.replace(base, alpha=a, final_lr=f, iterations=i)
            for a, f in SELECT_STEPS for i in SELECT_ITERATIONS]


@dataclasses.dataclass
class SelfTrainConfig(FinetuneConfig):
    """Settings of :func:`wbc_nnabla.selftraining.self_train`: :class:`FinetuneConfig` per round, plus the rounds.

    Class-balanced self-training (Zou et al., ECCV 2018, "CBST"): each round keeps, per
    predicted class, the ``portion`` most confident of the cells the model gives that class,
    and that portion grows by ``portion_step`` each round. CBST's schedule: from 20 % up to
    50 %, chosen before any foreign-site result (docs/cross_site.md).
    """
    rounds: int = setting(3, "rounds of pseudo-labelling and fine-tuning")
    portion: float = setting(0.2, "first round: share of each predicted class kept (most confident first)")
    portion_step: float = setting(0.15, "added to the share each round (capped at 1)")


@dataclasses.dataclass
class InfoMaxConfig:
    """Settings of :func:`wbc_nnabla.adaptation.infomax` (units: updates, cells, pixels).

    Chosen before any foreign-site result (docs/cross_site.md): the step of
    :class:`FinetuneConfig`; SHOT's weight 1 of the prior term (Liang et al., ICML 2020); a
    batch of 32 cells, over which the mean prediction is compared with the prior.
    """
    iterations: int = setting(100, "AdaBound updates")
    batch_size: int = setting(32, "site cells per update (the mean prediction is taken over the batch)")
    alpha: float = setting(1e-4, "AdaBound step size (Adam learning rate)")
    final_lr: float = setting(0.01, "AdaBound final (SGD) learning rate")
    weight: float = setting(1.0, "weight of the prior term KL(mean prediction || prior) against the entropy")
    prior: str = setting("normal", "what the batch's mean prediction is drawn to: normal (a healthy adult's "
                                   "differential), none (equal classes: SHOT's diversity term) or Class=share,...",
                         metavar="PRIOR")
    seed: int = setting(0, "seed of the cell sample, shuffles and augmentation")
    size: Optional[int] = setting(None, "input side in pixels (default: the model's size)")
