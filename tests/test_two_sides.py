"""Images without two sides (issue 49, root cause 1): a bad image like a corrupt one, never ``cv2.error``.

GrabCut needs a background and a WBC sample; black, very dark, single-colour and
colour-inverted images leave it one side only (or a "nucleus" that is the slide). Each is
refused before GrabCut, by :func:`wbc_nnabla.images.check_background` (no bright background)
or :mod:`wbc_nnabla.segmentation` (a nucleus hull across the border, seeds of one side),
as an ``ImageReadError`` that ``--skip-bad`` skips; optional steps (the WBC-scale hint) go on.
"""
import glob
import random

import cv2
import numpy as np
import pytest

from wbc_nnabla import fileio, framing, segmentation
from wbc_nnabla.errors import WBCError

CREAM, CYTO, NUCLEUS = (250, 230, 200), (200, 180, 220), (80, 30, 140)


def _cell(size=96):
    img = np.full((size, size, 3), CREAM, np.uint8)
    cv2.circle(img, (size // 2, size // 2), 20, CYTO, -1)
    cv2.circle(img, (size // 2, size // 2), 10, NUCLEUS, -1)
    return np.clip(img + np.random.default_rng(0).normal(0, 3, img.shape), 0, 255).astype(np.uint8)


def _demo(n=12):
    demo = fileio.read_cells(fileio.demo_data())
    return [fileio.read_rgb(p) for p in demo["path"][::len(demo) // n][:n]]


SIDELESS = {
    "black": lambda: np.zeros((64, 64, 3), np.uint8),
    "uniform red": lambda: np.full((64, 64, 3), (200, 0, 0), np.uint8),
    "uniform blue": lambda: np.full((64, 64, 3), (0, 0, 255), np.uint8),
    "very dark": lambda: (_cell() * 0.03).astype(np.uint8),
    "inverted synthetic": lambda: 255 - _cell(),
}


@pytest.mark.parametrize("name", SIDELESS)
def test_segment_wbc_refuses_an_image_without_two_sides(name):
    with pytest.raises(fileio.ImageReadError, match="no two sides"):
        segmentation.segment_wbc(SIDELESS[name]())


def test_inverted_demo_cells_are_refused_and_the_cells_themselves_are_not():
    """On the base commit (17a0d87) 6 of these 12 inverted cells raised cv2.error and 6 gave a mask over half the crop."""
    for rgb in _demo():
        mask = segmentation.wbc_mask(rgb)
        assert 0.02 < mask.mean() < 0.5
        with pytest.raises(fileio.ImageReadError, match="no two sides"):
            segmentation.wbc_mask(255 - rgb)
        with pytest.raises(fileio.ImageReadError, match="no two sides"):
            framing.wbc_share(255 - rgb)


def test_locate_finds_no_wbc_in_a_black_or_inverted_field():
    """A uniform black field was one WBC; an inverted one, its slide."""
    field = np.full((240, 320, 3), CREAM, np.uint8)
    cv2.circle(field, (80, 120), 24, CYTO, -1)
    cv2.circle(field, (80, 120), 13, NUCLEUS, -1)
    assert len(segmentation.locate_wbcs(field)) == 1
    for bad in (np.zeros_like(field), 255 - field):
        with pytest.raises(fileio.ImageReadError, match="no two sides"):
            segmentation.locate_wbcs(bad)


def test_a_blank_file_is_a_bad_image_named_by_the_reader(tmp_path):
    p = tmp_path / "blank.png"
    cv2.imwrite(str(p), np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(fileio.ImageReadError, match=r"blank\.png: no two sides: no bright background"):
        fileio.read_rgb(p)
    assert fileio.read_rgb(p, min_background=0).shape == (64, 64, 3)     # a mask or a dark-field image
    white = tmp_path / "white.png"                                         # a slide without a cell: readable
    cv2.imwrite(str(white), np.full((64, 64, 3), 240, np.uint8))
    assert not segmentation.wbc_mask(fileio.read_rgb(white)).any()


def test_the_scale_hint_goes_on_past_a_bad_image(tmp_path):
    """scale_hint (predict's optional step) counts a blank or inverted cell as one without a WBC;
    median_share names it unless skip_bad."""
    paths = []
    for i, rgb in enumerate(_demo(24)):
        paths.append(str(tmp_path / f"c{i:02d}.png"))
        fileio.write_image(paths[-1], framing.reframe(rgb, 0.5))
    for name, rgb in (("blank", np.zeros((64, 64, 3), np.uint8)), ("inverted", 255 - _demo(1)[0])):
        paths.append(str(tmp_path / f"{name}.png"))
        fileio.write_image(paths[-1], rgb)
    meta = {"wbc_share": framing.median_share(paths[:24], n=24)}
    meta["wbc_share"]["median"] /= 2
    hint = framing.scale_hint(meta, paths)
    assert hint is not None and hint["site"]["found"] == min(framing.HINT_SAMPLE, len(paths)) - 2
    with pytest.raises(fileio.ImageReadError, match=r"(blank|inverted)\.png: no two sides"):
        framing.median_share(paths, n=len(paths))


def test_a_failed_mask_is_a_wbc_error_everywhere():
    """The error is an ImageReadError (the class every --skip-bad catches), hence a WBCError."""
    with pytest.raises(WBCError):
        segmentation.remove_background(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.shared
def test_no_real_cell_or_field_is_refused_and_every_inverted_one_is(pbc6, zheng, bccd):
    """The thresholds on real data (docs/cells.md): a seeded sample of pbc6 and Zheng d1 crops and
    BCCD fields, as they are and colour-inverted."""
    rng = random.Random(0)
    crops = rng.sample(sorted(glob.glob(str(pbc6 / "*" / "*.jpg"))), 40) + \
        rng.sample(sorted(glob.glob(str(zheng / "*.bmp"))), 20)
    for p in crops:
        rgb = fileio.read_rgb(p)
        segmentation.wbc_mask(rgb)
        framing.wbc_share(rgb)
        with pytest.raises(fileio.ImageReadError, match="no two sides"):
            segmentation.wbc_mask(255 - rgb)
    for p in rng.sample(sorted(glob.glob(str(bccd / "JPEGImages" / "*.jpg"))), 10):
        rgb = fileio.read_rgb(p)
        assert len(segmentation.locate_wbcs(rgb)) >= 1
        with pytest.raises(fileio.ImageReadError, match="no two sides"):
            segmentation.locate_wbcs(255 - rgb)
