"""Digests of the files a stage reads, images included, so that a change to any of them is seen.

* :class:`FileDigests`: the SHA-256 of each file, computed once and then reused while the file's
  size, modification and status-change times (ns) stay the same; kept in memory and, when given a
  cache file, on disk (``reproduce`` keeps ``OUT/.file_digests.json``), so a re-run hashes only
  the files that changed. :meth:`FileDigests.files` is one digest over a set of files.
* :func:`listed_images`: the images a cell table lists (a ``reproduce`` stage's CSV).
* :func:`dataset_digest`: an NNC dataset as training reads it: ``train.csv``, ``valid.csv`` and
  every image they list, named relative to the dataset folder (a copied folder has the same digest).
  ``train --resume`` compares it with the checkpoint's run (:func:`wbc_nnabla.checkpoint.check_resume`).

Why the status-change time too: ``cp -p``, ``rsync -t`` or ``touch -r`` can give a changed file its
old modification time, and a same-sized edit would then be missed; the status-change time cannot be
set that way. nnabla-free.
"""
from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from . import fileio, outputs
from .errors import PathLike
from .images import file_sha256

#: The split files of an NNC dataset that training reads.
DATASET_SPLITS = ("train.csv", "valid.csv")


class FileDigests:
    """SHA-256 of files, each computed once per (resolved path, size, mtime_ns, ctime_ns).

    cache: a JSON file the digests are read from and :meth:`save` writes to (None: memory only).
    """

    def __init__(self, cache: Optional[PathLike] = None):
        self.cache = Path(cache) if cache else None
        self.known: Dict[str, list] = _read_cache(self.cache)
        self.used: Dict[str, list] = {}

    def file(self, path: PathLike) -> Optional[str]:
        """Hex SHA-256 of the file at ``path``; None when it is not a regular file."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        key, stamp = str(p.resolve()), [st.st_size, st.st_mtime_ns, st.st_ctime_ns]
        entry = self.used.get(key) or self.known.get(key)
        if not entry or entry[:3] != stamp:
            entry = stamp + [file_sha256(p)]
        self.used[key] = entry
        return entry[3]

    def files(self, paths: Iterable[PathLike], base: Optional[PathLike] = None) -> str:
        """One hex SHA-256 over ``paths``: each one's name and digest ("missing" for a file that is not there),
        sorted by name. A path inside ``base`` is named relative to it, so a copied folder digests the same."""
        root = Path(base).resolve() if base is not None else None
        lines = sorted(f"{_name(Path(p), root)}\t{self.file(p) or 'missing'}\n" for p in paths)
        return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()

    def save(self) -> None:
        """Write the digests used so far to the cache file (those of files no longer read are dropped)."""
        if self.cache is not None and self.cache.parent.is_dir() and self.used != self.known:
            outputs.write_json(self.cache, self.used)
            self.known = dict(self.used)


def _read_cache(path: Optional[Path]) -> Dict[str, list]:
    """The entries of a cache file, or ``{}`` (no file, or one that is unreadable or not ours)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 4}


def _name(p: Path, root: Optional[Path]) -> str:
    """``p`` relative to ``root`` when inside it, else its resolved path."""
    r = p.resolve()
    if root is not None:
        try:
            return r.relative_to(root).as_posix()
        except ValueError:
            pass
    return str(r)


def listed_images(table_csv: PathLike) -> List[str]:
    """The image paths (resolved) a cell CSV lists (:func:`wbc_nnabla.fileio.read_cells`)."""
    return [str(p) for p in fileio.read_cells(table_csv)["path"]]


def dataset_digest(dataset_dir: PathLike, digests: Optional[FileDigests] = None) -> str:
    """Hex SHA-256 of an NNC dataset as training reads it: the bytes of :data:`DATASET_SPLITS` and of every
    image they list, names relative to ``dataset_dir`` (a dataset rebuilt in place with another seed, or
    an image changed in place, gives another digest; a copied folder the same)."""
    dataset_dir = Path(dataset_dir)
    digests = digests or FileDigests()
    images = [p for n in DATASET_SPLITS for p in fileio.read_nnc_csv(dataset_dir / n)["path"]]
    parts = [f"{n}\t{digests.file(dataset_dir / n) or 'missing'}\n" for n in DATASET_SPLITS]
    parts.append(f"images\t{digests.files(images, base=dataset_dir)}\n")
    return hashlib.sha256("".join(parts).encode("utf-8")).hexdigest()
