"""Information maximisation on a site's unlabelled cells (``infomax``): the loss, what it trains, refusals.

Tiny and fast: the session's tiny model (32 px), 40 demo cells copied into a site folder,
a few updates; sources stay byte-identical and refusals write nothing.
"""
from pathlib import Path

import numpy as np
import pytest

nn = pytest.importorskip("nnabla")

from helpers import file_hashes  # noqa: E402

from wbc_nnabla import cli, fileio, modelfile, predictions  # noqa: E402
from wbc_nnabla.sites import infomax
from wbc_nnabla.sites.settings import InfoMaxConfig  # noqa: E402

pytestmark = pytest.mark.slow

N_SITE = 40
QUICK = InfoMaxConfig(iterations=3, batch_size=16)


def _loss(logits: np.ndarray, shares: np.ndarray, weight: float = 1.0):
    with nn.parameter_scope("", {}):
        x = nn.Variable.from_numpy_array(logits.astype(np.float32))
        loss, entropy, kl = infomax.infomax_loss(x, shares, weight)
        nn.forward_all([loss, entropy, kl])
        return float(loss.d), float(entropy.d), float(kl.d)


def test_loss_terms_equal_their_definitions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 6)) * 2
    shares = np.array([0.03, 0.57, 0.03, 0.01, 0.06, 0.30])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    entropy = float(np.mean(-(p * np.log(p)).sum(1)))
    m = p.mean(0)
    kl = float((m * np.log(m / shares)).sum())
    got = _loss(logits, shares, weight=0.5)
    np.testing.assert_allclose(got, (entropy + 0.5 * kl, entropy, kl), rtol=1e-4, atol=1e-5)


def test_loss_limits():
    """Equal logits under equal shares: entropy log C, KL 0; sure calls in the prior's proportions: both ~0."""
    uniform = _loss(np.zeros((4, 6)), np.full(6, 1 / 6))
    np.testing.assert_allclose(uniform[1:], (np.log(6), 0.0), atol=1e-5)
    sure = np.full((6, 6), -30.0)
    sure[np.arange(6), np.arange(6)] = 30.0                 # one sure call per class
    np.testing.assert_allclose(_loss(sure, np.full(6, 1 / 6))[1:], (0.0, 0.0), atol=1e-4)
    skewed = _loss(sure[:1].repeat(6, 0), np.full(6, 1 / 6))   # every cell the same class: KL log 6
    np.testing.assert_allclose(skewed[2], np.log(6), atol=1e-4)


def test_prior_shares():
    names = ["Band", "Segment", "Eosinophil", "Basophil", "Mono", "Lymph"]
    np.testing.assert_allclose(infomax.prior_shares(names, "none"), np.full(6, 1 / 6))
    normal = infomax.prior_shares(names, "normal")
    want = np.array([predictions.NORMAL_DIFFERENTIAL[c] for c in names])
    np.testing.assert_allclose(normal, want / want.sum())
    five = infomax.prior_shares(["Neutrophil", "Lymph"], "Segment=3,Band=1,Lymph=4")
    np.testing.assert_allclose(five, [0.5, 0.5])


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_model):
    """``(root, model, cells)``: the tiny model copied and 40 unlabelled demo cells."""
    root = tmp_path_factory.mktemp("infomax")
    cells = root / "cells"
    cells.mkdir()
    for i, p in enumerate(fileio.read_cells(fileio.demo_data())["path"].iloc[:N_SITE]):
        (cells / f"cell_{i:03d}{Path(p).suffix}").write_bytes(Path(p).read_bytes())
    model = root / "model.nnp"
    model.write_bytes((tiny_model / "model.nnp").read_bytes())
    return root, model, cells


@pytest.fixture(scope="module")
def tuned(site):
    root, model, cells = site
    before = file_hashes(model, cells)
    global_before = {k: v.d.copy() for k, v in nn.get_parameters(grad_only=False).items()}
    r = infomax.infomax(model, cells, root / "out" / "im.nnp", QUICK, progress=False)
    assert file_hashes(model, cells) == before                      # sources only read
    after = nn.get_parameters(grad_only=False)                       # nnabla's global parameters untouched
    assert set(after) == set(global_before) and all(np.array_equal(after[k].d, global_before[k]) for k in after)
    return root / "out" / "im.nnp", r


def test_classifier_fixed_features_and_statistics_trained(site, tuned):
    _, model, _ = site
    out, r = tuned
    a, b = modelfile.load_parameters(model), modelfile.load_parameters(out)
    assert set(a) == set(b)
    for k in a:
        same = a[k].tobytes() == b[k].tobytes()
        if k.startswith("fc/") or k.startswith("preprocess/"):
            assert same, f"{k} changed"
        elif k.endswith("/mean") or k.endswith("/var") or "/conv/W" in k:
            assert not same, f"{k} not trained"
        assert b[k].dtype == np.float32
    assert len(r["history"]) == QUICK.iterations
    assert all(np.isfinite(list(h.values())).all() and h["entropy"] > 0 for h in r["history"])


def test_metadata_records_the_run(site, tuned):
    _, model, cells = site
    out, r = tuned
    meta = modelfile.read_meta(out)
    rec = meta["infomax"]
    assert rec["method"].startswith("information maximisation") and rec["source"] == str(cells.resolve())
    assert rec["n_cells"] == N_SITE == rec["n_listed"] and rec["model_sha256"] == modelfile.file_sha256(model)
    assert rec["settings"]["iterations"] == 3 and rec["settings"]["prior"] == "normal"
    assert abs(sum(rec["prior_shares"].values()) - 1) < 1e-3 and rec["prior_shares"]["Segment"] > 0.5
    assert meta["class_names"] == modelfile.read_meta(model)["class_names"]


def test_same_seed_same_model(site, tuned, tmp_path):
    root, model, cells = site
    out, _ = tuned
    infomax.infomax(model, cells, tmp_path / "again.nnp", QUICK, progress=False)
    a, b = modelfile.load_parameters(out), modelfile.load_parameters(tmp_path / "again.nnp")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_groupnorm_model_trains_without_statistics(site, tiny_gn_model, tmp_path):
    _, _, cells = site
    gn = tmp_path / "gn.nnp"
    gn.write_bytes((tiny_gn_model / "model.nnp").read_bytes())
    infomax.infomax(gn, cells, tmp_path / "out.nnp", QUICK, progress=False)
    a, b = modelfile.load_parameters(gn), modelfile.load_parameters(tmp_path / "out.nnp")
    assert a["fc/affine/W"].tobytes() == b["fc/affine/W"].tobytes()
    assert not np.array_equal(a["conv1/conv/W"], b["conv1/conv/W"])


@pytest.mark.parametrize("case,expected", [
    ("few", "few: 20 readable cells"),
    ("empty", "empty: no images"),
    ("prior", "--prior"),
    ("batch", "batch_size must be >= 2"),
    ("existing", "existing.nnp: already exists"),
])
def test_cli_refusals_one_line_nothing_written(site, capsys, tmp_path, case, expected):
    root, model, cells = site
    few, empty = tmp_path / "few", tmp_path / "empty"
    few.mkdir()
    empty.mkdir()
    for p in sorted(cells.iterdir())[:20]:
        (few / p.name).write_bytes(p.read_bytes())
    existing = tmp_path / "existing.nnp"
    existing.write_bytes(b"an earlier file\n")
    src = {"few": few, "empty": empty}.get(case, cells)
    out = existing if case == "existing" else tmp_path / "out" / "im.nnp"
    flags = {"prior": ["--prior", "Segment=-1"], "batch": ["--batch-size", "1"]}.get(case, [])
    before = file_hashes(root, tmp_path)
    rc = cli.main([str(a) for a in ["infomax", model, src, out, "--iterations", "2", *flags]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("wbc-nnabla infomax: error:") and expected in err, err
    assert file_hashes(root, tmp_path) == before and not (tmp_path / "out").exists()


def test_cli_prints_what_it_did(site, capsys, tmp_path):
    _, model, cells = site
    out = tmp_path / "im.nnp"
    rc = cli.main(["infomax", str(model), str(cells), str(out), "--iterations", "2", "--batch-size", "16",
                   "--prior", "none", "--no-progress"])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert rc == 0 and out.is_file()
    assert line.startswith(f"infomax: {model} trained on {N_SITE} of {N_SITE} cells") and str(out) in line
    assert modelfile.read_meta(out)["infomax"]["prior_shares"]["Band"] == pytest.approx(1 / 6, abs=1e-4)


def _two_class_model(tiny_model, path: Path, names):
    params, meta = modelfile.read_model(tiny_model / "model.nnp")
    params = {k: (v[:, :2] if k == "fc/affine/W" else v[:2] if k == "fc/affine/b" else v) for k, v in params.items()}
    modelfile.save_nnp(path, params, modelfile.model_meta(meta["arch"], list(names), 32))
    return path


def test_another_class_set_takes_its_share_of_the_prior(site, tiny_model, tmp_path):
    """A Lymph/Mono model learns towards the normal differential's Lymph : Mono = 0.30 : 0.06."""
    _, _, cells = site
    two = _two_class_model(tiny_model, tmp_path / "two.nnp", ["Lymph", "Mono"])
    infomax.infomax(two, cells, tmp_path / "out.nnp", QUICK, progress=False)
    shares = modelfile.read_meta(tmp_path / "out.nnp")["infomax"]["prior_shares"]
    assert shares == pytest.approx({"Lymph": 0.3 / 0.36, "Mono": 0.06 / 0.36}, abs=1e-4)


def test_a_class_the_prior_lacks_is_refused_naming_model_and_class(site, tiny_model, tmp_path, capsys):
    _, _, cells = site
    other = _two_class_model(tiny_model, tmp_path / "blast.nnp", ["Lymph", "Blast"])
    rc = cli.main([str(a) for a in ["infomax", other, cells, tmp_path / "out" / "im.nnp"]])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "blast.nnp" in err and "--prior normal" in err and "'Blast'" in err, err
    assert not (tmp_path / "out").exists()
