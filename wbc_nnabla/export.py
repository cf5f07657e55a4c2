"""Model files out as ONNX: the fast CPU scoring path.

:func:`export_onnx` reads a model file with :func:`wbc_nnabla.modelfile.read_model`
(which checks that its parameters form one of the ResNets of
:mod:`wbc_nnabla.models`, the paper's Fig. 4, section II.4) and writes the same
network as an ONNX graph that OpenCV's ``cv2.dnn`` and onnxruntime run
several times faster than nnabla's single-threaded CPU backend.

Why a hand-written exporter: ``nnabla-converter`` pins TensorFlow and an old
``onnx``, which would break this environment (see ``docs/inference.md``). Our
network family is small (convolution, test-mode BatchNorm, GroupNorm or IBN-a, ReLU,
max pool, residual add, global average pool, affine, softmax), so the graph is
emitted here with ``onnx.helper`` from the parameters, walking
:func:`wbc_nnabla.models.stages`, with BatchNorm folded into the convolution
weights (in float64, then cast to float32).

GroupNorm (``norm='group'``) and the instance-normalised half of an IBN-a layer
(``norm='ibn'``) depend on each image, so they cannot be folded; they are written
with opset-13 operators every backend here runs (:meth:`_Graph.group_norm`, :meth:`_Graph.ibn`):
ONNX's own ``GroupNormalization`` (opset 18) takes a scale per group, which
OpenCV 4.11 rejects (it wants one per channel, the opset-21 form), and the
usual Reshape + InstanceNormalization + Reshape needs a ``Shape`` of the
dynamic input, which OpenCV's importer refuses (docs/inference.md).

The ONNX model takes the same input as the ``.nnp``: ``x`` float32
``(N, 3, H, W)`` RGB in [0, 1] (N, H and W are dynamic; normalisation is in
the graph) and returns ``y`` ``(N, C)`` softmax probabilities. Its
``metadata_props`` hold the wbc_nnabla model description (``class_names`` as
JSON, ``input_size``, ``arch``...), read back by :func:`read_onnx_meta`.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import InputError, PathLike
from .modelfile import ModelDescription, ModelError, describe, file_sha256, read_model

ONNX_META_KEY = "wbc_nnabla"


# ----------------------------------------------------------------------------- the ONNX graph


class _Graph:
    """Accumulates ONNX nodes and initializers while walking the ResNet.

    params: ``{name: ndarray}`` of the network.
    bn_eps: the BatchNorm epsilon (``models.BN_EPS``).
    norm: ``batch``, ``group`` or ``ibn`` (``models.NORMS``).
    gn_groups, gn_eps: GroupNorm's groups and epsilon (``models.GN_GROUPS``, ``models.GN_EPS``).
    """

    def __init__(self, params: dict, bn_eps: float, norm: str = "batch", gn_groups: int = 32,
                 gn_eps: float = 1e-5):
        from . import models
        self.params = params
        self.bn_eps = bn_eps
        self.norm, self.gn_groups, self.gn_eps = norm, gn_groups, gn_eps
        self.norm_scope = models.NORMS[norm]
        self.nodes: list = []
        self.inits: list = []
        self._n = 0
        self._consts: dict = {}

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

    def shared(self, name: str, array: np.ndarray) -> str:
        """A constant stored once however many nodes use it."""
        if name not in self._consts:
            self._consts[name] = self.const(name, array)
        return self._consts[name]

    def affine_norm(self, x: str, stem: str, mean, eps: float, gamma: np.ndarray, beta: np.ndarray) -> str:
        """``(x - mu) / sqrt(var + eps) * gamma + beta`` with ``mu = mean(x)``, ``var = mean((x - mu)^2)``
        (two passes), ``mean`` a function of an ONNX tensor name giving ``(N, C, 1, 1)``."""
        d = self.node("Sub", [x, mean(x)], f"{stem}_centre")
        var = mean(self.node("Mul", [d, d], f"{stem}_square"))
        sd = self.node("Sqrt", [self.node("Add", [var, self.shared(f"norm_eps_{eps:g}", np.full((1, 1, 1, 1), eps))],
                                          f"{stem}_eps")], f"{stem}_sd")
        k = self.node("Div", [self.const(f"{stem}/gamma", gamma), sd], f"{stem}_k")
        return self.node("Add", [self.node("Mul", [d, k], f"{stem}_scale"), self.const(f"{stem}/beta", beta)], stem)

    def group_norm(self, x: str, spec, groups: int, eps: float) -> str:
        """GroupNorm of ``x`` ``(N, C, H, W)`` in scope ``spec.bn`` (:meth:`affine_norm`).

        mu_g and var_g, per image and group of ``C / groups`` channels, are averages of
        per-channel averages: GlobalAveragePool (over H, W) then a grouped 1x1 Conv whose
        weights are ``groups / C`` (over the group's channels; every channel has H x W
        pixels, so this is the group's mean). Works for any N, H, W.
        """
        c = spec.out_channels
        avg = self.shared(f"gn_group_mean_{c}", np.full((c, c // groups, 1, 1), groups / c))
        stem = spec.bn.replace("/", "_")

        def group_mean(v: str) -> str:
            return self.node("Conv", [self.node("GlobalAveragePool", [v], "gap"), avg], f"{stem}_mean",
                             kernel_shape=[1, 1], group=groups)

        scope = f"{spec.bn}/{self.norm_scope}"
        return self.affine_norm(x, stem, group_mean, eps, self.params[f"{scope}/gamma"], self.params[f"{scope}/beta"])

    def conv(self, x: str, spec, w: np.ndarray, b: Optional[np.ndarray], stem: str) -> str:
        """Conv of ``spec``'s kernel, stride and padding with weights ``w`` (and bias ``b``)."""
        ks, stride = spec.kernel, spec.stride
        inputs = [x, self.const(f"{stem}/W", w)] + ([self.const(f"{stem}/b", b)] if b is not None else [])
        return self.node("Conv", inputs, stem.replace("/", "_"),
                         kernel_shape=[ks, ks], strides=[stride, stride], pads=[ks // 2] * 4)

    def folded(self, spec, channels: slice) -> tuple:
        """(weights, bias) of ``spec``'s convolution restricted to ``channels``, test-mode BatchNorm
        folded in (float64, then the float32 of :meth:`const`)."""
        w = self.params[f"{spec.conv}/conv/W"].astype(np.float64)[channels]
        gamma, beta, mean, var = (self.params[f"{spec.bn}/bn/{n}"].astype(np.float64).reshape(-1)
                                  for n in ("gamma", "beta", "mean", "var"))
        k = gamma / np.sqrt(var + self.bn_eps)
        return w * k[:, None, None, None], beta - mean * k

    def ibn(self, x: str, spec, half: int) -> str:
        """IBN-a after ``spec`` (``models.ibn_channels``): instance normalisation of the first ``half``
        output channels (per image and channel: GlobalAveragePool is the mean), BatchNorm folded into
        the convolution of the rest; two Convs and a Concat, so no Split (OpenCV's importer and
        every backend here run these opset-13 operators)."""
        stem = spec.bn.replace("/", "_")
        w = self.params[f"{spec.conv}/conv/W"][:half]
        inst = self.affine_norm(self.conv(x, spec, w, None, f"{spec.conv}/instance"), f"{stem}_in",
                                lambda v: self.node("GlobalAveragePool", [v], "gap"), self.gn_eps,
                                self.params[f"{spec.bn}/instance_normalization/gamma"],
                                self.params[f"{spec.bn}/instance_normalization/beta"])
        batch = self.conv(x, spec, *self.folded(spec, slice(half, None)), f"{spec.conv}/batch")
        return self.node("Concat", [inst, batch], f"{stem}_concat", axis=1)

    def conv_bn(self, x: str, spec, relu: bool) -> str:
        """Conv ``spec`` (a ``models.ConvBN``, no bias) + test-mode BN folded into one Conv with bias
        (or + :meth:`group_norm` for a GroupNorm network, :meth:`ibn` for an IBN-a layer), then ReLU."""
        from . import models
        half = models.ibn_channels(spec, self.norm)
        if self.norm == "group":
            h = self.group_norm(self.conv(x, spec, self.params[f"{spec.conv}/conv/W"], None, spec.conv), spec,
                                self.gn_groups, self.gn_eps)
        elif half:
            h = self.ibn(x, spec, half)
        else:
            h = self.conv(x, spec, *self.folded(spec, slice(None)), spec.conv)
        return self.node("Relu", [h], "relu") if relu else h

    def block(self, x: str, block) -> str:
        """A residual block (``models.Block``): main branch, ReLU after each conv but the last,
        plus the (projected) shortcut, then ReLU."""
        h = x
        for i, spec in enumerate(block.convs):
            h = self.conv_bn(h, spec, relu=i < len(block.convs) - 1)
        short = self.conv_bn(x, block.projection, False) if block.has_projection else x
        return self.node("Relu", [self.node("Add", [h, short], "add")], "relu")


def build_onnx(params: dict, meta: ModelDescription, opset: int = 13):
    """The ``onnx.ModelProto`` of a ResNet of models.py (same graph as the ``.nnp``'s "inference").

    params: ``{name: ndarray}`` as from :func:`wbc_nnabla.modelfile.read_model`.
    meta: its description (``arch``, ``num_classes``, ``norm``: ``batch`` when absent).
    """
    meta = describe(meta)
    from onnx import TensorProto, helper

    from . import models
    from onnx.defs import onnx_opset_version
    if not 13 <= opset <= onnx_opset_version():
        raise InputError(f"opset {opset}: at least 13 is needed (Softmax over one axis), and the installed onnx "
                         f"knows opsets up to {onnx_opset_version()}")
    g = _Graph(params, models.BN_EPS, meta.norm, models.GN_GROUPS, models.GN_EPS)
    h = g.node("Mul", ["x", g.const("preprocess/scale", params["preprocess/scale"])], "scale")
    h = g.node("Add", [h, g.const("preprocess/bias", params["preprocess/bias"])], "bias")
    h = g.conv_bn(h, models.STEM, True)
    h = g.node("MaxPool", [h], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for block in models.stages(meta.arch):
        h = g.block(h, block)
    h = g.node("GlobalAveragePool", [h], "gap")
    h = g.node("Flatten", [h], "flatten", axis=1)
    h = g.node("Gemm", [h, g.const("fc/W", params["fc/affine/W"]), g.const("fc/b", params["fc/affine/b"])], "fc")
    g.nodes.append(helper.make_node("Softmax", [h], ["y"], name="softmax", axis=1))
    n = meta.num_classes
    graph = helper.make_graph(
        g.nodes, f"wbc_nnabla_{meta.arch}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="wbc_nnabla", doc_string=(
                                  "ResNet of Sasaki et al. (2020), Fig. 4. Input x: float32 (N,3,H,W) RGB in [0,1]; "
                                  "output y: softmax probabilities over class_names (metadata)."))
    model.ir_version = min(model.ir_version, 8)  # onnxruntime/OpenCV accept IR 8 with opset 13-17
    # dicts too: the domain reference (wbc_nnabla.sites.domain) must reach the ONNX backends
    onnx_meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, list, dict))}
    helper.set_model_props(model, {
        ONNX_META_KEY: json.dumps(onnx_meta),
        "class_names": json.dumps(meta.class_names),
        "input_size": str(meta.input_size) if meta.input_size else "",   # "": not stored
        "arch": meta.arch,
        "norm": meta.norm,
    })
    return model


def export_onnx(model_path: PathLike, onnx_path: PathLike, opset: int = 13, overwrite: bool = False) -> Path:
    """Export a ``.nnp``/``.h5`` model to ONNX; checked with ``onnx.checker``; written atomically.

    The batch dimension (and H, W) are dynamic. Class names and input size are
    stored in the ONNX ``metadata_props`` (see :func:`read_onnx_meta`).
    Raises :class:`ModelError` for a file that is not a supported network,
    FileExistsError when ``onnx_path`` exists and ``overwrite`` is false, and
    :class:`wbc_nnabla.fileio.SourceError` when ``onnx_path`` is the model itself.
    """
    import onnx

    from .outputs import atomic_path, check_output
    check_output(onnx_path, "export", overwrite, [model_path], folder=False)
    params, meta = read_model(model_path)
    meta = ModelDescription(dict(meta, source_sha256=file_sha256(model_path), source=Path(model_path).name))
    model = build_onnx(params, meta, opset)
    onnx.checker.check_model(model, full_check=True)
    out = Path(onnx_path)
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return out


def read_onnx_meta(path: PathLike) -> ModelDescription:
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
    return ModelDescription(meta)


# ----------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Folder of ONNX files converted on the fly: ``$WBC_NNABLA_CACHE`` or ``~/.cache/wbc_nnabla/onnx``."""
    env = os.environ.get("WBC_NNABLA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "wbc_nnabla" / "onnx"


#: Converted models kept in the cache folder (the oldest beyond this are removed; ~45 MB each for ResNet-18).
CACHE_KEEP = 16


#: Names :func:`cached_onnx` gives its files (``<stem>-<20 hex>-op<N>.onnx``); only these are pruned.
_CACHE_NAME = re.compile(r".+-[0-9a-f]{20}-op\d+\.onnx")


def prune_cache(folder: Path, keep: int = CACHE_KEEP, protect: Optional[Path] = None) -> None:
    """Remove all but the ``keep`` newest (by modification time) conversions in the cache ``folder``.

    Only files named as :func:`cached_onnx` names them are counted and removed
    (an ONNX file of the user's in the same folder is never touched); ``protect``
    (the conversion just made) is never removed.
    """
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
        prune_cache(base, keep=CACHE_KEEP, protect=out)
        return out
    raise ModelError("no writable folder for the ONNX cache (set WBC_NNABLA_CACHE)")
