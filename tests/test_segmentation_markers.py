"""Tests of the WBC mask's red-cell markers, red-cell cut and stain-invariant pale-cytoplasm test
(wbc_nnabla.segmentation; docs/cells.md steps 4-8), on synthetic cells and on pbc6 cells."""
import cv2
import numpy as np
import pytest

from wbc_nnabla import fileio, segmentation

PLASMA = (245, 232, 222)
NUCLEUS = (110, 60, 150)
RED_CELL, RED_CELL_CENTRE = (200, 160, 175), (225, 200, 205)


def disc(shape, cx, cy, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2


def red_cell(img, shape, x, y, r, colour=RED_CELL):
    """A red cell with a pale centre, drawn into ``img``; returns its disc."""
    d = disc(shape, x, y, r)
    img[d] = colour
    img[disc(shape, x, y, 0.45 * r)] = RED_CELL_CENTRE
    return d


def finish(img, seed=0):
    rng = np.random.default_rng(seed)
    img = np.clip(img.astype(np.float32) + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def touching_cell(size=160, r_cell=30, r_nuc=17, r_rbc=18, overlap=6):
    """A WBC whose cytoplasm has exactly the red cells' colour, one red cell touching it
    (the hardest case for colour models) and three others around. Returns (img, cell, the
    touching red cell outside the cell, nucleus)."""
    shape = (size, size)
    img = np.zeros(shape + (3,), np.uint8)
    img[:] = PLASMA
    c = size // 2
    touching = red_cell(img, shape, c + r_cell + r_rbc - overlap, c, r_rbc)
    for ang in (100, 200, 260):
        red_cell(img, shape, c + (r_cell + r_rbc + 8) * np.cos(np.radians(ang)),
                 c + (r_cell + r_rbc + 8) * np.sin(np.radians(ang)), r_rbc)
    cell = disc(shape, c, c, r_cell)
    img[cell] = RED_CELL
    nucleus = disc(shape, c, c, r_nuc)
    img[nucleus] = NUCLEUS
    return finish(img), cell, touching & ~cell, nucleus


def pale_cell(size=160, r_cell=32, cytoplasm=(216, 198, 206), red=(180, 125, 150)):
    """A two-lobed neutrophil whose finely granular cytoplasm is pale (optical density 0.14
    of the nucleus'; pbc6 pale neutrophils: 0.16-0.21), among red cells stained darker than
    it: the three-class Otsu puts the ring with the plasma. Returns (img, cell, nucleus)."""
    shape = (size, size)
    img = np.zeros(shape + (3,), np.float32)
    img[:] = PLASMA
    c = size // 2
    for ang in (20, 100, 200, 290):
        red_cell(img, shape, c + (r_cell + 22) * np.cos(np.radians(ang)),
                 c + (r_cell + 22) * np.sin(np.radians(ang)), 20, red)
    cell = disc(shape, c, c, r_cell)
    img[cell] = cytoplasm
    img[cell] += np.random.default_rng(1).normal(0, 6, (cell.sum(), 1))   # fine granules
    nucleus = disc(shape, c - 8, c - 4, 11) | disc(shape, c + 9, c + 5, 11)
    img[nucleus] = NUCLEUS
    return finish(img), cell, nucleus


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def od_scaled(rgb, k):
    """The image with its optical density -log(I/255) scaled by k per RGB channel."""
    i = (rgb.astype(np.float32) + 1.0) / 256.0
    return np.clip(256.0 * i ** np.asarray(k, np.float32) - 0.5, 0, 255).astype(np.uint8)


def hue_rotated(rgb, degrees):
    hsv = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + degrees) % 360.0
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- red cells


def test_touching_red_cell_of_the_cytoplasm_colour_stays_out_of_the_mask():
    img, cell, touching, _ = touching_cell()
    m, _ = segmentation.segment_wbc(img)
    assert (m & touching).sum() <= 0.03 * touching.sum()
    assert iou(m, cell) >= 0.93
    assert segmentation.solidity(m) >= 0.95


def test_red_cell_markers_find_the_touching_red_cell_not_the_wbc():
    img, cell, touching, nucleus = touching_cell()
    hull = segmentation.convex_hull(nucleus)
    markers = segmentation.red_cell_markers(img, hull, segmentation.equivalent_radius(hull), nucleus)
    # the red cell lies partly under the WBC, so its circle may clip the WBC's edge
    assert (markers & cell).sum() <= 0.02 * cell.sum()
    assert (markers & touching).sum() >= 0.4 * touching.sum()   # the core (shrunk disc) of it
    assert markers.sum() <= 4 * touching.sum()                  # the four red cells at most


def test_red_cell_markers_skip_nuclei():
    # a second nucleus beside the WBC is round too, but it is not a red cell
    shape = (120, 120)
    img = np.zeros(shape + (3,), np.uint8)
    img[:] = PLASMA
    nucleus = disc(shape, 40, 60, 14)
    other = disc(shape, 85, 60, 14)
    img[nucleus | other] = NUCLEUS
    hull = segmentation.convex_hull(nucleus)
    markers = segmentation.red_cell_markers(finish(img), hull, segmentation.equivalent_radius(hull),
                                            nucleus | other)
    assert not (markers & other).any()


def test_cut_red_cells_removes_a_swallowed_round_lobe_and_keeps_the_cell():
    shape = (120, 120)
    cell = disc(shape, 50, 60, 26)
    rbc = disc(shape, 50 + 26 + 14, 60, 17)
    hull = disc(shape, 50, 60, 15)
    cut = segmentation.cut_red_cells(cell | rbc, hull, segmentation.equivalent_radius(hull), hull)
    assert (cut & rbc & ~cell).sum() <= 0.1 * (rbc & ~cell).sum()
    assert (cut & cell).sum() >= 0.95 * cell.sum()
    # a convex cell is left alone
    np.testing.assert_array_equal(segmentation.cut_red_cells(cell, hull, 15.0, hull), cell)


# ----------------------------------------------------------------------------- pale cytoplasm


def test_pale_granular_cytoplasm_ring_is_kept():
    img, cell, _ = pale_cell()
    m, _ = segmentation.segment_wbc(img)
    assert iou(m, cell) >= 0.9, iou(m, cell)


@pytest.mark.parametrize("shift", ["none", "od x0.7", "od x1.3", "od x(0.7, 1, 1.3)", "hue +15", "hue -15"])
def test_stained_mask_separates_the_pale_ring_from_plasma_under_colour_shifts(shift):
    img, cell, nucleus = pale_cell()
    shifted = {"none": img, "od x0.7": od_scaled(img, (0.7, 0.7, 0.7)), "od x1.3": od_scaled(img, (1.3, 1.3, 1.3)),
               "od x(0.7, 1, 1.3)": od_scaled(img, (0.7, 1.0, 1.3)), "hue +15": hue_rotated(img, 15),
               "hue -15": hue_rotated(img, -15)}[shift]
    stained = segmentation.stained_mask(shifted, nucleus)
    far = ~cv2.dilate(cell.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    plasma = far & (shifted.astype(int).sum(-1) >= np.percentile(shifted.astype(int).sum(-1), 80))
    ring = cell & ~cv2.dilate(nucleus.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert stained[ring].mean() >= 0.6
    assert stained[plasma].mean() <= 0.01
    m, _ = segmentation.segment_wbc(shifted)
    assert iou(m, cell) >= 0.85, (shift, iou(m, cell))


def test_optical_density_is_zero_on_the_background_and_grows_with_stain():
    img = np.zeros((20, 30, 3), np.uint8)
    img[:] = PLASMA
    img[:, 20:] = (120, 60, 150)
    od = segmentation.optical_density(img, np.array(PLASMA, np.float32))
    assert od.shape == (20, 30, 3) and od.dtype == np.float32 and (od >= 0).all()
    assert od[:, :5].max() < 1e-6 and (od[:, 25:, 1] > 1.0).all()


# ----------------------------------------------------------------------------- real cells (skipped when absent)


def test_pbc6_red_cells_touching_the_wbc_stay_out(pbc6):
    # cells whose mask took in a touching red cell before the markers and the cut
    # (solidity < 0.9; see docs/research/benchmarks_log.md)
    for name in ("Band/BNE_204774", "Segment/SNE_736225", "Segment/SNE_798289", "Mono/MO_344440"):
        rgb = fileio.read_rgb(pbc6 / f"{name}.jpg")
        m, nuc = segmentation.segment_wbc(rgb)
        assert segmentation.solidity(m) >= 0.9, name
        assert m.sum() >= 1.15 * segmentation.convex_hull(nuc).sum(), name    # the cytoplasm is kept
