"""The domain reference of an existing model: computed on its training images and stored in a copy.

``wbc-nnabla train`` stores the reference of the domain-shift check
(:mod:`wbc_nnabla.domain`) in every model it writes. A model trained before
the check existed has none; :func:`add_domain_reference` computes it on that
model's training dataset (``train.csv``, the same seeded class-stratified
sample training uses) and writes a copy of the model with it, parameters
unchanged. CLI: ``wbc-nnabla domain-reference MODEL DATASET OUT.nnp``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from . import domain, modelfile, outputs, sampling, training
from .errors import InputError

PathLike = Union[str, os.PathLike]


def add_domain_reference(model: PathLike, dataset_dir: PathLike, out: PathLike, size: Optional[int] = None,
                         seed: int = 0, n: int = training.DOMAIN_SAMPLE, overwrite: bool = False) -> dict:
    """Write ``out``: ``model`` with the domain reference of ``dataset_dir/train.csv`` in its description.

    model: a ``.nnp``/``.h5`` model file (never changed).
    dataset_dir: the NNC dataset folder the model was trained on (its ``train.csv`` is read).
    out: the ``.nnp`` to write (not the model; an existing file only with ``overwrite``).
    size: side (pixels) the images are resized to; default the model's stored size.
    seed, n: the sample, as in training (:func:`wbc_nnabla.training.domain_reference`; the
        run seed's derived stream is not reproduced: ``seed`` is used directly).
    Returns the reference stored (under :data:`wbc_nnabla.domain.META_KEY`).
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
    paths, labels = training.read_split(csv)
    if len(paths) < domain.MIN_CELLS:
        raise InputError(f"{csv}: {len(paths)} images; a domain reference needs at least {domain.MIN_CELLS}")
    ref = training.domain_reference(training.ImageLoader(paths, labels, size), seed, n,
                                    source=f"{csv.resolve()} at {size} px (seed {seed})")
    kept = {k: v for k, v in meta.items() if k not in ("format", "arch", "class_names", "num_classes",
                                                       "input_size", "wbc_nnabla", "assumed")}
    kept[domain.META_KEY] = ref
    modelfile.save_nnp(out, params, modelfile.model_meta(meta["arch"], meta["class_names"], size, **kept))
    return ref
