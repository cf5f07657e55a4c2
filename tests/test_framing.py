"""WBC scale (framing) and colour standardisation (stain): the input corrections for another lab's crops.

Synthetic images check the arithmetic; the demo cells check that the measured WBC share follows a
known re-framing, and that ``adapt`` stores the site's zoom and ``predict`` applies it.
"""
import numpy as np
import pytest

from wbc_nnabla import fileio
from wbc_nnabla.sites import framing, stain
from wbc_nnabla.errors import InputError
from wbc_nnabla.sites import settings as site_settings


def _field(bg=(200, 220, 180), fg=(90, 40, 120), side=96, radius=None) -> np.ndarray:
    """A flat background with a dark disc of ``radius`` (default side/4) in the middle, uint8 (side, side, 3)."""
    radius = side / 4 if radius is None else radius
    yy, xx = np.mgrid[:side, :side]
    img = np.empty((side, side, 3), np.uint8)
    img[:] = bg
    img[(yy - side / 2) ** 2 + (xx - side / 2) ** 2 < radius ** 2] = fg
    return img


def test_white_balance_maps_the_background_to_the_target():
    out = stain.white_balance(_field(), np.array([250.0, 230.0, 210.0]))
    np.testing.assert_allclose(out[2, 2], [250, 230, 210], atol=1)
    assert out[48, 48].tolist() != [90, 40, 120]            # the cell moves with the same gains


def test_reinhard_sets_lab_statistics_to_the_target():
    target = np.array([[70.0, 10.0, -5.0], [12.0, 6.0, 9.0]], np.float32)
    out = stain.reinhard(_field(), target)
    got = stain.lab_statistics(out)
    np.testing.assert_allclose(got[0], target[0], atol=1.5)
    np.testing.assert_allclose(got[1], target[1], rtol=0.15)


def test_reference_is_the_mean_of_the_images_statistics(tmp_path):
    paths = []
    for i, bg in enumerate([(200, 220, 180), (240, 230, 200)]):
        paths.append(str(tmp_path / f"c{i}.png"))
        fileio.write_image(paths[-1], _field(bg))
    ref = stain.reference(paths)
    np.testing.assert_allclose(ref["background"], [220, 225, 190], atol=0.01)
    assert ref["n_images"] == 2 and np.shape(ref["lab"]) == (2, 3)
    assert np.shape(ref["macenko"]["stains"]) == (2, 3) and np.shape(ref["macenko"]["cmax"]) == (2,)


def test_standardiser_refuses_unknown_method_or_missing_reference():
    assert stain.standardiser("none", None) is None
    with pytest.raises(InputError, match="reinhard"):
        stain.standardiser("reinhard", None)
    with pytest.raises(InputError, match="vahadane"):
        stain.standardiser("vahadane", {"lab": [[0, 0, 0], [1, 1, 1]]})
    with pytest.raises(InputError, match="no stain separation"):
        stain.standardiser("macenko", {"lab": [[0, 0, 0], [1, 1, 1]]})


AZURE, EOSIN = np.array([0.75, 0.62, 0.23]), np.array([0.20, 0.96, 0.19])


def _two_stain_cell(azure, eosin, white, side=96, seed=0) -> np.ndarray:
    """uint8 ``(side, side, 3)``: a nucleus of mostly ``azure`` in a cytoplasm of mostly ``eosin`` on ``white``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    r2 = (yy - side / 2) ** 2 + (xx - side / 2) ** 2
    conc = np.zeros((side, side, 2))
    cell, nucleus = r2 < (side / 3) ** 2, r2 < (side / 6) ** 2
    conc[cell] = rng.uniform([0.0, 0.3], [0.3, 0.8], (cell.sum(), 2))
    conc[nucleus] = rng.uniform([0.8, 0.0], [1.4, 0.3], (nucleus.sum(), 2))
    stains = np.stack([azure, eosin]) / np.linalg.norm([azure, eosin], axis=1, keepdims=True)
    return np.clip(np.asarray(white) * np.exp(-(conc @ stains)), 0, 255).round().astype(np.uint8)


def test_macenko_finds_the_two_stains_azure_first():
    stats = stain.macenko_statistics(_two_stain_cell(AZURE, EOSIN, (245, 240, 235)))
    want = np.stack([AZURE, EOSIN]) / np.linalg.norm([AZURE, EOSIN], axis=1, keepdims=True)
    assert np.all(np.sum(stats["stains"] * want, axis=1) > 0.99)          # cosine to the true directions
    np.testing.assert_allclose(stats["white"], (245, 240, 235), atol=1)


def test_macenko_moves_another_labs_stains_to_the_reference():
    """A cell stained red-brown on a yellow plasma takes the reference's stain colours and white."""
    ref = stain.macenko_statistics(_two_stain_cell(AZURE, EOSIN, (245, 240, 235), seed=1))
    other = _two_stain_cell(np.array([0.45, 0.80, 0.40]), np.array([0.10, 0.55, 0.83]), (250, 240, 150))
    out = stain.macenko(other, ref)
    got = stain.macenko_statistics(out)
    assert np.all(np.sum(got["stains"] * ref["stains"], axis=1) > 0.98)
    np.testing.assert_allclose(got["white"], ref["white"], atol=3)
    np.testing.assert_allclose(got["cmax"], ref["cmax"], rtol=0.1)
    blank = np.full((40, 40, 3), 230, np.uint8)
    assert stain.macenko(blank, ref) is blank                           # nothing stained: left as it is


def test_reframe_pads_or_crops_around_the_centre():
    img = _field(side=60)
    wide = framing.reframe(img, 1.5)
    assert wide.shape == (90, 90, 3)
    np.testing.assert_array_equal(wide[15:75, 15:75], img)       # the crop sits in the middle
    tight = framing.reframe(img, 0.5)
    np.testing.assert_array_equal(tight, img[15:45, 15:45])
    with pytest.raises(InputError, match="zoom"):
        framing.reframe(img, 0.0)


def _tight(side=60) -> np.ndarray:
    """A crop that hugs its cell: a disc of diameter ``side``, reaching the crop's sides."""
    return _field(bg=(235, 225, 215), side=side, radius=side / 2)


def _cell_pixels(img, fg=(90, 40, 120)) -> int:
    return int((img == np.array(fg, np.uint8)).all(axis=2).sum())


def test_reframe_fills_the_band_as_pad_says():
    """Zooming a tight crop out: ``reflect`` mirrors the cell into the band (more cell pixels than
    the crop holds), ``replicate`` smears its edge pixels, ``background`` adds only the crop's
    slide-background colour; the crop itself sits unchanged in the middle each time."""
    img = _tight()
    inside = _cell_pixels(img)
    out = {pad: framing.reframe(img, 2.0, pad) for pad in site_settings.PADS}
    for pad, wide in out.items():
        assert wide.shape == (120, 120, 3), pad
        np.testing.assert_array_equal(wide[30:90, 30:90], img, err_msg=pad)
    assert _cell_pixels(out["reflect"]) > 3 * inside                  # the cell mirrored around itself
    assert inside < _cell_pixels(out["replicate"]) < 2 * inside       # streaks from where it touches the sides
    band = np.ones((120, 120), bool)
    band[30:90, 30:90] = False
    assert _cell_pixels(out["background"]) == inside
    np.testing.assert_array_equal(out["background"][band], np.broadcast_to(np.uint8((235, 225, 215)), (band.sum(), 3)))
    with pytest.raises(InputError, match="pad must be one of reflect, replicate, background"):
        framing.reframe(img, 2.0, "mirror")


def test_model_view_applies_the_stored_pad_and_older_models_reflect():
    img = _tight()
    np.testing.assert_array_equal(framing.model_view(dict(zoom=2.0, pad="background"))(img),
                                  framing.reframe(img, 2.0, "background"))
    np.testing.assert_array_equal(framing.model_view(dict(zoom=2.0))(img), framing.reframe(img, 2.0, "reflect"))
    assert framing.model_view(dict(pad="background")) is None          # zoom 1: crops as they are


def test_wbc_share_follows_a_known_reframing():
    """Demo cells viewed 1.5x wider: the median WBC share falls by 1.5 (within 10 %)."""
    paths = list(fileio.read_cells(fileio.demo_data())["path"][:30])
    shares = np.array([framing.wbc_share(fileio.read_rgb(p)) for p in paths])
    wider = np.array([framing.wbc_share(framing.reframe(fileio.read_rgb(p), 1.5)) for p in paths])
    ok = np.isfinite(shares) & np.isfinite(wider)
    assert ok.sum() >= 25
    ratio = np.median(shares[ok]) / np.median(wider[ok])
    assert 1.35 < ratio < 1.65, ratio
    assert 0.2 < np.median(shares[ok]) < 0.6                       # a PBC cell: about 0.38 of the crop


def test_scale_hint_names_only_a_scale_other_than_the_models(tmp_path):
    """Demo cells against their own median share: no hint; the same cells cropped to half their side
    (the WBC twice as large): a hint with zoom about 2; none for a model already re-framed by
    ``adapt``, one that stores no scale, or crops without WBCs."""
    paths = list(fileio.read_cells(fileio.demo_data())["path"][:framing.HINT_SAMPLE])
    meta = dict(wbc_share=framing.median_share(paths))
    assert framing.scale_hint(meta, paths) is None
    tight = []
    for i, p in enumerate(paths):
        tight.append(str(tmp_path / f"t{i:02d}.png"))
        fileio.write_image(tight[-1], framing.reframe(fileio.read_rgb(p), 0.5))
    hint = framing.scale_hint(meta, tight)
    assert hint is not None and 1.7 < hint["zoom"] < 2.3, hint
    assert hint["training"] == meta["wbc_share"] and hint["site"]["n"] == framing.HINT_SAMPLE
    assert framing.scale_hint(dict(meta, zoom=hint["zoom"]), tight) is None
    assert framing.scale_hint({}, tight) is None
    blank = tmp_path / "blank.png"
    fileio.write_image(blank, np.full((64, 64, 3), 230, np.uint8))
    assert framing.scale_hint(meta, [str(blank)] * 30) is None


def test_median_share_refuses_too_few_cells(tmp_path):
    blank = tmp_path / "blank.png"
    fileio.write_image(blank, np.full((64, 64, 3), 230, np.uint8))
    with pytest.raises(InputError, match="0 of 3"):
        framing.median_share([str(blank)] * 3)


@pytest.mark.slow
def test_adapt_stores_the_site_zoom_and_predict_applies_it(tmp_path, tiny_model):
    """Site crops = demo cells viewed 1.5x wider: adapt measures zoom ~ 1/1.5 against the demo cells
    as training cells, stores it, and predict on the site crops then sees the training framing."""
    pytest.importorskip("nnabla")
    from wbc_nnabla import modelfile, predictor
    from wbc_nnabla.sites import adaptation
    demo = fileio.read_cells(fileio.demo_data())
    site = tmp_path / "site"
    site.mkdir()
    for i, p in enumerate(demo["path"][:40]):
        fileio.write_image(site / f"c{i:02d}.png", framing.reframe(fileio.read_rgb(p), 1.5))
    train_csv = tmp_path / "train.csv"
    demo[["path"]].iloc[40:100].to_csv(train_csv, index=False)
    r = adaptation.adapt_batchnorm(tiny_model / "model.nnp", site, tmp_path / "a.nnp", max_images=32,
                                   train_cells=train_csv)
    zoom = modelfile.read_meta(tmp_path / "a.nnp")["zoom"]
    assert r["scale"]["zoom"] == zoom and 0.55 < zoom < 0.8, zoom
    assert modelfile.read_meta(tmp_path / "a.nnp")["pad"] == site_settings.DEFAULT_PAD
    df = predictor.predict(tmp_path / "a.nnp", site, backend="nnabla", progress=False)
    assert df.attrs["zoom"] == zoom
    plain = adaptation.adapt_batchnorm(tiny_model / "model.nnp", site, tmp_path / "b.nnp", max_images=32,
                                       scale=False)
    assert plain["scale"] is None and modelfile.read_meta(tmp_path / "b.nnp")["zoom"] == 1.0
    assert modelfile.read_meta(tmp_path / "b.nnp")["pad"] == site_settings.LEGACY_PAD   # no scale: the model's own
    with pytest.raises(InputError, match="pad must be one of"):
        adaptation.adapt_batchnorm(tiny_model / "model.nnp", site, tmp_path / "c.nnp", max_images=32,
                                   train_cells=train_csv, pad="mirror")
    assert not (tmp_path / "c.nnp").exists()


@pytest.mark.slow
def test_adapt_scale_on_cells_without_wbcs_is_refused_with_the_way_out(tmp_path, tiny_model):
    """A site whose crops show no WBC cannot give a scale: a clear error naming the cells and
    --no-scale, nothing written; with scale=False the statistics are still adapted."""
    pytest.importorskip("nnabla")
    from wbc_nnabla.sites import adaptation
    site = tmp_path / "blank"
    site.mkdir()
    for i in range(32):
        fileio.write_image(site / f"c{i:02d}.png", np.full((64, 64, 3), 200 + (i % 20), np.uint8))
    train_csv = tmp_path / "train.csv"
    fileio.read_cells(fileio.demo_data())[["path"]].iloc[:40].to_csv(train_csv, index=False)
    with pytest.raises(adaptation.AdaptationError, match="blank.*--no-scale"):
        adaptation.adapt_batchnorm(tiny_model / "model.nnp", site, tmp_path / "a.nnp", train_cells=train_csv)
    assert not (tmp_path / "a.nnp").exists()
    r = adaptation.adapt_batchnorm(tiny_model / "model.nnp", site, tmp_path / "b.nnp", scale=False)
    assert r["scale"] is None and (tmp_path / "b.nnp").is_file()
