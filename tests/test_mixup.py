"""Mixup in the training graph: ``TrainConfig.mixup`` (docs/training.md, "Mixup"; docs/research/cross_site_log.md).

Each augmented image is mixed with the image at the mirrored place of its batch, with a weight
drawn from Beta(alpha, alpha) at every forward, and its loss with the same weight; the test
graph (Training Error, Validation Error) and the ``.nnp`` have no mixup.
"""
import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from helpers import TINY_TRAIN as FAST, check_redrawn_and_seeded, check_training_loss_setting, nnp_text  # noqa: E402
from wbc_nnabla import augmentation, cli, models, training  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig  # noqa: E402

pytestmark = pytest.mark.slow


def _batch(n=8, seed=0):
    return np.random.RandomState(seed).rand(n, 3, 6, 6).astype(np.float32)


def _weights_of(x, y):
    """Per image, the ``lam`` that makes ``y_i = lam x_i + (1 - lam) x_(N-1-i)`` (least squares), and the residual."""
    d = (x - x[::-1]).reshape(len(x), -1)
    r = (y - x[::-1]).reshape(len(x), -1)
    lam = (d * r).sum(1) / np.maximum((d * d).sum(1), 1e-12)
    return lam, np.abs(r - lam[:, None] * d).max()


def test_each_image_is_mixed_with_its_mirrored_partner_by_the_drawn_weight():
    x = _batch()
    y, lam = augmentation.mixup(nn.Variable.from_numpy_array(x), 0.4, seed=5)
    y.forward()
    w = lam.d[:, 0]
    assert lam.shape == (8, 1) and np.all((w >= 0) & (w <= 1))
    np.testing.assert_allclose(y.d, w[:, None, None, None] * x + (1 - w[:, None, None, None]) * x[::-1], atol=1e-6)
    assert np.ptp(w) > 0.05                     # one weight per image, not one per batch


def test_new_weights_each_forward_and_reproducible_by_seed():
    check_redrawn_and_seeded(lambda v, seed: augmentation.mixup(v, 0.4, seed)[0], _batch())


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_weights_follow_beta_alpha_alpha(alpha):
    """Mean 1/2 and variance 1 / (4 (2 alpha + 1)) of Beta(alpha, alpha), over 20,000 draws."""
    _, lam = augmentation.mixup(nn.Variable.from_numpy_array(np.zeros((20000, 1, 1, 1), np.float32)), alpha, seed=1)
    lam.forward()
    assert lam.d.mean() == pytest.approx(0.5, abs=0.01)
    assert lam.d.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


def test_training_graph_mixes_images_and_losses_with_the_same_weights():
    """With the other augmentation off, the graph's input is the mixup of its batch, and each image's
    loss is ``lam CE(own label) + (1 - lam) CE(partner's label)`` of its logits."""
    models.clear_scope(training.SCOPE)
    g = training.build_graph("resnet18", 6, 4, 32, aug=Augmentation(enabled=False), aug_seed=2, mixup=0.4)
    x = np.random.RandomState(3).rand(4, 3, 32, 32).astype(np.float32)
    y = np.array([0, 5, 2, 3])
    g.x.d, g.t.d = x, y[:, None]
    g.loss.forward()
    lam, residual = _weights_of(x, g.x_aug.d)
    assert residual < 1e-5 and np.all((lam > -1e-6) & (lam < 1 + 1e-6))
    z = g.logits.d
    log_p = z - z.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    own, partner = -log_p[np.arange(4), y], -log_p[np.arange(4), y[::-1]]
    np.testing.assert_allclose(g.losses.d[:, 0], lam * own + (1 - lam) * partner, rtol=1e-4)
    test = training.build_graph("resnet18", 6, 4, 32, test=True, mixup=0.4)
    test.x.d, test.t.d = x, y[:, None]
    test.losses.forward()
    np.testing.assert_array_equal(test.x_aug.d, x)                  # no mixup where errors are measured


@pytest.mark.parametrize("alpha", [-0.1, float("nan"), float("inf")])
def test_mixup_out_of_range_is_refused(alpha, tiny_dataset, tmp_path):
    with pytest.raises(training.TrainingError, match=r"mixup must be a finite number >= 0"):
        training.train(tiny_dataset, tmp_path / "run", TrainConfig(epochs=1, mixup=alpha, **FAST))
    assert not (tmp_path / "run").exists()


def test_cli_flag_reaches_the_config(monkeypatch):
    given = []

    def train(dataset, out, config, resume=False):
        given.append(config)
        return {"best": {"epoch": 1, "validation_error": 0.5}}

    monkeypatch.setattr(training, "train", train)
    assert cli.main(["train", "D", "O", "--set", "mixup=0.2"]) == 0
    assert cli.main(["train", "D", "O"]) == 0
    assert [c.mixup for c in given] == [0.2, 0.0]          # 0: the paper's training


def test_mixup_changes_training_only_and_is_guarded_on_resume(tiny_model, tiny_dataset, tmp_path):
    """The mixup run is recorded, trains other weights than the same seed without it, exports no Beta draw
    or mirror, and its Validation Error is the plain cross-entropy (recomputed from ``predict``); resume
    refuses another value, and a config.json written before the setting resumes as 0."""
    mixed = check_training_loss_setting(tiny_dataset, tiny_model, tmp_path, "mixup", 0.4, 0.2)
    text = nnp_text(mixed / "model.nnp")
    assert "Convolution" in text and 'type: "RandBeta"' not in text and 'type: "Flip"' not in text
