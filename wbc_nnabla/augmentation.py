"""The training graph's augmentation (paper section II.4; docs/training.md, "ImageAugmentation").

:func:`augment` is what a training graph puts before the network: another lab's low-frequency
amplitude spectrum (:func:`fourier_augment`, from style cells), the colour terms
(:func:`color_augment`), a slight blur (:func:`blur_augment`), random convolutions
(:func:`randconv_augment`), the background colour at the border (:func:`background_fill`), then
Neural Network Console's ImageAugmentation (``nnabla.functions.image_augmentation``: Contrast, Brightness,
Magnification, Angle, flips). :func:`mixstyle_hook` adds MixStyle inside the network.
Each is built in the training graph only, never in a test graph or an exported ``.nnp``.
Every range is a field of :class:`~wbc_nnabla.recipe.Augmentation`; every random draw is
seeded from the augmentation seed, so a resumed run draws the same images.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import nnabla as nn
import nnabla.functions as F
import numpy as np

from . import models, settings
from .recipe import Augmentation
from .sampling import derive_seed

#: Added to pixel values before the logarithm of the colour step (optical density of black: -log(1e-3) = 6.9).
OD_EPS = 1e-3


def _uniform(half_width: float, shape: Tuple[int, ...], seed: int, center: float = 0.0):
    """``F.rand`` uniform in ``[center - half_width, center + half_width]``, one draw per forward."""
    return F.rand(center - half_width, center + half_width, shape, seed=seed)


def _graph_seeds(seed: int, n: int) -> List[int]:
    """``n`` seeds for the random functions of one graph step: -1 each (nnabla's global seed) when
    ``seed`` < 0, else drawn from ``seed`` (reproducible)."""
    return [-1] * n if seed < 0 else [int(v) for v in np.random.RandomState(seed).randint(0, 2 ** 31 - 1, n)]


def _stream_seed(seed: int, *keys: int) -> int:
    """The seed of one graph step's own stream ``keys`` of the augmentation seed ``seed``
    (:func:`~wbc_nnabla.sampling.derive_seed`), or -1 (nnabla's global seed) when ``seed`` < 0."""
    return -1 if seed < 0 else derive_seed(seed, *keys)


def color_augment(x, aug: Augmentation, seed: int = -1):
    """The colour (stain/camera) step of :class:`Augmentation` on a [0, 1] batch ``(N, 3, H, W)``.

    Optical density scale and shift per channel, saturation, gamma, hue (formulas in
    :class:`Augmentation`); only the terms that are non-zero are built. Every draw
    is per image (``(N, 1, 1, 1)``) or per image and channel (``(N, 3, 1, 1)``) and
    renewed at each forward. With ``color_prob < 1`` each image keeps its input colours
    with probability ``1 - color_prob``. ``seed`` >= 0 seeds each ``F.rand`` with its own
    value derived from it (reproducible, like :func:`augment`); -1 uses nnabla's global seed.
    """
    n = x.shape[0]
    seeds = _graph_seeds(seed, 6)
    coloured = _colour_terms(x, aug, seeds)
    if aug.color_prob >= 1.0:
        return coloured
    chosen = F.less_scalar(F.rand(0.0, 1.0, (n, 1, 1, 1), seed=seeds[5]), aug.color_prob)   # 1: coloured
    return x + (coloured - x) * chosen


def _colour_terms(x, aug: Augmentation, seeds):
    """The colour terms of :func:`color_augment` on every image of ``x``; ``seeds``: one per term."""
    n = x.shape[0]
    if aug.od_scale or aug.od_shift:
        od = -F.log(x + OD_EPS)
        if aug.od_scale:
            od = od * _uniform(aug.od_scale, (n, 3, 1, 1), seeds[0], center=1.0)
        if aug.od_shift:
            od = od + _uniform(aug.od_shift, (n, 3, 1, 1), seeds[1])
        x = F.clip_by_value(F.exp(-od) - OD_EPS, 0.0, 1.0)
    if aug.saturation:
        grey = F.mean(x, axis=1, keepdims=True)
        x = F.clip_by_value(grey + (x - grey) * _uniform(aug.saturation, (n, 1, 1, 1), seeds[2], center=1.0),
                            0.0, 1.0)
    if aug.log_gamma:
        gamma = F.exp(_uniform(aug.log_gamma, (n, 1, 1, 1), seeds[3]))
        x = F.clip_by_value(F.exp(F.log(x + OD_EPS) * gamma) - OD_EPS ** gamma, 0.0, 1.0)
    if aug.hue:
        x = F.clip_by_value(_hue_turn(x, _uniform(math.radians(aug.hue), (n, 1, 1, 1), seeds[4])), 0.0, 1.0)
    return x


def _hue_turn(x, theta):
    """Turn the colour of ``x`` ``(N, 3, H, W)`` by ``theta`` ``(N, 1, 1, 1)`` radians about the grey axis.

    Rodrigues' rotation about ``k = (1, 1, 1) / sqrt(3)``: ``(k . x) k`` is the per-pixel grey
    and ``k x x = (b - g, r - b, g - r) / sqrt(3)``. nnabla has no hue function, hence by hand.
    """
    r, g, b = (F.slice(x, start=(0, c, 0, 0), stop=(x.shape[0], c + 1) + x.shape[2:]) for c in range(3))
    cross = F.concatenate(b - g, r - b, g - r, axis=1) / math.sqrt(3.0)
    grey = F.mean(x, axis=1, keepdims=True)
    return x * F.cos(theta) + cross * F.sin(theta) + grey * (1.0 - F.cos(theta))


#: Side (pixels) and sigma (input pixels) of the one Gaussian kernel of :func:`blur_augment`: a
#: slight blur, fixed before any foreign-site result (docs/research/cross_site_log.md).
BLUR_KERNEL = 5
BLUR_SIGMA = 1.0
# Stream key of the blur weight's seed in derive_seed(augmentation seed, key): any constant; fixed
# so that runs stay reproducible and the other terms' draws do not change when blur is turned on.
_BLUR_STREAM = 6151


def gaussian_kernel(side: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """The normalised 2-D Gaussian ``(side, side)`` (sums to 1), ``sigma`` in pixels."""
    r = np.arange(side) - (side - 1) / 2.0
    g = np.exp(-r ** 2 / (2.0 * sigma ** 2))
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def blur_augment(x, weight: float, seed: int = -1):
    """A slight, per-image blur of a [0, 1] batch ``(N, 3, H, W)`` (same shape out).

    ``x' = x + w (G * x - x)``: ``G * x`` is every channel convolved with :func:`gaussian_kernel`
    (mirrored borders, so no dark frame); ``w`` uniform in ``[0, weight]`` per image,
    renewed at each forward. One fixed kernel and a random weight stand in for a random blur
    width, which no single convolution in a static graph can draw.
    """
    n, c = x.shape[:2]
    half = BLUR_KERNEL // 2
    kernel = nn.Variable.from_numpy_array(np.repeat(gaussian_kernel()[None], c, axis=0).astype(np.float32),
                                          need_grad=False)
    blurred = F.depthwise_convolution(F.pad(x, (half, half, half, half), mode="reflect"), kernel)
    return x + (blurred - x) * _uniform(weight / 2.0, (n, 1, 1, 1), seed, center=weight / 2.0)


#: Kernel sides of :func:`randconv_kernels`, drawn uniformly per image: the multi-scale set of
#: RandConv (Xu et al., ICLR 2021), fixed before any foreign-site result (docs/research/cross_site_log.md).
RANDCONV_SIDES = (1, 3, 5, 7)
# Stream key of RandConv's seeds in derive_seed(augmentation seed, key): any constant; fixed so that
# runs stay reproducible and the other terms' draws do not change when RandConv is turned on.
_RANDCONV_STREAM = 8623


def randconv_kernels(n: int, seed: int = -1):
    """``n`` random 3 -> 3 convolution kernels as one grouped weight ``(n * 3, 3, 7, 7)``.

    Image ``i``'s kernel is rows ``3 i .. 3 i + 2``: a side ``k`` drawn uniformly from
    :data:`RANDCONV_SIDES`, weights normal with standard deviation ``1 / sqrt(3 k^2)`` (Kaiming,
    fan-in) inside the centred ``k x k`` square and 0 outside it, renewed at each forward. One
    7 x 7 shape with a random support stands in for a random side, which no static graph can draw.
    """
    seeds = _graph_seeds(seed, 2)
    largest = max(RANDCONV_SIDES)
    ring = np.abs(np.arange(largest) - largest // 2)
    distance = nn.Variable.from_numpy_array(np.maximum.outer(ring, ring).astype(np.float32)[None, None, None],
                                            need_grad=False)       # Chebyshev distance from the centre
    half = F.floor(F.rand(0.0, float(len(RANDCONV_SIDES)), (n, 1, 1, 1, 1), seed=seeds[0]))   # (k - 1) / 2
    inside = F.less_scalar(distance - half, 0.5)
    std = 1.0 / (math.sqrt(3.0) * (2.0 * half + 1.0))
    weights = F.randn(0.0, 1.0, (n, 3, 3, largest, largest), seed=seeds[1]) * inside * std
    return F.reshape(weights, (n * 3, 3, largest, largest))


def randconv_augment(x, p: float, seed: int = -1):
    """RandConv (Xu et al., ICLR 2021, "RC_mix") on a [0, 1] batch ``(N, 3, H, W)`` (same shape out).

    With probability ``p`` per image and forward, ``x' = a x + (1 - a) conv(x)``: ``conv`` that
    image's own kernel of :func:`randconv_kernels` (mirrored borders, no bias), ``a`` uniform in
    ``[0, 1]`` per image; otherwise ``x' = x``. Not clipped, as the authors' mix: the network sees
    random local colour and texture, and the cell's shapes. nnabla has no random-convolution
    function, hence by hand (a grouped convolution, one group per image).
    """
    n, c, h, w = x.shape
    seeds = _graph_seeds(seed, 3)
    kernels = randconv_kernels(n, seeds[0])
    half = kernels.shape[-1] // 2
    padded = F.pad(x, (half, half, half, half), mode="reflect")
    conv = F.reshape(F.convolution(F.reshape(padded, (1, n * c) + padded.shape[2:]), kernels, group=n),
                     (n, c, h, w))
    on = F.less_scalar(F.rand(0.0, 1.0, (n, 1, 1, 1), seed=seeds[1]), p)
    keep = F.rand(0.0, 1.0, (n, 1, 1, 1), seed=seeds[2])              # a: the share of the input kept
    return x + (conv - x) * (1.0 - keep) * on


#: Half-width of the low-frequency band of :func:`fourier_augment`, as a share of the image side
#: (FDA's ``beta``, Yang & Soatto, CVPR 2020: its middle value of 0.01, 0.05, 0.09): frequencies
#: ``-b .. b`` cycles per image on each axis, ``b = max(1, floor(beta * side))`` (3 at 64 px). Fixed
#: before any foreign-site result (docs/research/cross_site_log.md).
FOURIER_BETA = 0.05
#: Floor of an amplitude a ratio divides by (a frequency of zero amplitude keeps its zero).
FOURIER_EPS = 1e-6
# Stream key of the Fourier step's seeds in derive_seed(augmentation seed, key): any constant; fixed
# so that runs stay reproducible and the other terms' draws do not change when it is turned on.
_FOURIER_STREAM = 6451


def fourier_half_band(side: int, beta: float = FOURIER_BETA) -> int:
    """``b`` of :data:`FOURIER_BETA` for an image of ``side`` pixels: the band is ``-b .. b`` cycles per image."""
    return max(1, int(math.floor(beta * side)))


def fourier_matrices(side: int, b: int) -> Tuple[np.ndarray, np.ndarray]:
    """(cos, sin), each ``(2b + 1, side)``: row ``k`` (frequency ``k - b``) of the discrete Fourier
    transform, ``exp(-2 pi i f n / side) = cos - i sin``. Only the band's rows: the step needs no
    other frequency, so it costs ``O(side^2 b)`` per channel instead of a full transform."""
    angle = 2.0 * np.pi * np.outer(np.arange(-b, b + 1), np.arange(side)) / side
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def low_band_amplitudes(images: np.ndarray, beta: float = FOURIER_BETA) -> np.ndarray:
    """Amplitude spectrum ``(N, 3, 2b+1, 2b+1)`` of ``images`` ``(N, 3, S, S)`` ([0, 1]) at frequencies
    ``-b .. b`` of each axis (:func:`fourier_half_band`), by ``numpy.fft.fft2`` (the style bank of
    :func:`fourier_augment`)."""
    side = images.shape[-1]
    b = fourier_half_band(side, beta)
    spectrum = np.fft.fft2(images.astype(np.float64), axes=(-2, -1))
    band = np.r_[np.arange(side - b, side), np.arange(0, b + 1)]          # frequencies -b .. b
    return np.abs(spectrum[:, :, band][:, :, :, band]).astype(np.float32)


def _matmul(a, b):
    """``a @ b`` over the last two axes of a batch ``a`` ``(M, P, Q)`` and a constant ``b`` ``(Q, R)``."""
    return F.reshape(F.affine(F.reshape(a, (-1, a.shape[-1])), b), a.shape[:-1] + (b.shape[-1],))


def _left(m_t, a):
    """``m @ a`` for a constant ``m`` given as its transpose ``m_t`` ``(Q, P)`` and each ``a`` ``(Q, R)``
    of a batch ``(M, Q, R)``: ``(a^T m^T)^T``."""
    return F.transpose(_matmul(F.transpose(a, (0, 2, 1)), m_t), (0, 2, 1))


def fourier_augment(x, bank: np.ndarray, p: float, seed: int = -1, beta: float = FOURIER_BETA):
    """Low-frequency amplitude mixing with style cells (FDA, Yang & Soatto, CVPR 2020; the mix ratio
    of FACT, Xu et al., CVPR 2021) on a [0, 1] batch ``(N, 3, S, S)`` (same shape out).

    bank: :func:`low_band_amplitudes` of the style cells, ``(K, 3, 2b+1, 2b+1)`` at this ``S``.
    With probability ``p`` per image and forward, one style cell drawn uniformly from the bank and
    ``lam`` uniform in [0, 1]: each channel's amplitude ``A`` at frequencies ``-b .. b`` of both axes
    becomes ``(1 - lam) A + lam A_style``, its phase kept, every other frequency unchanged; the
    result is clipped to [0, 1]. ``lam = 1`` is FDA's swap. The cell's shape (the phase and the
    high frequencies) stays; the style cell's overall colour, stain contrast and illumination come in.
    nnabla has no Fourier transform on CPU ("FFT forward not implemented in CPU yet", 1.39), so
    the band's transform is written out: two small matrix products per axis (:func:`fourier_matrices`).
    """
    n, c, h, w = x.shape
    if h != w or bank.shape[-1] != 2 * fourier_half_band(h, beta) + 1:
        raise ValueError(f"fourier_augment: the bank {bank.shape} does not match square {h} x {w} images")
    seeds = _graph_seeds(seed, 3)
    k = bank.shape[-1]
    c_band, s_band = fourier_matrices(h, (k - 1) // 2)
    cos, sin, cos_t, sin_t = (nn.Variable.from_numpy_array(np.ascontiguousarray(m), need_grad=False)
                              for m in (c_band, s_band, c_band.T, s_band.T))
    planes = F.reshape(x, (n * c, h, w))
    # X = (C - iS) x (C - iS)^T over the band: P = x (C - iS)^T, X = (C - iS) P
    pr, pi = _matmul(planes, cos_t), -_matmul(planes, sin_t)
    xr = _left(cos_t, pr) + _left(sin_t, pi)
    xi = _left(cos_t, pi) - _left(sin_t, pr)
    amp = F.reshape((xr ** 2 + xi ** 2) ** 0.5, (n, c, k, k))
    styles = nn.Variable.from_numpy_array(bank.reshape(len(bank), -1), need_grad=False)
    chosen = F.reshape(F.embed(F.randint(0, len(bank), (n,), seed=seeds[0]), styles), (n, c, k, k))
    on = F.less_scalar(F.rand(0.0, 1.0, (n, 1, 1, 1), seed=seeds[1]), p)
    lam = F.rand(0.0, 1.0, (n, 1, 1, 1), seed=seeds[2]) * on
    gain = F.reshape((amp + (chosen - amp) * lam) / F.maximum_scalar(amp, FOURIER_EPS) - 1.0, (n * c, k, k))
    dr, di = xr * gain, xi * gain                                      # the change of the band's spectrum
    # back: x' - x = Re((C + iS)^T dX (C + iS)) / (h w)
    qr, qi = _matmul(dr, cos) - _matmul(di, sin), _matmul(dr, sin) + _matmul(di, cos)
    change = (_left(cos, qr) - _left(sin, qi)) * (1.0 / (h * w))
    return F.clip_by_value(x + F.reshape(change, (n, c, h, w)), 0.0, 1.0)


#: MixStyle's Beta(alpha, alpha) parameter, the residual stages it follows and the epsilon added to
#: each variance: the defaults of the authors' Dassl code for ResNet-18 classification
#: (``resnet18_ms_l123``), fixed before any foreign-site result (docs/research/cross_site_log.md).
MIXSTYLE_ALPHA = 0.1
MIXSTYLE_STAGES = (1, 2, 3)
MIXSTYLE_EPS = 1e-6
# Stream key of MixStyle's seeds in derive_seed(augmentation seed, key, stage): any constant; kept
# fixed so that runs stay reproducible.
_MIXSTYLE_STREAM = 7919


def mixstyle(h, p: float, seed: int = -1, alpha: float = MIXSTYLE_ALPHA, eps: float = MIXSTYLE_EPS):
    """MixStyle (Zhou et al., ICLR 2021) on training features ``h`` ``(N, C, H, W)`` (same shape out).

    With probability ``p`` (one draw per call and forward, for the whole batch, as the authors'
    code), every image's per-channel mean ``mu`` and standard deviation ``sigma`` over H, W are
    replaced by ``lam * own + (1 - lam) * another image's`` (a random permutation of the batch;
    ``lam ~ Beta(alpha, alpha)`` per image): ``y = (h - mu) / sigma * sigma_mix + mu_mix``.
    ``mu`` and ``sigma`` carry no gradient, as in the authors' code. Otherwise ``y = h`` (up to
    rounding). Population variance here, unbiased there: the factor cancels in
    ``sigma_mix / sigma``. nnabla has no MixStyle function, hence by hand.
    """
    n = h.shape[0]
    seeds = _graph_seeds(seed, 3)
    mu = F.mean(h, axis=(2, 3), keepdims=True)
    sigma = (F.mean((h - mu) ** 2, axis=(2, 3), keepdims=True) + eps) ** 0.5
    mu.need_grad = sigma.need_grad = False                              # detached, as .detach() there
    other = F.sort(F.rand(0.0, 1.0, (n,), seed=seeds[0]), only_index=True)   # a random permutation
    on = F.less_scalar(F.rand(0.0, 1.0, (1, 1, 1, 1), seed=seeds[1]), p)
    lam = 1.0 - on * (1.0 - F.rand_beta(alpha, alpha, (n, 1, 1, 1), seed=seeds[2]))   # off: lam = 1
    mu_mix = mu * lam + F.gather(mu, other, axis=0) * (1.0 - lam)
    sigma_mix = sigma * lam + F.gather(sigma, other, axis=0) * (1.0 - lam)
    return (h - mu) / sigma * sigma_mix + mu_mix


def mixstyle_hook(aug: Optional[Augmentation], seed: int = -1) -> Optional[models.StageHook]:
    """The ``after_stage`` step of a training graph: :func:`mixstyle` after :data:`MIXSTYLE_STAGES`
    when ``aug.mixstyle`` > 0 (each stage seeded with its own value derived from ``seed``), else ``None``."""
    if aug is None or not aug.enabled or not aug.mixstyle:
        return None

    def hook(h, stage):
        if stage not in MIXSTYLE_STAGES:
            return h
        return mixstyle(h, aug.mixstyle, _stream_seed(seed, _MIXSTYLE_STREAM, stage))
    return hook


# Stream key of mixup's seed in derive_seed(augmentation seed, key): any constant; fixed so that
# runs stay reproducible.
MIXUP_STREAM = 6133


def mixup(x, alpha: float, seed: int = -1):
    """Mixup (Zhang et al., ICLR 2018) of a training batch ``x`` ``(N, C, H, W)``: ``(mixed, lam)``.

    Image ``i`` becomes ``lam_i * x_i + (1 - lam_i) * x_(N-1-i)``, ``lam`` ``(N, 1)`` drawn from
    Beta(``alpha``, ``alpha``) anew at each forward, from the stream :data:`MIXUP_STREAM` of the
    augmentation seed ``seed`` (reproducible; -1: nnabla's global seed). The partner is the image at the mirrored place
    of the (shuffled) batch, as in fastai's and timm's batch mixup. The caller mixes the loss with
    the same ``lam`` (:func:`wbc_nnabla.engine.build_graph`). nnabla has no mixup function.
    """
    n = x.shape[0]
    lam = F.rand_beta(alpha, alpha, (n, 1), seed=_stream_seed(seed, MIXUP_STREAM))
    w = F.reshape(lam, (n, 1, 1, 1))
    return w * x + (1.0 - w) * F.flip(x, axes=(0,)), lam


#: The quantile of each channel's pixels taken as an image's background colour by :func:`background_fill`.
BACKGROUND_QUANTILE = 0.9


def background_fill(x, quantile: float = BACKGROUND_QUANTILE):
    """The batch ``(N, C, H, W)`` with its outermost ring of pixels set to each image's background colour.

    NNC's ImageAugmentation fills what comes from outside the image (Magnification < 1, Angle) by
    repeating the border; after this step the border it repeats is the background colour, so the
    band matches what ``adapt --pad background`` puts around a site's crop it zooms out. The
    colour is, per image and channel, the ``quantile`` of the pixels (0.9: the middle of the
    brightest 20 %, about :func:`wbc_nnabla.segmentation.background_rgb` taken per channel).
    The ring is 1 px, inside the image: at Magnification >= 1 without a turn it is cut off or
    stays the outermost pixel.
    """
    n, c, h, w = x.shape
    ranked = F.sort(F.reshape(x, (n, c, h * w)), axis=2)
    k = int(round(quantile * (h * w - 1)))
    colour = F.reshape(F.slice(ranked, start=(0, 0, k), stop=(n, c, k + 1)), (n, c, 1, 1))
    ring = np.ones((1, 1, h, w), np.float32)
    ring[..., 1:-1, 1:-1] = 0.0
    ring = nn.Variable.from_numpy_array(ring)
    return x + (colour - x) * ring


# ----------------------------------------------------------------------------- the terms


class Term:
    """One term of the training graph's augmentation: the :class:`~wbc_nnabla.recipe.Augmentation` settings
    it reads (``fields``; their ranges are declared there), its own random stream (``stream``: the key of
    ``derive_seed(augmentation seed, stream)``, fixed so that turning another term on never changes this
    one's draws; None: it takes the augmentation seed as given), whether it is on, and its call on a
    [0, 1] batch ``(N, 3, H, W)`` (same shape out). Built in training graphs only."""

    name = ""
    fields: Tuple[str, ...] = ()
    stream: Optional[int] = None

    def on(self, aug: Augmentation) -> bool:
        """Whether the term is in the graph: its first setting is non-zero."""
        return bool(getattr(aug, self.fields[0]))

    def seed(self, seed: int) -> int:
        """The seed of the term's random functions, from the augmentation seed (-1: nnabla's global seed)."""
        return seed if self.stream is None else _stream_seed(seed, self.stream)

    def validate(self, aug: Augmentation) -> None:
        """Raise :class:`~wbc_nnabla.recipe.TrainingError` naming the first of the term's settings out of its
        declared range or choices (and, for ImageAugmentation, Magnification's maximum under its minimum)."""
        from .recipe import TrainingError
        settings.check(aug, TrainingError, only=self.fields)
        if "max_scale" in self.fields:
            aug.check_magnification()

    def __call__(self, x, aug: Augmentation, seed: int, styles: Optional[np.ndarray] = None):
        raise NotImplementedError


class FourierTerm(Term):
    """Another lab's look, first of all terms (:func:`fourier_augment`, FDA): with probability ``fourier`` per
    image, the lowest frequencies' amplitude mixed with a style cell's (``TrainConfig.style_cells``)."""
    name, fields, stream = "fourier", ("fourier",), _FOURIER_STREAM

    def __call__(self, x, aug, seed, styles=None):
        if styles is None:
            raise ValueError("Augmentation.fourier needs the style bank (TrainConfig.style_cells)")
        return fourier_augment(x, styles, aug.fourier, self.seed(seed))


class ColourTerm(Term):
    """Stain and camera (:func:`color_augment`): per image (and channel) and iteration, optical density
    ``OD = -log(x + 1e-3)`` scaled by ``[1-od_scale, 1+od_scale]`` and shifted by ``[-od_shift, od_shift]``
    per channel, saturation ``grey + (x - grey) f``, ``f`` in ``[1-saturation, 1+saturation]``, gamma
    ``x ** g``, ``ln g`` in ``[-log_gamma, log_gamma]``, hue turned by ``[-hue, hue]`` degrees about the grey
    axis (Rodrigues' formula), each step clipped to [0, 1]; each image keeps its colours with probability
    ``1 - color_prob``. Its six random functions draw from the augmentation seed's own generator."""
    name, fields = "colour", ("od_scale", "od_shift", "saturation", "log_gamma", "hue", "color_prob")

    def on(self, aug):
        return aug.color

    def __call__(self, x, aug, seed, styles=None):
        return color_augment(x, aug, seed)


class BlurTerm(Term):
    """Optics (:func:`blur_augment`): ``x + w (G * x - x)``, ``G`` a fixed 5x5 Gaussian of sigma 1 px,
    ``w`` uniform in ``[0, blur]`` per image and iteration."""
    name, fields, stream = "blur", ("blur",), _BLUR_STREAM

    def __call__(self, x, aug, seed, styles=None):
        return blur_augment(x, aug.blur, self.seed(seed))


class RandConvTerm(Term):
    """Texture (:func:`randconv_augment`, RandConv): with probability ``randconv`` per image, a mix of the
    image and a random convolution of it (a 3 -> 3 kernel of side 1, 3, 5 or 7)."""
    name, fields, stream = "randconv", ("randconv",), _RANDCONV_STREAM

    def __call__(self, x, aug, seed, styles=None):
        return randconv_augment(x, aug.randconv, self.seed(seed))


class BackgroundFillTerm(Term):
    """What fills the area from outside the image (:func:`background_fill`): with ``fill`` = ``background``,
    each image's background colour instead of NNC's repeated border."""
    name, fields = "fill", ("fill",)

    def on(self, aug):
        return aug.fill == "background"

    def __call__(self, x, aug, seed, styles=None):
        return background_fill(x)


class ImageAugmentationTerm(Term):
    """Neural Network Console's ImageAugmentation, the paper's (section II.4; ``F.image_augmentation``, input
    RGB in [0, 1]): Contrast, a factor log-uniform in ``[1/contrast, contrast]`` around ``contrast_center``
    (``y = (x + b - center) c + center``); Brightness, ``b`` uniform in ``[-brightness, brightness]``;
    Magnification, a zoom log-uniform in ``[min_scale, max_scale]`` (> 1 zooms in); Angle, uniform in
    ``[-angle, angle]`` degrees (nnabla takes radians); random left-right and up-down mirrors
    (``flip_lr``, ``flip_ud``: not in the paper; cells have no orientation). Always on; its generator
    lives inside the C++ function, seeded with the augmentation seed itself."""
    name, fields = "image_augmentation", ("contrast", "contrast_center", "brightness", "min_scale", "max_scale",
                                          "angle", "flip_lr", "flip_ud")

    def on(self, aug):
        return True

    def __call__(self, x, aug, seed, styles=None):
        return F.image_augmentation(
            x, shape=x.shape[1:], pad=(0, 0), min_scale=aug.min_scale, max_scale=aug.max_scale,
            angle=math.radians(aug.angle), aspect_ratio=1.0, distortion=0.0,
            flip_lr=aug.flip_lr, flip_ud=aug.flip_ud, brightness=aug.brightness, brightness_each=False,
            contrast=aug.contrast, contrast_center=aug.contrast_center, contrast_each=False,
            noise=0.0, seed=int(seed))


#: The input terms in the order the training graph applies them: another lab's look first (which the
#: colour terms then vary), the colour, optical and texture terms, the border, then NNC's ImageAugmentation.
TERMS: Tuple[Term, ...] = (FourierTerm(), ColourTerm(), BlurTerm(), RandConvTerm(), BackgroundFillTerm(),
                           ImageAugmentationTerm())


def active_terms(aug: Augmentation) -> List[str]:
    """The names of the terms ``aug`` turns on, in graph order (MixStyle and mixup act inside the network
    and on the loss: :func:`mixstyle_hook`, :func:`mixup`)."""
    return [t.name for t in TERMS if aug.enabled and t.on(aug)] + (["mixstyle"] if aug.enabled and aug.mixstyle else [])


def augment(x, aug: Augmentation, seed: int = -1, styles: Optional[np.ndarray] = None):
    """The training graph's augmentation of a [0, 1] batch ``(N, 3, H, W)`` (same shape out): every term of
    :data:`TERMS` that ``aug`` turns on, in order. ``styles``: the style bank of the Fourier term.

    ``seed`` >= 0 gives each random function its own Mersenne Twister seeded at graph construction
    (reproducible; training builds a new graph per epoch).
    """
    for term in TERMS:
        if term.on(aug):
            x = term(x, aug, seed, styles)
    return x
