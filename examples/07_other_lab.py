"""Beyond the paper: carry Model B to another lab's cells (docs/cross_site.md).

    python examples/07_other_lab.py --work WORK [--labelled 12] [--iterations 100]

1. ``adapt``: re-estimate BatchNorm statistics (AdaBN) and the WBC scale on the site's
   unlabelled cells;
2. without labels: ``predict --prior normal`` and ``score --pending-threshold model``, the
   judgement-pending cut-off the model brought from its training lab's validation cells;
3. ``finetune``: a few labelled cells of the site (``Neutrophil`` labels would train Band + Segment);
4. ``predict`` the site's other cells and read the domain-shift check.

``adapt`` (1) and the domain-shift check (4) read the training cells' WBC scale and domain
reference, which examples/03_finetune_model_b.py stored in Model B (``TrainConfig(site_record=True)``).
Here "the other lab" is the inference set of examples/01_build_datasets.py, so the example shows
the calls, not the gain; on a real foreign set see the figures in docs/cross_site.md.
"""
import argparse
from pathlib import Path

import numpy as np

from wbc_nnabla import fileio, predictions, predictor, sampling, scoring
from wbc_nnabla.sites import adaptation, finetune
from wbc_nnabla.sites.settings import FinetuneConfig

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--work", default="work")
ap.add_argument("--labelled", type=int, default=12, help="labelled site cells for fine-tuning")
ap.add_argument("--iterations", type=int, default=100, help="fine-tuning iterations")
args = ap.parse_args()
work = Path(args.work)
site = fileio.read_cells(work / "dataset_inference" / "cells.csv")     # absolute paths, labels, smears

site[["path"]].to_csv(work / "site_cells.csv", index=False)           # no labels: adapt never reads them
adapted = work / "model_B_site.nnp"
record = adaptation.adapt_batchnorm(work / "model_B" / "model.nnp", work / "site_cells.csv", adapted, overwrite=True)
print(f"adapt: {record['layers']} BatchNorm layers on {record['n_cells']} site cells; "
      f"scale: {record['scale']['zoom'] if record['scale'] else 'not adapted (no training scale stored)'}")

# without labels: keep the calls above the cut-off set on the model's own validation cells
site_run = predictor.predict_run(adapted, work / "site_cells.csv", prior="normal", progress=False)  # (table, run)
site_csv = work / "site_predictions.csv"
predictions.write_predictions(site_run.table, site_csv, overwrite=True,
                              config=predictor.run_config(site_run, adapted, work / "site_cells.csv"))
try:
    held = scoring.score(site_csv, pending_threshold="model")
    cut = held.summary["pending_threshold_from"]
    print(f"judgement pending: cut-off {cut['threshold']:.3f} from the model's {cut['n_cells']} validation cells "
          f"keeps {held.summary['coverage5']:.0%} of the site's cells for the machine, the rest for review")
except predictions.PredictionsError as e:        # e.g. a model too weak to reach the target accuracy
    print(f"judgement pending: {e}")

pick = np.sort(sampling.stratified_pick(site["label"].tolist(), args.labelled, np.random.default_rng(0)))
site.iloc[pick][["path", "label"]].to_csv(work / "site_labelled.csv", index=False)
rest = site.drop(index=site.index[pick])
tuned = finetune.finetune(adapted, work / "site_labelled.csv", work / "model_B_tuned.nnp",
                          FinetuneConfig(iterations=args.iterations), overwrite=True, progress=False)
print(f"finetune: {tuned['n_cells']} labelled cells, Cost {tuned['cost_first']:.3f} -> {tuned['cost_last']:.3f}")

preds, run = predictor.predict_run(work / "model_B_tuned.nnp", rest, progress=False)
print(f"6-class accuracy on the other {len(preds)} site cells: {(preds['pred6'] == preds['label']).mean():.3f}")
check = run.domain                                # the domain-shift check's summary (PredictRun)
print("domain check:", check.get("reason") or f"{100 * check['run']['share_outside']:.0f}% of the cells outside "
      f"the training domain")
