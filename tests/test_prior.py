"""The class prior of `predict --prior` (predictions.parse_prior / prior_weights / apply_prior).

The training sets are balanced (section II.3), a smear is not: Bayes' rule moves each cell's
probabilities from the training balance to the smear's expected differential.
"""
import json

import numpy as np
import pandas as pd
import pytest

from wbc_nnabla import classes, predictions
from wbc_nnabla.predictions import PredictionsError, apply_prior, parse_prior, prior_weights


def test_parse_names_and_shares():
    assert parse_prior("none") is None and parse_prior(None) is None
    assert parse_prior("normal") == predictions.NORMAL_DIFFERENTIAL
    assert abs(sum(predictions.NORMAL_DIFFERENTIAL.values()) - 1) < 1e-9
    assert parse_prior("Segment=0.6, Lymph=0.3") == {"Segment": 0.6, "Lymph": 0.3}


@pytest.mark.parametrize("text", ["Segment=0", "Segment=-1", "Segment=x", "Segment", "abnormal"])
def test_bad_prior_is_named(text):
    with pytest.raises(PredictionsError, match="positive share"):
        parse_prior(text)


def test_weights_follow_the_prior_and_merge_neutrophils():
    w = prior_weights(classes.CLASSES6, predictions.NORMAL_DIFFERENTIAL)
    shares = np.array([predictions.NORMAL_DIFFERENTIAL[c] for c in classes.CLASSES6])
    np.testing.assert_allclose(w, shares * 6)                           # over a balanced (1/6) training set
    five = ["Neutrophil", "Lymph", "Mono", "Eosinophil", "Basophil"]
    w5 = prior_weights(five, predictions.NORMAL_DIFFERENTIAL)
    assert w5[0] == pytest.approx(0.60 * 5)                             # Band + Segment
    with pytest.raises(PredictionsError, match="no share for class 'Mono'"):
        prior_weights(classes.CLASSES6, {"Segment": 1.0, "Band": 1.0, "Lymph": 1, "Eosinophil": 1, "Basophil": 1})


def test_apply_prior_is_bayes_rule():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(6), size=50).astype(np.float32)
    np.testing.assert_allclose(apply_prior(p, np.ones(6)), p, rtol=1e-6)    # a uniform prior changes nothing
    w = prior_weights(classes.CLASSES6, predictions.NORMAL_DIFFERENTIAL)
    q = apply_prior(p, w)
    np.testing.assert_allclose(q.sum(1), 1, rtol=1e-6)
    ratio = (q / p) / (q / p)[:, :1]                                    # odds move by exactly w_c / w_0
    np.testing.assert_allclose(ratio, np.broadcast_to(w / w[0], ratio.shape), rtol=1e-4)
    seg, eos = classes.CLASSES6.index("Segment"), classes.CLASSES6.index("Eosinophil")
    tie = np.full((1, 6), 0.02, np.float32)
    tie[0, [seg, eos]] = 0.45
    assert apply_prior(tie, w).argmax() == seg                          # a borderline cell goes to the common class


def _cells_with_shares(shares, n, rng):
    """``n`` cells of a 1-D model whose class ``c`` has features N(2.5 c, 1): the posteriors
    ``(n, C)`` a model trained on balanced classes gives them, and their true classes."""
    labels = rng.choice(len(shares), size=n, p=shares)
    x = rng.normal(2.5 * labels, 1.0)
    logits = -0.5 * (x[:, None] - 2.5 * np.arange(len(shares))[None, :]) ** 2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True), labels


def test_estimated_prior_finds_the_smears_shares():
    rng = np.random.default_rng(0)
    truth = np.array([0.01, 0.03, 0.30, 0.06, 0.05, 0.55])
    p, _ = _cells_with_shares(truth, 20000, rng)
    shares, iterations = predictions.estimate_prior(p)
    assert shares.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(shares, truth, atol=0.015)
    assert 1 < iterations < predictions.PRIOR_EM_MAX_ITER
    assert np.abs(p.mean(axis=0) - truth).max() > 0.05         # the plain mean of the probabilities would not


def test_estimated_prior_of_balanced_cells_changes_little():
    p, _ = _cells_with_shares(np.full(6, 1 / 6), 6000, np.random.default_rng(1))
    shares, _ = predictions.estimate_prior(p)
    np.testing.assert_allclose(shares, 1 / 6, atol=0.02)


def test_each_smear_gets_its_own_prior():
    rng = np.random.default_rng(2)
    eos = classes.CLASSES6.index("Eosinophil")
    healthy = np.array([0.01, 0.03, 0.30, 0.06, 0.05, 0.55])
    eosinophilia = np.array([0.01, 0.30, 0.20, 0.06, 0.03, 0.40])
    p1, _ = _cells_with_shares(healthy, 3000, rng)
    p2, y2 = _cells_with_shares(eosinophilia, 3000, rng)
    probs = np.vstack([p1, p2])
    out, est = predictions.apply_smear_priors(probs, ["a"] * 3000 + ["b"] * 3000, classes.CLASSES6)
    assert est["a"]["cells"] == est["b"]["cells"] == 3000
    assert est["a"]["shares"]["Eosinophil"] == pytest.approx(0.03, abs=0.02)
    assert est["b"]["shares"]["Eosinophil"] == pytest.approx(0.30, abs=0.03)
    np.testing.assert_allclose(out[:3000], apply_prior(p1, np.array(list(est["a"]["shares"].values())) * 6),
                               atol=1e-5)
    fixed = apply_prior(p2, prior_weights(classes.CLASSES6, predictions.NORMAL_DIFFERENTIAL))
    recall = lambda q: float((q.argmax(1)[y2 == eos] == eos).mean())
    assert recall(out[3000:]) > recall(fixed) + 0.1              # a healthy prior would hide the eosinophilia


def test_estimate_reports_a_collapsed_class():
    fair, _ = _cells_with_shares(np.full(6, 1 / 6), 600, np.random.default_rng(4))
    band, seg = classes.CLASSES6.index("Band"), classes.CLASSES6.index("Segment")
    p = fair.copy()
    neutrophil = p[:, band] + p[:, seg]                          # a model that cannot tell Band from Segment
    p[:, band], p[:, seg] = 0.4 * neutrophil, 0.6 * neutrophil   # and leans to Segment (section IV's errors)
    _, est = predictions.apply_smear_priors(p, ["a"] * 600, classes.CLASSES6)
    assert est["a"]["collapsed"] == ["Band"]
    _, est = predictions.apply_smear_priors(fair, ["a"] * 600, classes.CLASSES6)
    assert est["a"]["collapsed"] == []


def test_estimate_refuses_small_smears_and_names_them():
    p, _ = _cells_with_shares(np.full(6, 1 / 6), 80, np.random.default_rng(3))
    with pytest.raises(PredictionsError, match=r"smear 'b' has 30 cells; at least 50"):
        predictions.apply_smear_priors(p, ["a"] * 50 + ["b"] * 30, classes.CLASSES6)
    _, est = predictions.apply_smear_priors(p, [""] * 80, classes.CLASSES6)
    assert list(est) == [predictions.NO_SMEAR]
    with pytest.raises(PredictionsError, match="estimated from a smear's cells"):
        parse_prior("estimate")                                  # a fixed prior is needed there (e.g. infomax)


nn = pytest.importorskip("nnabla")


@pytest.mark.slow
def test_predict_records_the_prior(tiny_model, tmp_path):
    from helpers import demo_labels_csv
    from wbc_nnabla import cli
    cells = demo_labels_csv(tmp_path, per_class=2)
    base, corrected = tmp_path / "none.csv", tmp_path / "normal.csv"
    assert cli.main(["predict", str(tiny_model / "model.nnp"), str(cells), str(base), "--no-progress"]) == 0
    assert cli.main(["predict", str(tiny_model / "model.nnp"), str(cells), str(corrected), "--no-progress",
                     "--prior", "normal"]) == 0
    a, b = pd.read_csv(base), pd.read_csv(corrected)
    w = prior_weights(classes.CLASSES6, predictions.NORMAL_DIFFERENTIAL)
    np.testing.assert_allclose(b[list(predictions.PROB_COLUMNS)].to_numpy(),
                               apply_prior(a[list(predictions.PROB_COLUMNS)].to_numpy(), w), atol=1e-5)
    assert json.loads(corrected.with_suffix(".json").read_text())["prior"] == predictions.NORMAL_DIFFERENTIAL
    assert json.loads(base.with_suffix(".json").read_text())["prior"] == "none"


@pytest.mark.slow
def test_bad_prior_flag_writes_nothing(tiny_model, tmp_path, capsys):
    from helpers import demo_labels_csv
    from wbc_nnabla import cli
    cells = demo_labels_csv(tmp_path, per_class=1)
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(tiny_model / "model.nnp"), str(cells), str(out), "--no-progress",
                     "--prior", "Segment=0.6,Lymph=0.4"]) != 0
    assert "no share for class" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()


@pytest.mark.slow
def test_predict_estimates_the_prior_or_writes_nothing(tiny_model, tmp_path, capsys):
    from helpers import demo_labels_csv
    from wbc_nnabla import cli
    cells = demo_labels_csv(tmp_path, per_class=10)
    base, est = tmp_path / "none.csv", tmp_path / "estimate.csv"
    assert cli.main(["predict", str(tiny_model / "model.nnp"), str(cells), str(base), "--no-progress"]) == 0
    assert cli.main(["predict", str(tiny_model / "model.nnp"), str(cells), str(est), "--no-progress",
                     "--prior", "estimate"]) == 0
    config = json.loads(est.with_suffix(".json").read_text())
    assert config["prior"] == "estimate"
    record = config["prior_estimated"][predictions.NO_SMEAR]
    assert record["cells"] == 60
    shares = np.array([record["shares"][c] for c in classes.CLASSES6])
    a, b = pd.read_csv(base), pd.read_csv(est)
    np.testing.assert_allclose(b[list(predictions.PROB_COLUMNS)].to_numpy(),
                               apply_prior(a[list(predictions.PROB_COLUMNS)].to_numpy(), shares * 6), atol=1e-5)
    few, out = demo_labels_csv(tmp_path / "few", per_class=2), tmp_path / "few.csv"
    assert cli.main(["predict", str(tiny_model / "model.nnp"), str(few), str(out), "--no-progress",
                     "--prior", "estimate"]) != 0
    assert "has 12 cells; at least 50" in capsys.readouterr().err
    assert not out.exists() and not out.with_suffix(".json").exists()
