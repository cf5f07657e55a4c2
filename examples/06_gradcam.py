"""Step 6 (the paper's discussion): Grad-CAM of Model B on the cells it gets wrong.

    python examples/06_gradcam.py --work WORK [--n 6]
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from wbc_nnabla import fileio, gradcam

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--work", default="work")
ap.add_argument("--n", type=int, default=6, help="how many cells")
args = ap.parse_args()
work = Path(args.work)

preds = pd.read_csv(work / "predictions_B.csv", keep_default_na=False)
wrong = preds[(preds["label"] != "") & (preds["label"] != preds["pred6"])]
cells = (wrong if len(wrong) else preds).head(args.n)
images = [fileio.read_rgb(p) for p in cells["path"]]
explainer = gradcam.GradCAM(work / "model_B" / "model.nnp")
for (_, row), res in zip(cells.iterrows(), explainer.explain(images)):
    out = work / "gradcam" / f"{Path(row['path']).stem}.png"
    # res.image: the cell as the model sees it (re-framed and standardised if the model was adapted)
    fileio.write_image(out, np.hstack([res.image, gradcam.overlay(res.image, res.cam)]))
    print(f"{out}: human {row['label'] or '?'}, AI {row['pred6']}")
