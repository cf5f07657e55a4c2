"""ResNet graphs of the paper's Fig. 4 (section II.4), in nnabla.

In the style of torchvision's ``resnet.py``: the figure's structure is visible
in :func:`resnet`. Parameter names follow torchvision (``conv1``, ``bn1``,
``layer1/0/conv1``, ..., ``fc``) so weights from other frameworks map by name.

Input convention: ``x`` is float32 ``(N, 3, H, W)``, RGB scaled to [0, 1]
(what ``data_iterator_csv_dataset(..., normalize=True)`` yields); the graph
subtracts the ImageNet mean and divides by its standard deviation itself, so
the exported ``.nnp``/ONNX takes the same input. Any ``H, W`` >= 32 works:
global average pooling makes the classifier size-independent (the paper
trains at 480x480 and infers at 320x320).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence, Tuple

import nnabla as nn
import nnabla.functions as F
import nnabla.parametric_functions as PF
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: (block kind, blocks per stage) of each supported depth.
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


def normalize(x: nn.Variable) -> nn.Variable:
    """ImageNet normalisation of a [0, 1] RGB batch ``(N, 3, H, W)``.

    The constants are stored as non-trainable parameters ``preprocess/scale``
    and ``preprocess/bias`` (``(1, 3, 1, 1)``): a plain constant Variable would
    not be saved in an ``.nnp``, while parameters travel with the model.
    """
    scale = 1.0 / np.array(IMAGENET_STD, np.float32)
    bias = -np.array(IMAGENET_MEAN, np.float32) * scale
    with nn.parameter_scope("preprocess"):
        s = nn.parameter.get_parameter_or_create("scale", (1, 3, 1, 1), scale.reshape(1, 3, 1, 1), need_grad=False)
        b = nn.parameter.get_parameter_or_create("bias", (1, 3, 1, 1), bias.reshape(1, 3, 1, 1), need_grad=False)
    return x * s + b


def conv_bn(x, out_channels: int, kernel: int, stride: int, name: str, bn_name: str,
            test: bool) -> nn.Variable:
    """Convolution (no bias) then batch normalisation, ``same``-style padding."""
    pad = (kernel // 2, kernel // 2)
    h = PF.convolution(x, out_channels, (kernel, kernel), pad=pad, stride=(stride, stride),
                       with_bias=False, name=name)
    return PF.batch_normalization(h, batch_stat=not test, name=bn_name)


def basic_block(x, planes: int, stride: int, test: bool, name: str) -> nn.Variable:
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""
    with nn.parameter_scope(name):
        h = F.relu(conv_bn(x, planes, 3, stride, "conv1", "bn1", test))
        h = conv_bn(h, planes, 3, 1, "conv2", "bn2", test)
        shortcut = x
        if stride != 1 or x.shape[1] != planes:
            with nn.parameter_scope("downsample"):
                shortcut = conv_bn(x, planes, 1, stride, "0", "1", test)
    return F.relu(h + shortcut)


def bottleneck(x, planes: int, stride: int, test: bool, name: str) -> nn.Variable:
    """1x1 reduce, 3x3, 1x1 expand (x4), with a projection shortcut when shapes differ."""
    with nn.parameter_scope(name):
        h = F.relu(conv_bn(x, planes, 1, 1, "conv1", "bn1", test))
        h = F.relu(conv_bn(h, planes, 3, stride, "conv2", "bn2", test))
        h = conv_bn(h, planes * 4, 1, 1, "conv3", "bn3", test)
        shortcut = x
        if stride != 1 or x.shape[1] != planes * 4:
            with nn.parameter_scope("downsample"):
                shortcut = conv_bn(x, planes * 4, 1, stride, "0", "1", test)
    return F.relu(h + shortcut)


def resnet(x: nn.Variable, arch: str = "resnet18", num_classes: int = 6, test: bool = False,
           return_features: bool = False):
    """The ResNet of Fig. 4: logits ``(N, num_classes)`` for a [0, 1] batch ``(N, 3, H, W)``.

    arch: ``resnet18`` (the paper's), ``resnet34`` or ``resnet50``.
    test: use BatchNorm running statistics (validation/inference graphs).
    return_features: also return the last convolutional stage ``(N, C, H/32, W/32)``
        (for Grad-CAM).
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    kind, layers = ARCHS[arch]
    block = basic_block if kind == "basic" else bottleneck
    h = normalize(x)
    h = F.relu(conv_bn(h, 64, 7, 2, "conv1", "bn1", test))          # 7x7/2, 64
    h = F.max_pooling(h, (3, 3), (2, 2), pad=(1, 1))                  # 3x3/2 max pool
    for stage, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(n_blocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            h = block(h, planes, stride, test, f"layer{stage}/{i}")
    features = h
    h = F.global_average_pooling(h)                                    # (N, C, 1, 1)
    logits = PF.affine(h, num_classes, name="fc")                      # fully connected, 6 outputs
    return (logits, features) if return_features else logits


def resnet18(x: nn.Variable, num_classes: int = 6, test: bool = False, return_features: bool = False):
    """ResNet-18 with a ``num_classes``-output classifier (the paper's network)."""
    return resnet(x, "resnet18", num_classes, test, return_features)


def inference_network(x: nn.Variable, meta: dict) -> nn.Variable:
    """Softmax probabilities ``(N, C)`` of the test-mode network ``meta`` describes (``arch``,
    ``num_classes``): the graph every saved ``.nnp`` holds and the nnabla backend runs."""
    return F.softmax(resnet(x, meta["arch"], int(meta["num_classes"]), test=True))


def private_scope(params: dict) -> dict:
    """A parameter dict of fixed (``need_grad=False``) copies of ``params`` ``{name: ndarray}``.

    Graphs built under ``nn.parameter_scope("", private_scope(params))`` never touch
    nnabla's global parameters, so a model can be used beside a training run.
    """
    scope: dict = OrderedDict()
    with nn.parameter_scope("", scope):
        for k, v in params.items():
            nn.parameter.get_parameter_or_create(k, v.shape, v, need_grad=False)
    return scope


def count_parameters(grad_only: bool = True) -> int:
    """Number of scalars in the current parameter scope (trainable ones by default)."""
    return int(sum(np.prod(v.shape) for v in nn.get_parameters(grad_only=grad_only).values()))


def input_shape(batch_size: int, size: int) -> Tuple[int, int, int, int]:
    """Network input shape ``(N, 3, size, size)``."""
    return (batch_size, 3, size, size)


def class_count_of(params: dict) -> int:
    """Number of classifier outputs in a parameter dict (``fc/affine/W`` is ``(C_in, num_classes)``)."""
    return int(params["fc/affine/W"].shape[1])


def arch_of(params: Sequence[str]) -> str:
    """Guess the ResNet depth from parameter names (``layerK/i/...`` counts, bottleneck ``conv3``)."""
    names = list(params)
    blocks = tuple(len({n.split("/")[1] for n in names if n.startswith(f"layer{k}/")}) for k in range(1, 5))
    bottle = any("/conv3/" in n for n in names)
    for arch, (kind, layers) in ARCHS.items():
        if tuple(layers) == blocks and (kind == "bottleneck") == bottle:
            return arch
    raise ValueError(f"parameters do not form a supported ResNet (blocks per stage {blocks})")


# ----------------------------------------------------------------------------- model files
#
# A wbc_nnabla model file is a standard nnabla ``.nnp`` (loadable by
# ``nnabla.utils.nnp_graph.NnpLoader`` and ``nnabla_cli infer``) with:
#   network "inference": input "x" (N, 3, S, S) float32 RGB in [0, 1],
#                        output "y" (N, C) softmax probabilities (test-mode BatchNorm);
#   executor "inference" over it;
#   an extra zip member "wbc_nnabla.json" with MODEL_META (arch, class names,
#   input size), which nnabla's loaders ignore.

import json as _json
import zipfile as _zipfile

META_NAME = "wbc_nnabla.json"


def model_meta(arch: str, class_names: Sequence[str], size: int, **extra) -> dict:
    """The description stored with a model: ``arch``, ``class_names``, ``input_size`` (pixels)."""
    from . import __version__
    return dict(format="wbc_nnabla-model/1", arch=arch, class_names=list(class_names),
                num_classes=len(class_names), input_size=int(size), wbc_nnabla=__version__, **extra)


def save_nnp(path, params: dict, meta: dict, batch_size: int = 1) -> None:
    """Save parameters ``{name: ndarray or nn.Variable}`` as a self-describing inference ``.nnp``.

    The graph is rebuilt from ``meta['arch']``/``meta['num_classes']`` at
    ``meta['input_size']`` in test mode, so the file holds only what inference needs.
    Written atomically.
    """
    import nnabla.utils.save as nn_save

    from .io import atomic_path
    size = int(meta["input_size"])
    with nn.parameter_scope("__save_nnp"):
        for k, v in params.items():
            arr = v.d if isinstance(v, nn.Variable) else np.asarray(v)
            nn.parameter.get_parameter_or_create(k, arr.shape, need_grad="/mean" not in k and "/var" not in k)
            nn.get_parameters(grad_only=False)[k].d = arr
        x = nn.Variable(input_shape(batch_size, size))
        y = inference_network(x, meta)
        contents = {
            "networks": [{"name": "inference", "batch_size": batch_size,
                          "outputs": {"y": y}, "names": {"x": x}}],
            "executors": [{"name": "inference", "network": "inference", "data": ["x"], "output": ["y"]}],
        }
        with atomic_path(path) as tmp:
            nn_save.save(str(tmp), contents, variable_batch_size=True)
            with _zipfile.ZipFile(tmp, "a") as z:
                z.writestr(META_NAME, _json.dumps(meta, indent=2))
    _drop_scope("__save_nnp")


def _drop_scope(scope: str) -> None:
    # nnabla has no public "delete scope"; parameters created under a temporary
    # scope are removed from the global dict so they never leak into training.
    import nnabla.parameter as P
    P.current_scope.pop(scope, None)


def read_meta(path) -> dict:
    """The model description stored in a wbc_nnabla ``.nnp``; ``{}`` for a plain nnabla ``.nnp``."""
    try:
        with _zipfile.ZipFile(path) as z:
            if META_NAME in z.namelist():
                return _json.loads(z.read(META_NAME))
    except _zipfile.BadZipFile:
        raise ValueError(f"{path}: not an .nnp file (expected a zip archive written by nnabla)") from None
    return {}


def load_parameters(path) -> dict:
    """Parameters ``{name: ndarray}`` of a ``.nnp`` or ``.h5`` file, without touching the global scope."""
    with nn.parameter_scope("__load"):
        nn.load_parameters(str(path))
        params = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    _drop_scope("__load")
    return params


# ----------------------------------------------------------------------------- ImageNet weights (transfer learning)
#
# Section II.4: the paper starts ResNet-18 from ImageNet weights (Neural Network
# Console's pretrained ResNet-18). Two nnabla sources exist; both are read from
# local files only (nothing is downloaded here):
#
# * nnabla's model zoo ``Resnet-<N>.nnp`` (what ``nnabla.models.imagenet.ResNet18``
#   caches in ``~/nnabla_data/nnp_models/imagenet/``): a Neural Network Console
#   graph whose parameters carry NNC layer names (``Convolution_3/W`` ...) and
#   whose input is an uint8-range RGB image. Names are not relied on: layers are
#   matched by the graph's structure (see :func:`map_zoo_nnp`).
# * nnabla-examples' ImageNet ``rn18-nhwc*.h5`` / ``rn50-nchw.h5``
#   (``image-classification/imagenet/models/base.py``): names
#   ``conv1/conv/W``, ``res{s}/layer{j}/basicblock{1,2}/...``,
#   ``.../basicblock_s/shortcut_conv/...``, ``fc/conv/{W,b}``; mostly stored
#   channels-last (NHWC) with a zero 4th input channel in ``conv1``.
#
# Either way the classifier (fc) is not loaded: the head is replaced by a fresh
# ``num_classes``-output affine layer.

ZOO_NAMES = {"resnet18": "Resnet-18.nnp", "resnet34": "Resnet-34.nnp", "resnet50": "Resnet-50.nnp"}
EXAMPLES_NAMES = {"resnet18": "rn18-nhwc.h5", "resnet34": "rn34-nhwc.h5", "resnet50": "rn50-nchw.h5"}
_ZOO_URL = "https://nnabla.org/pretrained-models/nnp_models/imagenet/Resnet-{n}/Resnet-{n}.nnp"
_EXAMPLES_URL = "https://nnabla.org/pretrained-models/nnabla-examples/ilsvrc2012/{name}"


class PretrainedError(ValueError):
    """A missing or unusable ImageNet weight file (the message says how to get one)."""


def imagenet_cache_dir():
    """Where ``nnabla.models.imagenet`` caches zoo files: ``~/nnabla_data/nnp_models/imagenet``."""
    import os
    return os.path.join(os.path.expanduser("~"), "nnabla_data", "nnp_models", "imagenet")


def _how_to_get(arch: str) -> str:
    n = arch.replace("resnet", "")
    return (f"On a machine with internet run `python -c \"from nnabla.models.imagenet import ResNet{n}; "
            f"ResNet{n}()\"` (it caches {ZOO_NAMES[arch]} in ~/nnabla_data/nnp_models/imagenet/), or download "
            f"{_ZOO_URL.format(n=n)} or {_EXAMPLES_URL.format(name=EXAMPLES_NAMES[arch])}; copy the file to "
            f"{imagenet_cache_dir()}/ (or pass its path), or use --pretrained none to train from scratch")


def find_pretrained(spec: str, arch: str = "resnet18"):
    """Resolve ``--pretrained``: ``none`` -> None, ``imagenet`` -> the cached zoo/examples file, else a path.

    Raises :class:`PretrainedError` naming the file, where to put it and how to get it.
    """
    import os
    if spec is None or str(spec).lower() == "none":
        return None
    if arch not in ZOO_NAMES:
        raise PretrainedError(f"no ImageNet weights known for arch {arch!r}")
    if str(spec).lower() == "imagenet":
        d = imagenet_cache_dir()
        for name in (ZOO_NAMES[arch], EXAMPLES_NAMES[arch]):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
        raise PretrainedError(f"ImageNet {arch} weights not found: expected {d}/{ZOO_NAMES[arch]} "
                              f"(or {EXAMPLES_NAMES[arch]}). {_how_to_get(arch)}")
    if not os.path.isfile(spec):
        raise PretrainedError(f"--pretrained {spec}: no such file. {_how_to_get(arch)}")
    return str(spec)


def our_layers(arch: str):
    """``[(conv_name, bn_name)]`` of our graph in creation order, e.g. ``('layer2/0/downsample/0', 'layer2/0/downsample/1')``."""
    kind, layers = ARCHS[arch]
    n_conv = 2 if kind == "basic" else 3
    out = [("conv1", "bn1")]
    for s, n in enumerate(layers, start=1):
        for i in range(n):
            p = f"layer{s}/{i}"
            out += [(f"{p}/conv{k}", f"{p}/bn{k}") for k in range(1, n_conv + 1)]
            if i == 0 and (s > 1 or kind == "bottleneck"):
                out.append((f"{p}/downsample/0", f"{p}/downsample/1"))
    return out


def _bn_dict(bn: str, beta, gamma, mean, var) -> dict:
    c = int(np.asarray(beta).size)
    return {f"{bn}/bn/{k}": np.asarray(v, np.float32).reshape(1, c, 1, 1)
            for k, v in (("beta", beta), ("gamma", gamma), ("mean", mean), ("var", var))}


def map_examples_h5(src: dict, arch: str) -> dict:
    """nnabla-examples ImageNet parameters (NHWC or NCHW) -> our names and NCHW layout (no fc)."""
    kind, layers = ARCHS[arch]
    blk = "basicblock" if kind == "basic" else "bottleneck"
    nhwc = next(v for k, v in src.items() if k.endswith("bn/beta")).shape[1] == 1

    def conv_w(name):
        w = src[name]
        if nhwc:
            w = np.transpose(w, (0, 3, 1, 2))
        return np.ascontiguousarray(w[:, :3] if name == "conv1/conv/W" else w, np.float32)

    def bn(prefix, ours):
        return _bn_dict(ours, *(src[f"{prefix}/bn/{k}"] for k in ("beta", "gamma", "mean", "var")))

    pairs = [("conv1", "conv1", "bn1")]
    for s, n in enumerate(layers, start=1):
        for i in range(n):
            theirs, p = f"res{s}/layer{i + 1}/{blk}", f"layer{s}/{i}"
            n_conv = 2 if kind == "basic" else 3
            pairs += [(f"{theirs}{k}", f"{p}/conv{k}", f"{p}/bn{k}") for k in range(1, n_conv + 1)]
            if f"{theirs}_s/shortcut_conv/conv/W" in src:
                pairs.append((f"{theirs}_s/shortcut_conv", f"{p}/downsample/0", f"{p}/downsample/1"))
    out = {}
    for theirs, conv, bn_name in pairs:
        key = f"{theirs}/conv/W"
        if key not in src:
            raise PretrainedError(f"parameter {key} missing: not an nnabla-examples {arch} file")
        out[f"{conv}/conv/W"] = conv_w(key)
        out.update(bn(theirs, bn_name))
    return out


def _zoo_network(path):
    """(functions, parameter dict) of the largest network in an NNC/zoo ``.nnp``."""
    from google.protobuf import text_format
    from nnabla.utils import nnabla_pb2
    proto = nnabla_pb2.NNablaProtoBuf()
    with _zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith(".nntxt") or name.endswith(".prototxt"):
                text_format.Merge(z.read(name).decode("utf-8"), proto)
            elif name.endswith(".protobuf"):
                p = nnabla_pb2.NNablaProtoBuf()
                p.ParseFromString(z.read(name))
                proto.MergeFrom(p)
    if not proto.network:
        raise PretrainedError(f"{path}: no network in this .nnp")
    net = max(proto.network, key=lambda n: len(n.function))
    return list(net.function), load_parameters(path)


def map_zoo_nnp(path, arch: str) -> dict:
    """Model-zoo ``Resnet-N.nnp`` parameters -> our names, matched by graph structure (no fc).

    Convolutions are grouped by weight shape and paired in graph order with
    ours (within a shape group the order is forced by data dependencies); each
    BatchNormalization is paired through the convolution that feeds it. A
    convolution bias before BN is folded into the BN mean. Leading
    ``MulScalar``/``AddScalar`` input scaling (the zoo takes 0-255 RGB) goes
    into ``preprocess/scale``/``preprocess/bias``, so our [0, 1] input reproduces
    the zoo's first-layer input exactly.
    """
    funcs, src = _zoo_network(path)
    producer = {o: f for f in funcs for o in f.output}
    convs = [f for f in funcs if f.type == "Convolution"]
    bn_of = {}
    for f in funcs:
        if f.type in ("BatchNormalization", "FusedBatchNormalization"):
            p = producer.get(f.input[0])
            if p is not None and p.type == "Convolution":
                bn_of[p.input[1]] = f
    ours = our_layers(arch)
    with nn.parameter_scope("__shapes"):
        resnet(nn.Variable((1, 3, 64, 64)), arch, 6, test=True)
        shapes = {k: v.shape for k, v in nn.get_parameters(grad_only=False).items()}
    _drop_scope("__shapes")
    if len(convs) != len(ours):
        raise PretrainedError(f"{path}: {len(convs)} convolutions, {arch} has {len(ours)}: not a {arch} model")
    groups = {}
    for f in convs:
        groups.setdefault(tuple(src[f.input[1]].shape), []).append(f)
    out = {}
    for conv, bn in ours:
        shape = shapes[f"{conv}/conv/W"]
        if not groups.get(tuple(shape)):
            raise PretrainedError(f"{path}: no convolution of shape {shape} left for {conv}: not a {arch} model")
        f = groups[tuple(shape)].pop(0)
        out[f"{conv}/conv/W"] = src[f.input[1]].astype(np.float32)
        b = bn_of.get(f.input[1])
        if b is None:
            raise PretrainedError(f"{path}: convolution {f.name} is not followed by BatchNormalization")
        beta, gamma, mean, var = (src[v].reshape(-1) for v in b.input[1:5])
        if len(f.input) > 2 and f.input[2] in src:       # conv bias before BN: fold into the mean
            mean = mean - src[f.input[2]].reshape(-1)
        out.update(_bn_dict(bn, beta, gamma, mean, var))
    out.update(_zoo_preprocess(funcs, producer, convs[0]))
    return out


def _zoo_preprocess(funcs, producer, first_conv) -> dict:
    """Our ``preprocess/scale,bias`` reproducing the zoo's scaling of its 0-255 RGB input.

    Walks back from the first convolution through ``MulScalar``/``AddScalar``
    (``ImageAugmentation`` is skipped: it is identity at test time) and composes
    them forwards into ``a * x255 + b``; our input is ``x255 / 255``.
    """
    chain = []
    v = first_conv.input[0]
    while v in producer:
        f = producer[v]
        if f.type not in ("MulScalar", "AddScalar", "ImageAugmentation", "Identity"):
            raise PretrainedError(f"unsupported input preprocessing function {f.type} ({f.name}) "
                                  f"before the first convolution")
        chain.append(f)
        v = f.input[0]
    a, b = 1.0, 0.0
    for f in reversed(chain):
        if f.type == "MulScalar":
            a, b = a * f.mul_scalar_param.val, b * f.mul_scalar_param.val
        elif f.type == "AddScalar":
            b = b + f.add_scalar_param.val
    return {"preprocess/scale": np.full((1, 3, 1, 1), 255.0 * a, np.float32),
            "preprocess/bias": np.full((1, 3, 1, 1), b, np.float32)}


def load_imagenet(path, arch: str = "resnet18") -> dict:
    """ImageNet backbone parameters from a zoo ``.nnp`` or nnabla-examples ``.h5``, in our names.

    Returns ``{name: ndarray}`` for every parameter of :func:`resnet` except
    ``fc`` (and, for ``.h5`` files, ``preprocess``: nnabla-examples normalise
    with the same ImageNet mean/std as this graph).
    """
    path = str(path)
    try:
        if path.endswith(".nnp"):
            return map_zoo_nnp(path, arch)
        src = load_parameters(path)
    except PretrainedError:
        raise
    except Exception as e:  # nnabla raises bare RuntimeErrors for unreadable files
        raise PretrainedError(f"{path}: cannot read ImageNet weights ({type(e).__name__}: {e})") from None
    if "conv1/conv/W" not in src:
        raise PretrainedError(f"{path}: not an nnabla-examples ImageNet ResNet parameter file "
                              f"(no conv1/conv/W); expected {EXAMPLES_NAMES.get(arch)} or {ZOO_NAMES.get(arch)}")
    return map_examples_h5(src, arch)
