"""Unlabelled site adaptation (AdaBN): only BatchNorm statistics change, re-estimated on the site's cells.

Tiny and fast: the session's tiny model (32 px) and 40 demo cells copied into a
site folder (32 used, two batches of 16); refusals write nothing and leave the
model and the cells byte-identical.
"""
import hashlib
from pathlib import Path

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from helpers import file_hashes  # noqa: E402

from wbc_nnabla import cli, fileio, modelfile, models  # noqa: E402
from wbc_nnabla.sites import adaptation
from wbc_nnabla.errors import InputError  # noqa: E402

pytestmark = pytest.mark.slow

N_SITE = 40


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``(model, cells, recoloured, root)``: the tiny model copied, 40 unlabelled demo cells, and a
    stained-differently copy of the same cells (red and blue swapped, darkened)."""
    root = tmp_path_factory.mktemp("site")
    cells, recoloured = root / "cells", root / "recoloured"
    cells.mkdir()
    recoloured.mkdir()
    demo = fileio.read_cells(fileio.demo_data())
    for i, p in enumerate(demo["path"].iloc[:N_SITE]):
        name = f"cell_{i:03d}{Path(p).suffix}"
        (cells / name).write_bytes(Path(p).read_bytes())
        rgb = fileio.read_rgb(p)
        fileio.write_image(recoloured / f"cell_{i:03d}.png", (rgb[:, :, ::-1] * 0.7).astype(np.uint8))
    return root, cells, recoloured


@pytest.fixture(scope="module")
def model(site, tiny_model):
    root = site[0]
    m = root / "model.nnp"
    m.write_bytes((tiny_model / "model.nnp").read_bytes())
    return m


@pytest.fixture(scope="module")
def adapted(site, model):
    root, cells, _ = site
    out = root / "out" / "adapted.nnp"
    before = file_hashes(model, cells)
    r = adaptation.adapt_batchnorm(model, cells, out, max_images=32, batch_size=16, seed=3)
    assert file_hashes(model, cells) == before          # sources only read
    return out, r


def test_only_batchnorm_statistics_change(model, adapted):
    out, r = adapted
    a, b = modelfile.load_parameters(model), modelfile.load_parameters(out)
    assert set(a) == set(b)
    stats = set(adaptation.bn_statistics(a))
    assert stats and all(k.endswith("/bn/mean") or k.endswith("/bn/var") for k in stats)
    for k in a:
        if k in stats:
            assert not np.array_equal(a[k], b[k]), f"{k} not re-estimated"
            assert b[k].dtype == np.float32
        else:
            assert a[k].dtype == b[k].dtype and a[k].tobytes() == b[k].tobytes(), f"{k} changed"
    assert r["layers"] == len(stats) // 2 == 20          # ResNet-18: bn1, 16 block BNs, 3 projections


def _bn1_statistics(model, paths, view=lambda rgb: rgb, bs=16, size=32):
    """conv1's per-channel batch mean and unbiased variance, averaged over whole batches of ``paths``
    (each image ``view``-ed, then resized): what AdaBN should store as bn1's mean/var."""
    import nnabla.parametric_functions as PF

    params = modelfile.load_parameters(model)
    with nn.parameter_scope("", {}):
        x = nn.Variable((bs, 3, size, size))
        h = PF.convolution(models.normalize(x), 64, (7, 7), pad=(3, 3), stride=(2, 2), with_bias=False,
                           name="conv1")
        for k, v in nn.get_parameters(grad_only=False).items():
            v.d = params[k]
        means, vars_ = [], []
        for i in range(0, len(paths) // bs * bs, bs):
            imgs = [fileio.resize_square(view(fileio.read_rgb(p)), size).transpose(2, 0, 1) for p in paths[i:i + bs]]
            x.d = np.stack(imgs).astype(np.float32) / 255
            h.forward()
            means.append(h.d.mean(axis=(0, 2, 3)))
            vars_.append(h.d.var(axis=(0, 2, 3), ddof=1))
    return np.mean(means, axis=0), np.mean(vars_, axis=0)


def test_statistics_equal_an_independent_computation(model, adapted):
    """bn1's new mean/var = the mean over the two batches of conv1's per-channel batch mean/unbiased variance."""
    out, r = adapted
    assert r["n_cells"] == len(r["paths"]) == 32
    mean, var = _bn1_statistics(model, r["paths"])
    new = modelfile.load_parameters(out)
    np.testing.assert_allclose(new["bn1/bn/mean"].reshape(-1), mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(new["bn1/bn/var"].reshape(-1), var, rtol=1e-3, atol=1e-4)


def test_adapt_with_stain_estimates_on_standardised_cells_and_predict_applies_it(site, model, tmp_path, capsys):
    """``adapt --stain``: the statistics are those of the standardised cells, the model carries the
    standardisation (``framing.model_view``), and ``predict`` refuses a second one, or one after a
    plain ``adapt``; each refusal writes nothing."""
    from wbc_nnabla.sites import framing, stain
    _, cells, recoloured = site
    ref = stain.reference(sorted(str(p) for p in cells.iterdir()))
    target = np.asarray(ref["lab"], np.float32)
    out = tmp_path / "stained.nnp"
    r = adaptation.adapt_batchnorm(model, recoloured, out, max_images=32, batch_size=16, seed=3, scale=False,
                                   stain="reinhard", stain_reference=ref)
    assert r["stain"] == "reinhard"
    mean, var = _bn1_statistics(model, r["paths"], lambda rgb: stain.reinhard(rgb, target))
    plain, _ = _bn1_statistics(model, r["paths"])
    new = modelfile.load_parameters(out)
    np.testing.assert_allclose(new["bn1/bn/mean"].reshape(-1), mean, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(new["bn1/bn/var"].reshape(-1), var, rtol=1e-3, atol=1e-4)
    assert not np.allclose(mean, plain, rtol=1e-2)               # the standardisation mattered
    meta = modelfile.read_meta(out)
    assert meta["stain"] == {"method": "reinhard", "reference": ref}
    rgb = fileio.read_rgb(r["paths"][0])
    assert np.array_equal(framing.model_view(meta)(rgb), stain.reinhard(rgb, target))
    plain_out = tmp_path / "plain.nnp"
    adaptation.adapt_batchnorm(model, recoloured, plain_out, max_images=32, seed=3, scale=False)
    assert modelfile.read_meta(plain_out)["stain"] is None and framing.model_view(modelfile.read_meta(plain_out)) is None
    for m, expected in ((out, "the model applies its own colour standardisation (reinhard, set by adapt --stain)"),
                        (plain_out, "BatchNorm statistics were estimated by adapt on cells without it")):
        rc = cli.main(["predict", str(m), str(recoloured), str(tmp_path / "p.csv"), "--stain", "reinhard",
                       "--stain-reference", str(cells), "--no-progress"])
        assert rc == 2 and expected in capsys.readouterr().err.strip().splitlines()[-1]
        assert not list(tmp_path.glob("p.*"))
    assert cli.main(["predict", str(out), str(recoloured), str(tmp_path / "p.csv"), "--no-progress"]) == 0
    # Grad-CAM explains what predict showed the model: the standardised cell, with predict's call
    import pandas as pd
    from wbc_nnabla import gradcam
    pred = pd.read_csv(tmp_path / "p.csv").set_index("path")
    first = str(sorted(recoloured.iterdir())[0])
    (res,) = gradcam.GradCAM(out).explain([first])
    assert np.array_equal(res.image, stain.reinhard(fileio.read_rgb(first), target))
    assert res.cam.shape == res.image.shape[:2] and res.predicted_name == pred.loc[first, "pred6"]
    assert abs(res.probability - pred.loc[first, f"prob_{res.predicted_name}"]) < 1e-4
    with pytest.raises(InputError, match="--stain reinhard needs a reference"):
        adaptation.adapt_batchnorm(model, recoloured, tmp_path / "no_ref.nnp", max_images=32, stain="reinhard")
    assert not (tmp_path / "no_ref.nnp").exists()


def test_metadata_records_the_adaptation(site, model, adapted):
    _, cells, _ = site
    out, r = adapted
    meta_in, meta = modelfile.read_meta(model), modelfile.read_meta(out)
    for k in ("format", "arch", "class_names", "num_classes", "input_size", "training"):
        assert meta[k] == meta_in[k], k
    a = meta["adaptation"]
    assert a["method"] == "AdaBN" and a["source"] == str(cells.resolve())
    assert a["n_cells"] == 32 and a["n_listed"] == N_SITE and a["seed"] == 3 and a["batch_size"] == 16
    assert a["size"] == 32 and a["date"] and a["model_sha256"] == modelfile.file_sha256(model)
    assert a["cells_sha256"] == hashlib.sha256("\n".join(sorted(r["paths"])).encode()).hexdigest()
    assert set(r["paths"]) <= {str(p) for p in cells.iterdir()}
    _, m = modelfile.read_model(out)                      # a valid, self-describing model file
    assert m["input_size"] == 32 and "assumed" not in m
    # BatchNorm statistics only: the training lab's calibration cells stay with the model
    assert meta["calibration"] == meta_in["calibration"]


def test_same_seed_same_model_other_stain_other_statistics(site, model, adapted, tmp_path):
    _, cells, recoloured = site
    out, _ = adapted
    again = adaptation.adapt_batchnorm(model, cells, tmp_path / "again.nnp", max_images=32, seed=3)
    recol = adaptation.adapt_batchnorm(model, recoloured, tmp_path / "recol.nnp", max_images=32, seed=3)
    a, b = modelfile.load_parameters(out), modelfile.load_parameters(tmp_path / "again.nnp")
    c = modelfile.load_parameters(tmp_path / "recol.nnp")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.allclose(a["bn1/bn/mean"], c["bn1/bn/mean"], rtol=1e-2)
    assert recol["cells_sha256"] != again["cells_sha256"]


def test_refuses_a_model_without_batchnorm(site, model, tmp_path, monkeypatch):
    _, cells, _ = site
    params, meta = modelfile.read_model(model)
    no_bn = {k: v for k, v in params.items() if k not in adaptation.bn_statistics(params)}
    monkeypatch.setattr(modelfile, "read_model", lambda path: (no_bn, meta))
    with pytest.raises(adaptation.AdaptationError, match="no BatchNorm layers"):
        adaptation.adapt_batchnorm(model, cells, tmp_path / "a.nnp")
    assert not list(tmp_path.iterdir())


def test_a_model_without_stored_size_needs_size(site, tiny_model, tmp_path):
    _, cells, _ = site
    h5 = tiny_model / "model.h5"                            # parameters only: no input size stored
    with pytest.raises(adaptation.AdaptationError, match="model.h5: the model stores no training input size"):
        adaptation.adapt_batchnorm(h5, cells, tmp_path / "a.nnp")
    assert not list(tmp_path.iterdir())
    r = adaptation.adapt_batchnorm(h5, cells, tmp_path / "a.nnp", size=32)
    assert r["size"] == modelfile.read_meta(tmp_path / "a.nnp")["input_size"] == 32


@pytest.fixture(scope="module")
def hostile(site, model):
    """A folder of 20 cells (fewer than the minimum), an empty folder, a folder with one corrupt cell."""
    root, cells, _ = site
    few, empty, bad = root / "few", root / "empty", root / "bad"
    for d in (few, empty, bad):
        d.mkdir()
    for p in sorted(cells.iterdir())[:20]:
        (few / p.name).write_bytes(p.read_bytes())
    for p in sorted(cells.iterdir()):
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "zz_corrupt.jpg").write_text("not an image\n")
    (root / "existing.nnp").write_bytes(b"an earlier file\n")
    return dict(few=few, empty=empty, bad=bad, existing=root / "existing.nnp")


def _run_cli(capsys, argv):
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return rc, err


@pytest.mark.parametrize("case,expected", [
    ("few", "few: 20 readable cells"),
    ("empty", "empty: no images"),
    ("existing", "existing.nnp: already exists"),
    ("model", "is the model itself"),
    ("bad", "zz_corrupt.jpg"),
])
def test_cli_refusals_one_line_nothing_written(site, model, hostile, capsys, tmp_path, case, expected):
    _, cells, _ = site
    src = hostile.get(case, cells) if case in ("few", "empty", "bad") else cells
    out = {"existing": hostile["existing"], "model": model}.get(case, tmp_path / "out" / "a.nnp")
    before = file_hashes(site[0])
    argv = ["adapt", model, src, out] + (["--overwrite"] if case == "model" else [])
    rc, err = _run_cli(capsys, argv)
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("wbc-nnabla adapt: error:") and expected in err, err
    if case == "few":
        assert f"at least {adaptation.MIN_ADAPT_IMAGES}" in err
    assert file_hashes(site[0]) == before
    assert not (tmp_path / "out").exists()


def test_cli_adapts_and_skips_bad_cells(site, model, hostile, capsys, tmp_path):
    out = tmp_path / "adapted.nnp"
    global_before = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    rc = cli.main(["adapt", str(model), str(hostile["bad"]), str(out), "--skip-bad", "--max-images", "48",
                   "--seed", "1", "--pad", "replicate"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and out.is_file()
    assert lines[0].startswith("skipped:") and "zz_corrupt.jpg" in lines[0]
    assert lines[-3].startswith("AdaBN: 20 BatchNorm layers") and str(out) in lines[-3]
    assert lines[-2].startswith("cells: 32 used; with fewer than 128 ")          # more cells would be safer
    assert lines[-1] == "scale: not adapted (the model stores no training WBC scale; give --train-cells)"
    a = modelfile.read_meta(out)["adaptation"]
    assert a["n_cells"] == 32 and a["n_skipped"] == 1 and a["n_listed"] == N_SITE + 1
    assert a["pad"] == modelfile.read_meta(out)["pad"] == "replicate"          # --pad is stored as given
    after = nn.get_parameters(grad_only=False)           # nnabla's global parameters untouched
    assert set(after) == set(global_before) and all(np.array_equal(after[k].d, global_before[k]) for k in after)


def test_cli_says_nothing_of_the_number_of_cells_at_the_advised_number(site, model, capsys, tmp_path, monkeypatch):
    from wbc_nnabla.cli import sites as site_commands
    monkeypatch.setattr(site_commands, "ADVISED_ADAPT_IMAGES", 32)
    rc = cli.main(["adapt", str(model), str(site[1]), str(tmp_path / "a.nnp"), "--max-images", "32"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 0 and lines[0].startswith("AdaBN: ") and not any(line.startswith("cells:") for line in lines)


@pytest.mark.parametrize("name", ["model.nnp", "model.h5"])
def test_refuses_a_groupnorm_model_naming_it_nothing_written(site, tiny_gn_model, tmp_path, capsys, name):
    """A ``--norm group`` model has no BatchNorm statistics: nothing to adapt, a one-line error naming the
    file (the .h5 too, recognised by its parameter names), nothing written."""
    _, cells, _ = site
    gn = tmp_path / "in" / f"gn_{name}"
    gn.parent.mkdir()
    gn.write_bytes((tiny_gn_model / name).read_bytes())
    before = file_hashes(gn, cells)
    with pytest.raises(adaptation.AdaptationError, match=f"gn_{name}: is a GroupNorm model.*nothing to adapt"):
        adaptation.adapt_batchnorm(gn, cells, tmp_path / "out" / "a.nnp", size=32)
    rc, err = _run_cli(capsys, ["adapt", gn, cells, tmp_path / "out" / "a.nnp", "--size", "32"])
    assert rc == 2 and len(err.splitlines()) == 1 and f"gn_{name}: is a GroupNorm model" in err, err
    assert not (tmp_path / "out").exists() and file_hashes(gn, cells) == before
