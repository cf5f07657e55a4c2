"""Epoch checkpoints of a training run, and the checks that make ``resume`` exact.

Layout in the run's output folder::

    checkpoints/epochNNNN/params.h5    every parameter (nnabla ``save_parameters``)
    checkpoints/epochNNNN/solver.h5    the solver's state (``Solver.save_states``)
    checkpoints/epochNNNN/state.json   epoch, curve history, best epoch, NumPy generator state
    checkpoints/epochNNNN/average.h5   the running weight mean (``average_epochs``), once its window began
    checkpoint.json                    {"epoch": N, "dir": "checkpoints/epochNNNN"}: the last complete one

The role of nnabla-examples' ``_checkpoint_nnp_util.py``, per epoch instead of per
iteration. Used by :mod:`wbc_nnabla.training`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Optional, Tuple

import nnabla as nn
import numpy as np

from . import modelfile, outputs
from .recipe import AdaBoundConfig, Augmentation, TrainingError

#: The pointer file naming the last complete checkpoint.
POINTER = "checkpoint.json"
#: The command named by a run folder's marker (:data:`wbc_nnabla.outputs.OUTPUT_MARKER`).
COMMAND = "train"
#: What a training run writes into its folder (:mod:`wbc_nnabla.training`): a run that fails before its first
#: checkpoint leaves none of them (:func:`after_failure`), and a new run never replaces one it did not write.
RUN_OUTPUTS = (POINTER, "checkpoints", "config.json", "learning_curve.csv", "learning_curve.png", "model.nnp",
               "model.h5", "monitor")
#: The running weight mean in a checkpoint folder (``TrainConfig.average_epochs``).
AVERAGE_FILE = "average.h5"

#: Config keys that must match for ``resume`` (the rest, e.g. ``epochs``, may change; ``average_epochs``
#: is checked against the checkpoint's own weight mean, ``training.resumed_average``).
RESUME_KEYS = ("arch", "size", "batch_size", "seed", "augmentation", "solver", "dataset_dir", "bn_recalibration",
               "bn_sample", "weight_init", "norm", "style_cells", "label_smoothing", "mixup", "dataset_sha256")
#: Keys a run did not record before they were added, and that such a run cannot be checked on: it resumes as
#: before. ``dataset_sha256`` (:func:`wbc_nnabla.digests.dataset_digest`) since issue 49.
_UNCHECKED_WHEN_ABSENT = ("dataset_sha256",)
# Keys added after runs were already written: a config without the key had this value.
_RESUME_KEY_DEFAULTS = {"bn_recalibration": 0, "weight_init": "glorot", "norm": "batch", "style_cells": None,
                        "label_smoothing": 0.0, "mixup": 0.0}
# Fields of a nested setting added later: an older config had them at their defaults (off). Augmentation: the
# fill, the colour terms, blur, RandConv, MixStyle, Fourier; solver: the step-size schedule (constant).
_FIELD_DEFAULTS = {
    "augmentation": {k: getattr(Augmentation(), k)
                     for k in ("fill", "od_scale", "od_shift", "saturation", "log_gamma", "hue", "color_prob",
                               "blur", "randconv", "mixstyle", "fourier")},
    "solver": {"schedule": AdaBoundConfig().schedule},
}


def pointer(out_dir: Path) -> Path:
    """The ``checkpoint.json`` of a run folder."""
    return Path(out_dir) / POINTER


def save_checkpoint(out_dir: Path, epoch: int, params: Dict[str, nn.Variable], solver, state: dict,
                    average: Optional[Dict[str, np.ndarray]] = None) -> Path:
    """Write ``checkpoints/epochNNNN/`` (params.h5, solver.h5, state.json) then point ``checkpoint.json`` at it.

    average: the run's weight mean ``{name: ndarray}``, written as :data:`AVERAGE_FILE` (None: none).

    The pointer is replaced atomically after the folder is complete, and older
    folders are removed only afterwards, so a crash at any moment leaves the
    last good checkpoint usable. A parameter (or weight mean) holding a NaN or an infinity is a
    :class:`~wbc_nnabla.modelfile.ModelError` and nothing is written
    (:func:`wbc_nnabla.modelfile.check_finite`). Returns the new folder.
    """
    out_dir = Path(out_dir)
    name = f"epoch{epoch:04d}"
    final = out_dir / "checkpoints" / name
    modelfile.check_finite(params, final)      # a NaN checkpoint would resume into a NaN model
    if average is not None:
        modelfile.check_finite(average, final / AVERAGE_FILE)
    with outputs.atomic_dir(final, overwrite=True) as tmp:
        nn.save_parameters(str(tmp / "params.h5"), params, extension=".h5")
        solver.save_states(str(tmp / "solver.h5"))
        if average is not None:
            nn.save_parameters(str(tmp / AVERAGE_FILE), {k: nn.Variable.from_numpy_array(v)
                                                          for k, v in average.items()}, extension=".h5")
        outputs.write_json(tmp / "state.json", state)
    outputs.write_json(pointer(out_dir), {"epoch": epoch, "dir": f"checkpoints/{name}"})
    for old in (out_dir / "checkpoints").iterdir():
        if old.name != name and old.name.startswith("epoch"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(out_dir: Path) -> Tuple[Path, dict]:
    """(checkpoint folder, state) of the last complete checkpoint in ``out_dir``."""
    ptr = pointer(out_dir)
    if not ptr.is_file():
        raise TrainingError(f"{out_dir}: nothing to resume (no checkpoint.json); start without --resume")
    d = Path(out_dir) / json.loads(ptr.read_text())["dir"]
    state = json.loads((d / "state.json").read_text())
    return d, state


def last_checkpoint(out_dir: Path) -> str:
    """The folder ``checkpoint.json`` points at (relative to ``out_dir``), or ``"none"``."""
    ptr = pointer(out_dir)
    return json.loads(ptr.read_text())["dir"] if ptr.exists() else "none"


def check_fresh(out_dir: Path) -> None:
    """Refuse to start a new run in a folder that already holds one, or files a run would replace.

    A folder marked as a ``train`` output (:data:`COMMAND`) with neither a checkpoint nor a model is a run
    killed before its first epoch ended: the new run takes it (:func:`open_run_folder`). An unmarked
    folder holding one of :data:`RUN_OUTPUTS` is refused: those files are not the run's to replace.
    """
    out_dir = Path(out_dir)
    if pointer(out_dir).exists() or (out_dir / "model.nnp").exists():
        raise TrainingError(f"{out_dir}: already holds a training run; use --resume to continue it "
                            f"or choose another output folder")
    marked = outputs.marker_command(out_dir)
    if marked not in (None, COMMAND):
        raise TrainingError(f"{out_dir}: is the output folder of `wbc-nnabla {marked}` ({outputs.OUTPUT_MARKER}); "
                            f"choose another output folder")
    found = _run_outputs(out_dir)
    if found and marked != COMMAND:
        raise TrainingError(f"{out_dir}: holds {found[0].name}, which a training run writes, and is not a train "
                            f"output folder (no {outputs.OUTPUT_MARKER} naming train); choose another output folder")


def _run_outputs(out_dir: Path) -> list:
    """The :data:`RUN_OUTPUTS` present in ``out_dir``."""
    return [out_dir / n for n in RUN_OUTPUTS if (out_dir / n).exists() or (out_dir / n).is_symlink()]


def _remove_run_outputs(out_dir: Path) -> bool:
    """Remove the :data:`RUN_OUTPUTS` in ``out_dir`` and its marker; whether there was any."""
    found = _run_outputs(out_dir)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    (out_dir / outputs.OUTPUT_MARKER).unlink(missing_ok=True)
    return bool(found)


def open_run_folder(out_dir: Path, fresh: bool) -> None:
    """Make the run folder and mark it as a ``train`` output; a ``fresh`` run in a folder :func:`check_fresh`
    let it take (a killed run's) first removes what that run left."""
    out_dir = Path(out_dir)
    if fresh:
        _remove_run_outputs(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if outputs.marker_command(out_dir) != COMMAND:
        outputs.write_marker(out_dir, COMMAND)


def after_failure(out_dir: Path, created: bool) -> Optional[str]:
    """What a failed run leaves in ``out_dir`` (docs/training.md, "Checkpoint, resume, failures"); returns it
    said in a sentence, or None when the run had written nothing.

    A complete checkpoint makes the folder a resumable run: it is kept as it is. Without one, what
    the run wrote is partial (no epoch was complete): removed, and the folder too when this run
    made it (``created``) and it is empty, so the next run finds the folder as it was.
    """
    out_dir = Path(out_dir)
    if pointer(out_dir).is_file():
        return f"the last good checkpoint ({last_checkpoint(out_dir)}) is kept in {out_dir}: continue with --resume"
    if not out_dir.is_dir() or not _remove_run_outputs(out_dir):
        return None
    if created and not any(out_dir.iterdir()):
        out_dir.rmdir()
        return f"no epoch was complete: the partial run folder {out_dir} was removed"
    return f"no epoch was complete: the partial run was removed from {out_dir}"


def check_resume(out_dir: Path, config: dict) -> Tuple[Path, dict, dict]:
    """(checkpoint folder, its state, the saved ``config.json``) of a run that ``config`` may continue.

    Raises :class:`TrainingError` when there is no checkpoint or when a key of
    :data:`RESUME_KEYS` differs from the saved run's: among them the digest of the dataset's files
    (``dataset_sha256``: its CSVs and the bytes of their images), so a dataset rebuilt in place (another
    seed puts training cells into validation) or with an image changed is refused. A run saved before
    the digest was recorded resumes without that check.
    """
    ck_dir, state = load_checkpoint(out_dir)
    saved = json.loads((Path(out_dir) / "config.json").read_text())
    old = {k: saved["config"].get(k, _RESUME_KEY_DEFAULTS.get(k)) for k in RESUME_KEYS}
    for key, defaults in _FIELD_DEFAULTS.items():
        if isinstance(old[key], dict):
            old[key] = {**defaults, **old[key]}
    diff = [k for k in RESUME_KEYS if old[k] != config.get(k)
            and not (k in _UNCHECKED_WHEN_ABSENT and k not in saved["config"])]
    if "dataset_sha256" in diff and "dataset_dir" not in diff:
        raise TrainingError(f"{out_dir}: cannot resume: the files of dataset {config.get('dataset_dir')} (train.csv, "
                            f"valid.csv or an image they list) changed since this run began; resumed, it would "
                            f"train and validate on a mix of two datasets. Restore the dataset, or start a new run")
    if diff:
        raise TrainingError(f"{out_dir}: cannot resume with a different {', '.join(diff)} "
                            f"(was {', '.join(repr(old[k])[:80] for k in diff)})")
    return ck_dir, state, saved


def rng_state(rng: np.random.RandomState) -> list:
    """A ``RandomState``'s state as JSON values (for ``state.json``)."""
    name, keys, pos, has_gauss, cached = rng.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def set_rng_state(rng: np.random.RandomState, saved: list) -> None:
    """Restore a state written by :func:`rng_state`."""
    rng.set_state((saved[0], np.array(saved[1], np.uint32), *saved[2:]))
