"""The data loader of training and of every stage that trains or re-estimates a network.

:class:`ImageLoader` is the ``load_func`` of nnabla's ``data_iterator_simple`` (index -> uint8
image, label); :func:`batches` draws seeded batches from it in a background thread, as Neural
Network Console's data iterator does; :func:`read_split` reads an NNC dataset CSV; :func:`sample_rows`
draws the seeded class-stratified samples of a split (BatchNorm re-estimation, Training Error);
:func:`style_bank` reads another lab's cells for the Fourier augmentation term.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from nnabla.utils.data_iterator import data_iterator_simple

from . import classes, fileio, modelfile, sampling
from .augmentation import low_band_amplitudes
from .recipe import TrainingError

#: Most style cells (:attr:`wbc_nnabla.recipe.TrainConfig.style_cells`) read, a seeded sample of a larger
#: source, and fewest accepted: the Fourier step draws one per image, and a handful would stand for no lab.
MAX_STYLE_CELLS = 500
MIN_STYLE_CELLS = 8


def read_split(csv_path) -> Tuple[List[str], np.ndarray]:
    """(image paths, six-class indices) of an NNC dataset CSV (``x:image,y:label``)."""
    df = fileio.read_nnc_csv(csv_path)
    if (df["label"] == "").any():
        row = df.index[df["label"] == ""][0]
        raise TrainingError(f"{df['source'][row]}: no y:label (every training/validation image needs one)")
    return list(df["path"]), np.array([classes.CLASSES6.index(v) for v in df["label"]], np.int32)


class ImageLoader:
    """``load_func`` for ``data_iterator_simple``: index -> (uint8 ``(3, S, S)`` RGB, label ``(1,)``).

    Images are resized to ``size`` x ``size`` (area interpolation when shrinking);
    with ``cache`` the resized uint8 images are kept in memory after the first
    read (480 px: 0.7 MB each).
    """

    def __init__(self, paths: Sequence[str], labels: np.ndarray, size: int, cache: bool = True,
                 transform: Optional[Callable] = None):
        self.paths, self.labels, self.size, self.cache = list(paths), labels, int(size), {} if cache else None
        self.transform = transform      # uint8 (H, W, 3) RGB -> same, before the resize (e.g. framing.reframe)
        self.error: Optional[Exception] = None

    def __len__(self):
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        if self.cache is not None and i in self.cache:
            return self.cache[i]
        rgb = fileio.read_rgb(self.paths[i])
        rgb = fileio.resize_square(self.transform(rgb) if self.transform is not None else rgb, self.size)
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        if self.cache is not None:
            self.cache[i] = chw
        return chw

    def __call__(self, i: int):
        try:
            return self.image(i), np.array([self.labels[i]], np.int32)
        except Exception as e:
            # Runs in the iterator's background thread, where an exception would leave
            # the main thread waiting forever: keep it and let batches() raise it.
            self.error = e
            return np.zeros((3, self.size, self.size), np.uint8), np.array([self.labels[i]], np.int32)


class Subset:
    """The items ``rows`` of an :class:`ImageLoader`, in that order (shares its cache)."""

    def __init__(self, loader: ImageLoader, rows: Sequence[int]):
        self.loader, self.rows = loader, np.asarray(rows, dtype=int)
        self.labels = np.asarray(loader.labels)[self.rows]

    def __len__(self):
        return len(self.rows)

    def __call__(self, i):
        return self.loader(int(self.rows[i]))

    @property
    def error(self):
        return self.loader.error


def batches(loader: ImageLoader, batch_size: int, n_batches: int, shuffle: bool, seed: int):
    """Yield ``n_batches`` (x float32 [0,1], y int32 (B,1), n_valid) from nnabla's ``data_iterator_simple``.

    The iterator prefetches the next batch in a background thread. Its order is
    a function of ``seed`` only, so a resumed epoch sees the same order.
    Without shuffling the last batch wraps around; ``n_valid`` counts its new rows.
    """
    n = len(loader)
    it = data_iterator_simple(loader, n, batch_size, shuffle=shuffle, rng=np.random.RandomState(seed),
                              use_thread=True, with_memory_cache=False)
    try:
        for b in range(n_batches):
            xb, yb = it.next()
            err = getattr(loader, "error", None) or getattr(getattr(loader, "loader", None), "error", None)
            if err is not None:
                raise err
            yield xb.astype(np.float32) * np.float32(1 / 255), yb, min(batch_size, n - b * batch_size)
    finally:
        it.close()


def sample_rows(labels: np.ndarray, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Rows of a split for BatchNorm re-estimation or a Training Error subset, whatever the CSV order.

    A seeded sample stratified by class (:func:`wbc_nnabla.sampling.shuffled_sample`)
    of ``n`` rows rounded down to whole batches (at least one batch), in random
    order so every batch mixes the classes as training batches do.
    """
    n = max(batch_size, (min(int(n), len(labels)) // batch_size) * batch_size)
    return sampling.shuffled_sample(labels, min(n, len(labels)), seed)




def style_bank(source, size: int, seed: int) -> Tuple[np.ndarray, dict]:
    """(bank, record): the low-frequency amplitude spectra ``(K, 3, 2b+1, 2b+1)``
    (:func:`~wbc_nnabla.augmentation.low_band_amplitudes`) of the cells of ``source`` resized to
    ``size`` px as training images are, and what they were read from (``config.json``'s ``style_cells``).

    A seeded sample of at most :data:`MAX_STYLE_CELLS` cells; labels are ignored. An unreadable cell
    or fewer than :data:`MIN_STYLE_CELLS` is a :class:`TrainingError` naming the file.
    """
    source = Path(source)
    table = fileio.read_cell_images(source, dedupe_flag=None)
    if len(table) < MIN_STYLE_CELLS:
        raise TrainingError(f"{source}: {len(table)} style cells (style_cells); the Fourier step needs at "
                            f"least {MIN_STYLE_CELLS}: a handful of cells stands for no lab")
    paths = list(table["path"])
    rows = np.sort(np.random.RandomState(seed).permutation(len(paths))[:MAX_STYLE_CELLS])
    loader = ImageLoader([paths[i] for i in rows], np.zeros(len(rows), np.int32), size, cache=False)
    images = []
    for i in range(len(loader)):
        try:
            images.append(loader.image(i))
        except Exception as e:
            raise TrainingError(f"{loader.paths[i]}: style cell (style_cells {source}) unreadable: {e}") from e
    bank = low_band_amplitudes(np.stack(images).astype(np.float32) / 255.0)
    return bank, dict(source=str(source.resolve()), n_cells=len(loader), n_listed=len(paths),
                      cells_sha256=modelfile.paths_sha256(loader.paths), half_band=(bank.shape[-1] - 1) // 2)


