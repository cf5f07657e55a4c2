"""Grad-CAM (wbc_nnabla.gradcam): shapes, the formula, test mode, localisation, class names, CLI.

One tiny ResNet-18 is trained once for the module (64 px, 16 steps of 8) to
tell a dark violet disc (a stand-in for a stained cell, class ``Lymph``) from an
empty cream background (``Basophil``), the disc at random positions. Its
evidence for ``Lymph`` can only be the disc, so a correct Grad-CAM must point
at the disc wherever it is.
"""
from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np
import pytest

nn = pytest.importorskip("nnabla")
import nnabla.functions as F  # noqa: E402
import nnabla.solvers as S  # noqa: E402

from wbc_nnabla import classes, fileio, gradcam, modelfile, models  # noqa: E402
from wbc_nnabla.cli import main  # noqa: E402

SIZE = 64            # training / model input size (pixels)
RADIUS = 10          # disc radius (pixels), the same at every canvas size
CREAM = (235, 225, 200)
VIOLET = (90, 40, 120)
CLASS_NAMES = ("Basophil", "Lymph")   # 0: empty background, 1: disc
SEED, STEPS, BN_PASSES = 0, 32, 8


def scene(size: int, centre=None) -> np.ndarray:
    """Cream RGB uint8 (size, size, 3), with a violet disc at ``centre`` = (y, x) if given."""
    img = np.empty((size, size, 3), np.uint8)
    img[:] = CREAM
    if centre is not None:
        cv2.circle(img, (int(round(centre[1])), int(round(centre[0]))), RADIUS, VIOLET, -1)
    return img


def batch(rng, n: int):
    labels = rng.integers(0, 2, n)
    lo, hi = RADIUS + 1, SIZE - RADIUS - 2
    imgs = [scene(SIZE, rng.uniform(lo, hi, 2) if c else None) for c in labels]
    x = np.stack([im.transpose(2, 0, 1) / 255.0 for im in imgs]).astype(np.float32)
    return x, labels[:, None]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A ResNet-18 trained for STEPS steps (batch 8, Adam 1e-3) in a private parameter scope, saved as .nnp.

    Two choices keep so short a training meaningful: the classifier starts at
    zero (with two classes both rows then stay opposite, W_Lymph = -W_Basophil,
    instead of carrying a random common part that would dominate a class's
    logit after a few steps), and BN_PASSES forward passes in training mode
    after the last update bring the BatchNorm running statistics (decay 0.9)
    close to the data's, as a long training would.
    """
    nn.seed(SEED)
    rng = np.random.default_rng(SEED)
    scope = OrderedDict()
    with nn.parameter_scope("", scope):
        nn.parameter.get_parameter_or_create("fc/affine/W", (512, 2), np.zeros((512, 2), np.float32))
        nn.parameter.get_parameter_or_create("fc/affine/b", (2,), np.zeros((2,), np.float32))
        x = nn.Variable((8, 3, SIZE, SIZE))
        t = nn.Variable((8, 1))
        loss = F.mean(F.softmax_cross_entropy(models.resnet(x, "resnet18", 2, test=False), t))
        solver = S.Adam(1e-3)
        solver.set_parameters(nn.get_parameters())
        for _ in range(STEPS):
            x.d, t.d = batch(rng, 8)
            loss.forward(clear_no_need_grad=True)
            solver.zero_grad()
            loss.backward(clear_buffer=True)
            solver.update()
        for _ in range(BN_PASSES):
            x.d, t.d = batch(rng, 8)
            loss.forward(clear_buffer=True)
        params = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    path = tmp_path_factory.mktemp("gradcam_model") / "disc.nnp"
    modelfile.save_nnp(path, params, modelfile.model_meta("resnet18", CLASS_NAMES, SIZE))
    return path


@pytest.fixture(scope="module")
def cam(model_path):
    return gradcam.GradCAM(model_path, batch_size=8)


def test_model_learned_the_task(cam):
    # Without this the localisation test below would be meaningless.
    rng = np.random.default_rng(1)
    discs = [scene(SIZE, rng.uniform(RADIUS + 1, SIZE - RADIUS - 2, 2)) for _ in range(4)]
    res = cam.explain(discs + [scene(SIZE)] * 2)
    assert [r.predicted_name for r in res] == ["Lymph"] * 4 + ["Basophil"] * 2


def test_map_is_nonnegative_normalised_and_has_the_input_size(cam):
    img = cv2.resize(scene(SIZE, (30, 40)), (77, 58))       # any (H, W): here 58 x 77
    (r,) = cam.explain([img])
    assert r.cam.shape == (58, 77) and r.cam.dtype == np.float32
    assert r.cam.min() >= 0.0
    assert r.cam.max() == pytest.approx(1.0)
    assert r.raw.shape == (SIZE // 32, SIZE // 32)           # layer4 at 64 px: 2 x 2


def test_raw_map_is_relu_of_gradient_weighted_layer4(model_path):
    """Independent check of alpha: for GAP + fc, d(score_c)/dA^k = W[k, c] / (h w) everywhere.

    On a fresh GradCAM: its first call once returned released layer4 buffers.
    """
    img = scene(SIZE, (20, 44))
    (r,) = gradcam.GradCAM(model_path).explain([img], class_name="Lymph")
    params = modelfile.load_parameters(model_path)
    with nn.parameter_scope("", OrderedDict()):
        for k, v in params.items():
            nn.parameter.get_parameter_or_create(k, v.shape, v, need_grad=False)
        x = nn.Variable((1, 3, SIZE, SIZE))
        _, feats = models.resnet_features(x, "resnet18", 2, test=True)
    x.d = img.transpose(2, 0, 1)[None] / 255.0
    feats.forward()
    a = feats.d[0]
    w = params["fc/affine/W"][:, 1] / (a.shape[1] * a.shape[2])
    expected = np.maximum(np.einsum("k,khw->hw", w, a), 0)
    np.testing.assert_allclose(r.raw, expected, rtol=1e-4, atol=1e-6)
    assert expected.max() > 0


def test_test_mode_probabilities_match_the_exported_nnp(cam, model_path):
    from nnabla.utils.nnp_graph import NnpLoader
    imgs = [scene(SIZE, (20, 20)), scene(SIZE)]
    res = cam.explain(imgs)
    with nn.parameter_scope("", OrderedDict()):
        net = NnpLoader(str(model_path)).get_network("inference", batch_size=2)
        net.inputs["x"].d = np.stack([im.transpose(2, 0, 1) / 255.0 for im in imgs])
        net.outputs["y"].forward()
        probs = net.outputs["y"].d.copy()
    for r, p in zip(res, probs):
        assert r.predicted_index == int(p.argmax())
        assert r.probability == pytest.approx(float(p.max()), abs=1e-4)


def test_map_moves_with_the_object(model_path):
    """The same disc in the four quadrants of a 128 px canvas (layer4 map 4 x 4): the peak follows it.

    The model is fully convolutional, so a bigger canvas gives a finer map while
    the disc keeps the size it was trained at. The disc centres are 64 px (two
    cells) apart or more and the peak must lie within 32 px (one cell) of the
    disc each time: a map that does not move cannot pass.
    """
    big = gradcam.GradCAM(model_path, size=128)
    centres = [(32, 32), (96, 96), (32, 96), (96, 32)]
    res = big.explain([scene(128, c) for c in centres], class_name="lymphocyte")
    for c, r in zip(centres, res):
        assert r.raw.shape == (4, 4)
        y, x = gradcam.peak(r.cam)
        assert np.hypot(y - c[0], x - c[1]) < 32, f"disc at {c}: peak at ({y:.0f}, {x:.0f})"


def test_layer4_cell_centres():
    """Layer4 cell (i, j) is centred on network-input pixel (32 i, 32 j): the input-gradient centroid."""
    nn.seed(1)
    with nn.parameter_scope("", OrderedDict()):
        x = nn.Variable((1, 3, 352, 352), need_grad=True)   # 11 x 11 cells
        _, feats = models.resnet_features(x, "resnet18", 2, test=True)
    x.d = np.random.default_rng(0).random(x.shape)
    out = F.sum(feats[:, :, 5, 4])
    out.forward()
    x.grad.zero()
    out.backward()
    g = np.abs(x.g[0]).sum(axis=0)
    ys, xs = np.indices(g.shape)
    centroid = ((g * ys).sum() / g.sum(), (g * xs).sum() / g.sum())
    assert centroid == pytest.approx((5 * gradcam.STRIDE, 4 * gradcam.STRIDE), abs=2.0)   # not (176, 144)


def test_upsampled_cell_lands_on_its_receptive_field_centre():
    raw = np.zeros((4, 4), np.float32)
    raw[2, 1] = 1.0
    cam = gradcam.upsample_map(raw, (128, 128), 128)            # image already at network size
    assert np.unravel_index(cam.argmax(), cam.shape) == (64, 32)
    cam = gradcam.upsample_map(raw, (256, 512), 128)            # image 2x taller, 4x wider than the input
    assert gradcam.peak(cam, 0.99) == pytest.approx((128.5, 129.5), abs=0.5)  # (64.5*2 - 0.5, 32.5*4 - 0.5)
    assert cam.shape == (256, 512) and cam.max() == pytest.approx(1.0) and cam.min() >= 0


def test_class_by_name_and_bad_names(cam):
    assert cam.class_index("Lymph") == 1
    assert cam.class_index("LY") == 1
    assert cam.class_index("small lymphocyte") == 1              # sub-category -> reporting class
    assert cam.class_index("baso") == 0
    assert cam.class_index(1) == 1
    with pytest.raises(classes.LabelError, match="Segment.*Basophil, Lymph"):
        cam.class_index("Segment")                               # a real class, not this model's
    with pytest.raises(classes.LabelError, match="Platelet"):
        cam.class_index("Platelet")
    with pytest.raises(classes.LabelError, match="out of range"):
        cam.class_index(2)
    (r,) = cam.explain([scene(SIZE)], class_name="Lymph")        # predicted Basophil, explained Lymph
    assert (r.predicted_name, r.class_name) == ("Basophil", "Lymph")
    assert r.class_probability < 0.5


def test_global_parameters_untouched(model_path):
    before = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    g = gradcam.GradCAM(model_path)
    g.explain([scene(SIZE, (32, 32))])
    after = nn.get_parameters(grad_only=False)
    assert set(after) == set(before)
    for k, v in before.items():
        np.testing.assert_array_equal(after[k].d, v)


def test_bad_inputs_give_clear_errors(tmp_path, cam):
    from wbc_nnabla.modelfile import ModelError
    with pytest.raises(ModelError, match="no such model file"):
        gradcam.GradCAM(tmp_path / "missing.nnp")
    with pytest.raises(ValueError, match=r"image 0: expected an RGB uint8"):
        cam.explain([np.zeros((8, 8), np.uint8)])


def test_overlay_and_figure(tmp_path):
    img = scene(40, (20, 20))
    m = np.zeros((40, 40), np.float32)
    m[10:30, 10:30] = 1.0
    out = gradcam.overlay(img, m, alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(gradcam.overlay(img, m, alpha=0.0), img)
    heat = gradcam.overlay(img, m, alpha=1.0)                    # JET: 1 is red, 0 is blue
    assert heat[20, 20, 0] > 100 > heat[20, 20, 2]
    assert heat[0, 0, 2] > 100 > heat[0, 0, 0]
    with pytest.raises(ValueError, match="differs from the image"):
        gradcam.overlay(img, m[:30])
    fig = gradcam.figure([img, img], [m, m], titles=["Lymph 0.99", "Lymph 0.98"], ncols=2)
    path = gradcam.save_figure(fig, tmp_path / "grid.png")
    assert cv2.imread(str(path)) is not None


def test_output_stems_keep_colliding_names_apart():
    assert gradcam.output_stems(["a/x.png", "b/x.jpg", "c/y.png"]) == ["a_x", "b_x", "y"]
    assert gradcam.output_stems(["a/x.png", "a/x.jpg", "a_x.png"]) == ["a_x", "a_x_2", "a_x_3"]


def test_write_overlays_plain_and_side_by_side(tmp_path, cam):
    """One writer for the command (overlay + map) and the reproduce report (image | overlay, enlarged)."""
    small = tmp_path / "in" / "small.png"                       # 40 px: enlarged to min_side
    big = tmp_path / "in" / "big.png"
    fileio.write_image(small, scene(40, (20, 20)))
    fileio.write_image(big, scene(200, (60, 90)))
    recs = gradcam.write_overlays(cam, [small, big], tmp_path / "plain", alpha=0.5)
    assert [r["overlay"] for r in recs] == ["small_gradcam.png", "big_gradcam.png"]
    assert list(recs[0]) == ["path", "overlay", "cam", "predicted", "probability", "class", "class_probability"]
    (r,) = cam.explain([small])
    np.testing.assert_array_equal(np.load(tmp_path / "plain" / "small_cam.npy"), r.cam)
    got = cv2.imread(str(tmp_path / "plain" / "small_gradcam.png"))[:, :, ::-1]
    np.testing.assert_array_equal(got, gradcam.overlay(scene(40, (20, 20)), r.cam, 0.5))
    assert recs[0]["path"] == str(small.resolve()) and recs[0]["predicted"] == r.predicted_name

    recs = gradcam.write_overlays(cam, [small, big], tmp_path / "pair", stems=["s", "b"], side_by_side=True,
                                  min_side=192, cams=False)
    assert sorted(p.name for p in (tmp_path / "pair").iterdir()) == ["b_gradcam.png", "s_gradcam.png"]
    assert "cam" not in recs[0] and recs[1]["class"] == recs[1]["predicted"]
    pair = cv2.imread(str(tmp_path / "pair" / "s_gradcam.png"))[:, :, ::-1]
    assert pair.shape == (192, 384, 3)
    np.testing.assert_array_equal(pair[:, :192], fileio.resize_square(scene(40, (20, 20)), 192))
    assert cv2.imread(str(tmp_path / "pair" / "b_gradcam.png")).shape == (200, 400, 3)   # not enlarged
    with pytest.raises(ValueError, match="1 stems for 2 images"):
        gradcam.write_overlays(cam, [small, big], tmp_path / "x", stems=["s"])


def test_cli(tmp_path, model_path, capsys):
    folder = tmp_path / "cells"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), scene(70, (20, 50))[:, :, ::-1])
    cv2.imwrite(str(folder / "b.png"), scene(64)[:, :, ::-1])
    single = tmp_path / "other" / "a.png"                        # same stem as folder/a.png
    single.parent.mkdir()
    cv2.imwrite(str(single), scene(50, (25, 25))[:, :, ::-1])
    out = tmp_path / "out"
    assert main(["gradcam", str(model_path), str(folder), str(single), "--out", str(out), "--class", "LY",
                 "-q"]) == 0
    import pandas as pd
    df = pd.read_csv(out / "gradcam.csv")
    assert len(df) == 3 and set(df["class"]) == {"Lymph"}
    assert list(df["predicted"]) == ["Lymph", "Basophil", "Lymph"]
    for _, row in df.iterrows():
        rgb = cv2.imread(row["path"])
        cam_map = np.load(out / row["cam"])
        assert cam_map.shape == rgb.shape[:2] and cam_map.min() >= 0
        assert cv2.imread(str(out / row["overlay"])).shape == rgb.shape
    assert len(set(df["overlay"])) == 3                          # colliding stems kept apart
    assert (out / "gradcam.json").is_file()
    assert not list(out.glob("*.tmp*"))

    assert main(["gradcam", str(model_path), str(single), "--out", str(out), "--class", "Platelet"]) == 2
    assert "Platelet" in capsys.readouterr().err
    assert main(["gradcam", str(tmp_path / "nope.nnp"), str(single), "--out", str(out)]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["gradcam", str(model_path), str(tmp_path / "nope.png"), "--out", str(out)]) == 2
    assert "no such image file or folder" in capsys.readouterr().err
    assert main(["gradcam", str(model_path), str(folder), "--out", str(folder / "o")]) == 2
    assert "inside the source folder" in capsys.readouterr().err


def test_cli_overwrite_replaces_only_an_earlier_gradcam_output(tmp_path, model_path, capsys):
    """A second run into OUT needs --overwrite; a folder gradcam did not write is never replaced."""
    img = tmp_path / "cells" / "a.png"
    img.parent.mkdir()
    cv2.imwrite(str(img), scene(64)[:, :, ::-1])
    out = tmp_path / "out"
    assert main(["gradcam", str(model_path), str(img), "--out", str(out), "-q"]) == 0
    assert main(["gradcam", str(model_path), str(img), "--out", str(out), "-q"]) == 2
    assert "already exists" in capsys.readouterr().err
    (out / "stale_gradcam.png").write_bytes(b"from an earlier run")
    assert main(["gradcam", str(model_path), str(img), "--out", str(out), "-q", "--overwrite"]) == 0
    assert not (out / "stale_gradcam.png").exists() and (out / "a_gradcam.png").is_file()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "a_gradcam.png").write_bytes(b"my own figure")
    assert main(["gradcam", str(model_path), str(img), "--out", str(mine), "-q", "--overwrite"]) == 2
    assert "not a `wbc-nnabla gradcam` output" in capsys.readouterr().err
    assert (mine / "a_gradcam.png").read_bytes() == b"my own figure"


def test_groupnorm_model_explained_with_its_own_network(tiny_gn_model):
    """Grad-CAM rebuilds a ``--norm group`` model with GroupNorm: its probabilities are the nnabla
    backend's (a BatchNorm rebuild could not even load the parameters), and the map is finite, in [0, 1]."""
    from helpers import demo_cells
    from wbc_nnabla import predictor
    cells = demo_cells(1)
    cam = gradcam.GradCAM(tiny_gn_model / "model.nnp")
    assert cam.meta["norm"] == "group"
    res = cam.explain(list(cells["path"]))
    df = predictor.predict(tiny_gn_model / "model.nnp", cells, backend="nnabla", progress=False)
    for r, (_, row) in zip(res, df.iterrows()):
        assert r.predicted_name == row["pred6"]
        assert r.probability == pytest.approx(row[f"prob_{row['pred6']}"], abs=1e-5)
        assert np.isfinite(r.cam).all() and 0.0 <= r.cam.min() and r.cam.max() <= 1.0
