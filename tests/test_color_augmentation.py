"""Colour (stain/camera) augmentation of the training graph: ``augmentation.color_augment`` (docs/training.md).

Each term alone on a constant-colour batch follows its documented range; all
terms off leave the training graph and the trained parameters as NNC's.
"""
import json

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from helpers import TINY_TRAIN as FAST, function_names, nnp_text  # noqa: E402
from wbc_nnabla import augmentation, models, training  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig  # noqa: E402

pytestmark = pytest.mark.slow

N = 64
RGB = np.array([0.6, 0.35, 0.8], np.float32)
COLOR_FUNCTIONS = {"Rand", "Log", "Exp"}        # what the colour step adds; ResNet and ImageAugmentation have none


def _constant_batch():
    return nn.Variable.from_numpy_array(np.broadcast_to(RGB[None, :, None, None], (N, 3, 4, 4)).copy())


def _colour(seed=5, **terms):
    x = _constant_batch()
    y = augmentation.color_augment(x, Augmentation(**terms), seed=seed)
    y.forward()
    out = y.d
    assert out.shape == x.shape and np.all((out >= 0) & (out <= 1))
    assert np.allclose(out, out[:, :, :1, :1])                          # one colour per image
    return out[:, :, 0, 0]                                              # (N, 3)


def _od(v):
    return -np.log(v + augmentation.OD_EPS)


def test_od_scale_per_image_and_channel():
    out = _colour(od_scale=0.3)
    s = _od(out) / _od(RGB)
    assert np.all((s >= 0.7 - 1e-4) & (s <= 1.3 + 1e-4))
    assert s[:, 0].std() > 0.05 and not np.allclose(s[:, 0], s[:, 1])   # differs across images and channels


def test_od_shift_per_image_and_channel():
    b = _od(_colour(od_shift=0.2)) - _od(RGB)
    assert np.all(np.abs(b) <= 0.2 + 1e-4)
    assert b[:, 0].std() > 0.03 and not np.allclose(b[:, 0], b[:, 2])


def test_saturation_factor_around_grey():
    out = _colour(saturation=0.5)
    grey = RGB.mean()
    f = (out - grey) / (RGB - grey)
    assert np.allclose(f, f[:, :1], atol=1e-4)                          # one factor per image
    np.testing.assert_allclose(out.mean(axis=1), grey, atol=1e-5)       # grey kept (no clipping here)
    assert np.all((f[:, 0] >= 0.5 - 1e-4) & (f[:, 0] <= 1.5 + 1e-4)) and f[:, 0].std() > 0.1


def test_gamma_per_image():
    out = _colour(log_gamma=0.4)
    gamma = np.ones_like(out)
    for _ in range(30):                                 # solve out = (x + eps) ** g - eps ** g for g
        gamma = np.log(out + augmentation.OD_EPS ** gamma) / np.log(RGB + augmentation.OD_EPS)
    assert np.allclose(gamma, gamma[:, :1], rtol=1e-3)                  # one gamma per image
    lg = np.log(gamma[:, 0])
    assert np.all(np.abs(lg) <= 0.4 + 1e-2) and lg.std() > 0.05


def test_clipped_to_unit_range_and_reproducible():
    x = nn.Variable.from_numpy_array(np.random.RandomState(0).rand(8, 3, 8, 8).astype(np.float32))
    aug = Augmentation(od_scale=0.5, od_shift=0.5, saturation=1.0, log_gamma=0.7)
    a, b = (augmentation.color_augment(x, aug, seed=3) for _ in range(2))
    a.forward(), b.forward()
    assert np.all((a.d >= 0) & (a.d <= 1)) and np.array_equal(a.d, b.d)
    first = a.d.copy()
    a.forward()
    assert not np.array_equal(a.d, first)                               # new draws every iteration


def test_colour_step_only_when_on_and_only_in_training_graph(tiny_model):
    models.clear_scope(training.SCOPE)
    off = training.build_graph("resnet18", 6, 2, 32, aug=Augmentation(), aug_seed=0)
    on = training.build_graph("resnet18", 6, 2, 32, aug=Augmentation(od_scale=0.1, od_shift=0.1, saturation=0.2,
                                                                      log_gamma=0.1), aug_seed=0)
    test = training.build_graph("resnet18", 6, 2, 32, test=True)
    assert not COLOR_FUNCTIONS & set(function_names(off.loss))
    assert COLOR_FUNCTIONS <= set(function_names(on.loss)) and "ImageAugmentation" in function_names(on.loss)
    assert not COLOR_FUNCTIONS & set(function_names(test.losses))


def test_colour_training_exports_plain_model_and_off_is_bit_identical(tiny_dataset, tiny_model, tmp_path):
    """Default (off) training equals the session model exactly; a colour run's model.nnp has no colour step."""
    training.train(tiny_dataset, tmp_path / "off", TrainConfig(epochs=2, **FAST))
    off = {k: v.d.copy() for k, v in training.parameters().items()}
    assert (tmp_path / "off" / "model.h5").read_bytes() == (tiny_model / "model.h5").read_bytes()
    aug = Augmentation(od_scale=0.2, od_shift=0.1, saturation=0.3, log_gamma=0.2)
    training.train(tiny_dataset, tmp_path / "on", TrainConfig(epochs=1, augmentation=aug, **FAST))
    on = {k: v.d for k, v in training.parameters().items()}
    assert not all(np.array_equal(off[k], on[k]) for k in off)
    nntxt = nnp_text(tmp_path / "on" / "model.nnp")
    assert "Convolution" in nntxt and not any(f'type: "{f}"' in nntxt for f in COLOR_FUNCTIONS | {"ImageAugmentation"})
    saved = json.loads((tmp_path / "on" / "config.json").read_text())["config"]["augmentation"]
    assert saved["od_scale"] == 0.2 and saved["log_gamma"] == 0.2


def test_resume_of_a_run_saved_before_the_colour_terms(tiny_dataset, tiny_model, tmp_path):
    """A config.json without the colour (or blur, RandConv, MixStyle) fields had them off: such a run resumes with the defaults."""
    import shutil
    out = tmp_path / "old"
    shutil.copytree(tiny_model, out)
    cfg = json.loads((out / "config.json").read_text())
    for k in ("od_scale", "od_shift", "saturation", "log_gamma", "hue", "color_prob", "blur", "randconv", "mixstyle"):
        del cfg["config"]["augmentation"][k]
    (out / "config.json").write_text(json.dumps(cfg))
    s = training.train(tiny_dataset, out, TrainConfig(epochs=3, **dict(FAST, max_iterations=1)), resume=True)
    assert len(s["history"]) == 3


def test_hue_turns_colour_about_grey_per_image():
    out = _colour(hue=30)
    np.testing.assert_allclose(out.mean(axis=1), RGB.mean(), atol=1e-5)        # grey kept (no clipping here)
    chroma0, chroma = RGB - RGB.mean(), out - out.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(chroma, axis=1), np.linalg.norm(chroma0), rtol=1e-4)
    axis = np.ones(3) / np.sqrt(3)
    turn = np.degrees(np.arctan2(np.cross(chroma0, chroma) @ axis, chroma @ chroma0))
    assert np.all(np.abs(turn) <= 30 + 1e-3) and turn.std() > 5             # in [-30, 30] degrees, varied
    assert turn.min() < -15 and turn.max() > 15


def test_hue_is_a_colour_term():
    assert Augmentation(hue=10).color and not Augmentation().color


def test_color_prob_keeps_that_share_of_images_unchanged():
    """``color_prob`` p: each image gets the colour terms with probability p, else passes as it came."""
    x = nn.Variable.from_numpy_array(np.broadcast_to(RGB[None, :, None, None], (400, 3, 2, 2)).copy())
    y = augmentation.color_augment(x, Augmentation(od_scale=0.4, hue=30, color_prob=0.25), seed=7)
    shares = []
    for _ in range(3):                                                  # a new draw of who is coloured each forward
        y.forward()
        kept = np.all(np.abs(y.d - x.d) < 1e-6, axis=(1, 2, 3))
        shares.append(kept.mean())
        assert np.all(np.abs(y.d[~kept] - x.d[~kept]).max(axis=(1, 2)) > 1e-3)
    assert all(0.65 < s < 0.85 for s in shares) and len(set(shares)) > 1    # binomial(400, 0.75): sd 0.02
    full = augmentation.color_augment(x, Augmentation(od_scale=0.4, hue=30), seed=7)
    full.forward()
    assert not np.any(np.all(np.abs(full.d - x.d) < 1e-6, axis=(1, 2, 3)))   # default 1: every image


def test_color_prob_outside_zero_one_is_refused():
    from wbc_nnabla.recipe import TrainingError
    for p in (-0.1, 1.5):
        with pytest.raises(TrainingError, match="color_prob"):
            TrainConfig(augmentation=Augmentation(hue=10, color_prob=p)).validate()
    TrainConfig(augmentation=Augmentation(hue=10, color_prob=0.5)).validate()


def test_augmentation_names_stay_importable_from_training():
    """The training graph's augmentation moved to its own module after 0.1.0; training.NAME keeps working."""
    for name in ("augment", "color_augment", "blur_augment", "mixstyle", "mixstyle_hook", "gaussian_kernel", "OD_EPS",
                 "BLUR_KERNEL", "BLUR_SIGMA", "MIXSTYLE_STAGES"):
        assert getattr(training, name) is getattr(augmentation, name), name
