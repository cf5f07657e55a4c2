"""The model file: a wbc_nnabla ``.nnp`` (or an ``.h5`` of its parameters), written and read back here.

A wbc_nnabla model file is a standard nnabla ``.nnp`` (loadable by
``nnabla.utils.nnp_graph.NnpLoader`` and ``nnabla_cli infer``) with:

* network "inference": input "x" ``(N, 3, S, S)`` float32 RGB in [0, 1],
  output "y" ``(N, C)`` softmax probabilities (test-mode BatchNorm, or GroupNorm), the graph
  of :func:`wbc_nnabla.models.inference_network`;
* executor "inference" over it;
* an extra zip member ``wbc_nnabla.json`` (:data:`META_NAME`) with the model
  description of :func:`model_meta` (arch, norm, class names, input size), which
  nnabla's loaders ignore.

:func:`save_nnp` writes it; :func:`read_model` is the one validated reader
(also of plain nnabla ``.nnp`` and ``.h5`` parameter files), used by
inference, Grad-CAM and the ONNX export.

nnabla is imported inside the functions that need it: the ONNX backends read a
model's description through this module and must run where nnabla is not loaded.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import classes, fileio, predictions
from .errors import InputError, PathLike, WBCError
from .recipe import MAX_INPUT_SIZE

#: Zip member of an ``.nnp`` holding the wbc_nnabla model description.
META_NAME = "wbc_nnabla.json"


#: Model files wbc_nnabla reads and writes (nnabla's): a self-describing ``.nnp``, or bare parameters ``.h5``.
MODEL_SUFFIXES = (".nnp", ".h5")
#: An exported model (:mod:`wbc_nnabla.export`), which the CPU backends run.
ONNX_SUFFIX = ".onnx"

class ModelError(WBCError, ValueError):
    """A model file that is missing, unreadable or not a supported network."""


@dataclasses.dataclass(frozen=True)
class ModelDescription(collections.abc.Mapping):
    """What a model file says of itself, read once (:func:`read_model`, :func:`wbc_nnabla.export.read_onnx_meta`).

    Typed attributes for what the core reads: ``arch``, ``norm`` (``batch``, ``group``, ``ibn``),
    ``class_names``, ``num_classes``, ``input_size`` (pixels; None when the file stores none),
    ``calibration`` (the validation cells stored at export). Every stored key, those the cross-lab
    wing writes included (``zoom``, ``pad``, ``stain``, ``adaptation``, ``domain_reference``...),
    through the read-only ``Mapping`` interface, as written in the file's ``wbc_nnabla.json``.
    """
    stored: collections.abc.Mapping

    @property
    def arch(self) -> str:
        return self.stored["arch"]

    @property
    def norm(self) -> str:
        return self.stored.get("norm") or "batch"

    @property
    def class_names(self) -> List[str]:
        return list(self.stored["class_names"])

    @property
    def num_classes(self) -> int:
        return int(self.stored["num_classes"])

    @property
    def input_size(self) -> Optional[int]:
        return int(self.stored["input_size"]) if self.stored.get("input_size") else None

    @property
    def calibration(self) -> Optional[dict]:
        return self.stored.get(predictions.CALIBRATION_KEY)

    def __getitem__(self, key):
        return self.stored[key]

    def __iter__(self):
        return iter(self.stored)

    def __len__(self) -> int:
        return len(self.stored)


def describe(meta: collections.abc.Mapping) -> ModelDescription:
    """``meta`` as a :class:`ModelDescription` (itself when it is one already)."""
    return meta if isinstance(meta, ModelDescription) else ModelDescription(dict(meta))


# ----------------------------------------------------------------------------- writing


def model_meta(arch: str, class_names: Sequence[str], size: int, norm: str = "batch", **extra) -> dict:
    """The description stored with a model: ``arch``, ``norm`` (``batch``/``group``), ``class_names``,
    ``input_size`` (pixels)."""
    from . import __version__
    return dict(format="wbc_nnabla-model/1", arch=arch, norm=norm, class_names=list(class_names),
                num_classes=len(class_names), input_size=int(size), wbc_nnabla=__version__, **extra)


def paths_sha256(paths) -> str:
    """SHA-256 of the sorted paths, one per line (identifies a cell set, whatever its order)."""
    return hashlib.sha256("\n".join(sorted(str(p) for p in paths)).encode("utf-8")).hexdigest()


def _array(v) -> np.ndarray:
    """The values of a parameter given as an ndarray or an ``nn.Variable`` (anything with ``.d``)."""
    return v.d if hasattr(v, "d") else np.asarray(v)


def first_nonfinite(params: dict) -> Optional[Tuple[str, float]]:
    """(name, value) of the first parameter (in ``params``' order) holding a NaN or an infinity, else None.

    params: ``{name: ndarray or nn.Variable}``; BatchNorm's running statistics count as parameters.
    """
    for name, v in params.items():
        arr = _array(v)
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            return name, float(arr.flat[int(np.argmin(np.isfinite(arr).ravel()))])
    return None


def check_finite(params: dict, path: PathLike, reading: bool = False) -> None:
    """Raise :class:`ModelError` naming ``path`` and the first non-finite parameter (:func:`first_nonfinite`).

    A model with a NaN or infinite weight or statistic gives NaN probabilities for every cell, which
    read as the first class: no such model is written (``reading`` False: every writer of a model or
    checkpoint checks first and writes nothing) or used (``reading``: :func:`read_model`).
    """
    bad = first_nonfinite(params)
    if bad is None:
        return
    what = "not usable" if reading else "not written"
    raise ModelError(f"{path}: {what}: parameter {bad[0]} holds {bad[1]} (not a finite number), which makes every "
                     f"prediction NaN" + ("; retrain or re-adapt the model" if reading else ""))


def save_h5(path: PathLike, params: dict) -> None:
    """Save parameters ``{name: nn.Variable or ndarray}`` as an nnabla ``.h5`` file, atomically, after
    :func:`check_finite` (nothing is written when one is not finite)."""
    import nnabla as nn

    from .outputs import atomic_path
    check_finite(params, path)
    variables = {k: v if isinstance(v, nn.Variable) else nn.Variable.from_numpy_array(np.asarray(v))
                 for k, v in params.items()}
    with atomic_path(path) as tmp:
        nn.save_parameters(str(tmp), variables, extension=".h5")


def save_nnp(path, params: dict, meta: collections.abc.Mapping, batch_size: int = 1) -> None:
    """Save parameters ``{name: ndarray or nn.Variable}`` as a self-describing inference ``.nnp``.

    meta: the model description, a dict or the :class:`ModelDescription` :func:`read_model` gives.
    The graph is rebuilt from ``meta['arch']``/``meta['num_classes']``/``meta['norm']`` at
    ``meta['input_size']`` in test mode, so the file holds only what inference needs.
    Built in a parameter dict of its own (nnabla's global parameters are not
    touched). Written atomically; a non-finite parameter is a :class:`ModelError` and nothing is
    written (:func:`check_finite`).
    """
    import nnabla as nn
    import nnabla.utils.save as nn_save

    from . import models
    from .outputs import atomic_path
    check_finite(params, path)
    size = int(meta["input_size"])
    with nn.parameter_scope("", {}):
        for k, v in params.items():
            arr = v.d if isinstance(v, nn.Variable) else np.asarray(v)
            nn.parameter.get_parameter_or_create(k, arr.shape, need_grad="/mean" not in k and "/var" not in k)
            nn.get_parameters(grad_only=False)[k].d = arr
        x = nn.Variable(models.input_shape(batch_size, size))
        y = models.inference_network(x, meta)
        contents = {
            "networks": [{"name": "inference", "batch_size": batch_size,
                          "outputs": {"y": y}, "names": {"x": x}}],
            "executors": [{"name": "inference", "network": "inference", "data": ["x"], "output": ["y"]}],
        }
        with atomic_path(path) as tmp:
            nn_save.save(str(tmp), contents, variable_batch_size=True)
            with zipfile.ZipFile(tmp, "a") as z:
                z.writestr(META_NAME, json.dumps(dict(meta), indent=2))


# ----------------------------------------------------------------------------- reading


def read_meta(path) -> dict:
    """The model description stored in a wbc_nnabla ``.nnp``; ``{}`` for a plain nnabla ``.nnp``."""
    try:
        with zipfile.ZipFile(path) as z:
            if META_NAME in z.namelist():
                return json.loads(z.read(META_NAME))
    except zipfile.BadZipFile:
        raise InputError(f"{path}: not an .nnp file (expected a zip archive written by nnabla)") from None
    return {}


def load_parameters(path) -> dict:
    """Parameters ``{name: ndarray}`` of a ``.nnp`` or ``.h5`` file, without touching the global scope."""
    import nnabla as nn
    with nn.parameter_scope("", {}):
        nn.load_parameters(str(path))
        return {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}


#: Hex SHA-256 of a file's bytes (the ONNX cache key); defined in :mod:`wbc_nnabla.fileio`, which also
#: uses it to find copies of a cell image.
file_sha256 = fileio.file_sha256


def expected_shapes(arch: str, num_classes: int, norm: str = "batch") -> Dict[str, Tuple[int, ...]]:
    """Parameter name -> shape of ``models.resnet(arch, num_classes, norm=norm)``.

    Built by constructing the nnabla graph in a private parameter scope, so the
    architecture is described once (in models.py), not copied here.
    """
    import nnabla as nn

    from . import models
    local: dict = {}
    with nn.parameter_scope("net", scope=local):
        models.resnet(nn.Variable((1, 3, 32, 32)), arch, num_classes, test=True, norm=norm)
        return {k: tuple(v.shape) for k, v in nn.get_parameters(grad_only=False).items()}


def _default_class_names(num_classes: int) -> List[str]:
    return list(classes.CLASSES6) if num_classes == len(classes.CLASSES6) else \
        [f"class{i}" for i in range(num_classes)]


def _read_file(p: Path) -> Tuple[Dict[str, np.ndarray], dict]:
    """(parameters, stored description or ``{}``) of an existing ``.nnp``/``.h5``; ModelError if unreadable."""
    meta: dict = {}
    if p.suffix.lower() == ".nnp":
        try:
            meta = dict(read_meta(p))
        except (ValueError, OSError) as e:
            raise ModelError(str(e)) from None
    try:
        params = load_parameters(p)
    except Exception as e:  # nnabla/h5py raise many types for a corrupt file
        raise ModelError(f"{p}: cannot read parameters ({type(e).__name__}: {e}); "
                         f"expected an nnabla .nnp or .h5 parameter file") from None
    if not params:
        raise ModelError(f"{p}: holds no parameters (expected the weights of a ResNet)")
    return params, meta


def read_model(path: PathLike) -> Tuple[Dict[str, np.ndarray], ModelDescription]:
    """Parameters and description of a ``.nnp`` or ``.h5`` model file.

    Returns ``(params, meta)`` with ``meta`` (a :class:`ModelDescription`) holding at least ``arch``, ``norm``,
    ``class_names``, ``num_classes`` and ``input_size`` (pixels). For a plain
    nnabla ``.nnp`` or an ``.h5`` parameter file (no stored description) the
    arch and the normalisation (BatchNorm ``*/bn/*`` or GroupNorm
    ``*/group_normalization/*``) come from the parameter names, the class count from ``fc``, the six
    class names of Table 1 are assumed when there are six outputs (else
    ``class0``...) and ``input_size`` is None: the training size is not
    guessed, callers ask for it (``meta['assumed']`` lists what was assumed or unknown).

    Raises :class:`ModelError` naming the file and what was expected when it is
    missing, not a model file, or its parameters do not form a supported ResNet or
    hold a NaN or infinity (:func:`check_finite`).
    """
    from . import models
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file (expected a .nnp or .h5 written by wbc_nnabla/nnabla)")
    if p.suffix.lower() not in MODEL_SUFFIXES:
        raise ModelError(f"{p}: unsupported model file type {p.suffix!r} (expected .nnp or .h5)")
    params, meta = _read_file(p)
    check_finite(params, p, reading=True)
    try:
        arch, norm = models.arch_of(params), models.norm_of(params)
    except ValueError as e:
        raise ModelError(f"{p}: {e}; expected resnet18/34/50 parameters named as in models.py "
                         f"(conv1, bn1, layer1/0/..., fc)") from None
    if "fc/affine/W" not in params:
        raise ModelError(f"{p}: no classifier parameter fc/affine/W (expected a ResNet of models.py)")
    num_classes = models.class_count_of(params)
    assumed = []
    if meta.get("arch") and meta["arch"] != arch:
        raise ModelError(f"{p}: description says {meta['arch']} but the parameters form a {arch}")
    if meta.get("norm") and meta["norm"] != norm:
        raise ModelError(f"{p}: description says norm {meta['norm']!r} but the parameters are "
                         f"{'GroupNorm' if norm == 'group' else 'BatchNorm'} ({norm!r})")
    if not meta.get("class_names"):
        meta["class_names"] = _default_class_names(num_classes)
        assumed.append("class_names")
    if len(meta["class_names"]) != num_classes:
        raise ModelError(f"{p}: description lists {len(meta['class_names'])} class names but the "
                         f"classifier fc has {num_classes} outputs")
    if not meta.get("input_size"):
        assumed.append("input_size")     # unknown: no guess (a wrong size gives confident wrong calls)
    meta.update(arch=arch, norm=norm, num_classes=num_classes, class_names=list(meta["class_names"]),
                input_size=int(meta["input_size"]) if meta.get("input_size") else None)
    if assumed:
        meta["assumed"] = assumed
    _check_shapes(p, params, expected_shapes(arch, num_classes, norm))
    return params, ModelDescription(meta)


def network_size(meta: collections.abc.Mapping, size: Optional[int], path: PathLike) -> int:
    """The side (pixels) cells are resized to for the model ``meta`` describes: ``size``, else its stored size.

    meta: a description from :func:`read_model` (``input_size`` None when the file stores none).
    size: the caller's size, or None for the model's training size.
    path: the model file, named in the errors.
    Raises :class:`ModelError` when neither is known (a bare ``.h5``: no size is
    guessed) and :class:`~wbc_nnabla.errors.InputError` outside [32, ``MAX_INPUT_SIZE``] px.
    """
    if size is None and not meta.get("input_size"):
        raise ModelError(f"{path}: the model stores no training input size (a bare .h5 parameter file); "
                         f"pass --size / size=N, the side it was trained at: a wrong size gives "
                         f"confident wrong predictions")
    size = int(meta["input_size"] if size is None else size)
    if size < 32:
        raise InputError(f"size {size}: the ResNet needs at least 32x32 pixels")
    if size > MAX_INPUT_SIZE:
        raise InputError(f"size {size}: at most {MAX_INPUT_SIZE} pixels (larger inputs only exhaust memory)")
    return size


def _check_shapes(path: Path, params: dict, expected: dict) -> None:
    missing = [k for k in expected if k not in params]
    if missing:
        raise ModelError(f"{path}: missing {len(missing)} parameter(s) of a ResNet, e.g. {missing[0]}")
    for k, shape in expected.items():
        if tuple(params[k].shape) != shape:
            raise ModelError(f"{path}: parameter {k} has shape {tuple(params[k].shape)}, expected {shape}")
