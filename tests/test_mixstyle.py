"""MixStyle in the training graph: ``augmentation.mixstyle`` (docs/training.md, docs/research/cross_site_log.md).

On features whose images differ only in their per-channel statistics, MixStyle turns
each image's statistics into a mix of two images' and keeps its normalised pattern;
off (p = 0) it passes the features through; it is never in a test graph nor an ``.nnp``.
"""
import json

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from helpers import TINY_TRAIN as FAST, function_names, nnp_text  # noqa: E402
from wbc_nnabla import augmentation, models, training  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig, TrainingError  # noqa: E402

pytestmark = pytest.mark.slow

N, C = 16, 4
MIX_FUNCTIONS = {"RandBeta", "Gather", "Sort"}      # what MixStyle adds; the ResNet has none


def _features(seed=0):
    """``(N, C, 5, 5)``: one spatial pattern per channel, each image with its own channel means and scales."""
    rng = np.random.RandomState(seed)
    pattern = rng.randn(1, C, 5, 5)
    pattern = (pattern - pattern.mean(axis=(2, 3), keepdims=True)) / pattern.std(axis=(2, 3), keepdims=True)
    mu, sigma = rng.uniform(-3, 3, (N, C, 1, 1)), rng.uniform(0.5, 4, (N, C, 1, 1))
    return (pattern * sigma + mu).astype(np.float32), mu[:, :, 0, 0], sigma[:, :, 0, 0], pattern


def test_off_passes_features_through():
    h, *_ = _features()
    y = augmentation.mixstyle(nn.Variable.from_numpy_array(h), 0.0, seed=3)
    y.forward()
    assert np.allclose(y.d, h, atol=1e-4)


def test_on_mixes_two_images_statistics_and_keeps_the_pattern():
    h, mu, sigma, pattern = _features()
    y = augmentation.mixstyle(nn.Variable.from_numpy_array(h), 1.0, seed=3)
    y.forward()
    out_mu, out_sigma = y.d.mean(axis=(2, 3)), y.d.std(axis=(2, 3))
    assert np.allclose((y.d - out_mu[:, :, None, None]) / out_sigma[:, :, None, None], pattern, atol=1e-3)
    # each image's statistics: lam * own + (1 - lam) * one other image's, the same lam and partner on every channel
    mixed = 0
    for i in range(N):
        fits = []
        for j in range(N):
            d = mu[i] - mu[j]
            lam = 1.0 if np.allclose(d, 0) else float(np.dot(out_mu[i] - mu[j], d) / np.dot(d, d))
            ok = (-1e-4 <= lam <= 1 + 1e-4 and np.allclose(out_mu[i], lam * mu[i] + (1 - lam) * mu[j], atol=1e-3)
                  and np.allclose(out_sigma[i], lam * sigma[i] + (1 - lam) * sigma[j], atol=1e-3))
            fits.append((ok, lam))
        assert any(ok for ok, _ in fits), f"image {i}: statistics are no mix of two images'"
        mixed += not any(ok and lam > 1 - 1e-3 for ok, lam in fits)
    assert mixed >= N // 4                      # Beta(0.1, 0.1) puts most lam near 0 or 1, not all near 1


def test_statistics_carry_no_gradient():
    """Detached statistics: dy/dh = sigma_mix / sigma per image and channel, nothing through mu, sigma."""
    h, *_ = _features()
    x = nn.Variable.from_numpy_array(h, need_grad=True)
    y = augmentation.mixstyle(x, 1.0, seed=3)
    r = np.random.RandomState(1).randn(*h.shape).astype(np.float32)
    loss = nn.functions.sum(y * nn.Variable.from_numpy_array(r))
    loss.forward()
    x.grad.zero()
    loss.backward()
    ratio = (y.d.std(axis=(2, 3)) / h.std(axis=(2, 3)))[:, :, None, None]     # sigma_mix / sigma
    assert not np.allclose(ratio, 1, atol=1e-2)
    assert np.allclose(x.g, r * ratio, rtol=1e-3, atol=1e-4)


def test_new_draws_each_forward_and_reproducible_by_seed():
    h, *_ = _features()
    a = augmentation.mixstyle(nn.Variable.from_numpy_array(h), 1.0, seed=11)
    b = augmentation.mixstyle(nn.Variable.from_numpy_array(h), 1.0, seed=11)
    a.forward(), b.forward()
    first = a.d.copy()
    assert np.array_equal(first, b.d)
    a.forward()
    assert not np.array_equal(a.d, first)


def test_only_in_training_graph_after_three_stages(tiny_model):
    models.clear_scope(training.SCOPE)
    on = training.build_graph("resnet18", 6, 4, 32, aug=Augmentation(mixstyle=0.5), aug_seed=0)
    off = training.build_graph("resnet18", 6, 4, 32, aug=Augmentation(), aug_seed=0)
    test = training.build_graph("resnet18", 6, 4, 32, test=True, aug=Augmentation(mixstyle=0.5))
    assert function_names(on.loss).count("RandBeta") == len(augmentation.MIXSTYLE_STAGES) == 3
    assert not MIX_FUNCTIONS & set(function_names(off.loss))
    assert not MIX_FUNCTIONS & set(function_names(test.losses))
    disabled = training.build_graph("resnet18", 6, 4, 32, aug=Augmentation(mixstyle=0.5, enabled=False))
    assert not MIX_FUNCTIONS & set(function_names(disabled.loss))


def test_mixstyle_training_exports_plain_model(tiny_dataset, tiny_model, tmp_path):
    aug = Augmentation(mixstyle=0.5)
    training.train(tiny_dataset, tmp_path / "ms", TrainConfig(epochs=1, augmentation=aug, **FAST))
    nntxt = nnp_text(tmp_path / "ms" / "model.nnp")
    assert "Convolution" in nntxt and not any(f'type: "{f}"' in nntxt for f in MIX_FUNCTIONS)
    saved = json.loads((tmp_path / "ms" / "config.json").read_text())["config"]["augmentation"]
    assert saved["mixstyle"] == 0.5


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_probability_outside_zero_one_is_refused(p):
    with pytest.raises(TrainingError, match="mixstyle"):
        TrainConfig(augmentation=Augmentation(mixstyle=p)).validate()
