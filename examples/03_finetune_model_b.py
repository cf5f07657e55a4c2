"""Step 3 (paper section II.4): fine-tune Model A on dataset ② (background kept) -> WBC Model B.

    python examples/03_finetune_model_b.py --work WORK [--epochs 300]

Model B starts from every parameter of Model A, classifier included.
"""
import argparse
from pathlib import Path

from wbc_nnabla import training

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--work", default="work")
ap.add_argument("--epochs", type=int, default=2, help="paper: 300")
ap.add_argument("--size", type=int, default=64, help="paper: 480")
ap.add_argument("--batch-size", type=int, default=16)
ap.add_argument("--max-iterations", type=int, default=None)
args = ap.parse_args()
work = Path(args.work)

training.train(work / "dataset_B", work / "model_B",
               training.TrainConfig(epochs=args.epochs, batch_size=args.batch_size, size=args.size,
                                    init=work / "model_A" / "model.nnp", max_iterations=args.max_iterations))
print("Model B:", work / "model_B" / "model.nnp")
