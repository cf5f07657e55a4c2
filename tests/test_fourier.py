"""Another lab's look in the training graph: ``augmentation.fourier_augment`` and ``train --style-cells``
(docs/training.md, docs/research/cross_site_log.md).

With probability ``p`` per image, each channel's amplitude spectrum at frequencies ``-b .. b`` of both
axes becomes ``(1 - lam) A + lam A_style`` (one style cell of the bank, ``lam`` uniform in [0, 1]); the
phase and every other frequency are kept. Off, the graph has none of it; it is never in a test graph
nor an ``.nnp``; the style cells are read only and recorded in ``config.json``.
"""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

nn = pytest.importorskip("nnabla")

from helpers import TINY_TRAIN, check_redrawn_and_seeded, file_hashes, function_names, nnp_text  # noqa: E402
from wbc_nnabla import loader, augmentation, fileio, models, training  # noqa: E402
from wbc_nnabla.recipe import Augmentation, TrainConfig, TrainingError  # noqa: E402

SIDE = 32
B = augmentation.fourier_half_band(SIDE)                  # 1 at 32 px (beta 0.05)
BAND = np.r_[np.arange(SIDE - B, SIDE), np.arange(0, B + 1)]  # frequencies -b .. b, as the bank orders them
FOURIER_FUNCTIONS = {"Embed", "Randint"}                  # what the step adds; the ResNet and other terms have neither


def _smooth(n, seed, lo, hi):
    """``(n, 3, SIDE, SIDE)`` images in [lo, hi]: a random mean colour plus a random low-frequency pattern."""
    rs = np.random.RandomState(seed)
    g = np.linspace(0, 2 * np.pi, SIDE, endpoint=False)
    wave = np.sin(g[None, None, :, None] + rs.rand(n, 3, 1, 1) * 6) * np.cos(g[None, None, None, :])
    x = rs.rand(n, 3, 1, 1) * 0.5 + 0.25 + 0.2 * wave + 0.05 * rs.rand(n, 3, SIDE, SIDE)
    return (lo + (hi - lo) * x).astype(np.float32)


def _fourier(x, bank, p, seed=5):
    y = augmentation.fourier_augment(nn.Variable.from_numpy_array(x), bank, p, seed=seed)
    y.forward()
    return y.d.copy()


def test_the_bank_holds_numpys_amplitudes_of_the_band():
    x = _smooth(3, 0, 0.0, 1.0)
    bank = augmentation.low_band_amplitudes(x)
    assert bank.shape == (3, 3, 2 * B + 1, 2 * B + 1) and augmentation.fourier_half_band(64) == 3
    full = np.abs(np.fft.fftshift(np.fft.fft2(x.astype(np.float64)), axes=(-2, -1)))
    c = SIDE // 2
    np.testing.assert_allclose(bank, full[:, :, c - B:c + B + 1, c - B:c + B + 1], rtol=1e-5, atol=1e-4)


def test_the_band_takes_the_mixed_amplitude_and_keeps_its_phase_and_nothing_else_changes():
    x, styles = _smooth(24, 1, 0.3, 0.6), _smooth(4, 2, 0.1, 0.9)
    bank = augmentation.low_band_amplitudes(styles)
    y = _fourier(x, bank, 1.0)
    assert 0.0 < y.min() and y.max() < 1.0                    # not clipped: the identity below is exact
    fx, fy = np.fft.fft2(x.astype(np.float64)), np.fft.fft2(y.astype(np.float64))
    outside = np.ones((SIDE, SIDE), bool)
    outside[np.ix_(BAND, BAND)] = False
    assert np.abs(fy - fx)[..., outside].max() < 1e-3         # only the band changes
    ax = augmentation.low_band_amplitudes(x)
    ay = augmentation.low_band_amplitudes(y)
    lams, changed = [], 0
    for a_in, a_out in zip(ax, ay):
        # a_out = a_in + lam (style - a_in) for exactly one style and one lam in [0, 1]
        fits = []
        for style in bank:
            d = style - a_in
            lam = float((a_out - a_in).ravel() @ d.ravel() / (d.ravel() @ d.ravel()))
            fits.append((np.abs(a_in + lam * d - a_out).max(), lam))
        err, lam = min(fits)
        assert err < 2e-3 * a_in.max() and -1e-3 <= lam <= 1.0 + 1e-3
        lams.append(lam)
        changed += lam > 1e-3
    assert changed == len(x) and np.std(lams) > 0.1           # p = 1: every image, its own lam
    band = (slice(None), slice(None), BAND[:, None], BAND[None, :])
    strong = np.abs(fx[band]) > 1e-2 * np.abs(fx[band]).max()
    phase = np.angle(fy[band] / fx[band])[strong]
    assert np.abs(phase).max() < 1e-2                         # the phase is kept


def test_p_sets_the_share_of_changed_images_and_zero_changes_nothing():
    x, bank = _smooth(400, 3, 0.2, 0.7), augmentation.low_band_amplitudes(_smooth(8, 4, 0.0, 1.0))
    np.testing.assert_array_equal(_fourier(x, bank, 0.0), x)
    changed = np.abs(_fourier(x, bank, 0.3) - x).max(axis=(1, 2, 3)) > 1e-4
    assert changed.mean() == pytest.approx(0.3, abs=0.07)


def test_draws_are_renewed_at_each_forward_and_seeded():
    bank = augmentation.low_band_amplitudes(_smooth(8, 4, 0.0, 1.0))
    check_redrawn_and_seeded(lambda v, s: augmentation.fourier_augment(v, bank, 1.0, seed=s), _smooth(6, 5, 0.2, 0.7))


def test_a_bank_of_another_size_is_refused():
    with pytest.raises(ValueError, match="bank"):
        augmentation.fourier_augment(nn.Variable((2, 3, 64, 64)), np.ones((4, 3, 3, 3), np.float32), 0.5)


def test_the_step_is_in_training_graphs_only():
    bank = augmentation.low_band_amplitudes(_smooth(8, 4, 0.0, 1.0))
    models.clear_scope(training.SCOPE)
    on = training.build_graph("resnet18", 6, 4, SIDE, aug=Augmentation(fourier=0.5), aug_seed=0, styles=bank)
    off = training.build_graph("resnet18", 6, 4, SIDE, aug=Augmentation(), aug_seed=0)
    test = training.build_graph("resnet18", 6, 4, SIDE, test=True)         # as training's test graph
    assert FOURIER_FUNCTIONS <= set(function_names(on.loss))
    assert not FOURIER_FUNCTIONS & (set(function_names(off.loss)) | set(function_names(test.loss)))
    with pytest.raises(ValueError, match="style"):
        training.build_graph("resnet18", 6, 4, SIDE, aug=Augmentation(fourier=0.5), aug_seed=0)


def test_training_with_style_cells_records_them_and_exports_no_fourier_step(tiny_dataset, tmp_path):
    styles = fileio.demo_data()
    before = file_hashes(styles)
    out = tmp_path / "run"
    training.train(tiny_dataset, out, TrainConfig(epochs=1, augmentation=Augmentation(fourier=0.5),
                                                  style_cells=styles, **TINY_TRAIN))
    assert file_hashes(styles) == before                    # read only
    rec = json.loads((out / "config.json").read_text())["config"]
    n = len(fileio.read_cells(styles))
    assert rec["augmentation"]["fourier"] == 0.5
    assert rec["style_cells"]["n_cells"] == min(n, loader.MAX_STYLE_CELLS) and rec["style_cells"]["half_band"] == B
    nntxt = nnp_text(out / "model.nnp")
    assert "Convolution" in nntxt and not any(f'type: "{f}"' in nntxt for f in FOURIER_FUNCTIONS)
    # other style cells on resume: refused, the run is kept
    few = tmp_path / "few.csv"
    pd.DataFrame({"path": fileio.read_cells(styles)["path"][:20]}).to_csv(few, index=False)
    with pytest.raises(TrainingError, match="style_cells"):
        training.train(tiny_dataset, out, TrainConfig(epochs=2, augmentation=Augmentation(fourier=0.5),
                                                      style_cells=few, **TINY_TRAIN), resume=True)
    assert json.loads((out / "checkpoint.json").read_text())["epoch"] == 1
    again = training.train(tiny_dataset, out, TrainConfig(epochs=2, augmentation=Augmentation(fourier=0.5),
                                                          style_cells=styles, **TINY_TRAIN), resume=True)
    assert len(again["history"]) == 2                        # the same cells: resumed


@pytest.mark.parametrize("fourier, style, match", [
    (0.5, None, "fourier and style_cells go together"),
    (0.0, "demo", "fourier and style_cells go together"),
    (1.5, "demo", r"fourier must be in \[0, 1\]"),
])
def test_fourier_and_style_cells_go_together(tiny_dataset, tmp_path, fourier, style, match):
    cells = fileio.demo_data() if style else None
    with pytest.raises(TrainingError, match=match):
        training.train(tiny_dataset, tmp_path / "o", TrainConfig(epochs=1, augmentation=Augmentation(fourier=fourier),
                                                                 style_cells=cells, **TINY_TRAIN))
    assert not (tmp_path / "o").exists()


def test_too_few_or_unreadable_style_cells_are_named_and_nothing_is_written(tiny_dataset, tmp_path):
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
    assert not (tmp_path / "o").exists()


def test_the_cli_passes_style_cells_and_refuses_fourier_alone(tiny_dataset, tmp_path, capsys):
    from wbc_nnabla import cli
    common = [str(tiny_dataset), str(tmp_path / "o"), "--epochs", "1", "--size", "32", "--batch-size", "4",
              "--pretrained", "none", "--no-progress", "--train-eval-limit", "4"]
    assert cli.main(["train", *common, "--set", "fourier=0.5"]) == 2
    assert "style_cells" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert cli.main(["train", *common, "--set", "fourier=0.5", "--set", f"style_cells={fileio.demo_data()}"]) == 0
    rec = json.loads((tmp_path / "o" / "config.json").read_text())["config"]
    assert rec["style_cells"]["source"] == str(fileio.demo_data().resolve())
