"""What the training graph's ImageAugmentation fills a zoomed-out image's band with: ``Augmentation.fill``
(``train --fill``; ``augmentation.background_fill``; docs/training.md, docs/research/cross_site_log.md).

``edge`` (the default, NNC's) repeats the image's border; ``background`` first sets a 1-px ring to each
image's background colour (per channel the 90th percentile of its pixels), so the band is that flat
colour. The step is in the training graph only, never in a test graph nor an ``.nnp``.
"""
import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from helpers import augmentation_graph_functions, train_with_augmentation  # noqa: E402
from wbc_nnabla import augmentation  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig, TrainingError  # noqa: E402

FILL_FUNCTIONS = {"Sort"}       # what the step adds; the ResNet and the other terms have no Sort


def _smears(n=6, side=32, seed=0):
    """``(n, 3, side, side)`` [0, 1] images: a bright background of its own colour per image, dark
    disks (a cell and red cells) of which some touch the border, as a crop of a smear."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[:side, :side]
    out = np.empty((n, 3, side, side), np.float32)
    for i in range(n):
        bg = rng.uniform(0.75, 0.95, 3)
        img = np.broadcast_to(bg[:, None, None], (3, side, side)).copy()
        for cy, cx, r in [(side / 2, side / 2, side / 5), (0, rng.randint(side), side / 6),
                          (rng.randint(side), side - 1, side / 6), (side - 1, rng.randint(side), side / 7)]:
            img[:, (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.uniform(0.2, 0.5, (3, 1))
        out[i] = img
    return out


def _zoomed_out(x, fill, scale=0.5):
    """The batch through :func:`augmentation.augment` at Magnification ``scale``, no other term."""
    aug = Augmentation(min_scale=scale, max_scale=scale, angle=0.0, flip_lr=False, flip_ud=False,
                       contrast=1.0, brightness=0.0, fill=fill)
    y = augmentation.augment(nn.Variable.from_numpy_array(x), aug, seed=3)
    y.forward()
    return y.d.copy()


def _ring(y):
    """The outermost pixels of each image, ``(N, 3, 4 (side - 1))``."""
    m = np.zeros(y.shape[-2:], bool)
    m[0], m[-1], m[:, 0], m[:, -1] = True, True, True, True
    return y[..., m]


def _background_share(y, background):
    """Per image, the share of pixels within 2e-3 of its background colour ``background`` ``(N, 3)``."""
    return (np.abs(y - background[:, :, None, None]).max(axis=1) < 2e-3).mean(axis=(1, 2))


def test_the_ring_takes_each_images_ninetieth_percentile_per_channel_and_the_inside_is_kept():
    x = np.random.RandomState(1).rand(4, 3, 16, 16).astype(np.float32)     # every pixel its own value
    y = augmentation.background_fill(nn.Variable.from_numpy_array(x))
    y.forward()
    expected = np.quantile(x.reshape(len(x), 3, -1), 0.9, axis=2, method="nearest")
    ring = _ring(y.d)
    np.testing.assert_allclose(ring, np.broadcast_to(expected[..., None], ring.shape), atol=1e-6)
    np.testing.assert_array_equal(y.d[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])


def test_background_fill_makes_the_zoom_out_band_the_background_colour():
    # At Magnification 0.5 the image covers a quarter of the output (where is drawn per image): the
    # other 3/4 is the band, so with the fill nearly all pixels outside the cells are background.
    x = _smears()
    background = x[:, :, 16, 3]                             # a background pixel of each image (N, 3)
    filled, edge = _zoomed_out(x, "background"), _zoomed_out(x, "edge")
    own = _background_share(x, background)                  # the input's own background share
    assert (_background_share(filled, background) > 0.75 + 0.25 * own - 0.05).all()
    # NNC's repeated border: streaks of the disks that touch it run through the band
    assert (_background_share(edge, background) < _background_share(filled, background) - 0.1).all()


def test_an_unknown_fill_is_refused():
    with pytest.raises(TrainingError, match="fill 'mirror'"):
        TrainConfig(augmentation=Augmentation(fill="mirror")).validate()


@pytest.mark.slow
def test_in_the_training_graph_only_when_on():
    on, off, test = augmentation_graph_functions(fill="background")
    assert on.count("Sort") == 1
    assert not FILL_FUNCTIONS & set(off + test)


@pytest.mark.slow
def test_background_fill_training_exports_plain_model(tiny_dataset, tmp_path):
    assert train_with_augmentation(tiny_dataset, tmp_path / "f", FILL_FUNCTIONS, fill="background")["fill"] == \
        "background"
