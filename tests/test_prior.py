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
