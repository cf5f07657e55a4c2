"""The slight blur of the training graph: ``augmentation.blur_augment`` (docs/training.md,
docs/research/cross_site_log.md).

Every image comes out as ``x + w (G * x - x)`` with one fixed 5x5 Gaussian ``G`` (sigma 1 px,
mirrored borders) and its own weight ``w`` in ``[0, blur]``; off, the graph has no blur; it is
never in a test graph nor an ``.nnp``.
"""
import numpy as np
import pytest
from scipy import ndimage

nn = pytest.importorskip("nnabla")

from helpers import augmentation_graph_functions, check_redrawn_and_seeded, train_with_augmentation  # noqa: E402
from wbc_nnabla import augmentation  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig, TrainingError  # noqa: E402

BLUR_FUNCTIONS = {"DepthwiseConvolution", "Pad"}      # what the blur adds; the ResNet has neither


def _images(n=64, seed=0):
    """``(n, 3, 12, 12)`` random [0, 1] images (sharp: neighbouring pixels independent)."""
    return np.random.RandomState(seed).rand(n, 3, 12, 12).astype(np.float32)


def _weights(x, out):
    """Each image's ``w`` by least squares of ``out - x = w (G * x - x)``, and the largest residual.

    ``G * x`` from scipy: ``mode="mirror"`` is nnabla's ``reflect`` (the edge pixel not repeated)."""
    g = augmentation.gaussian_kernel()
    blurred = np.stack([[ndimage.convolve(c, g, mode="mirror") for c in img] for img in x.astype(np.float64)])
    d, delta = (blurred - x).reshape(len(x), -1), (out - x).reshape(len(x), -1)
    w = (d * delta).sum(axis=1) / (d * d).sum(axis=1)
    return w, np.abs(delta - w[:, None] * d).max()


def _blur(x, weight, seed=5):
    y = augmentation.blur_augment(nn.Variable.from_numpy_array(x), weight, seed=seed)
    y.forward()
    return y.d.copy()


def test_kernel_is_a_normalised_gaussian_of_sigma_one_pixel():
    g = augmentation.gaussian_kernel()
    assert g.shape == (augmentation.BLUR_KERNEL,) * 2 == (5, 5)
    assert g.sum() == pytest.approx(1.0) and g[2, 2] == g.max()
    np.testing.assert_allclose(g[2, 1] / g[2, 2], np.exp(-0.5 / augmentation.BLUR_SIGMA ** 2), rtol=1e-6)


@pytest.mark.parametrize("weight", [1.0, 0.4])
def test_each_image_is_mixed_with_its_gaussian_blur_by_a_weight_in_range(weight):
    x = _images(200)
    w, residual = _weights(x, _blur(x, weight))
    assert residual < 1e-5                                   # exactly x + w (G * x - x), one w per image
    assert w.min() >= -1e-5 and w.max() <= weight + 1e-5
    assert w.min() < 0.1 * weight and w.max() > 0.9 * weight  # uniform over the whole documented range
    assert abs(w.mean() - weight / 2) < 0.1 * weight


def test_blur_smooths_and_keeps_the_mean_of_a_flat_image():
    x = _images(32)
    out = _blur(x, 1.0)
    neighbour = lambda a: np.abs(np.diff(a, axis=-1)).mean()   # noqa: E731
    assert neighbour(out) < neighbour(x)
    flat = np.full((4, 3, 12, 12), 0.3, np.float32)
    np.testing.assert_allclose(_blur(flat, 1.0), flat, atol=1e-6)   # mirrored borders: no dark frame


def test_draws_are_new_at_each_forward_and_reproducible_by_seed():
    check_redrawn_and_seeded(lambda v, seed: augmentation.blur_augment(v, 1.0, seed=seed), _images(16))


@pytest.mark.slow
def test_in_the_training_graph_only_when_on():
    on, off, test = augmentation_graph_functions(blur=1.0)
    assert on.count("DepthwiseConvolution") == 1
    assert not BLUR_FUNCTIONS & set(off + test)


@pytest.mark.slow
def test_blur_training_exports_plain_model(tiny_dataset, tmp_path):
    assert train_with_augmentation(tiny_dataset, tmp_path / "b", BLUR_FUNCTIONS, blur=1.0)["blur"] == 1.0


@pytest.mark.parametrize("b", [-0.1, 1.5])
def test_weight_outside_zero_one_is_refused(b):
    with pytest.raises(TrainingError, match="blur"):
        TrainConfig(augmentation=Augmentation(blur=b)).validate()
