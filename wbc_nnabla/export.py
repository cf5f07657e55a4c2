"""Model files in, ONNX out: the fast CPU scoring path of issue 6.

:func:`read_model` opens any model file the library accepts and checks that its
parameters form one of the ResNets of :mod:`wbc_nnabla.models` (the paper's
Fig. 4, section II.4); :func:`export_onnx` writes the same network as an ONNX
graph that OpenCV's ``cv2.dnn`` and onnxruntime run several times faster
than nnabla's single-threaded CPU backend.

Why a hand-written exporter: ``nnabla-converter`` pins TensorFlow and an old
``onnx``, which would break this environment (see ``docs/inference.md``). Our
network family is small (convolution, test-mode BatchNorm, ReLU, max pool,
residual add, global average pool, affine, softmax), so the graph is emitted
here with ``onnx.helper`` from the parameters, with BatchNorm folded into the
convolution weights (in float64, then cast to float32).

The ONNX model takes the same input as the ``.nnp``: ``x`` float32
``(N, 3, H, W)`` RGB in [0, 1] (N, H and W are dynamic; normalisation is in
the graph) and returns ``y`` ``(N, C)`` softmax probabilities. Its
``metadata_props`` hold the wbc_nnabla model description (``class_names`` as
JSON, ``input_size``, ``arch``...), read back by :func:`read_onnx_meta`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import classes

PathLike = Union[str, os.PathLike]
#: Paper's training size (section II.3); used when a model file stores none.
DEFAULT_INPUT_SIZE = 480
#: nnabla ``PF.batch_normalization`` default epsilon (models.py uses the default).
BN_EPS = 1e-5
ONNX_META_KEY = "wbc_nnabla"
MODEL_SUFFIXES = (".nnp", ".h5", ".onnx")


class ModelError(ValueError):
    """A model file that is missing, unreadable or not a supported network."""


# ----------------------------------------------------------------------------- reading models


def file_sha256(path: PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (the ONNX cache key)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def expected_shapes(arch: str, num_classes: int) -> Dict[str, Tuple[int, ...]]:
    """Parameter name -> shape of ``models.resnet(arch, num_classes)``.

    Built by constructing the nnabla graph in a private parameter scope, so the
    architecture is described once (in models.py), not copied here.
    """
    import nnabla as nn

    from . import models
    local: dict = {}
    with nn.parameter_scope("net", scope=local):
        models.resnet(nn.Variable((1, 3, 32, 32)), arch, num_classes, test=True)
        return {k: tuple(v.shape) for k, v in nn.get_parameters(grad_only=False).items()}


def _default_class_names(num_classes: int) -> List[str]:
    return list(classes.CLASSES6) if num_classes == len(classes.CLASSES6) else \
        [f"class{i}" for i in range(num_classes)]


def read_model(path: PathLike) -> Tuple[Dict[str, np.ndarray], dict]:
    """Parameters and description of a ``.nnp`` or ``.h5`` model file.

    Returns ``(params, meta)`` with ``meta`` holding at least ``arch``,
    ``class_names``, ``num_classes`` and ``input_size`` (pixels). For a plain
    nnabla ``.nnp`` or an ``.h5`` parameter file (no stored description) the
    arch comes from the parameter names, the class count from ``fc``, the six
    class names of Table 1 are assumed when there are six outputs (else
    ``class0``...) and the input size is the paper's 480 (``meta['assumed']``
    lists what was assumed).

    Raises :class:`ModelError` naming the file and what was expected when it is
    missing, not a model file, or its parameters do not form a supported ResNet.
    """
    from . import models
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such model file (expected a .nnp or .h5 written by wbc_nnabla/nnabla)")
    if p.suffix.lower() not in (".nnp", ".h5"):
        raise ModelError(f"{p}: unsupported model file type {p.suffix!r} (expected .nnp or .h5)")
    meta: dict = {}
    if p.suffix.lower() == ".nnp":
        try:
            meta = dict(models.read_meta(p))
        except (ValueError, OSError) as e:
            raise ModelError(str(e)) from None
    try:
        params = models.load_parameters(p)
    except Exception as e:  # nnabla/h5py raise many types for a corrupt file
        raise ModelError(f"{p}: cannot read parameters ({type(e).__name__}: {e}); "
                         f"expected an nnabla .nnp or .h5 parameter file") from None
    if not params:
        raise ModelError(f"{p}: holds no parameters (expected the weights of a ResNet)")
    try:
        arch = models.arch_of(params)
    except ValueError as e:
        raise ModelError(f"{p}: {e}; expected resnet18/34/50 parameters named as in models.py "
                         f"(conv1, bn1, layer1/0/..., fc)") from None
    if "fc/affine/W" not in params:
        raise ModelError(f"{p}: no classifier parameter fc/affine/W (expected a ResNet of models.py)")
    num_classes = models.class_count_of(params)
    assumed = []
    if meta.get("arch") and meta["arch"] != arch:
        raise ModelError(f"{p}: description says {meta['arch']} but the parameters form a {arch}")
    if not meta.get("class_names"):
        meta["class_names"] = _default_class_names(num_classes)
        assumed.append("class_names")
    if len(meta["class_names"]) != num_classes:
        raise ModelError(f"{p}: description lists {len(meta['class_names'])} class names but the "
                         f"classifier fc has {num_classes} outputs")
    if not meta.get("input_size"):
        meta["input_size"] = DEFAULT_INPUT_SIZE
        assumed.append("input_size")
    meta.update(arch=arch, num_classes=num_classes, class_names=list(meta["class_names"]),
                input_size=int(meta["input_size"]))
    if assumed:
        meta["assumed"] = assumed
    _check_shapes(p, params, expected_shapes(arch, num_classes))
    return params, meta


def _check_shapes(path: Path, params: dict, expected: dict) -> None:
    missing = [k for k in expected if k not in params]
    if missing:
        raise ModelError(f"{path}: missing {len(missing)} parameter(s) of a ResNet, e.g. {missing[0]}")
    for k, shape in expected.items():
        if tuple(params[k].shape) != shape:
            raise ModelError(f"{path}: parameter {k} has shape {tuple(params[k].shape)}, expected {shape}")


# ----------------------------------------------------------------------------- the ONNX graph


class _Graph:
    """Accumulates ONNX nodes and initializers while walking the ResNet."""

    def __init__(self, params: dict):
        self.params = params
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, name: str, array: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: Sequence[str], stem: str, **attrs) -> str:
        from onnx import helper
        out = self.name(stem)
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out

    def conv_bn(self, x: str, conv: str, bn: str, stride: int, relu: bool) -> str:
        """Conv (no bias) + test-mode BN folded into one Conv with bias, then ReLU."""
        w = self.params[f"{conv}/conv/W"].astype(np.float64)
        gamma, beta, mean, var = (self.params[f"{bn}/bn/{n}"].astype(np.float64).reshape(-1)
                                  for n in ("gamma", "beta", "mean", "var"))
        k = gamma / np.sqrt(var + BN_EPS)
        wf = w * k[:, None, None, None]
        bf = beta - mean * k
        ks = w.shape[-1]
        h = self.node("Conv", [x, self.const(f"{conv}/W", wf), self.const(f"{conv}/b", bf)], conv.replace("/", "_"),
                      kernel_shape=[ks, ks], strides=[stride, stride], pads=[ks // 2] * 4)
        return self.node("Relu", [h], "relu") if relu else h

    def block(self, x: str, name: str, kind: str, stride: int, project: bool) -> str:
        if kind == "basic":
            h = self.conv_bn(x, f"{name}/conv1", f"{name}/bn1", stride, True)
            h = self.conv_bn(h, f"{name}/conv2", f"{name}/bn2", 1, False)
        else:
            h = self.conv_bn(x, f"{name}/conv1", f"{name}/bn1", 1, True)
            h = self.conv_bn(h, f"{name}/conv2", f"{name}/bn2", stride, True)
            h = self.conv_bn(h, f"{name}/conv3", f"{name}/bn3", 1, False)
        short = self.conv_bn(x, f"{name}/downsample/0", f"{name}/downsample/1", stride, False) if project else x
        return self.node("Relu", [self.node("Add", [h, short], "add")], "relu")


def build_onnx(params: dict, meta: dict, opset: int = 13):
    """The ``onnx.ModelProto`` of a ResNet of models.py (same graph as the ``.nnp``'s "inference").

    params: ``{name: ndarray}`` as from :func:`read_model`; meta: its description.
    """
    from onnx import TensorProto, helper

    from . import models
    if opset < 13:
        raise ValueError(f"opset {opset}: at least 13 is needed (Softmax over one axis)")
    kind, layers = models.ARCHS[meta["arch"]]
    g = _Graph(params)
    h = g.node("Mul", ["x", g.const("preprocess/scale", params["preprocess/scale"])], "scale")
    h = g.node("Add", [h, g.const("preprocess/bias", params["preprocess/bias"])], "bias")
    h = g.conv_bn(h, "conv1", "bn1", 2, True)
    h = g.node("MaxPool", [h], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    in_ch = 64
    expansion = 4 if kind == "bottleneck" else 1
    for stage, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n_blocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            project = stride != 1 or in_ch != planes * expansion
            h = g.block(h, f"layer{stage}/{i}", kind, stride, project)
            in_ch = planes * expansion
    h = g.node("GlobalAveragePool", [h], "gap")
    h = g.node("Flatten", [h], "flatten", axis=1)
    h = g.node("Gemm", [h, g.const("fc/W", params["fc/affine/W"]), g.const("fc/b", params["fc/affine/b"])], "fc")
    g.nodes.append(helper.make_node("Softmax", [h], ["y"], name="softmax", axis=1))
    n = int(meta["num_classes"])
    graph = helper.make_graph(
        g.nodes, f"wbc_nnabla_{meta['arch']}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="wbc_nnabla", doc_string=(
                                  "ResNet of Sasaki et al. (2020), Fig. 4. Input x: float32 (N,3,H,W) RGB in [0,1]; "
                                  "output y: softmax probabilities over class_names (metadata)."))
    model.ir_version = min(model.ir_version, 8)  # onnxruntime/OpenCV accept IR 8 with opset 13-17
    onnx_meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, list))}
    helper.set_model_props(model, {
        ONNX_META_KEY: json.dumps(onnx_meta),
        "class_names": json.dumps(list(meta["class_names"])),
        "input_size": str(int(meta["input_size"])),
        "arch": meta["arch"],
    })
    return model


def export_onnx(model_path: PathLike, onnx_path: PathLike, opset: int = 13, overwrite: bool = False) -> Path:
    """Export a ``.nnp``/``.h5`` model to ONNX (issue 6); checked with ``onnx.checker``; written atomically.

    The batch dimension (and H, W) are dynamic. Class names and input size are
    stored in the ONNX ``metadata_props`` (see :func:`read_onnx_meta`).
    Raises :class:`ModelError` for a file that is not a supported network,
    FileExistsError when ``onnx_path`` exists and ``overwrite`` is false, and
    :class:`wbc_nnabla.io.SourceError` when ``onnx_path`` is the model itself.
    """
    import onnx

    from .io import atomic_path, check_output
    check_output(onnx_path, "export", overwrite, [model_path], folder=False)
    params, meta = read_model(model_path)
    meta = dict(meta, source_sha256=file_sha256(model_path), source=Path(model_path).name)
    model = build_onnx(params, meta, opset)
    onnx.checker.check_model(model, full_check=True)
    out = Path(onnx_path)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def read_onnx_meta(path: PathLike) -> dict:
    """The wbc_nnabla description stored in an exported ONNX (``class_names``, ``input_size``, ``arch``).

    Raises :class:`ModelError` when the file is not ONNX or was not exported by
    wbc_nnabla (no class names stored: predictions could not be labelled).
    """
    import onnx
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: no such ONNX file")
    try:
        with warnings.catch_warnings():   # protobuf warns on some garbage before failing; we report it
            warnings.simplefilter("ignore", RuntimeWarning)
            model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelError(f"{p}: not an ONNX model ({type(e).__name__})") from None
    props = {m.key: m.value for m in model.metadata_props}
    if ONNX_META_KEY not in props:
        raise ModelError(f"{p}: no wbc_nnabla metadata (class_names, input_size); "
                         f"export it with `wbc-nnabla export MODEL.nnp --onnx {p.name}`")
    meta = json.loads(props[ONNX_META_KEY])
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    if inputs[:1] != ["x"] or outputs != ["y"]:
        raise ModelError(f"{p}: expected input 'x' and output 'y', found {inputs} -> {outputs}")
    return meta


# ----------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Folder of ONNX files converted on the fly: ``$WBC_NNABLA_CACHE`` or ``~/.cache/wbc_nnabla/onnx``."""
    env = os.environ.get("WBC_NNABLA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wbc_nnabla" / "onnx"


#: Converted models kept in the cache folder (the oldest beyond this are removed; ~45 MB each for ResNet-18).
CACHE_KEEP = 16


#: Names :func:`cached_onnx` gives its files (``<stem>-<20 hex>-op<N>.onnx``); only these are pruned.
_CACHE_NAME = re.compile(r".+-[0-9a-f]{20}-op\d+\.onnx")


def _prune(folder: Path, keep: int, protect: Path) -> None:
    files = sorted((p for p in folder.glob("*-op*.onnx") if _CACHE_NAME.fullmatch(p.name)),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        if old != protect:
            old.unlink(missing_ok=True)


def cached_onnx(model_path: PathLike, opset: int = 13, folder: Optional[PathLike] = None) -> Path:
    """An ONNX export of ``model_path``, converted once and reused.

    Keyed by the SHA-256 of the model file's bytes (so a retrained model under
    the same name is converted again) and the opset. When the cache folder is
    not writable, a temporary folder is used. The folder keeps the
    :data:`CACHE_KEEP` most recent conversions.
    """
    import tempfile
    key = file_sha256(model_path)[:20]
    name = f"{Path(model_path).stem}-{key}-op{opset}.onnx"
    for base in ([Path(folder)] if folder else [cache_dir(), Path(tempfile.gettempdir()) / "wbc_nnabla_onnx"]):
        target = base / name
        if target.is_file():
            return target
        try:
            base.mkdir(parents=True, exist_ok=True)
            out = export_onnx(model_path, target, opset, overwrite=True)  # a concurrent conversion may land first
        except PermissionError:
            continue
        _prune(base, keep=CACHE_KEEP, protect=out)
        return out
    raise ModelError("no writable folder for the ONNX cache (set WBC_NNABLA_CACHE)")
