"""Tests of wbc_nnabla.segmentation: crops, WBC masks, background removal, location, VOC, CLI."""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from helpers import VOC
from wbc_nnabla import cli, fileio, outputs, segmentation

CREAM, CYTO, NUCLEUS, PINK = (250, 230, 200), (200, 180, 220), (80, 30, 140), (220, 160, 170)


def disc(shape, cx, cy, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2


def synthetic_cell(size=96, r_cell=20, r_nuc=10, r_rbc=13):
    """A dark nucleus inside a paler cell on cream, a pink red cell touching it."""
    shape = (size, size)
    img = np.zeros(shape + (3,), np.uint8)
    img[:] = CREAM
    c = size // 2
    rbc = disc(shape, c + r_cell + r_rbc - 1, c, r_rbc)
    cell = disc(shape, c, c, r_cell)
    img[rbc] = PINK
    img[cell] = CYTO
    img[disc(shape, c, c, r_nuc)] = NUCLEUS
    rng = np.random.default_rng(0)
    img = np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)
    return img, cell, rbc & ~cell


def synthetic_field(h=240, w=320):
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = CREAM
    for x, y in [(40, 40), (150, 60), (280, 200), (200, 190), (100, 200), (270, 40)]:
        img[disc((h, w), x, y, 14)] = PINK
    centres = [(80, 120), (230, 110)]
    for x, y in centres:
        img[disc((h, w), x, y, 24)] = CYTO
        img[disc((h, w), x, y, 13)] = NUCLEUS
    return img, np.array(centres, float)


# ----------------------------------------------------------------------------- crops


def test_crop_square_centred_inside():
    img = np.arange(100 * 120 * 3, dtype=np.uint32).reshape(100, 120, 3).astype(np.uint8)
    crop, info = segmentation.crop_square(img, 60, 50, 20)
    assert crop.shape == (20, 20, 3)
    assert info["box"] == (50, 40, 70, 60) and info["pad"] == (0, 0, 0, 0)
    np.testing.assert_array_equal(crop, img[40:60, 50:70])


@pytest.mark.parametrize("mode", ["reflect", "constant", "replicate"])
def test_crop_square_pads_at_border(mode):
    img = np.zeros((50, 60, 3), np.uint8)
    img[:, :] = (10, 20, 30)
    img[0, 0] = (200, 100, 50)
    crop, info = segmentation.crop_square(img, 2, 3, 16, pad_mode=mode)
    assert crop.shape == (16, 16, 3)
    assert info["box"] == (-6, -5, 10, 11)
    assert info["pad"] == (5, 0, 6, 0) and info["pad_mode"] == mode
    # the source pixel (0, 0) sits at crop (top, left) = (5, 6): the centre is kept
    np.testing.assert_array_equal(crop[5, 6], (200, 100, 50))
    if mode == "constant":
        np.testing.assert_array_equal(crop[0, 0], (255, 255, 255))
    if mode == "replicate":
        np.testing.assert_array_equal(crop[0, 6], (200, 100, 50))
    if mode == "reflect":
        np.testing.assert_array_equal(crop[5, 6 - 1], (10, 20, 30))


def test_crop_square_errors():
    img = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="pad_mode"):
        segmentation.crop_square(img, 10, 10, 8, pad_mode="wrap")
    with pytest.raises(ValueError, match="outside"):
        segmentation.crop_square(img, 100, 100, 8)


def test_crop_size_px():
    assert segmentation.crop_size_px() == 750
    assert segmentation.crop_size_px(320) == 320
    assert segmentation.crop_size_px(crop_um=30.0, pixel_um=0.04) == 750
    with pytest.raises(ValueError, match="pixel_um"):
        segmentation.crop_size_px(crop_um=30.0)
    with pytest.raises(ValueError, match="crop_um"):
        segmentation.crop_size_px(pixel_um=0.1)
    with pytest.raises(ValueError, match="positive"):
        segmentation.crop_size_px(crop_um=-1, pixel_um=0.1)


# ----------------------------------------------------------------------------- masks


@pytest.mark.parametrize("scale", [1, 3])
def test_wbc_mask_synthetic_cell(scale):
    img, cell, rbc = synthetic_cell(96 * scale, 20 * scale, 10 * scale, 13 * scale)
    m = segmentation.wbc_mask(img)
    assert m.dtype == bool and m.shape == cell.shape
    iou = (m & cell).sum() / (m | cell).sum()
    assert iou > 0.85, iou
    assert (m & rbc).sum() < 0.1 * rbc.sum()          # the touching red cell is excluded
    assert ndi.label(m)[1] == 1                         # one component
    np.testing.assert_array_equal(ndi.binary_fill_holes(m), m)  # no holes


def test_wbc_mask_no_nucleus_is_empty():
    img = np.full((40, 40, 3), CREAM, np.uint8)
    assert not segmentation.wbc_mask(img).any()


def test_remove_background_fill():
    img, cell, _ = synthetic_cell()
    out = segmentation.remove_background(img, cell, fill=(1, 2, 3))
    np.testing.assert_array_equal(out[~cell], np.tile((1, 2, 3), ((~cell).sum(), 1)))
    np.testing.assert_array_equal(out[cell], img[cell])
    auto = segmentation.remove_background(img)
    assert (auto == 255).all(axis=2).sum() > 0.5 * (~cell).sum()
    with pytest.raises(ValueError, match="mask shape"):
        segmentation.remove_background(img, np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="RGB uint8"):
        segmentation.remove_background(img.astype(np.float32))


# ----------------------------------------------------------------------------- location and VOC


def test_locate_synthetic_field():
    img, truth = synthetic_field()
    found = segmentation.locate_wbcs(img)
    assert found.shape == (2, 2)
    for x, y in truth:
        assert np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) < 4
    assert segmentation.locate_wbcs(np.full((50, 60, 3), CREAM, np.uint8)).shape == (0, 2)


def test_read_voc(tmp_path):
    p = tmp_path / "f1.xml"
    p.write_text(VOC)
    df = fileio.read_voc(p)
    assert list(df.columns) == ["image", "name", "xmin", "ymin", "xmax", "ymax", "x", "y"]
    assert len(df) == 1 and df.image[0] == "f1.jpg" and (df.x[0], df.y[0]) == (30.0, 40.0)
    assert len(fileio.read_voc(p, names=("WBC", "RBC"))) == 2
    bad = tmp_path / "bad.xml"
    bad.write_text("<annotation><object><name>WBC</name>")
    with pytest.raises(ValueError, match="bad.xml"):
        fileio.read_voc(bad)
    nobox = tmp_path / "nobox.xml"
    nobox.write_text("<annotation><object><name>WBC</name><bndbox><xmin>a</xmin></bndbox></object></annotation>")
    with pytest.raises(ValueError, match="nobox.xml.*bndbox"):
        fileio.read_voc(nobox)


# ----------------------------------------------------------------------------- real data (skipped when absent)


def test_zheng_masks_iou(zheng):
    ious = []
    for i in (1, 2, 3, 5, 8, 13, 21, 34):
        rgb = fileio.read_rgb(zheng / f"{i:03d}.bmp")
        truth = fileio.read_rgb(zheng / f"{i:03d}.png", min_background=0)[..., 0] > 0   # a mask, not a photo
        m = segmentation.wbc_mask(rgb)
        ious.append((m & truth).sum() / (m | truth).sum())
    assert np.median(ious) >= 0.9, ious


def test_bccd_locate(bccd):
    hits = []
    for name in ("BloodImage_00000", "BloodImage_00003", "BloodImage_00012", "BloodImage_00034"):
        boxes = fileio.read_voc(bccd / "Annotations" / f"{name}.xml")
        found = segmentation.locate_wbcs(fileio.read_rgb(bccd / "JPEGImages" / f"{name}.jpg"))
        for bx, by in zip(boxes.x, boxes.y):
            hits.append(len(found) > 0 and np.min(np.hypot(found[:, 0] - bx, found[:, 1] - by)) <= 40)
    assert np.mean(hits) >= 0.75, hits


# ----------------------------------------------------------------------------- CLI


def test_cli_segment(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    img, cell, _ = synthetic_cell()
    fileio.write_image(src / "a.png", img)
    fileio.write_image(src / "b.jpg", np.full((40, 40, 3), CREAM, np.uint8))
    out = tmp_path / "masks"
    assert cli.main(["segment", str(src), "--out", str(out)]) == 0
    m = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    assert m.shape == cell.shape and set(np.unique(m)) <= {0, 255}
    assert ((m > 0) & cell).sum() / ((m > 0) | cell).sum() > 0.85
    assert (out / "b.png").exists() and (out / "gallery.png").exists()
    assert cli.main(["segment", str(src), "--out", str(src / "masks")]) == 2   # inside the input
    assert cli.main(["segment", str(tmp_path / "missing"), "--out", str(out)]) == 2


def test_cli_locate(tmp_path):
    src = tmp_path / "fields"
    src.mkdir()
    img, truth = synthetic_field()
    fileio.write_image(src / "f.png", img)
    out = tmp_path / "centres.csv"
    assert cli.main(["locate", str(src), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns) == ["image", "x", "y"] and len(df) == 2
    assert Path(df.image[0]).name == "f.png"
    assert cli.main(["locate", str(src), "--out", str(src / "c.csv")]) == 2


def test_segment_images_and_locate_images_api(tmp_path):
    """What the segment and locate commands do, from Python: the summary, the files, the table."""
    src = tmp_path / "in"
    img, cell, _ = synthetic_cell()
    fileio.write_image(src / "Lymph" / "a.png", img)
    fileio.write_image(src / "Mono" / "b.jpg", np.full((40, 40, 3), CREAM, np.uint8))
    s = segmentation.segment_images([src], tmp_path / "masks", gallery=1)
    assert s == dict(out=tmp_path / "masks", images=2, empty=1, failed=0, gallery=tmp_path / "masks" / "gallery.png",
                     gallery_images=1)
    assert cv2.imread(str(s["gallery"])).shape == (segmentation.GALLERY_TILE, segmentation.GALLERY_TILE * segmentation.GALLERY_COLUMNS, 3)
    assert sorted(p.name for p in s["out"].iterdir()) == [outputs.OUTPUT_MARKER, "a.png", "b.png", "gallery.png"]
    assert segmentation.segment_images([src / "Lymph" / "a.png"], tmp_path / "one", gallery=0)["gallery"] is None
    fileio.write_image(tmp_path / "other" / "a.jpg", img)
    with pytest.raises(ValueError, match="would both write a.png"):
        segmentation.segment_images([src, tmp_path / "other"], tmp_path / "two")
    assert not (tmp_path / "two").exists()

    field, truth = synthetic_field()
    fileio.write_image(tmp_path / "fields" / "f.png", field)
    fileio.write_image(tmp_path / "fields" / "blank.png", np.full((60, 60, 3), CREAM, np.uint8))
    paths = fileio.image_files([tmp_path / "fields"])
    table = segmentation.locate_table(paths)
    assert list(table.columns) == list(segmentation.LOCATE_COLUMNS) and set(table["image"]) == {str(paths[1])}
    found = table[["x", "y"]].to_numpy()
    assert all(np.min(np.hypot(*(found - c).T)) < 3 for c in truth)
    written = segmentation.locate_images([tmp_path / "fields"], tmp_path / "centres.csv")
    assert written.attrs["images"] == 2 and written.equals(table)
    assert pd.read_csv(tmp_path / "centres.csv").equals(table)
    with pytest.raises(FileExistsError, match="already exists"):
        segmentation.locate_images([tmp_path / "fields"], tmp_path / "centres.csv")


# ----------------------------------------------------------------------------- pale cytoplasm retry


def test_cytoplasm_ring_needs_stain_all_around():
    shape = (80, 80)
    hull = disc(shape, 40, 40, 12)
    d = ndi.distance_transform_edt(~hull)
    rw = segmentation.equivalent_radius(hull)
    around = disc(shape, 40, 40, 20)                     # a cytoplasm all around the nucleus
    assert segmentation.has_cytoplasm_ring(around, hull, d, rw)
    one_side = around & (np.mgrid[:80, :80][1] > 40)    # e.g. a red cell touching on one side
    assert not segmentation.has_cytoplasm_ring(one_side | hull, hull, d, rw)
    assert not segmentation.has_cytoplasm_ring(hull, hull, d, rw)  # nucleus only, no cytoplasm


def test_pbc6_pale_neutrophils_keep_cytoplasm(pbc6):
    # Segment cells whose pale cytoplasm GrabCut gave to the background before the
    # retry (mask area was <= 1.1 x the nucleus hull area).
    for name in ("SNE_699042", "SNE_633335", "SNE_23265", "SNE_668137"):
        rgb = fileio.read_rgb(pbc6 / "Segment" / f"{name}.jpg")
        m, nuc = segmentation.segment_wbc(rgb)
        ratio = m.sum() / segmentation.convex_hull(nuc).sum()
        assert ratio >= 1.4, (name, ratio)
        assert m.sum() / segmentation.convex_hull(m).sum() >= 0.9, name    # convex: no red cell swallowed
        np.testing.assert_array_equal(segmentation.segment_wbc(rgb)[0], m)  # deterministic


def test_cli_segment_gallery_0_names_no_gallery(tmp_path, capsys):
    """`segment --gallery 0` writes no gallery.png and its message names none."""
    src = tmp_path / "in"
    src.mkdir()
    img, _, _ = synthetic_cell()
    fileio.write_image(src / "a.png", img)
    out = tmp_path / "masks"
    assert cli.main(["segment", str(src), "--out", str(out), "--gallery", "0"]) == 0
    printed = capsys.readouterr().out
    assert not (out / "gallery.png").exists() and "gallery.png" not in printed and (out / "a.png").exists()
