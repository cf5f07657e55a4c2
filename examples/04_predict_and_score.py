"""Step 4 (paper section III): predict the inference set with Model A and Model B and score each
smear against the human differential (Table 1, mean ± SD over smears, judgement pending).

    python examples/04_predict_and_score.py --work WORK [--pending-threshold 0.6]
"""
import argparse
from pathlib import Path

from wbc_nnabla import classes, predictions, predictor, report, scoring

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--work", default="work")
ap.add_argument("--pending-threshold", type=float, default=None,
                help="hold cells whose top probability is below this for a human")
args = ap.parse_args()
work = Path(args.work)

for name in ("A", "B"):
    # Inference at the model's training size (see docs/method.md on the paper's 480/320).
    preds = predictor.predict(work / f"model_{name}" / "model.nnp", work / "dataset_inference" / "cells.csv",
                              expected_classes=classes.CLASSES6)
    predictions.write_predictions(preds, work / f"predictions_{name}.csv", overwrite=True)
    result = scoring.score(preds, pending_threshold=args.pending_threshold, target_accuracy=0.99)
    report.write_score(result, work / f"score_{name}", overwrite=True)
    s = result.summary
    print(f"Model {name}: 6 classes {s['accuracy6_mean']:.3f} ± {s['accuracy6_sd']:.3f}, "
          f"5 classes {s['accuracy5_mean']:.3f} ± {s['accuracy5_sd']:.3f} over {s['n_smears']} smears")
    print(result.confusion6.to_string())
