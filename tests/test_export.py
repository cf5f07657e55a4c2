"""ONNX export: checker, dynamic batch, metadata, parity with nnabla, bad model files."""
import json
import zipfile

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import cv2  # noqa: E402
import nnabla.functions as F  # noqa: E402

from helpers import nnp_text  # noqa: E402
from wbc_nnabla import CLASSES6, modelfile, models  # noqa: E402
from wbc_nnabla.export import build_onnx, cached_onnx, export_onnx, read_onnx_meta  # noqa: E402
from wbc_nnabla.modelfile import ModelError, read_model  # noqa: E402


def random_bn_params(arch="resnet18", num_classes=6, seed=0, norm="batch"):
    """Parameters of ``arch`` with non-trivial BatchNorm statistics (so folding BN is really tested), or
    with ``norm='group'`` non-trivial GroupNorm scale/shift (so they are really exported)."""
    rng = np.random.RandomState(seed)
    scope: dict = {}
    with nn.parameter_scope("net", scope=scope):
        models.resnet(nn.Variable((1, 3, 32, 32)), arch, num_classes, test=True, norm=norm)
        params = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    for k, v in params.items():
        if k.endswith("/bn/mean"):
            params[k] = (rng.randn(*v.shape) * 0.3).astype(np.float32)
        elif k.endswith("/bn/var"):
            params[k] = rng.uniform(0.5, 2.0, v.shape).astype(np.float32)
        elif k.endswith("/gamma"):
            params[k] = rng.uniform(0.5, 1.5, v.shape).astype(np.float32)
        elif k.endswith("/beta"):
            params[k] = (rng.randn(*v.shape) * 0.2).astype(np.float32)
    return params


def nnabla_probs(params, arch, num_classes, x, norm="batch"):
    scope: dict = {}
    with nn.parameter_scope("ref", scope=scope):
        for k, v in params.items():
            nn.parameter.get_parameter_or_create(k, v.shape, v, need_grad=False)
        xv = nn.Variable(x.shape)
        y = F.softmax(models.resnet(xv, arch, num_classes, test=True, norm=norm))
    xv.d = x
    y.forward()
    return y.d.copy()


def assert_onnx_parity(onnx_path, params, arch, num_classes, sizes, seed, norm="batch", nnp=None):
    """The ONNX ``onnx_path`` gives nnabla's probabilities (:func:`nnabla_probs`) to 1e-4, with the same
    top class, on onnxruntime and OpenCV for random batches of each ``(n, size)``, whose probabilities
    must discriminate. With ``nnp`` (saved at the first batch's size) its own graph through
    ``NnpLoader`` gives them too, to 1e-5, at every batch of that size."""
    from nnabla.utils.nnp_graph import NnpLoader
    rng = np.random.RandomState(seed)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    net = cv2.dnn.readNetFromONNX(str(onnx_path))
    for n, size in sizes:
        x = rng.rand(n, 3, size, size).astype(np.float32)
        ref = nnabla_probs(params, arch, num_classes, x, norm=norm)
        if nnp is not None and size == sizes[0][1]:      # the .nnp's graph has the size it was saved at
            with nn.parameter_scope("", {}):
                loaded = NnpLoader(str(nnp)).get_network("inference", batch_size=n)
                loaded.inputs["x"].d = x
                loaded.outputs["y"].forward()
                assert np.abs(loaded.outputs["y"].d - ref).max() < 1e-5
        got = sess.run(["y"], {"x": x})[0]
        net.setInput(x)
        got_cv = net.forward()
        assert got.shape == ref.shape == got_cv.shape == (n, num_classes)
        assert np.abs(got - ref).max() < 1e-4
        assert np.abs(got_cv - ref).max() < 1e-4
        assert (got.argmax(1) == ref.argmax(1)).all() and (got_cv.argmax(1) == ref.argmax(1)).all()
        # the inputs must discriminate: probabilities are not uniform
        assert ref.std(axis=1).max() > 1e-3


@pytest.fixture(scope="module")
def nnp18(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "m18.nnp"
    params = random_bn_params()
    modelfile.save_nnp(path, params, modelfile.model_meta("resnet18", CLASSES6, 48))
    return path, params


def test_export_checker_dynamic_batch_and_metadata(nnp18, tmp_path):
    path, _ = nnp18
    out = export_onnx(path, tmp_path / "m.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version >= 13
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and not dims[0].HasField("dim_value")
    assert dims[1].dim_value == 3
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["class_names"]) == list(CLASSES6)
    assert props["input_size"] == "48"
    meta = read_onnx_meta(out)
    assert meta["arch"] == "resnet18" and meta["class_names"] == list(CLASSES6)
    # BatchNorm is folded: no BatchNormalization node left
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_parity_onnxruntime_opencv_vs_nnabla(nnp18, tmp_path):
    path, params = nnp18
    out = export_onnx(path, tmp_path / "m.onnx")
    # dynamic batch, and another input size
    assert_onnx_parity(out, params, "resnet18", 6, ((1, 48), (3, 48), (2, 64)), seed=1)


def test_bottleneck_resnet50_and_other_class_count(tmp_path):
    params = random_bn_params("resnet50", num_classes=3, seed=2)
    meta = dict(arch="resnet50", class_names=["a", "b", "c"], num_classes=3, input_size=32)
    model = build_onnx(params, meta)
    onnx.checker.check_model(model)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(3).rand(2, 3, 32, 32).astype(np.float32)
    ref = nnabla_probs(params, "resnet50", 3, x)
    got = sess.run(["y"], {"x": x})[0]
    assert got.shape == (2, 3) and np.abs(got - ref).max() < 1e-4


def test_h5_parameters_read_with_assumptions(nnp18, tmp_path):
    _, params = nnp18
    h5 = tmp_path / "p.h5"
    nn.save_parameters(str(h5), {k: nn.Variable.from_numpy_array(v) for k, v in params.items()}, extension=".h5")
    got, meta = read_model(h5)
    assert meta["arch"] == "resnet18" and meta["class_names"] == list(CLASSES6)
    # no stored size: unknown (None), never guessed
    assert meta["input_size"] is None and set(meta["assumed"]) == {"class_names", "input_size"}
    assert np.array_equal(got["fc/affine/W"], params["fc/affine/W"])
    out = export_onnx(h5, tmp_path / "h5.onnx")
    assert read_onnx_meta(out).get("input_size") is None


def test_bad_model_files(nnp18, tmp_path):
    _, params = nnp18
    junk = tmp_path / "junk.nnp"
    junk.write_bytes(np.random.RandomState(0).bytes(2000))
    with pytest.raises(ModelError, match="junk.nnp"):
        export_onnx(junk, tmp_path / "x.onnx")
    junk_h5 = tmp_path / "junk.h5"
    junk_h5.write_bytes(b"not hdf5 at all")
    with pytest.raises(ModelError, match="cannot read parameters"):
        read_model(junk_h5)
    with pytest.raises(ModelError, match="no such model file"):
        read_model(tmp_path / "missing.nnp")
    pt = tmp_path / "weights.pt"
    pt.write_bytes(b"x")
    with pytest.raises(ModelError, match="unsupported model file type"):
        read_model(pt)
    # parameters that are not a ResNet
    dense = tmp_path / "dense.h5"
    nn.save_parameters(str(dense), {"dense/affine/W": nn.Variable.from_numpy_array(np.ones((4, 3), np.float32))},
                       extension=".h5")
    with pytest.raises(ModelError, match="supported ResNet"):
        read_model(dense)
    # a ResNet with one tensor missing, and one with a wrong shape
    broken = dict(params)
    del broken["layer2/0/bn1/bn/var"]
    b1 = tmp_path / "broken.h5"
    nn.save_parameters(str(b1), {k: nn.Variable.from_numpy_array(v) for k, v in broken.items()}, extension=".h5")
    with pytest.raises(ModelError, match="missing"):
        read_model(b1)
    broken = dict(params)
    broken["layer3/1/conv2/conv/W"] = np.zeros((256, 256, 1, 1), np.float32)
    b2 = tmp_path / "shape.h5"
    nn.save_parameters(str(b2), {k: nn.Variable.from_numpy_array(v) for k, v in broken.items()}, extension=".h5")
    with pytest.raises(ModelError, match="layer3/1/conv2/conv/W"):
        read_model(b2)
    # an .nnp whose description disagrees with its parameters
    good, lying = tmp_path / "good.nnp", tmp_path / "lying.nnp"
    modelfile.save_nnp(good, params, modelfile.model_meta("resnet18", CLASSES6, 32))
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(lying, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == modelfile.META_NAME:
                data = json.dumps(modelfile.model_meta("resnet18", ["a", "b"], 32)).encode()
            dst.writestr(name, data)
    with pytest.raises(ModelError, match="2 class names"):
        read_model(lying)
    with pytest.raises(ValueError, match="opset"):
        build_onnx(params, dict(arch="resnet18", class_names=list(CLASSES6), num_classes=6, input_size=32), opset=12)


def test_read_onnx_meta_refuses_foreign_onnx(tmp_path):
    from onnx import TensorProto, helper
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(g), str(foreign))
    with pytest.raises(ModelError, match="no wbc_nnabla metadata"):
        read_onnx_meta(foreign)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match="garbage.onnx"):
        read_onnx_meta(garbage)


def test_cache_reuses_and_follows_content(nnp18, tmp_path):
    path, params = nnp18
    local = tmp_path / "m.nnp"
    local.write_bytes(path.read_bytes())
    first = cached_onnx(local, folder=tmp_path / "cache")
    again = cached_onnx(local, folder=tmp_path / "cache")
    assert first == again and first.stat().st_mtime_ns == again.stat().st_mtime_ns
    changed = dict(params, **{"fc/affine/b": params["fc/affine/b"] + 1.0})
    modelfile.save_nnp(local, changed, modelfile.model_meta("resnet18", CLASSES6, 48))
    third = cached_onnx(local, folder=tmp_path / "cache")
    assert third != first and third.is_file()
    with zipfile.ZipFile(local) as z:
        assert modelfile.META_NAME in z.namelist()


def test_export_refuses_an_existing_file_and_never_replaces_the_model(nnp18, tmp_path, capsys):
    from wbc_nnabla import cli
    path, _ = nnp18
    model = tmp_path / "m.nnp"
    model.write_bytes(path.read_bytes())
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"my earlier export")
    assert cli.main(["export", str(model), "--onnx", str(onnx_path)]) == 2
    assert "already exists" in capsys.readouterr().err and onnx_path.read_bytes() == b"my earlier export"
    assert cli.main(["export", str(model), "--onnx", str(onnx_path), "--overwrite"]) == 0
    assert read_onnx_meta(onnx_path)["arch"] == "resnet18"
    before = model.read_bytes()
    assert cli.main(["export", str(model), "--onnx", str(model), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err and model.read_bytes() == before


# ----------------------------------------------------------------------------- GroupNorm (--norm group)


@pytest.fixture(scope="module")
def nnp18_gn(tmp_path_factory):
    path = tmp_path_factory.mktemp("export_gn") / "gn18.nnp"
    params = random_bn_params(norm="group")
    modelfile.save_nnp(path, params, modelfile.model_meta("resnet18", CLASSES6, 48, norm="group"))
    return path, params


def test_groupnorm_nnp_round_trip(nnp18_gn):
    """The GroupNorm .nnp stores norm 'group', reads back the same parameters, and its inference graph
    (NnpLoader, no wbc_nnabla code) gives the probabilities of models.resnet(norm='group')."""
    from nnabla.utils.nnp_graph import NnpLoader
    path, params = nnp18_gn
    got, meta = read_model(path)
    assert meta["norm"] == "group" and meta["arch"] == "resnet18" and set(got) == set(params)
    assert all(np.array_equal(got[k], params[k]) for k in params)
    x = np.random.RandomState(4).rand(3, 3, 48, 48).astype(np.float32)
    ref = nnabla_probs(params, "resnet18", 6, x, norm="group")
    with nn.parameter_scope("", {}):
        net = NnpLoader(str(path)).get_network("inference", batch_size=3)
        net.inputs["x"].d = x
        net.outputs["y"].forward()
        assert np.abs(net.outputs["y"].d - ref).max() < 1e-5
    assert ref.std(axis=1).max() > 1e-3
    graph = nnp_text(path)                               # the saved graph itself holds GroupNorm, not BN
    assert graph.count('type: "GroupNormalization"') == 20 and "BatchNormalization" not in graph


@pytest.mark.parametrize("arch,num_classes", [("resnet18", 6), ("resnet50", 3)])
def test_ibn_nnp_round_trip_and_onnx_parity(arch, num_classes, tmp_path):
    """IBN-a (--norm ibn): the .nnp stores norm 'ibn' and its inference graph (NnpLoader) holds instance
    normalisation; the ONNX export (instance half per image, BatchNorm half folded) matches nnabla to
    1e-4 on onnxruntime and OpenCV at several batch and input sizes, with one Concat per IBN layer (the
    instance half is computed per image, not folded)."""
    params = random_bn_params(arch, num_classes, seed=7, norm="ibn")
    assert models.norm_of(params) == "ibn" and any("/instance_normalization/" in k for k in params)
    names = list(CLASSES6) if num_classes == 6 else ["a", "b", "c"]
    path = tmp_path / "ibn.nnp"
    modelfile.save_nnp(path, params, modelfile.model_meta(arch, names, 32, norm="ibn"))
    got, meta = read_model(path)
    assert meta["norm"] == "ibn" and all(np.array_equal(got[k], params[k]) for k in params)
    early_blocks = sum(b.stage in models.IBN_STAGES for b in models.stages(arch))   # 6 for ResNet-18
    assert nnp_text(path).count('type: "InstanceNormalization"') == early_blocks
    out = export_onnx(path, tmp_path / "ibn.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert read_onnx_meta(out)["norm"] == "ibn"
    assert not [n for n in model.graph.node if n.op_type in ("BatchNormalization", "Shape", "Split")]
    assert sum(n.op_type == "Concat" for n in model.graph.node) == early_blocks
    assert_onnx_parity(out, params, arch, num_classes, ((1, 32), (3, 32), (2, 48)), seed=8, norm="ibn", nnp=path)
    as_bn = {k: v for k, v in params.items() if "/instance_normalization/" not in k}
    assert models.norm_of(as_bn) == "batch"


@pytest.mark.parametrize("arch,num_classes", [("resnet18", 6), ("resnet50", 3)])
def test_groupnorm_onnx_parity_onnxruntime_opencv_vs_nnabla(arch, num_classes, tmp_path):
    """GroupNorm exported with opset-13 operators: parity 1e-4 with nnabla on onnxruntime and OpenCV,
    dynamic batch and input size; BatchNorm-folded export of the same weights would differ."""
    params = random_bn_params(arch, num_classes, seed=5, norm="group")
    names = list(CLASSES6) if num_classes == 6 else ["a", "b", "c"]
    path = tmp_path / "gn.nnp"
    modelfile.save_nnp(path, params, modelfile.model_meta(arch, names, 32, norm="group"))
    out = export_onnx(path, tmp_path / "gn.onnx")
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 13 and read_onnx_meta(out)["norm"] == "group"
    assert not [n for n in model.graph.node if n.op_type in ("BatchNormalization", "Shape")]
    assert_onnx_parity(out, params, arch, num_classes, ((1, 32), (3, 32), (2, 48)), seed=6, norm="group")


def test_groupnorm_description_must_agree_with_parameters(nnp18_gn, nnp18, tmp_path):
    """A description saying 'batch' over GroupNorm parameters (or the reverse) is refused, naming the file."""
    for (src, _), wrong in ((nnp18_gn, "batch"), (nnp18, "group")):
        lying = tmp_path / f"lying_{wrong}.nnp"
        with zipfile.ZipFile(src) as a, zipfile.ZipFile(lying, "w") as b:
            for name in a.namelist():
                data = a.read(name)
                if name == modelfile.META_NAME:
                    data = json.dumps(dict(json.loads(data), norm=wrong)).encode()
                b.writestr(name, data)
        with pytest.raises(ModelError, match=f"lying_{wrong}.nnp: description says norm '{wrong}'"):
            read_model(lying)
    # BatchNorm and GroupNorm parameters mixed in one file form no network of models.py
    mixed = dict(nnp18[1], **{k: v for k, v in nnp18_gn[1].items() if "group_normalization" in k})
    h5 = tmp_path / "mixed.h5"
    nn.save_parameters(str(h5), {k: nn.Variable.from_numpy_array(v) for k, v in mixed.items()}, extension=".h5")
    with pytest.raises(ModelError, match="mixed.h5: .*both BatchNorm"):
        read_model(h5)
