"""What a review yields: the export as a cell source the stages read, AI-vs-reviewer agreement (and
``score --reviewed``), and the order to label cells in (``review-order``)."""
import json

import numpy as np
import pandas as pd
import pytest

from review_helpers import write_predictions
from wbc_nnabla import cli, fileio
from wbc_nnabla.classes import CLASSES5, CLASSES6
from wbc_nnabla.predictions import read_predictions
from wbc_nnabla.review import labels, order
from wbc_nnabla.review.db import UNUSABLE, ReviewError
from wbc_nnabla.review.load import open_review


@pytest.fixture
def reviewed(tmp_path):
    """A review of 2 smears: S1 signed (one cell unusable, the rest as labelled), S2 half decided."""
    pred = write_predictions(tmp_path, per_class=4, smears=2)
    review = open_review(pred, pending_threshold=0.6)
    truth = {str((tmp_path / p).resolve()): lab for p, lab in zip(pd.read_csv(pred)["path"], pd.read_csv(pred)["label"])}
    paths = {c["cell_id"]: c["path"] for c in review.cells()}
    s1, s2 = review.smear_id("S1"), review.smear_id("S2")
    ids1 = [c["id"] for c in review.smear(s1)["cells"]]
    review.decide(s1, ids1[:1], UNUSABLE, "alice")
    for cid in ids1[1:]:
        review.decide(s1, [cid], truth[paths[cid]], "alice")
    review.sign(s1, "alice")
    for c in review.smear(s2)["cells"][:6]:
        review.decide(s2, [c["id"]], truth[paths[c["id"]]], "bob")
    return pred, review, truth


def test_export_signed_smears_by_default_never_unusable_cells(reviewed, tmp_path):
    pred, review, truth = reviewed
    out = tmp_path / "labels.csv"
    record = labels.export_labels(review.path, out)
    table = pd.read_csv(out)
    assert list(table.columns) == ["path", "label", "smear"]
    assert len(table) == 11 and set(table["smear"]) == {"S1"} == set(record["smears"])
    assert all(truth[p] == lab for p, lab in zip(table["path"], table["label"]))
    assert record["left_out_unusable"] == 1 and record["smears"]["S1"]["signed_by"] == "alice"
    assert json.loads(out.with_suffix(".json").read_text())["n_cells"] == 11
    # every stage's reader takes it: read_cells (build-dataset, score), read_cell_images (predict, finetune)
    for read in (fileio.read_cells, fileio.read_cell_images):
        cells = read(out)
        assert len(cells) == 11 and set(cells["label"]) <= set(CLASSES6) and set(cells["smear"]) == {"S1"}
    from wbc_nnabla.finetune import read_labelled
    paths, y, names = read_labelled(out, CLASSES6)
    assert len(paths) == 11 and [names[i] for i in y] == list(table["label"])
    with pytest.raises(FileExistsError):
        labels.export_labels(review.path, out)
    both = labels.export_labels(review.path, out, include_unsigned=True, overwrite=True)
    assert both["n_cells"] == 17 and set(pd.read_csv(out)["smear"]) == {"S1", "S2"}
    assert labels.export_labels(review.path, tmp_path / "s2.csv", include_unsigned=True, smears=["S2"])["n_cells"] == 6


def test_export_refuses_when_nothing_is_signed(tmp_path):
    pred = write_predictions(tmp_path, per_class=2, smears=1)
    review = open_review(pred)
    with pytest.raises(ReviewError, match="no signed smear"):
        labels.export_labels(review.path, tmp_path / "labels.csv")
    assert not (tmp_path / "labels.csv").exists()
    with pytest.raises(ReviewError, match="no smear 'S9'"):
        labels.export_labels(review.path, tmp_path / "labels.csv", smears=["S9"])


def test_agreement_against_the_database_counts_what_the_reviewer_kept(reviewed):
    pred, review, truth = reviewed
    cells = read_predictions(pred)
    a = labels.agreement(cells, review.path)
    decided = {c["path"]: c for c in review.cells() if c["decision"] is not None}
    classified = [c for c in decided.values() if c["decision"] != UNUSABLE]
    expected = np.mean([c["decision"] == c["ai"] for c in classified])
    s = a.summary
    assert s["n_reviewed"] == len(decided) == 18 and s["n_unusable"] == 1 and s["n_undecided"] == 6
    assert s["agreement6"] == pytest.approx(expected) and s["n_agreement6"] == len(classified)
    assert a.per_class["kept"].sum() == round(expected * len(classified))
    assert a.confusion6.loc["Total", "Total"] == len(classified)
    pending = [c for c in review.cells() if c["pending"]]
    assert s["n_pending"] == len(pending) and s["pending_from"] == "review database"
    assert (s["pending_confirmed"] + s["pending_reclassified"] + s["pending_unusable"] + s["pending_undecided"]
            == len(pending))
    assert a.pending[["confirmed", "reclassified", "out of the count", "not reviewed"]].to_numpy().sum() == len(pending)
    diff = a.differential[a.differential["smear"] == "S1"].set_index("class")
    assert diff.loc[list(CLASSES6), "n_review"].sum() == 11 and diff.loc[list(CLASSES6), "n_ai"].sum() == 12
    titles = [t for t, _, _ in a.sections()]
    assert titles[0] == "Review: AI vs reviewer" and len(titles) == 4


def test_agreement_against_a_labels_csv_and_score_reviewed(reviewed, tmp_path, capsys):
    pred, review, truth = reviewed
    out = tmp_path / "labels.csv"
    labels.export_labels(review.path, out)
    a = labels.agreement(read_predictions(pred), out)
    assert a.summary["n_reviewed"] == 11 and a.summary["pending_from"] == "none"
    five = a.summary["agreement5"]
    rows = pd.read_csv(pred).set_index("path")
    t = pd.read_csv(out)
    exp5 = np.mean([{"Band": "Neutrophil", "Segment": "Neutrophil"}.get(lab, lab) == rows.loc[
        str(p).split(str(tmp_path) + "/")[1], "pred5"] for p, lab in zip(t["path"], t["label"])])
    assert five == pytest.approx(exp5)
    assert cli.main(["score", str(pred), str(tmp_path / "score"), "--reviewed", str(review.path),
                     "--pending-threshold", "0.6", "--no-gallery"]) == 0
    printed = capsys.readouterr().out
    assert "AI vs reviewer" in printed and "pending cells (review database)" in printed
    summary = json.loads((tmp_path / "score" / "review_agreement.json").read_text())
    assert summary["n_reviewed"] == 18
    assert "## Review: AI vs reviewer" in (tmp_path / "score" / "report.md").read_text()
    assert (tmp_path / "score" / "review_confusion6.csv").is_file()
    other = write_predictions(tmp_path / "other", per_class=1, smears=1)
    with pytest.raises(ReviewError, match="none of its reviewed cells"):
        labels.agreement(read_predictions(other), review.path)


def test_active_order_round_robin_over_the_ai_calls_least_sure_first():
    rng = np.random.RandomState(0)
    probs = rng.dirichlet(np.ones(6) * 0.7, size=60)
    probs[7] = probs[3]                                          # a copy of one image
    idx = order.active_order(probs)
    assert sorted(idx) == list(range(60))
    p5 = np.c_[probs[:, :4], probs[:, 4] + probs[:, 5]]
    calls = p5.argmax(1)
    top2 = np.sort(p5, 1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    present = [k for k in range(5) if (calls == k).any()]
    first_round = list(idx[:len(present)])
    assert [calls[i] for i in first_round] == present            # one per call, in five-class Table 1 order
    for k in present:                                            # each call's cells least sure first
        mine = [i for i in idx[:-1] if calls[i] == k]
        assert all(margin[a] <= margin[b] for a, b in zip(mine, mine[1:]))
    assert idx[-1] in (3, 7) and max(list(idx).index(3), list(idx).index(7)) == 59
    assert list(order.random_order(60, 1)) == list(order.random_order(60, 1)) != list(order.random_order(60, 2))
    assert len(CLASSES5) == 5


def test_review_order_command_writes_a_cell_source_to_label(tmp_path):
    pred = write_predictions(tmp_path, per_class=3, smears=2)
    out = tmp_path / "order.csv"
    assert cli.main(["review-order", str(pred), str(out), "--first", "7"]) == 0
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["path", "label", "smear", "rank", "pred6"] and list(table["rank"]) == list(range(1, 8))
    cells = read_predictions(pred)
    expected = order.active_order(cells[[c for c in cells.columns if c.startswith("prob_")]].to_numpy())[:7]
    assert [str(p).rsplit("/", 1)[1] for p in table["path"]] == [cells["path"][i].rsplit("/", 1)[1] for i in expected]
    assert len(fileio.read_cells(out)) == 7 and set(fileio.read_cells(out)["label"]) == {""}
    assert cli.main(["review-order", str(pred), str(tmp_path / "r.csv"), "--order", "random", "--seed", "4",
                     "--smear", "S2"]) == 0
    assert set(pd.read_csv(tmp_path / "r.csv")["smear"]) == {"S2"}
