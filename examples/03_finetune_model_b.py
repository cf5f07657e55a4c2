"""Step 3 (paper section II.4): fine-tune Model A on dataset ② (background kept) -> WBC Model B.

    python examples/03_finetune_model_b.py --work WORK [--epochs 300]

Model B starts from every parameter of Model A, classifier included. ``site_record=True`` also
stores the training cells' WBC scale and domain reference in the model (as ``wbc-nnabla train``
does), which examples/07_other_lab.py (``adapt``, the domain-shift check) reads; the paper's run
needs neither.
"""
import argparse
from pathlib import Path

from wbc_nnabla import training
from wbc_nnabla.recipe import TrainConfig

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--work", default="work")
ap.add_argument("--epochs", type=int, default=2, help="paper: 300")
ap.add_argument("--size", type=int, default=64, help="paper: 480")
ap.add_argument("--batch-size", type=int, default=16)
ap.add_argument("--max-iterations", type=int, default=None)
args = ap.parse_args()
work = Path(args.work)

training.train(work / "dataset_B", work / "model_B",
               TrainConfig(epochs=args.epochs, batch_size=args.batch_size, size=args.size,
                           init=work / "model_A" / "model.nnp", max_iterations=args.max_iterations,
                           site_record=True))
print("Model B:", work / "model_B" / "model.nnp")
