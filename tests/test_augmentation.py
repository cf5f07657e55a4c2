"""The training graph's augmentation: one contract every term keeps, then each term's own formula
(``wbc_nnabla.augmentation``; docs/training.md, "ImageAugmentation"; paper section II.4).

The terms: each of ``augmentation.TERMS`` (another lab's look by Fourier amplitude mixing, the colour
terms, blur, RandConv, the background fill, NNC's ImageAugmentation), MixStyle (inside the network)
and mixup (on the input and the loss). The contract, for every term:

- off by default, in the library and on the command line: the default training graph is exactly
  NNC's ImageAugmentation before the network (ImageAugmentation itself is always on);
- its out-of-range settings are refused by name before anything is written;
- its random draws are renewed at each forward and a new graph with the same seed draws them again
  (what makes a resumed run exact); the background fill draws nothing;
- in training graphs only: never in a test graph nor in the exported ``.nnp``;
- its own random stream: turning it on leaves every other term's draws as they were;
- recorded in ``config.json`` and guarded on resume (a run saved before the term resumes with it
  off: ``test_training.py::test_a_run_saved_before_later_settings_resumes_with_them_off``).

The formulas are checked with NumPy on small batches; one tiny CLI run with every term on serves
the recording, export and resume checks.
"""
import dataclasses
import json
import re
import shutil
from typing import Callable, Optional

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

nn = pytest.importorskip("nnabla")

from helpers import TINY_TRAIN, check_redrawn_and_seeded, file_hashes, function_names, nnp_text  # noqa: E402
from wbc_nnabla import augmentation, cli, fileio, loader, modelfile, models, predictor, settings, training  # noqa: E402
from wbc_nnabla.cli.train import train_settings  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig, TrainingError  # noqa: E402

SIDE = 16                                                       # the side of the contract's images (pixels)


def _images(n=64, seed=0, side=12):
    """``(n, 3, side, side)`` random [0, 1] images (sharp: neighbouring pixels independent)."""
    return np.random.RandomState(seed).rand(n, 3, side, side).astype(np.float32)


def _smooth(n, seed, lo, hi, side=32):
    """``(n, 3, side, side)`` images in [lo, hi]: a random mean colour plus a random low-frequency pattern."""
    rs = np.random.RandomState(seed)
    g = np.linspace(0, 2 * np.pi, side, endpoint=False)
    wave = np.sin(g[None, None, :, None] + rs.rand(n, 3, 1, 1) * 6) * np.cos(g[None, None, None, :])
    x = rs.rand(n, 3, 1, 1) * 0.5 + 0.25 + 0.2 * wave + 0.05 * rs.rand(n, 3, side, side)
    return (lo + (hi - lo) * x).astype(np.float32)


def _bank(side=SIDE):
    """A style bank (:func:`augmentation.low_band_amplitudes`) of 8 smooth images of ``side`` pixels."""
    return augmentation.low_band_amplitudes(_smooth(8, 4, 0.0, 1.0, side))


# ----------------------------------------------------------------------------- the terms under contract


@dataclasses.dataclass(frozen=True)
class Case:
    """One term under the contract.

    on: the settings that turn it on (``Augmentation`` fields; ``mixup`` is a ``TrainConfig`` key).
    markers: nnabla function types it adds to a graph (none of them is in the default training graph).
    counts: ``{function type: how many}`` of them in a training graph with it on.
    bad: ``(setting, value)`` out of range, one or more for each of its ranged settings.
    draw: ``(variable, seed) -> output``, its random step on a [0, 1] batch; None: it draws nothing.
    where: ``input`` (before the network: a test graph given ``aug`` would apply it, as ``finetune``
        does), ``network`` or ``loss`` (a test graph ignores it even when given).
    """
    name: str
    on: dict
    markers: frozenset
    counts: dict
    bad: tuple
    draw: Optional[Callable]
    where: str = "input"

    @property
    def aug(self) -> Augmentation:
        return Augmentation(**{k: v for k, v in self.on.items() if k != "mixup"})

    def config(self, **extra) -> TrainConfig:
        style = dict(style_cells=fileio.demo_data()) if self.on.get("fourier") else {}
        return TrainConfig(augmentation=self.aug, mixup=self.on.get("mixup", 0.0), **style, **extra)


def _term(name):
    return next(t for t in augmentation.TERMS if t.name == name)


def _term_draw(name):
    """The draw of term ``name`` of :data:`augmentation.TERMS` with its case's settings (styles: a bank)."""
    return lambda v, seed: _term(name)(v, CASES[name].aug, seed, _bank())


COLOUR_ON = dict(od_scale=0.5, od_shift=0.5, saturation=1.0, log_gamma=0.7, hue=30.0)
CASES = {c.name: c for c in (
    Case("fourier", dict(fourier=0.5), frozenset({"Embed", "Randint"}), {"Randint": 1},
         (("fourier", -0.1), ("fourier", 1.5)), _term_draw("fourier")),
    Case("colour", COLOUR_ON, frozenset({"Log", "Exp", "Cos", "Sin"}), {"Log": 2},  # Log: OD, gamma
         (("od_scale", -0.1), ("od_scale", 1.5), ("od_shift", -0.1), ("saturation", 1.5),
          ("log_gamma", -0.1), ("hue", -1.0), ("hue", 200.0), ("color_prob", -0.1),
          ("color_prob", 1.5)), _term_draw("colour")),
    Case("blur", dict(blur=1.0), frozenset({"DepthwiseConvolution", "Pad"}), {"DepthwiseConvolution": 1},
         (("blur", -0.1), ("blur", 1.5)), _term_draw("blur")),
    Case("randconv", dict(randconv=0.5), frozenset({"Randn", "Floor"}), {"Randn": 1},
         (("randconv", -0.1), ("randconv", 1.5)), _term_draw("randconv")),
    Case("fill", dict(fill="background"), frozenset({"Sort"}), {"Sort": 1},
         (("fill", "mirror"),), None),
    Case("image_augmentation", {}, frozenset({"ImageAugmentation"}), {"ImageAugmentation": 1},
         (("contrast", 0.5), ("contrast_center", 1.5), ("brightness", -0.1),
          ("min_scale", 0.0), ("max_scale", 0.5),
          ("angle", 181.0)), _term_draw("image_augmentation")),
    Case("mixstyle", dict(mixstyle=0.5), frozenset({"RandBeta", "Gather", "Sort"}),
         {"RandBeta": len(augmentation.MIXSTYLE_STAGES)}, (("mixstyle", -0.1), ("mixstyle", 1.5)),
         lambda v, seed: augmentation.mixstyle(v, 1.0, seed=seed), "network"),
    Case("mixup", dict(mixup=0.4), frozenset({"RandBeta", "Flip"}), {"RandBeta": 1, "Flip": 2},
         (("mixup", -0.1), ("mixup", float("nan")),
          ("mixup", float("inf"))),
         lambda v, seed: augmentation.mixup(v, 0.4, seed)[0], "loss"),
)}
OPTIONAL = [n for n in CASES if n != "image_augmentation"]     # every term but NNC's, which is always on


def test_the_cases_are_every_term_and_name_every_ranged_setting():
    assert [t.name for t in augmentation.TERMS] + ["mixstyle", "mixup"] == list(CASES)
    for term in augmentation.TERMS:
        assert {f for f, _ in CASES[term.name].bad} == set(term.fields) - {"flip_lr", "flip_ud"}, term.name


def _graph(case=None, test=False, seed=0, **aug):
    """The function types of a 32-px ResNet-18 graph: training (``case`` on, or the default) or test."""
    kw = dict(case.on) if case else {}
    kw.update(aug)
    mixup = kw.pop("mixup", 0.0)
    if test and (case is None or case.where == "input"):
        given = None                                            # training's test graph
    else:
        given = Augmentation(**kw)
    styles = augmentation.low_band_amplitudes(_smooth(4, 4, 0.0, 1.0)) if kw.get("fourier") else None
    models.clear_scope(training.SCOPE)
    return training.build_graph("resnet18", 6, 4, 32, test=test, aug=given, aug_seed=seed, styles=styles,
                                mixup=mixup).loss


def _draws(loss) -> list:
    """``(function type, seed)`` of every random function of the graph ending at ``loss``, sorted."""
    out = []
    loss.visit(lambda f: out.append((f.info.type_name, f.info.args["seed"])) if "seed" in f.info.args else None)
    return sorted(out)


# ----------------------------------------------------------------------------- the contract


def test_the_default_graph_is_exactly_nncs_image_augmentation():
    """Default: NNC's ImageAugmentation, then the network a test graph has too (BatchNorm and all)."""
    assert augmentation.active_terms(Augmentation()) == ["image_augmentation"]
    train, test = function_names(_graph()), function_names(_graph(test=True))
    assert train[0] == "ImageAugmentation" and train[1:] == test and "BatchNormalization" in test
    assert TrainConfig().mixup == 0.0


@pytest.mark.parametrize("name", OPTIONAL)
def test_off_by_default(name):
    case = CASES[name]
    default = set(function_names(_graph()))
    assert not case.markers & default
    given = train_settings(cli.build_parser().parse_args(["train", "d", "o"]))
    for cfg in (TrainConfig(), given):                          # the library's default and the command's
        assert all(getattr(cfg.augmentation, k) == getattr(Augmentation(), k) for k in case.on if k != "mixup")
        assert cfg.mixup == 0.0
    if name != "mixup":                                         # mixup is a loss setting, not an Augmentation term
        assert name in augmentation.active_terms(case.aug) and name not in augmentation.active_terms(Augmentation())


def _ruled(key) -> bool:
    """Whether the ``Augmentation`` field ``key`` declares a range (not choices, nor a check across fields)."""
    f = {f.name: f for f in dataclasses.fields(Augmentation)}.get(key)
    return f is not None and settings.declared(f).rule is not None


@pytest.mark.parametrize("name", list(CASES))
def test_out_of_range_settings_are_refused_by_name_before_anything_is_written(name, tiny_dataset, tmp_path):
    case = CASES[name]
    case.config().validate()                                    # its on-settings are in range
    for key, value in case.bad:
        bad = dataclasses.replace(case, on={**case.on, key: value})
        named = rf"^{key} must be .*, got {re.escape(str(value))}$|^{key} '{value}': choose one of"
        with pytest.raises(TrainingError, match=named):          # the one message form of settings.check
            bad.config().validate()
        if name in [t.name for t in augmentation.TERMS] and _ruled(key):   # the term's own check of its ranges
            with pytest.raises(TrainingError, match=named):
                _term(name).validate(bad.aug)
        with pytest.raises(TrainingError, match=key):
            training.train(tiny_dataset, tmp_path / "o", bad.config(epochs=1, **TINY_TRAIN))
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", list(CASES))
def test_redrawn_at_each_forward_and_reproducible_from_the_seed(name):
    case = CASES[name]
    x = _smooth(8, 5, 0.2, 0.7, SIDE)
    if case.draw is not None:
        check_redrawn_and_seeded(case.draw, x)
        return
    y = _term(name)(nn.Variable.from_numpy_array(x), case.aug, 9)     # draws nothing: the same at each forward
    y.forward()
    first = y.d.copy()
    y.forward()
    np.testing.assert_array_equal(first, y.d)
    assert not _draws(y)


@pytest.mark.parametrize("name", list(CASES))
def test_in_training_graphs_only(name):
    case = CASES[name]
    on = function_names(_graph(case))
    assert case.markers <= set(on)
    assert {f: on.count(f) for f in case.counts} == case.counts
    assert not case.markers & set(function_names(_graph(case, test=True)))
    if case.where != "loss":                                    # Augmentation.enabled False: no term at all
        assert not case.markers & set(function_names(_graph(case, enabled=False)))


def test_each_term_draws_from_its_own_stream():
    """The random functions of a graph with every term on are those of the default graph plus those each
    term adds alone, seed for seed: turning a term on changes no other term's draws. Another seed draws anew."""
    default = _draws(_graph())
    own = {name: sorted(set(_draws(_graph(case))) - set(default)) for name, case in CASES.items()}
    everything = dict(kw for case in CASES.values() for kw in case.on.items())
    all_on = _draws(_graph(**everything))
    assert all(own[name] for name in CASES if CASES[name].draw and name != "image_augmentation")
    assert all_on == sorted(default + [d for name in CASES for d in own[name]])
    seeds = [s for _, s in all_on]
    assert len(set(seeds)) == len(seeds)                        # no two random functions share a stream
    assert not set(seeds) & {s for _, s in _draws(_graph(seed=1, **everything))}


# ----------------------------------------------------------------------------- one run with every term on


EVERY_TERM = [f"--set={k}={v}" for case in CASES.values() for k, v in case.on.items()]


@pytest.fixture(scope="module")
def every_term_run(tiny_dataset, tmp_path_factory):
    """A tiny CLI training (1 epoch, 2 iterations, 32 px) with every term on, the demo cells as style cells."""
    out = tmp_path_factory.mktemp("every_term") / "run"
    styles = fileio.demo_data()
    before = file_hashes(styles)
    assert cli.main(["train", str(tiny_dataset), str(out), *_flags(), *EVERY_TERM,
                     f"--set=style_cells={styles}"]) == 0
    assert file_hashes(styles) == before                        # the style cells are only read
    return out


def _flags(epochs=1):
    return ["--epochs", str(epochs), "--size", "32", "--batch-size", "4", "--pretrained", "none", "--no-progress",
            "--train-eval-limit", "4", "--set", "max_iterations=2"]


def test_every_term_is_recorded_in_config_json(every_term_run):
    rec = json.loads((every_term_run / "config.json").read_text())["config"]
    for case in CASES.values():
        for key, value in case.on.items():
            assert (rec[key] if key == "mixup" else rec["augmentation"][key]) == value, key
    n = len(fileio.read_cells(fileio.demo_data()))
    assert rec["style_cells"]["n_cells"] == min(n, loader.MAX_STYLE_CELLS)
    assert rec["style_cells"]["half_band"] == augmentation.fourier_half_band(32)
    assert rec["style_cells"]["source"] == str(fileio.demo_data().resolve())


def test_no_term_is_in_the_exported_model_and_validation_is_plain_cross_entropy(every_term_run, tiny_dataset):
    """The ``.nnp`` has none of any term's functions; its Validation Error, recomputed from ``predict``, is
    the plain cross-entropy (not mixup's mixed loss)."""
    from helpers import cross_entropy_of
    text = nnp_text(every_term_run / "model.nnp")
    assert "Convolution" in text
    assert not [f for case in CASES.values() for f in case.markers if f'type: "{f}"' in text]
    best = json.loads((every_term_run / "config.json").read_text())["best"]
    df = predictor.predict(every_term_run / "model.nnp", tiny_dataset / "valid.csv", backend="nnabla",
                           progress=False)
    assert cross_entropy_of(df) == pytest.approx(best["validation_error"], rel=1e-4)


@pytest.mark.parametrize("name", list(CASES))
def test_resume_with_another_setting_of_a_term_is_refused(name, every_term_run, tiny_dataset):
    case = CASES[name]
    key, value = next(iter(case.on.items())) if case.on else ("angle", Augmentation().angle)
    other = "edge" if isinstance(value, str) else value / 2
    refused = "mixup" if key == "mixup" else "augmentation"
    with pytest.raises(TrainingError, match=f"cannot resume with a different {refused}"):
        cli_resume(every_term_run, tiny_dataset, f"--set={key}={other}")
    assert json.loads((every_term_run / "checkpoint.json").read_text())["epoch"] == 1


def cli_resume(run, dataset, *extra, epochs=2):
    """``train --resume`` of ``run`` with every term's settings, then ``extra``, through the library (errors raise)."""
    args = cli.build_parser().parse_args(["train", str(dataset), str(run), *_flags(epochs), *EVERY_TERM,
                                          f"--set=style_cells={fileio.demo_data()}", *extra, "--resume"])
    return training.train(dataset, run, train_settings(args), resume=True)


def test_the_same_settings_resume_and_train_other_weights_than_none(every_term_run, tiny_dataset, tiny_model,
                                                                     tmp_path):
    """Other style cells are refused (the run is kept); the same resume to epoch 2, whose weights differ
    from the same seed's without any term (the session's tiny model)."""
    few = tmp_path / "few.csv"
    pd.DataFrame({"path": fileio.read_cells(fileio.demo_data())["path"][:20]}).to_csv(few, index=False)
    run = tmp_path / "run"
    shutil.copytree(every_term_run, run)
    with pytest.raises(TrainingError, match="style_cells"):
        cli_resume(run, tiny_dataset, f"--set=style_cells={few}")
    assert json.loads((run / "checkpoint.json").read_text())["epoch"] == 1
    assert len(cli_resume(run, tiny_dataset)["history"]) == 2
    a, b = (modelfile.load_parameters(d / "checkpoints" / "epoch0002" / "params.h5") for d in (run, tiny_model))
    assert set(a) == set(b) and any(not np.allclose(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- NNC's ImageAugmentation


def test_image_augmentation_brightness_is_additive_and_contrast_turns_around_its_centre():
    """Brightness is additive on [0,1] pixels; contrast scales around contrast_center (docs/training.md)."""
    rng = np.random.RandomState(0)
    x = nn.Variable.from_numpy_array(rng.rand(8, 3, 16, 16).astype(np.float32))
    none = dict(min_scale=1.0, max_scale=1.0, angle=0.0, flip_lr=False, flip_ud=False)
    y = augmentation.augment(x, Augmentation(brightness=0.2, contrast=1.0, **none), seed=3)
    y.forward()
    shift = (y.d - x.d).reshape(8, -1)
    assert np.allclose(shift, shift[:, :1], atol=1e-5)                  # one shift per image
    assert np.all(np.abs(shift[:, 0]) <= 0.2 + 1e-6) and shift[:, 0].std() > 0.01
    y = augmentation.augment(x, Augmentation(brightness=0.0, contrast=1.5, contrast_center=0.5, **none), 3)
    y.forward()
    d_in, d_out = (x.d - 0.5).reshape(8, -1), (y.d - 0.5).reshape(8, -1)
    factor = np.array([np.median(o[np.abs(i) > 0.05] / i[np.abs(i) > 0.05]) for i, o in zip(d_in, d_out)])
    np.testing.assert_allclose(d_out, d_in * factor[:, None], atol=1e-4)    # one factor per image
    assert np.all((factor >= 1 / 1.5 - 1e-4) & (factor <= 1.5 + 1e-4)) and factor.std() > 0.01


def test_augmentation_names_stay_importable_from_training():
    """The training graph's augmentation moved to its own module after 0.1.0; training.NAME keeps working."""
    for name in ("augment", "color_augment", "blur_augment", "mixstyle", "mixstyle_hook", "gaussian_kernel", "OD_EPS",
                 "BLUR_KERNEL", "BLUR_SIGMA", "MIXSTYLE_STAGES"):
        assert getattr(training, name) is getattr(augmentation, name), name


# ----------------------------------------------------------------------------- colour


N_COLOUR = 64
RGB = np.array([0.6, 0.35, 0.8], np.float32)


def _colour(seed=5, **terms):
    """The colour step of ``Augmentation(**terms)`` on a constant-colour batch: each image's colour ``(N, 3)``."""
    x = nn.Variable.from_numpy_array(np.broadcast_to(RGB[None, :, None, None], (N_COLOUR, 3, 4, 4)).copy())
    y = augmentation.color_augment(x, Augmentation(**terms), seed=seed)
    y.forward()
    out = y.d
    assert out.shape == x.shape and np.all((out >= 0) & (out <= 1))
    assert np.allclose(out, out[:, :, :1, :1])                          # one colour per image
    return out[:, :, 0, 0]


def _od(v):
    return -np.log(v + augmentation.OD_EPS)


def test_colour_od_scale_per_image_and_channel():
    s = _od(_colour(od_scale=0.3)) / _od(RGB)
    assert np.all((s >= 0.7 - 1e-4) & (s <= 1.3 + 1e-4))
    assert s[:, 0].std() > 0.05 and not np.allclose(s[:, 0], s[:, 1])   # differs across images and channels


def test_colour_od_shift_per_image_and_channel():
    b = _od(_colour(od_shift=0.2)) - _od(RGB)
    assert np.all(np.abs(b) <= 0.2 + 1e-4)
    assert b[:, 0].std() > 0.03 and not np.allclose(b[:, 0], b[:, 2])


def test_colour_saturation_factor_around_grey():
    out = _colour(saturation=0.5)
    grey = RGB.mean()
    f = (out - grey) / (RGB - grey)
    assert np.allclose(f, f[:, :1], atol=1e-4)                          # one factor per image
    np.testing.assert_allclose(out.mean(axis=1), grey, atol=1e-5)       # grey kept (no clipping here)
    assert np.all((f[:, 0] >= 0.5 - 1e-4) & (f[:, 0] <= 1.5 + 1e-4)) and f[:, 0].std() > 0.1


def test_colour_gamma_per_image():
    out = _colour(log_gamma=0.4)
    gamma = np.ones_like(out)
    for _ in range(30):                                 # solve out = (x + eps) ** g - eps ** g for g
        gamma = np.log(out + augmentation.OD_EPS ** gamma) / np.log(RGB + augmentation.OD_EPS)
    assert np.allclose(gamma, gamma[:, :1], rtol=1e-3)                  # one gamma per image
    lg = np.log(gamma[:, 0])
    assert np.all(np.abs(lg) <= 0.4 + 1e-2) and lg.std() > 0.05


def test_colour_hue_turns_colour_about_grey_per_image():
    out = _colour(hue=30)
    np.testing.assert_allclose(out.mean(axis=1), RGB.mean(), atol=1e-5)        # grey kept (no clipping here)
    chroma0, chroma = RGB - RGB.mean(), out - out.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(chroma, axis=1), np.linalg.norm(chroma0), rtol=1e-4)
    axis = np.ones(3) / np.sqrt(3)
    turn = np.degrees(np.arctan2(np.cross(chroma0, chroma) @ axis, chroma @ chroma0))
    assert np.all(np.abs(turn) <= 30 + 1e-3) and turn.std() > 5             # in [-30, 30] degrees, varied
    assert turn.min() < -15 and turn.max() > 15
    assert Augmentation(hue=10).color and not Augmentation().color          # hue alone is a colour term


def test_colour_clipped_to_unit_range():
    x = nn.Variable.from_numpy_array(_images(8, side=8))
    y = augmentation.color_augment(x, Augmentation(od_scale=0.5, od_shift=0.5, saturation=1.0, log_gamma=0.7), 3)
    y.forward()
    assert np.all((y.d >= 0) & (y.d <= 1))


def test_colour_color_prob_keeps_that_share_of_images_unchanged():
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
    TrainConfig(augmentation=Augmentation(hue=10, color_prob=0.5)).validate()


# ----------------------------------------------------------------------------- blur


def _blur_weights(x, out):
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


def test_blur_kernel_is_a_normalised_gaussian_of_sigma_one_pixel():
    g = augmentation.gaussian_kernel()
    assert g.shape == (augmentation.BLUR_KERNEL,) * 2 == (5, 5)
    assert g.sum() == pytest.approx(1.0) and g[2, 2] == g.max()
    np.testing.assert_allclose(g[2, 1] / g[2, 2], np.exp(-0.5 / augmentation.BLUR_SIGMA ** 2), rtol=1e-6)


@pytest.mark.parametrize("weight", [1.0, 0.4])
def test_blur_mixes_each_image_with_its_gaussian_blur_by_a_weight_in_range(weight):
    x = _images(200)
    w, residual = _blur_weights(x, _blur(x, weight))
    assert residual < 1e-5                                   # exactly x + w (G * x - x), one w per image
    assert w.min() >= -1e-5 and w.max() <= weight + 1e-5
    assert w.min() < 0.1 * weight and w.max() > 0.9 * weight  # uniform over the whole documented range
    assert abs(w.mean() - weight / 2) < 0.1 * weight


def test_blur_smooths_and_keeps_a_flat_image():
    x = _images(32)
    out = _blur(x, 1.0)
    neighbour = lambda a: np.abs(np.diff(a, axis=-1)).mean()   # noqa: E731
    assert neighbour(out) < neighbour(x)
    flat = np.full((4, 3, 12, 12), 0.3, np.float32)
    np.testing.assert_allclose(_blur(flat, 1.0), flat, atol=1e-6)   # mirrored borders: no dark frame


# ----------------------------------------------------------------------------- RandConv


def _randconv(x, p, seed=5):
    y = augmentation.randconv_augment(nn.Variable.from_numpy_array(x), p, seed=seed)
    y.forward()
    return y.d.copy()


def test_randconv_kernel_is_a_centred_square_of_a_documented_side_with_kaiming_weights():
    k = augmentation.randconv_kernels(400, seed=3)
    k.forward()
    kernels = k.d.reshape(400, 3, 3, 7, 7)
    inside = np.any(kernels != 0, axis=(1, 2))                      # (n, 7, 7): the support of each image's kernel
    sides = inside.sum(axis=(1, 2)) ** 0.5
    assert set(sides) == set(float(k) for k in augmentation.RANDCONV_SIDES)   # every side drawn, no other
    for support, k in zip(inside, sides.astype(int)):
        lo = 3 - k // 2
        assert support[lo:lo + k, lo:lo + k].all()                  # exactly the centred k x k square
    for k in augmentation.RANDCONV_SIDES:
        w = kernels[sides == k][:, :, :, 3 - k // 2:3 + k // 2 + 1, 3 - k // 2:3 + k // 2 + 1]
        assert np.std(w) == pytest.approx(1.0 / np.sqrt(3.0 * k * k), rel=0.1)
        assert abs(np.mean(w)) < 0.1 / np.sqrt(3.0 * k * k)


def test_randconv_output_is_a_per_image_linear_map_of_the_input():
    """Same seed, same draws: y(x1 + x2) = y(x1) + y(x2), and a flat image stays flat (mirrored borders)."""
    x1, x2 = _images(32, seed=1), _images(32, seed=2)
    np.testing.assert_allclose(_randconv(x1 + x2, 1.0), _randconv(x1, 1.0) + _randconv(x2, 1.0), atol=1e-4)
    flat = np.broadcast_to(np.array([0.8, 0.4, 0.6], np.float32)[None, :, None, None], (32, 3, 12, 12)).copy()
    out = _randconv(flat, 1.0)
    np.testing.assert_allclose(out, out[:, :, :1, :1] * np.ones_like(out), atol=1e-5)
    assert not np.allclose(out, flat, atol=1e-3)                   # its colour is mixed


def test_randconv_impulse_spreads_over_at_most_the_kernel_side():
    x = np.zeros((64, 3, 15, 15), np.float32)
    x[:, :, 7, 7] = 1.0
    changed = np.abs(_randconv(x, 1.0) - x).max(axis=1) > 1e-7      # (n, 15, 15)
    rows, cols = np.nonzero(changed.any(axis=0))
    assert rows.min() >= 4 and rows.max() <= 10 and cols.min() >= 4 and cols.max() <= 10   # 7 x 7 at most
    assert {int(c.sum()) for c in changed} >= {1, 49}               # some images only mix colours, some a 7 x 7


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_randconv_changes_a_share_p_of_images_and_keeps_the_rest(p):
    x = _images(400)
    changed = np.abs(_randconv(x, p) - x).reshape(400, -1).max(axis=1) > 1e-6
    assert abs(changed.mean() - p) < 0.08                           # 400 images: 3.2 standard deviations at 0.5
    np.testing.assert_array_equal(_randconv(x, 0.0), x)


def test_randconv_is_not_clipped_as_the_authors_mix():
    out = _randconv(_images(64), 1.0)
    assert out.min() < 0.0 or out.max() > 1.0


# ----------------------------------------------------------------------------- Fourier amplitude mixing (FDA)


B = augmentation.fourier_half_band(32)                       # 1 at 32 px (beta 0.05)
BAND = np.r_[np.arange(32 - B, 32), np.arange(0, B + 1)]     # frequencies -b .. b, as the bank orders them


def _fourier(x, bank, p, seed=5):
    y = augmentation.fourier_augment(nn.Variable.from_numpy_array(x), bank, p, seed=seed)
    y.forward()
    return y.d.copy()


def test_fourier_bank_holds_numpys_amplitudes_of_the_band():
    x = _smooth(3, 0, 0.0, 1.0)
    bank = augmentation.low_band_amplitudes(x)
    assert bank.shape == (3, 3, 2 * B + 1, 2 * B + 1) and augmentation.fourier_half_band(64) == 3
    full = np.abs(np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1)))
    np.testing.assert_allclose(bank, full[:, :, 16 - B:16 + B + 1, 16 - B:16 + B + 1], rtol=1e-5, atol=1e-4)


def _fitted_mix(a_in, a_out, bank):
    """The (residual, lam) of ``a_out = a_in + lam (style - a_in)`` for the style of ``bank`` that fits best."""
    fits = []
    for style in bank:
        d = (style - a_in).ravel()
        lam = float((a_out - a_in).ravel() @ d / (d @ d))
        fits.append((np.abs(a_in.ravel() + lam * d - a_out.ravel()).max(), lam))
    return min(fits)


def test_fourier_band_takes_the_mixed_amplitude_and_keeps_its_phase_and_nothing_else_changes():
    x, styles = _smooth(24, 1, 0.3, 0.6), _smooth(4, 2, 0.1, 0.9)
    bank = augmentation.low_band_amplitudes(styles)
    y = _fourier(x, bank, 1.0)
    assert 0.0 < y.min() and y.max() < 1.0                    # not clipped: the identity below is exact
    fx, fy = np.fft.fft2(x.astype(np.float64)), np.fft.fft2(y.astype(np.float64))
    outside = np.ones((32, 32), bool)
    outside[np.ix_(BAND, BAND)] = False
    assert np.abs(fy - fx)[..., outside].max() < 1e-3         # only the band changes
    lams = []
    for a_in, a_out in zip(augmentation.low_band_amplitudes(x), augmentation.low_band_amplitudes(y)):
        err, lam = _fitted_mix(a_in, a_out, bank)             # exactly one style and one lam in [0, 1]
        assert err < 2e-3 * a_in.max() and -1e-3 <= lam <= 1.0 + 1e-3
        lams.append(lam)
    assert min(lams) > 1e-3 and np.std(lams) > 0.1            # p = 1: every image, its own lam
    band = (slice(None), slice(None), BAND[:, None], BAND[None, :])
    strong = np.abs(fx[band]) > 1e-2 * np.abs(fx[band]).max()
    assert np.abs(np.angle(fy[band] / fx[band])[strong]).max() < 1e-2    # the phase is kept


def test_fourier_p_sets_the_share_of_changed_images_and_zero_changes_nothing():
    x, bank = _smooth(400, 3, 0.2, 0.7), augmentation.low_band_amplitudes(_smooth(8, 4, 0.0, 1.0))
    np.testing.assert_array_equal(_fourier(x, bank, 0.0), x)
    changed = np.abs(_fourier(x, bank, 0.3) - x).max(axis=(1, 2, 3)) > 1e-4
    assert changed.mean() == pytest.approx(0.3, abs=0.07)


def test_fourier_refuses_a_bank_of_another_size_and_a_graph_without_one():
    with pytest.raises(ValueError, match="bank"):
        augmentation.fourier_augment(nn.Variable((2, 3, 64, 64)), np.ones((4, 3, 3, 3), np.float32), 0.5)
    models.clear_scope(training.SCOPE)
    with pytest.raises(ValueError, match="style"):
        training.build_graph("resnet18", 6, 4, 32, aug=Augmentation(fourier=0.5), aug_seed=0)


@pytest.mark.parametrize("fourier, style", [(0.5, None), (0.0, "demo")])
def test_fourier_and_style_cells_go_together(tiny_dataset, tmp_path, fourier, style):
    cells = fileio.demo_data() if style else None
    with pytest.raises(TrainingError, match="fourier and style_cells go together"):
        training.train(tiny_dataset, tmp_path / "o", TrainConfig(epochs=1, augmentation=Augmentation(fourier=fourier),
                                                                 style_cells=cells, **TINY_TRAIN))
    assert not (tmp_path / "o").exists()


def test_fourier_too_few_or_unreadable_style_cells_are_named_and_nothing_is_written(tiny_dataset, tmp_path, capsys):
    demo = fileio.read_cells(fileio.demo_data())["path"]
    few = tmp_path / "few"
    few.mkdir()
    for p in demo[:3]:
        shutil.copy(p, few)
    cfg = dict(epochs=1, augmentation=Augmentation(fourier=0.5), **TINY_TRAIN)
    with pytest.raises(TrainingError, match=f"{few}: 3 style cells"):
        training.train(tiny_dataset, tmp_path / "o", TrainConfig(style_cells=few, **cfg))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    listed = tmp_path / "styles.csv"
    pd.DataFrame({"path": [str(broken)] + list(demo[:10])}).to_csv(listed, index=False)
    with pytest.raises(TrainingError, match="broken.png: style cell"):
        training.train(tiny_dataset, tmp_path / "o", TrainConfig(style_cells=listed, **cfg))
    assert cli.main(["train", str(tiny_dataset), str(tmp_path / "o"), *_flags(), "--set", "fourier=0.5"]) == 2
    assert "style_cells" in capsys.readouterr().err                 # the command names what is missing
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- MixStyle


N_FEAT, C_FEAT = 16, 4


def _features(seed=0):
    """``(N, C, 5, 5)``: one spatial pattern per channel, each image with its own channel means and scales."""
    rng = np.random.RandomState(seed)
    pattern = rng.randn(1, C_FEAT, 5, 5)
    pattern = (pattern - pattern.mean(axis=(2, 3), keepdims=True)) / pattern.std(axis=(2, 3), keepdims=True)
    mu, sigma = rng.uniform(-3, 3, (N_FEAT, C_FEAT, 1, 1)), rng.uniform(0.5, 4, (N_FEAT, C_FEAT, 1, 1))
    return (pattern * sigma + mu).astype(np.float32), mu[:, :, 0, 0], sigma[:, :, 0, 0], pattern


def test_mixstyle_off_passes_features_through():
    h, *_ = _features()
    y = augmentation.mixstyle(nn.Variable.from_numpy_array(h), 0.0, seed=3)
    y.forward()
    assert np.allclose(y.d, h, atol=1e-4)


def _mix_fits(i, out_mu, out_sigma, mu, sigma):
    """``(fits, lam)`` for each image j: whether image i's statistics are ``lam * own + (1 - lam) * j's``."""
    fits = []
    for j in range(N_FEAT):
        d = mu[i] - mu[j]
        lam = 1.0 if np.allclose(d, 0) else float(np.dot(out_mu[i] - mu[j], d) / np.dot(d, d))
        ok = (-1e-4 <= lam <= 1 + 1e-4 and np.allclose(out_mu[i], lam * mu[i] + (1 - lam) * mu[j], atol=1e-3)
              and np.allclose(out_sigma[i], lam * sigma[i] + (1 - lam) * sigma[j], atol=1e-3))
        fits.append((ok, lam))
    return fits


def test_mixstyle_on_mixes_two_images_statistics_and_keeps_the_pattern():
    h, mu, sigma, pattern = _features()
    y = augmentation.mixstyle(nn.Variable.from_numpy_array(h), 1.0, seed=3)
    y.forward()
    out_mu, out_sigma = y.d.mean(axis=(2, 3)), y.d.std(axis=(2, 3))
    assert np.allclose((y.d - out_mu[:, :, None, None]) / out_sigma[:, :, None, None], pattern, atol=1e-3)
    # each image's statistics: lam * own + (1 - lam) * one other image's, the same lam and partner on every channel
    mixed = 0
    for i in range(N_FEAT):
        fits = _mix_fits(i, out_mu, out_sigma, mu, sigma)
        assert any(ok for ok, _ in fits), f"image {i}: statistics are no mix of two images'"
        mixed += not any(ok and lam > 1 - 1e-3 for ok, lam in fits)
    assert mixed >= N_FEAT // 4                 # Beta(0.1, 0.1) puts most lam near 0 or 1, not all near 1


def test_mixstyle_statistics_carry_no_gradient():
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


# ----------------------------------------------------------------------------- mixup


def _batch(n=8, seed=0):
    return np.random.RandomState(seed).rand(n, 3, 6, 6).astype(np.float32)


def _mixup_weights_of(x, y):
    """Per image, the ``lam`` that makes ``y_i = lam x_i + (1 - lam) x_(N-1-i)`` (least squares), and the residual."""
    d = (x - x[::-1]).reshape(len(x), -1)
    r = (y - x[::-1]).reshape(len(x), -1)
    lam = (d * r).sum(1) / np.maximum((d * d).sum(1), 1e-12)
    return lam, np.abs(r - lam[:, None] * d).max()


def test_mixup_mixes_each_image_with_its_mirrored_partner_by_the_drawn_weight():
    x = _batch()
    y, lam = augmentation.mixup(nn.Variable.from_numpy_array(x), 0.4, seed=5)
    y.forward()
    w = lam.d[:, 0]
    assert lam.shape == (8, 1) and np.all((w >= 0) & (w <= 1))
    np.testing.assert_allclose(y.d, w[:, None, None, None] * x + (1 - w[:, None, None, None]) * x[::-1], atol=1e-6)
    assert np.ptp(w) > 0.05                     # one weight per image, not one per batch


@pytest.mark.parametrize("alpha", [0.2, 2.0])
def test_mixup_weights_follow_beta_alpha_alpha(alpha):
    """Mean 1/2 and variance 1 / (4 (2 alpha + 1)) of Beta(alpha, alpha), over 20,000 draws."""
    _, lam = augmentation.mixup(nn.Variable.from_numpy_array(np.zeros((20000, 1, 1, 1), np.float32)), alpha, seed=1)
    lam.forward()
    assert lam.d.mean() == pytest.approx(0.5, abs=0.01)
    assert lam.d.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


def test_mixup_training_graph_mixes_images_and_losses_with_the_same_weights():
    """With the other augmentation off, the graph's input is the mixup of its batch, and each image's
    loss is ``lam CE(own label) + (1 - lam) CE(partner's label)`` of its logits."""
    models.clear_scope(training.SCOPE)
    g = training.build_graph("resnet18", 6, 4, 32, aug=Augmentation(enabled=False), aug_seed=2, mixup=0.4)
    x = np.random.RandomState(3).rand(4, 3, 32, 32).astype(np.float32)
    y = np.array([0, 5, 2, 3])
    g.x.d, g.t.d = x, y[:, None]
    g.loss.forward()
    lam, residual = _mixup_weights_of(x, g.x_aug.d)
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


# ----------------------------------------------------------------------------- the background fill


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


def test_fill_ring_takes_each_images_ninetieth_percentile_per_channel_and_the_inside_is_kept():
    x = np.random.RandomState(1).rand(4, 3, 16, 16).astype(np.float32)     # every pixel its own value
    y = augmentation.background_fill(nn.Variable.from_numpy_array(x))
    y.forward()
    expected = np.quantile(x.reshape(len(x), 3, -1), 0.9, axis=2, method="nearest")
    ring = _ring(y.d)
    np.testing.assert_allclose(ring, np.broadcast_to(expected[..., None], ring.shape), atol=1e-6)
    np.testing.assert_array_equal(y.d[..., 1:-1, 1:-1], x[..., 1:-1, 1:-1])


def test_fill_makes_the_zoom_out_band_the_background_colour():
    # At Magnification 0.5 the image covers a quarter of the output (where is drawn per image): the
    # other 3/4 is the band, so with the fill nearly all pixels outside the cells are background.
    x = _smears()
    background = x[:, :, 16, 3]                             # a background pixel of each image (N, 3)
    filled, edge = _zoomed_out(x, "background"), _zoomed_out(x, "edge")
    own = _background_share(x, background)                  # the input's own background share
    assert (_background_share(filled, background) > 0.75 + 0.25 * own - 0.05).all()
    # NNC's repeated border: streaks of the disks that touch it run through the band
    assert (_background_share(edge, background) < _background_share(filled, background) - 0.1).all()
