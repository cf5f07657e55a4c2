"""Random convolutions in the training graph: ``augmentation.randconv_augment`` (docs/training.md,
docs/research/cross_site_log.md).

With probability ``p`` per image, ``x' = a x + (1 - a) conv(x)``: ``conv`` the image's own random
3 -> 3 kernel of side 1, 3, 5 or 7 (weights normal, standard deviation ``1 / sqrt(3 k^2)``), mirrored
borders, ``a`` uniform in [0, 1]; else ``x' = x``. Off, the graph has none of it; it is never in a
test graph nor an ``.nnp``.
"""
import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from helpers import augmentation_graph_functions, check_redrawn_and_seeded, train_with_augmentation  # noqa: E402
from wbc_nnabla import augmentation  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig, TrainingError  # noqa: E402

RANDCONV_FUNCTIONS = {"Randn", "Floor"}      # what RandConv adds; the ResNet and the other terms have neither


def _images(n=64, seed=0, side=12):
    """``(n, 3, side, side)`` random [0, 1] images."""
    return np.random.RandomState(seed).rand(n, 3, side, side).astype(np.float32)


def _randconv(x, p, seed=5):
    y = augmentation.randconv_augment(nn.Variable.from_numpy_array(x), p, seed=seed)
    y.forward()
    return y.d.copy()


def _kernels(n, seed=3):
    k = augmentation.randconv_kernels(n, seed=seed)
    k.forward()
    return k.d.reshape(n, 3, 3, 7, 7)


def test_each_kernel_is_a_centred_square_of_a_documented_side_with_kaiming_weights():
    kernels = _kernels(400)
    inside = np.any(kernels != 0, axis=(1, 2))                      # (n, 7, 7): the support of each image's kernel
    sides = inside.sum(axis=(1, 2)) ** 0.5
    assert set(sides) == set(float(k) for k in augmentation.RANDCONV_SIDES)   # every side drawn, no other
    for kernel, support, k in zip(kernels, inside, sides.astype(int)):
        lo = 3 - k // 2
        assert support[lo:lo + k, lo:lo + k].all()                  # exactly the centred k x k square
    for k in augmentation.RANDCONV_SIDES:
        w = kernels[sides == k][:, :, :, 3 - k // 2:3 + k // 2 + 1, 3 - k // 2:3 + k // 2 + 1]
        assert np.std(w) == pytest.approx(1.0 / np.sqrt(3.0 * k * k), rel=0.1)
        assert abs(np.mean(w)) < 0.1 / np.sqrt(3.0 * k * k)


def test_the_output_is_a_per_image_linear_map_of_the_input():
    """Same seed, same draws: y(x1 + x2) = y(x1) + y(x2), and a flat image stays flat (mirrored borders)."""
    x1, x2 = _images(32, seed=1), _images(32, seed=2)
    np.testing.assert_allclose(_randconv(x1 + x2, 1.0), _randconv(x1, 1.0) + _randconv(x2, 1.0), atol=1e-4)
    flat = np.broadcast_to(np.array([0.8, 0.4, 0.6], np.float32)[None, :, None, None], (32, 3, 12, 12)).copy()
    out = _randconv(flat, 1.0)
    np.testing.assert_allclose(out, out[:, :, :1, :1] * np.ones_like(out), atol=1e-5)
    assert not np.allclose(out, flat, atol=1e-3)                   # its colour is mixed


def test_an_impulse_spreads_over_at_most_the_kernel_side():
    x = np.zeros((64, 3, 15, 15), np.float32)
    x[:, :, 7, 7] = 1.0
    changed = np.abs(_randconv(x, 1.0) - x).max(axis=1) > 1e-7      # (n, 15, 15)
    rows, cols = np.nonzero(changed.any(axis=0))
    assert rows.min() >= 4 and rows.max() <= 10 and cols.min() >= 4 and cols.max() <= 10   # 7 x 7 at most
    assert {int(c.sum()) for c in changed} >= {1, 49}               # some images only mix colours, some a 7 x 7


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_a_share_p_of_images_is_changed_and_the_rest_kept(p):
    x = _images(400)
    changed = np.abs(_randconv(x, p) - x).reshape(400, -1).max(axis=1) > 1e-6
    assert abs(changed.mean() - p) < 0.08                           # 400 images: 3.2 standard deviations at 0.5
    np.testing.assert_array_equal(_randconv(x, 0.0), x)


def test_not_clipped_as_the_authors_mix():
    out = _randconv(_images(64), 1.0)
    assert out.min() < 0.0 or out.max() > 1.0


def test_draws_are_new_at_each_forward_and_reproducible_by_seed():
    check_redrawn_and_seeded(lambda v, seed: augmentation.randconv_augment(v, 1.0, seed=seed), _images(16))


@pytest.mark.slow
def test_in_the_training_graph_only_when_on():
    on, off, test = augmentation_graph_functions(randconv=0.5)
    assert RANDCONV_FUNCTIONS <= set(on)
    assert not RANDCONV_FUNCTIONS & set(off + test)


@pytest.mark.slow
def test_randconv_training_exports_plain_model(tiny_dataset, tmp_path):
    assert train_with_augmentation(tiny_dataset, tmp_path / "r", RANDCONV_FUNCTIONS, randconv=0.5)["randconv"] == 0.5


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_probability_outside_zero_one_is_refused(p):
    with pytest.raises(TrainingError, match="randconv"):
        TrainConfig(augmentation=Augmentation(randconv=p)).validate()
