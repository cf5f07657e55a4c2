"""WBC centres in smear field images (``wbc-nnabla locate``; section II.3 of Sasaki et al. (2020)).

The paper crops 750x750 pixels around each white blood cell of a 2560x1920 photo. Nuclei are
found as for the WBC mask (:mod:`~wbc_nnabla.nuclei`), grouped into cells, and each large
enough group is a WBC; its centre is the centroid of the group's convex hull. A field without
a bright background, or whose largest "nucleus" spans its border (a colour-inverted field), is
a bad image (:class:`~wbc_nnabla.images.NoBackgroundError`), never a WBC. Split from
:mod:`~wbc_nnabla.segmentation`, which re-exports every name here. docs/cells.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from . import images, outputs
from .images import NoBackgroundError
from .nuclei import MAX_FIELD_BORDER, check_border, convex_hull, group_fragments, otsu3, reduce, violet


def locate_wbcs(field_rgb: np.ndarray, min_share: float = 0.3) -> np.ndarray:
    """Centres of the WBCs in a smear field image: float ``(K, 2)`` of ``(x, y)`` pixels.

    The paper's inference crops 750x750 around each WBC of a 2560x1920 photo
    (section II.3). Nuclei are the top class of a three-class Otsu split of
    :func:`violet` (dark and blue); fragments are grouped into cells (lobes within
    ``LOBE_GAP * r_n``); a group counts as a WBC when its area is at least
    ``min_share`` of the largest group's (platelets and stain debris are
    smaller). The centre is the centroid of the group's convex hull. A field
    with no stained nucleus gives ``(0, 2)``; a field whose largest dark
    object is not a WBC (no WBC at all) is not recognised as such. A field
    without a bright background (:func:`wbc_nnabla.images.check_background`),
    or whose largest group's hull covers more than :data:`MAX_FIELD_BORDER`
    of its border (the slide of a colour-inverted field), raises
    :class:`~wbc_nnabla.images.NoBackgroundError` (no WBC can stand out).
    """
    images.check_background(images.check_rgb(field_rgb))
    img, f = reduce(field_rgb)
    s = violet(img)
    t_low, t_high = otsu3(s)
    groups = group_fragments(s > t_high, stained=s > t_low)
    if not groups:
        return np.zeros((0, 2), float)
    areas = np.array([g.sum() for g in groups], float)
    check_border(convex_hull(groups[int(np.argmax(areas))]), MAX_FIELD_BORDER, "largest nucleus")
    out = []
    for g, a in zip(groups, areas):
        if a >= min_share * areas.max():
            cy, cx = ndi.center_of_mass(convex_hull(g))
            out.append(((cx + 0.5) / f - 0.5, (cy + 0.5) / f - 0.5))
    return np.array(out, float).reshape(-1, 2)


#: Columns of the ``locate`` table: image path, WBC centre in pixels.
LOCATE_COLUMNS = ("image", "x", "y")


def locate_table(paths: Sequence) -> pd.DataFrame:
    """WBC centres (:func:`locate_wbcs`) of field images: one ``image, x, y`` row per WBC.

    paths: image files, read in order. ``image`` is the path as given; ``x``,
    ``y`` are pixels rounded to 0.1. A field without a WBC gives no row; a bad
    field (:func:`wbc_nnabla.images.read_rgb`, or no background:
    :class:`~wbc_nnabla.images.NoBackgroundError`) raises naming its file.
    """
    rows = []
    for p in paths:
        try:
            centres = locate_wbcs(images.read_rgb(p))
        except NoBackgroundError as e:
            raise images.naming(e, p) from None
        for x, y in centres:
            rows.append({"image": str(p), "x": round(float(x), 1), "y": round(float(y), 1)})
    return pd.DataFrame(rows, columns=list(LOCATE_COLUMNS))


def locate_images(inputs: Sequence, out, overwrite: bool = False) -> pd.DataFrame:
    """WBC centres in smear fields, written as the CSV ``out`` (``wbc-nnabla locate``).

    inputs: field images and/or folders (searched recursively, :func:`wbc_nnabla.images.image_files`).
    out: CSV (:data:`LOCATE_COLUMNS`, :func:`locate_table`), never in an input
        folder; an existing file is replaced only with ``overwrite`` (and never
        when it is an input, :func:`wbc_nnabla.outputs.check_output`), atomically.
    Returns the table; ``attrs["images"]`` is the number of field images read.
    """
    out = Path(out)
    paths = images.image_files(inputs)
    outputs.check_not_inside(out.parent, images.image_folders(inputs))
    outputs.check_output(out, "locate", overwrite, paths, folder=False)
    table = locate_table(paths)
    with outputs.atomic_files([out], overwrite=overwrite) as (tmp,):
        table.to_csv(tmp, index=False, lineterminator="\n")
    table.attrs["images"] = len(paths)
    return table
