"""The domain reference of a set of cells: what the domain-shift check (:mod:`wbc_nnabla.sites.domain`) compares with.

:func:`domain_reference` summarises a seeded class-stratified sample of cells as the network
sees them: the training cells (stored by ``wbc-nnabla train``, through the training seam
:func:`wbc_nnabla.sites.seams.training_record`), a site's labelled cells (``finetune``), or the
training dataset of a model trained without one: :func:`add_domain_reference` writes a copy of
such a model with it, parameters unchanged. CLI: ``wbc-nnabla domain-reference MODEL DATASET OUT.nnp``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np

from .. import modelfile, outputs, sampling
from ..errors import InputError, PathLike
from ..loader import ImageLoader, read_split
from . import domain

log = logging.getLogger(__name__)

#: Images (seeded, class-stratified) a stored domain reference is computed on.
DOMAIN_SAMPLE = 1000


def domain_reference(loader: ImageLoader, seed: int, n: int = DOMAIN_SAMPLE, source: str = "") -> Optional[dict]:
    """The domain reference (:func:`wbc_nnabla.sites.domain.reference`) of a seeded class-stratified sample of ``loader``.

    loader: the clean (never augmented) training images, at the training size.
    n: images in the sample (all when fewer); read in chunks of 256, so memory
    stays small at any size. Stored in the exported model by :func:`train`.
    None (logged) when ``loader`` has fewer than :data:`wbc_nnabla.sites.domain.MIN_CELLS` images.
    """
    if len(loader) < domain.MIN_CELLS:
        log.warning("%d training images: fewer than %d, the model stores no domain reference (predict will "
                    "say the domain-shift check is unavailable)", len(loader), domain.MIN_CELLS)
        return None
    rows = sampling.shuffled_sample(np.asarray(loader.labels), min(int(n), len(loader)), seed)
    desc = [domain.descriptors(np.stack([loader.image(int(i)) for i in rows[k:k + 256]]))
            for k in range(0, len(rows), 256)]
    return domain.reference(np.concatenate(desc), source=source or
                            f"{len(rows)} of {len(loader)} training images (seeded, class-stratified)")




def add_domain_reference(model: PathLike, dataset_dir: PathLike, out: PathLike, size: Optional[int] = None,
                         seed: int = 0, n: int = DOMAIN_SAMPLE, overwrite: bool = False) -> dict:
    """Write ``out``: ``model`` with the domain reference of ``dataset_dir/train.csv`` in its description.

    model: a ``.nnp``/``.h5`` model file (never changed).
    dataset_dir: the NNC dataset folder the model was trained on (its ``train.csv`` is read).
    out: the ``.nnp`` to write (not the model; an existing file only with ``overwrite``).
    size: side (pixels) the images are resized to; default the model's stored size.
    seed, n: the sample, as in training (:func:`domain_reference`; the
        run seed's derived stream is not reproduced: ``seed`` is used directly).
    Returns the reference stored (under :data:`wbc_nnabla.sites.domain.META_KEY`).
    Raises a :class:`~wbc_nnabla.errors.WBCError` naming the file before writing anything.
    """
    model, dataset_dir, out = Path(model), Path(dataset_dir), Path(out)
    seed = sampling.check_seed(seed)
    if out.suffix.lower() != ".nnp":
        raise InputError(f"{out}: the model with its domain reference must be written as a .nnp")
    if out.resolve() == model.resolve():
        raise InputError(f"{out}: is the input model; write to another file (the model is never replaced)")
    outputs.check_output(out, "domain-reference", overwrite, [model, dataset_dir], folder=False)
    params, meta = modelfile.read_model(model)
    size = modelfile.network_size(meta, size, model)
    csv = dataset_dir / "train.csv"
    if not csv.is_file():
        raise InputError(f"{dataset_dir}: no train.csv (expected the NNC dataset folder the model was trained on)")
    paths, labels = read_split(csv)
    if len(paths) < domain.MIN_CELLS:
        raise InputError(f"{csv}: {len(paths)} images; a domain reference needs at least {domain.MIN_CELLS}")
    ref = domain_reference(ImageLoader(paths, labels, size), seed, n,
                                    source=f"{csv.resolve()} at {size} px (seed {seed})")
    kept = {k: v for k, v in meta.items() if k not in ("format", "arch", "class_names", "num_classes",
                                                       "input_size", "wbc_nnabla", "assumed")}
    kept[domain.META_KEY] = ref
    modelfile.save_nnp(out, params, modelfile.model_meta(meta["arch"], meta["class_names"], size, **kept))
    return ref
