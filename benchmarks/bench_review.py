"""The review loop through the browser (issue 47's acceptance benchmark; not a test).

A scripted reviewer walks the 300 zheng2018-d1 cells as 3 smears (image IDs 1-100, 101-200,
201-300) in headless Chromium with their true labels, signs each smear, exports the review,
fine-tunes on smear 1's reviewed cells and scores smears 2 and 3 ("the rest"):

    wbc-nnabla predict ADAPTED OUT/d1_smears.csv OUT/pred.csv             # ADAPTED: review_order.py's
    wbc-nnabla review OUT/pred.csv --db OUT/review.sqlite --pending-threshold model --no-browser
    (the scripted reviewer in Chromium)
    wbc-nnabla score OUT/pred.csv OUT/score --reviewed OUT/review.sqlite --pending-threshold model
    wbc-nnabla review-export OUT/review.sqlite OUT/smear1.csv --smear d1-1
    wbc-nnabla finetune ADAPTED OUT/smear1.csv OUT/finetuned.nnp --seed 0
    wbc-nnabla predict OUT/finetuned.nnp OUT/rest.csv OUT/pred_rest.csv

The scripted reviewer works as a technologist would: in each group it moves to each cell whose AI
call is wrong in five classes (right arrow), types the true class (a d1 "Neutrophil" the AI did not
call Band or Segment becomes Segment), then confirms the rest of the group (g; first back one cell
with the left arrow when the last correction moved the cursor into the next group) and goes to the
next group (PageDown). Keystrokes per cell count every key. Also measured: the page's time to
usable (the smear rendered and taking keys, from navigation start) and the round trip of each
stored action, on the d1 smears and on a 2,000-cell smear of pbc6 cells with synthetic
probabilities (the page's speed does not depend on the model). Figures: OUT/results.json, OUT/summary.md.

    nice -n 10 .venv/bin/python benchmarks/bench_review.py --out /work/runs/bench_review \\
        --adapted /work/runs/review_order/adapted.nnp
"""
import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from review_helpers import ReviewServer, chromium  # noqa: E402
from review_order import D1_CLASSES, shared_data, wbc  # noqa: E402

#: Key of each class on the page (Table 1 order), as docs/review.md lists them.
KEY = {"Basophil": "1", "Eosinophil": "2", "Lymph": "3", "Mono": "4", "Band": "5", "Segment": "6"}
FIVE = {"Band": "Neutrophil", "Segment": "Neutrophil"}
BIG = 2000


def d1_smears(out: Path, d1: Path) -> pd.DataFrame:
    """``OUT/d1_smears.csv``: the 300 cells, smears d1-1, d1-2, d1-3 by image ID; ``OUT/rest.csv``: d1-2 and d1-3."""
    codes = pd.read_csv(d1 / "labels.csv")
    ids = codes["image ID"].to_numpy()
    df = pd.DataFrame({"path": [str((d1 / f"{i:03d}.bmp").resolve()) for i in ids],
                       "label": codes["class label"].map(D1_CLASSES).to_numpy(),
                       "smear": [f"d1-{(i - 1) // 100 + 1}" for i in ids]})
    df.to_csv(out / "d1_smears.csv", index=False)
    df[df["smear"] != "d1-1"].to_csv(out / "rest.csv", index=False)
    return df


def wait(driver, script: str, value, timeout: float = 300.0) -> None:
    t0 = time.time()
    while driver.execute_script(script) != value:
        if time.time() - t0 > timeout:
            raise TimeoutError(script)
        time.sleep(0.01)


def open_smear(driver, url: str) -> dict:
    """Load the page on a smear; its timings once it takes keys (``ready_ms`` from navigation start) and
    when every thumbnail in the first screen has arrived (``first_screen_ms``)."""
    driver.get("about:blank")          # a new document each time: a load from navigation start, not a hash change
    driver.get(url)
    wait(driver, "return document.body.dataset.ready", "smear")
    timings = driver.execute_script("return window.reviewTimings")
    wait(driver, "const v = [...document.querySelectorAll('.tile img')].filter(i => i.getBoundingClientRect().top "
                 "< innerHeight); return v.length > 0 && v.every(i => i.complete)", True)
    timings["first_screen_ms"] = driver.execute_script("return performance.now()")
    return timings


def keys(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.TAG_NAME, "body").send_keys(text)


def walk(driver, truth: dict) -> int:
    """The scripted reviewer on the open smear; returns the keys it pressed."""
    from selenium.webdriver.common.keys import Keys
    tiles = driver.execute_script("const s = window.reviewState; return s.order.map(id => "
                                  "[id, s.groupOf.get(id), s.byId.get(id).ai, s.byId.get(id).name])")
    order = [t[0] for t in tiles]
    pressed, cursor = 0, 0
    groups = list(dict.fromkeys(t[1] for t in tiles))
    for g in groups:
        members = [i for i, t in enumerate(tiles) if t[1] == g]
        if cursor < members[0]:
            keys(driver, Keys.PAGE_DOWN)
            pressed, cursor = pressed + 1, members[0]
        for i in members:
            cid, _, ai, name = tiles[i]
            true5 = truth[name]
            if FIVE.get(ai, ai) == true5:
                continue
            keys(driver, Keys.ARROW_RIGHT * (i - cursor) + KEY["Segment" if true5 == "Neutrophil" else true5])
            pressed, cursor = pressed + (i - cursor) + 1, min(i + 1, len(order) - 1)
        undecided = driver.execute_script(f"const s = window.reviewState; return s.order.filter(id => "
                                          f"s.groupOf.get(id) === {json.dumps(g)} && s.byId.get(id).decision === null).length")
        if undecided:
            if cursor > members[-1]:         # the last cell was corrected: the cursor moved on to the next group
                keys(driver, Keys.ARROW_LEFT)
                pressed, cursor = pressed + 1, members[-1]
            keys(driver, "g")
            pressed += 1
    wait(driver, "return document.body.dataset.inflight || '0'", "0")
    return pressed


def sign(driver) -> None:
    from selenium.webdriver.common.by import By
    driver.find_element(By.ID, "sign").click()
    driver.switch_to.alert.accept()
    wait(driver, "return document.body.dataset.inflight || '0'", "0")
    wait(driver, "return document.body.dataset.signed", "1")


def review_d1(out: Path, pred: Path, truth: dict, driver) -> dict:
    """Walk and sign the three d1 smears; keys, timings and action round trips."""
    server = ReviewServer(pred, out / "review.sqlite", "--pending-threshold", "model", "--reviewer", "scripted").start()
    try:
        result = {"smears": {}}
        for sid in (1, 2, 3):
            timings = open_smear(driver, f"{server.url}#/smear/{sid}")
            n = timings["cells"]
            pressed = walk(driver, truth)
            sign(driver)
            actions = driver.execute_script("return window.reviewActionMs")
            result["smears"][sid] = {"cells": n, "keys": pressed, "keys_per_cell": pressed / n, "timings": timings,
                                     "action_ms": actions, "server_ms": driver.execute_script("return window.reviewServerMs")}
        from wbc_nnabla.review.db import ReviewDB
        decided = ReviewDB(out / "review.sqlite").cells()
        result["mismatches"] = sum(FIVE.get(c["decision"], c["decision"]) != truth[Path(c["path"]).name]
                                   for c in decided)
        return result
    finally:
        server.stop()


def big_smear(out: Path, pbc6: Path, driver) -> dict:
    """A 2,000-cell smear (pbc6 cells, synthetic probabilities): time to usable over 3 loads, 40 actions."""
    from wbc_nnabla import fileio, predictions
    from wbc_nnabla.classes import CLASSES6
    folder = out / "big"
    folder.mkdir(exist_ok=True)
    pred = folder / "pred.csv"
    if not pred.exists():
        cells = fileio.read_cells(pbc6).head(BIG)[["path", "label", "smear"]].assign(smear="big")
        probs = np.random.RandomState(0).dirichlet(np.ones(6) * 0.5, size=len(cells))
        predictions.write_predictions(predictions.predictions_table(cells, probs, CLASSES6), pred,
                                      config={"model": "synthetic (bench_review.py)"})
    from selenium.webdriver.common.keys import Keys
    server = ReviewServer(pred, folder / "review.sqlite", "--pending-threshold", "0.5").start()
    try:
        loads = [open_smear(driver, f"{server.url}#/smear/1") for _ in range(3)]
        for k in "1234561234561234561234561234561234561234":
            keys(driver, Keys.ENTER if k == "1" else k)         # Enter (confirm) in place of every 1
        wait(driver, "return document.body.dataset.inflight || '0'", "0")
        return {"cells": loads[0]["cells"], "loads": loads, "action_ms": driver.execute_script("return window.reviewActionMs"),
                "server_ms": driver.execute_script("return window.reviewServerMs")}
    finally:
        server.stop()


def finetune_rest(out: Path, adapted: Path, truth_rest: pd.DataFrame) -> dict:
    """Export smear 1's review, fine-tune on it, score smears 2-3; the adapted model's accuracy beside it."""
    if not (out / "smear1.csv").exists():
        wbc("review-export", out / "review.sqlite", out / "smear1.csv", "--smear", "d1-1")
    if not (out / "finetuned.nnp").exists():
        wbc("finetune", adapted, out / "smear1.csv", out / "finetuned.nnp", "--seed", 0, "--no-progress")
    if not (out / "pred_rest.csv").exists():
        wbc("predict", out / "finetuned.nnp", out / "rest.csv", out / "pred_rest.csv", "--no-progress")
    truth = truth_rest.set_index("path")["label"]
    after = pd.read_csv(out / "pred_rest.csv")
    before = pd.read_csv(out / "pred.csv")
    before = before[before["path"].isin(truth.index)]
    acc = {name: float(np.mean(t["pred5"].to_numpy() == truth.loc[t["path"]].to_numpy()))
           for name, t in (("adapted", before), ("finetuned", after))}
    return dict(acc, n_rest=int(len(after)), n_labelled=int(len(pd.read_csv(out / "smear1.csv"))))


def _ms(values) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def summary_text(r: dict) -> str:
    d1 = r["review"]["smears"]
    keys_total = sum(s["keys"] for s in d1.values())
    cells = sum(s["cells"] for s in d1.values())
    actions = [a for s in d1.values() for a in s["action_ms"]]
    served = [a for s in d1.values() for a in s["server_ms"]]
    big, a, ft = r["big"], r["agreement"], r["finetune"] or {}
    per_smear = ", ".join(f"{s['keys_per_cell']:.2f}" for s in d1.values())
    return "\n".join([
        f"machine load (uptime) at the start: {r['load']}; at the end: {r['load_end']}",
        f"scripted review of {cells} d1 cells in 3 smears: {keys_total} keys, {keys_total / cells:.2f} per cell "
        f"(+ one Sign click and its confirmation per smear); per smear {per_smear}; decisions differing from the "
        f"true label (five classes): {r['review']['mismatches']}",
        f"AI vs reviewer: kept {a['agreement6']:.3f} (6 classes; a d1 neutrophil the AI called Band stays Band), "
        f"{a['agreement5']:.3f} (5 classes); pending {a['n_pending']} ({a['share_pending']:.1%}): "
        f"{a['pending_confirmed']} confirmed, {a['pending_reclassified']} reclassified",
        f"d1 smears: time to usable {_ms(s['timings']['ready_ms'] for s in d1.values())} ms; stored action round "
        f"trip median {statistics.median(actions):.1f} ms ({len(actions)} actions; in the server "
        f"{statistics.median(served):.1f} ms)",
        f"{big['cells']}-cell smear: time to usable {_ms(x['ready_ms'] for x in big['loads'])} ms (3 loads; first "
        f"screen of thumbnails {_ms(x['first_screen_ms'] for x in big['loads'])} ms); stored action round trip "
        f"median {statistics.median(big['action_ms']):.1f} ms ({len(big['action_ms'])} actions; in the server "
        f"{statistics.median(big['server_ms']):.1f} ms)",
        f"fine-tuned on smear 1's {ft['n_labelled']} reviewed cells, scored on smears 2-3 ({ft['n_rest']} cells): "
        f"five-class accuracy {ft['finetuned']:.3f} (adapted model before: {ft['adapted']:.3f})" if ft else
        "fine-tuning not run (--no-finetune)"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--adapted", type=Path, default=Path("/work/runs/review_order/adapted.nnp"))
    ap.add_argument("--d1", type=Path, default=shared_data() / "zheng2018-d1")
    ap.add_argument("--pbc6", type=Path, default=shared_data() / "pbc6")
    ap.add_argument("--no-finetune", action="store_true",
                    help="the review, its agreement and the page's timings only (no fine-tuning)")
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    if (out / "review.sqlite").exists():
        raise SystemExit(f"{out / 'review.sqlite'} exists: the scripted review starts from an empty database; "
                         f"give a new --out")
    cells = d1_smears(out, args.d1)
    truth = {Path(p).name: lab for p, lab in zip(cells["path"], cells["label"])}
    if not (out / "pred.csv").exists():
        wbc("predict", args.adapted, out / "d1_smears.csv", out / "pred.csv", "--no-progress")
    result = {"load": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}
    driver = chromium(out / "chromium-profile")
    try:
        result["review"] = review_d1(out, out / "pred.csv", truth, driver)
        result["big"] = big_smear(out, args.pbc6, driver)
    finally:
        driver.quit()
    wbc("score", out / "pred.csv", out / "score", "--reviewed", out / "review.sqlite", "--pending-threshold", "model",
        "--no-gallery", "--overwrite")
    result["agreement"] = json.loads((out / "score" / "review_agreement.json").read_text())
    result["finetune"] = None if args.no_finetune else finetune_rest(out, args.adapted, cells[cells["smear"] != "d1-1"])
    result["load_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    (out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    text = summary_text(result)
    (out / "summary.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))    # kill: close the browser and the server too
    sys.exit(main())
