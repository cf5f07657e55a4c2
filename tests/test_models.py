"""ResNet graphs (Fig. 4), their one topology, initialisation, and ImageNet weight mapping (section II.4).

The 480x480 (training) and 320x320 (inference) shapes are exercised by
benchmarks/bench_training.py; tests use 64 and 96 px to stay fast.
"""
import contextlib
from pathlib import Path

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")
import nnabla.functions as F  # noqa: E402
import nnabla.parametric_functions as PF  # noqa: E402

from wbc_nnabla import models, pretrained  # noqa: E402


@pytest.fixture(autouse=True)
def clean_scope():
    nn.clear_parameters()
    yield
    nn.clear_parameters()


def test_resnet18_parameter_count_and_shapes():
    x = nn.Variable((2, 3, 64, 64))
    y, feat = models.resnet_features(x, "resnet18", num_classes=6)
    assert models.count_parameters() == 11_179_590      # trainable: conv W, BN beta/gamma, fc W/b
    assert y.shape == (2, 6) and feat.shape == (2, 512, 2, 2)
    y96, feat96 = models.resnet_features(nn.Variable((1, 3, 96, 96)), "resnet18", num_classes=6)
    assert y96.shape == (1, 6) and feat96.shape == (1, 512, 3, 3)
    assert models.count_parameters() == 11_179_590      # same parameters at any input size
    assert models.arch_of(nn.get_parameters(grad_only=False)) == "resnet18"


def _conv_shapes(arch):
    with nn.parameter_scope("ref"):
        models.resnet(nn.Variable((1, 3, 64, 64)), arch, 6, test=True)
        return {k: v.shape for k, v in nn.get_parameters(grad_only=False).items()}


def test_conv_layers_cover_every_conv():
    shapes = _conv_shapes("resnet18")
    convs = sorted(k[: -len("/conv/W")] for k in shapes if k.endswith("/conv/W") and not k.startswith("fc"))
    assert sorted(c.conv for c in models.conv_layers("resnet18")) == convs


# ----------------------------------------------------------------------------- one topology, every consumer


def _graph_params(arch, num_classes=6, seed=None, weight_init="glorot"):
    """{name: ndarray} of models.resnet built in a dict scope of its own (optionally seeded)."""
    import nnabla.random
    if seed is not None:
        nnabla.random.set_parameter_seed(seed)
    with nn.parameter_scope("", {}):
        models.resnet(nn.Variable((1, 3, 32, 32)), arch, num_classes, test=False, weight_init=weight_init)
        return {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}


def _shapes(params):
    return {k: tuple(v.shape) for k, v in params.items()}


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_topology_consumers_agree(arch):
    """The nnabla graph, the ONNX graph and the nnabla-examples name map see the same layers."""
    pytest.importorskip("onnx")
    from wbc_nnabla import export
    params = _graph_params(arch)
    graph = _shapes(params)
    layers = models.conv_layers(arch)
    # nnabla graph: every conv/BN of the topology, in creation order, with its shape
    convs_in_graph = [k[: -len("/conv/W")] for k in graph if k.endswith("/conv/W")]
    assert convs_in_graph == [c.conv for c in layers]
    assert all(graph[f"{c.conv}/conv/W"] == c.weight_shape for c in layers)
    assert all(graph[f"{c.bn}/bn/{n}"] == (1, c.out_channels, 1, 1)
               for c in layers for n in ("beta", "gamma", "mean", "var"))
    blocks = models.stages(arch)
    assert graph["fc/affine/W"] == (blocks[-1].out_channels, 6)
    # ONNX: one folded Conv (W, b) per conv+BN, plus preprocess and fc
    meta = dict(arch=arch, class_names=[f"c{i}" for i in range(6)], num_classes=6, input_size=32)
    inits = {t.name: tuple(t.dims) for t in export.build_onnx(params, meta).graph.initializer}
    want = {"preprocess/scale": graph["preprocess/scale"], "preprocess/bias": graph["preprocess/bias"],
            "fc/W": graph["fc/affine/W"], "fc/b": graph["fc/affine/b"]}
    for c in layers:
        want.update({f"{c.conv}/W": graph[f"{c.conv}/conv/W"], f"{c.conv}/b": (c.out_channels,)})
    assert inits == want
    # nnabla-examples .h5 (NCHW as rn50-nchw.h5): every backbone parameter mapped, same shapes
    src = {}
    for theirs, ours in pretrained.examples_names(arch):
        w = params[f"{ours.conv}/conv/W"]
        src[f"{theirs}/conv/W"] = np.concatenate([w, w[:, :1]], axis=1) if theirs == "conv1" else w
        for n in ("beta", "gamma", "mean", "var"):
            src[f"{theirs}/bn/{n}"] = params[f"{ours.bn}/bn/{n}"]
    mapped = pretrained.map_examples_h5(src, arch)
    assert _shapes(mapped) == {k: v for k, v in graph.items() if not k.startswith(("fc/", "preprocess/"))}
    # the wiring rule itself: stride 2 opens stages 2-4, projections where shapes change
    assert [b.stride for b in blocks if b.index == 0] == [1, 2, 2, 2]
    assert all(b.has_projection == (b.stride != 1 or b.in_channels != b.out_channels) for b in blocks)
    assert models.arch_of(params) == arch


def _pf_default_params(arch, seed):
    """Parameters created by bare PF calls with nnabla's default initialisers, in the graph's order."""
    import nnabla.random
    nnabla.random.set_parameter_seed(seed)
    with nn.parameter_scope("", {}):
        models.normalize(nn.Variable((1, 3, 8, 8)))
        for c in models.conv_layers(arch):
            h = PF.convolution(nn.Variable((1, c.in_channels, 8, 8)), c.out_channels, (c.kernel, c.kernel),
                               with_bias=False, name=c.conv)
            PF.batch_normalization(h, name=c.bn)
        PF.affine(nn.Variable((1, models.stages(arch)[-1].out_channels, 1, 1)), 6, name="fc")
        return {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_glorot_init_is_bit_identical_to_pf_defaults(arch):
    got, want = _graph_params(arch, seed=313), _pf_default_params(arch, seed=313)
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and np.array_equal(got[k], want[k]), k


def test_he_init_is_kaiming_normal_fan_out():
    glorot, he = _graph_params("resnet18", seed=5), _graph_params("resnet18", seed=5, weight_init="he")
    assert list(glorot) == list(he)
    w = he["layer4/1/conv2/conv/W"]                                   # 512 x 512 x 3 x 3
    assert abs(w.std() / np.sqrt(2.0 / (9 * 512)) - 1) < 0.01 and abs(w.mean()) < 1e-3
    assert abs(w).max() > np.sqrt(6.0 / (9 * 1024))                   # beyond the Glorot-uniform bound
    assert not np.array_equal(glorot["conv1/conv/W"], he["conv1/conv/W"])
    for k in he:                                                      # BN and preprocess: constants either way
        if "/bn/" in k or k.startswith("preprocess/"):
            assert np.array_equal(glorot[k], he[k]), k
    bound = np.sqrt(6.0 / (512 + 6))                                   # fc stays Glorot uniform
    assert abs(he["fc/affine/W"]).max() <= bound
    with pytest.raises(ValueError, match="weight_init"):
        models.resnet(nn.Variable((1, 3, 32, 32)), "resnet18", 6, weight_init="xavier")


def test_clear_scope_removes_only_that_scope():
    with nn.parameter_scope("keep"):
        PF.affine(nn.Variable((1, 2)), 3)
    with nn.parameter_scope("tmp"):
        models.resnet18(nn.Variable((1, 3, 32, 32)))
    models.clear_scope("tmp")
    assert list(nn.get_parameters(grad_only=False)) == ["keep/affine/W", "keep/affine/b"]
    models.clear_scope("never-created")


# ----------------------------------------------------------------------------- nnabla-examples .h5


def _examples_params(rng, nhwc=True):
    """Parameters named as nnabla-examples' ImageNet ResNet-18 (models/base.py), random values."""
    ours = _conv_shapes("resnet18")
    p = {}

    def conv(name, ours_name):
        w = rng.randn(*ours[f"{ours_name}/conv/W"]).astype(np.float32)
        if name == "conv1":
            w = np.concatenate([w, np.zeros_like(w[:, :1])], axis=1)    # padded 4th channel
        p[f"{name}/conv/W"] = np.transpose(w, (0, 2, 3, 1)) if nhwc else w
        c = w.shape[0]
        for k in ("beta", "gamma", "mean", "var"):
            v = rng.rand(c).astype(np.float32) + 0.5
            p[f"{name}/bn/{k}"] = v.reshape((1, 1, 1, c) if nhwc else (1, c, 1, 1))

    conv("conv1", "conv1")
    for s in range(1, 5):
        for i in range(2):
            t, o = f"res{s}/layer{i + 1}/basicblock", f"layer{s}/{i}"
            conv(f"{t}1", f"{o}/conv1")
            conv(f"{t}2", f"{o}/conv2")
            if s > 1 and i == 0:
                conv(f"{t}_s/shortcut_conv", f"{o}/downsample/0")
    p["fc/conv/W"] = rng.randn(1000, 1, 1, 512).astype(np.float32)
    p["fc/conv/b"] = rng.randn(1000).astype(np.float32)
    return p


def _examples_h5(path: Path) -> dict:
    """Write :func:`_examples_params` (seed 0, NHWC) as an nnabla ``.h5`` at ``path``; returns them."""
    src = _examples_params(np.random.RandomState(0))
    with nn.parameter_scope("gen"):
        for k, v in src.items():
            nn.parameter.get_parameter_or_create(k, v.shape).d = v
        nn.save_parameters(str(path))
    return src


def test_examples_h5_maps_onto_our_names(tmp_path):
    path = tmp_path / "rn18-nhwc.h5"
    src = _examples_h5(path)
    out = pretrained.load_imagenet(path, "resnet18")
    shapes = _conv_shapes("resnet18")
    expected = {k for k in shapes if not k.startswith(("fc/", "preprocess/"))}
    assert set(out) == expected
    assert all(out[k].shape == shapes[k] for k in out)
    np.testing.assert_array_equal(out["layer2/0/downsample/0/conv/W"],
                                  np.transpose(src["res2/layer1/basicblock_s/shortcut_conv/conv/W"], (0, 3, 1, 2)))
    np.testing.assert_array_equal(out["conv1/conv/W"], np.transpose(src["conv1/conv/W"], (0, 3, 1, 2))[:, :3])
    np.testing.assert_array_equal(out["layer4/1/bn2/bn/var"].ravel(),
                                  src["res4/layer2/basicblock2/bn/var"].ravel())


# ----------------------------------------------------------------------------- model-zoo .nnp (NNC graph)


def _nnc_resnet18(x255):
    """A ResNet-18 laid out as Neural Network Console writes one: NNC layer names, uint8-range
    input scaled by MulScalar/AddScalar, a biased first convolution, shortcut branch built
    before the main branch, 1000-class Affine. Test-mode BN; returns (logits, pooled features)."""
    counter = {"Convolution": 0, "BatchNormalization": 0}

    def nm(kind):
        counter[kind] += 1
        return kind if counter[kind] == 1 else f"{kind}_{counter[kind]}"

    def cbn(h, c, k, s, bias=False):
        h = PF.convolution(h, c, (k, k), pad=(k // 2, k // 2), stride=(s, s), with_bias=bias, name=nm("Convolution"))
        return PF.batch_normalization(h, batch_stat=False, name=nm("BatchNormalization"))

    h = F.add_scalar(F.mul_scalar(x255, 0.01735), -1.99)
    h = F.relu(cbn(h, 64, 7, 2, bias=True))
    h = F.max_pooling(h, (3, 3), (2, 2), pad=(1, 1))
    for s, c in enumerate((64, 128, 256, 512), start=1):
        for i in range(2):
            stride = 2 if (i == 0 and s > 1) else 1
            sc = cbn(h, c, 1, stride) if (i == 0 and s > 1) else h
            b = F.relu(cbn(h, c, 3, stride))
            h = F.relu(cbn(b, c, 3, 1) + sc)
    pooled = F.global_average_pooling(h)
    return PF.affine(pooled, 1000, name="Affine"), pooled


def _randomise(params, rng):
    for k, v in params.items():
        if k.endswith(("/mean", "/b")):
            v.d = rng.randn(*v.shape) * 0.1
        elif k.endswith(("/var", "/gamma")):
            v.d = rng.rand(*v.shape) + 0.5
        elif k.endswith("/beta"):
            v.d = rng.randn(*v.shape) * 0.1


def test_zoo_nnp_maps_by_graph_and_reproduces_features(tmp_path):
    from nnabla.utils.save import save
    rng = np.random.RandomState(1)
    x255 = nn.Variable((2, 3, 64, 64))
    with nn.parameter_scope("zoo"):
        logits, pooled = _nnc_resnet18(x255)
        _randomise(nn.get_parameters(grad_only=False), rng)
        path = tmp_path / "Resnet-18.nnp"
        save(str(path), {"networks": [{"name": "Training", "batch_size": 2, "outputs": {"y": logits},
                                       "names": {"x": x255}}],
                         "executors": [{"name": "Runtime", "network": "Training", "data": ["x"], "output": ["y"]}]})
    img = rng.randint(0, 256, size=x255.shape).astype(np.float32)
    x255.d = img
    pooled.forward()
    want = pooled.d.reshape(2, -1).copy()

    mapped = pretrained.load_imagenet(path, "resnet18")
    x = nn.Variable((2, 3, 64, 64))
    with nn.parameter_scope("ours"):
        _, feat = models.resnet_features(x, "resnet18", 6, test=True)
        params = nn.get_parameters(grad_only=False)
        for k, v in mapped.items():
            params[k].d = v
    got = F.global_average_pooling(feat)
    x.d = img / 255.0
    got.forward()
    np.testing.assert_allclose(got.d.reshape(2, -1), want, rtol=1e-4, atol=1e-4)


def test_missing_imagenet_weights_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(pretrained.PretrainedError) as e:
        pretrained.find_pretrained("imagenet", "resnet18")
    msg = str(e.value)
    assert "Resnet-18.nnp" in msg and str(tmp_path) in msg and "--pretrained none" in msg
    assert pretrained.find_pretrained("none") is None
    with pytest.raises(pretrained.PretrainedError, match="no such file"):
        pretrained.find_pretrained(str(tmp_path / "nope.h5"))
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(pretrained.PretrainedError, match="junk.h5"):
        pretrained.load_imagenet(tmp_path / "junk.h5")


# ----------------------------------------------------------------------------- GroupNorm (norm='group')


def test_groupnorm_network_names_shapes_and_inference_of_norm():
    """Same torchvision scopes, nnabla's GroupNorm parameters (beta/gamma (1, C, 1, 1), no running
    statistics), the same trainable count as BatchNorm; the names alone give the norm back."""
    bn = {k: tuple(v.shape) for k, v in _graph_params("resnet18").items()}
    with nn.parameter_scope("", {}):
        models.resnet(nn.Variable((1, 3, 32, 32)), "resnet18", 6, norm="group")
        gn = {k: tuple(v.shape) for k, v in nn.get_parameters(grad_only=False).items()}
        assert models.count_parameters() == 11_179_590     # BN's trainable beta/gamma <-> GN's beta/gamma
    assert gn["layer3/0/downsample/1/group_normalization/gamma"] == (1, 256, 1, 1)
    assert {k.replace("/group_normalization/", "/bn/") for k in gn} == \
        {k for k in bn if not k.endswith(("/mean", "/var"))}
    assert models.norm_of(gn) == "group" and models.norm_of(bn) == "batch"
    assert models.arch_of(gn) == "resnet18"
    with pytest.raises(ValueError, match="both BatchNorm"):
        models.norm_of(list(gn) + list(bn))
    with pytest.raises(ValueError, match="norm 'instance'"):
        models.resnet(nn.Variable((1, 3, 32, 32)), "resnet18", 6, norm="instance")
    assert models.GN_GROUPS == 32 and all(c.out_channels % models.GN_GROUPS == 0
                                          for a in models.ARCHS for c in models.conv_layers(a))


@contextlib.contextmanager
def _both_modes(x_np: np.ndarray, spec, norm: str):
    """``(y_train, y_test, parameters, run)`` of ``models.norm_layer`` on a batch shaped as ``x_np``, in a
    fresh parameter scope: ``run()`` feeds ``x_np`` and computes both modes (once the parameters are set)."""
    with nn.parameter_scope("", {}):
        x = nn.Variable(x_np.shape)
        y_train, y_test = (models.norm_layer(x, spec, test, norm) for test in (False, True))

        def run():
            x.d = x_np
            F.sink(y_train, y_test).forward()
        yield y_train, y_test, nn.get_parameters(grad_only=False), run


def test_groupnorm_layer_is_per_image_group_standardisation():
    """norm_layer('group') = (x - mean) / sqrt(var + eps) * gamma + beta over each image's groups of C/32
    channels (a NumPy reference), the same in training and test mode and whatever else is in the batch."""
    rng = np.random.RandomState(0)
    x_np = (rng.randn(3, 64, 5, 5) * 2 + 0.5).astype(np.float32)
    spec = models.ConvBN("c", "n", 3, 64, 64, 1)
    with _both_modes(x_np, spec, "group") as (y_train, y_test, p, run):
        gamma, beta = (p[f"n/group_normalization/{k}"] for k in ("gamma", "beta"))
        gamma.d, beta.d = rng.rand(1, 64, 1, 1) + 0.5, rng.randn(1, 64, 1, 1)
        run()
        g = x_np.reshape(3, 32, -1).astype(np.float64)
        z = (g - g.mean(2, keepdims=True)) / np.sqrt(g.var(2, keepdims=True) + models.GN_EPS)
        want = z.reshape(x_np.shape) * gamma.d + beta.d
        np.testing.assert_allclose(y_train.d, want, atol=1e-4)
        np.testing.assert_array_equal(y_train.d, y_test.d)
        one = nn.Variable((1, 64, 5, 5))
        y_one = models.norm_layer(one, spec, True, "group")
        one.d = x_np[1:2]
        y_one.forward()
        np.testing.assert_allclose(y_one.d, y_test.d[1:2], atol=1e-6)


def test_imagenet_weights_for_groupnorm_are_the_convolutions_only(tmp_path):
    """ImageNet files hold BatchNorm: a GroupNorm network takes only their convolution weights."""
    path = tmp_path / "rn18-nhwc.h5"
    _examples_h5(path)
    full = pretrained.load_imagenet(path, "resnet18")
    conv = pretrained.load_imagenet(path, "resnet18", norm="group")
    assert set(conv) == {k for k in full if k.endswith("/conv/W")} and len(conv) == 20
    assert all(np.array_equal(conv[k], full[k]) for k in conv)
    from wbc_nnabla import training
    models.clear_scope(training.SCOPE)
    training.build_graph("resnet18", 6, 1, 32, norm="group")
    params = training.parameters()
    info = training.initialise(params, str(path), None, "resnet18", "group")
    assert "20 tensors: convolutions only" in info
    np.testing.assert_array_equal(params["layer3/1/conv2/conv/W"].d, full["layer3/1/conv2/conv/W"])
    assert (params["layer3/1/bn2/group_normalization/gamma"].d == 1).all()
    assert (params["layer3/1/bn2/group_normalization/beta"].d == 0).all()
    models.clear_scope(training.SCOPE)


# ----------------------------------------------------------------------------- IBN-a (norm='ibn')


def test_ibn_layers_sit_in_the_first_normalisation_of_each_early_block():
    """IBN-a: half the channels after conv1 of every block of stages 1-3, nowhere else (not the stem,
    not the second convolution, not a projection, not layer4); the names give the norm back."""
    where = {spec.bn: models.ibn_channels(spec, "ibn") for spec in models.conv_layers("resnet18")}
    assert {k: v for k, v in where.items() if v} == {
        "layer1/0/bn1": 32, "layer1/1/bn1": 32, "layer2/0/bn1": 64, "layer2/1/bn1": 64,
        "layer3/0/bn1": 128, "layer3/1/bn1": 128}
    assert not any(models.ibn_channels(spec, "batch") for spec in models.conv_layers("resnet50"))
    assert sum(bool(models.ibn_channels(s, "ibn")) for s in models.conv_layers("resnet50")) == 13
    bn = {k: tuple(v.shape) for k, v in _graph_params("resnet18").items()}
    with nn.parameter_scope("", {}):
        models.resnet(nn.Variable((1, 3, 32, 32)), "resnet18", 6, norm="ibn")
        ibn = {k: tuple(v.shape) for k, v in nn.get_parameters(grad_only=False).items()}
        assert models.count_parameters() == 11_179_590     # the same trainable beta/gamma, split in two
    assert ibn["layer2/0/bn1/instance_normalization/gamma"] == ibn["layer2/0/bn1/bn/mean"] == (1, 64, 1, 1)
    assert ibn["layer4/0/bn1/bn/mean"] == bn["layer4/0/bn1/bn/mean"] == (1, 512, 1, 1)
    assert models.norm_of(ibn) == "ibn" and models.norm_of(bn) == "batch" and models.arch_of(ibn) == "resnet18"


def test_ibn_layer_is_instance_norm_on_half_and_batchnorm_on_the_rest():
    """norm_layer('ibn') after an IBN conv: the first half per image and channel (a NumPy reference),
    the same in training and test mode; the second half is BatchNorm (batch statistics in training,
    running statistics in test mode)."""
    rng = np.random.RandomState(1)
    x_np = (rng.randn(4, 64, 5, 5) * 2 + 0.5).astype(np.float32)
    spec = models.ConvBN("layer1/0/conv1", "layer1/0/bn1", 3, 64, 64, 1)
    with _both_modes(x_np, spec, "ibn") as (y_train, y_test, p, run):
        p["layer1/0/bn1/instance_normalization/gamma"].d = rng.rand(1, 32, 1, 1) + 0.5
        p["layer1/0/bn1/bn/mean"].d, p["layer1/0/bn1/bn/var"].d = rng.randn(1, 32, 1, 1), rng.rand(1, 32, 1, 1) + 1
        run()
        a = x_np[:, :32].astype(np.float64)
        z = (a - a.mean((2, 3), keepdims=True)) / np.sqrt(a.var((2, 3), keepdims=True) + models.GN_EPS)
        want = z * p["layer1/0/bn1/instance_normalization/gamma"].d
        np.testing.assert_allclose(y_train.d[:, :32], want, atol=1e-4)
        np.testing.assert_allclose(y_test.d[:, :32], y_train.d[:, :32], atol=1e-6)
        b = x_np[:, 32:].astype(np.float64)
        batch = (b - b.mean((0, 2, 3), keepdims=True)) / np.sqrt(b.var((0, 2, 3), keepdims=True) + models.BN_EPS)
        np.testing.assert_allclose(y_train.d[:, 32:], batch, atol=1e-4)
        running = (b - p["layer1/0/bn1/bn/mean"].d) / np.sqrt(p["layer1/0/bn1/bn/var"].d + models.BN_EPS)
        np.testing.assert_allclose(y_test.d[:, 32:], running, atol=1e-4)


def test_imagenet_weights_for_ibn_skip_the_ibn_layers_only(tmp_path):
    """An IBN-a network takes every ImageNet tensor but the BatchNorm of its six IBN layers, whose
    halves start afresh (gamma 1, beta 0)."""
    path = tmp_path / "rn18-nhwc.h5"
    _examples_h5(path)
    full = pretrained.load_imagenet(path, "resnet18")
    ibn = pretrained.load_imagenet(path, "resnet18", norm="ibn")
    assert set(full) - set(ibn) == {f"layer{s}/{i}/bn1/bn/{n}" for s in (1, 2, 3) for i in (0, 1)
                                    for n in ("beta", "gamma", "mean", "var")}
    from wbc_nnabla import training
    models.clear_scope(training.SCOPE)
    training.build_graph("resnet18", 6, 1, 32, norm="ibn")
    params = training.parameters()
    info = training.initialise(params, str(path), None, "resnet18", "ibn")
    assert f"{len(ibn)} tensors: IBN layers start afresh" in info
    np.testing.assert_array_equal(params["layer1/0/conv1/conv/W"].d, full["layer1/0/conv1/conv/W"])
    np.testing.assert_array_equal(params["layer4/0/bn1/bn/mean"].d, full["layer4/0/bn1/bn/mean"])
    assert (params["layer1/0/bn1/instance_normalization/gamma"].d == 1).all()
    assert (params["layer1/0/bn1/bn/gamma"].d == 1).all()
    models.clear_scope(training.SCOPE)
