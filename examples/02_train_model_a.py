"""Step 2 (paper section II.4, Fig. 4): train WBC Model A on dataset ① (background removed).

    python examples/02_train_model_a.py --work WORK [--epochs 300] [--pretrained imagenet]

ResNet-18 with six outputs, AdaBound, per-iteration Contrast/Brightness/Magnification/Angle
augmentation. The paper starts from ImageNet weights (`--pretrained imagenet` looks for
nnabla's Resnet-18.nnp in ~/nnabla_data/nnp_models/imagenet/); `none` trains from scratch.
"""
import argparse
from pathlib import Path

from wbc_nnabla import training
from wbc_nnabla.recipe import TrainConfig

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--work", default="work")
ap.add_argument("--epochs", type=int, default=3, help="paper: 300")
ap.add_argument("--size", type=int, default=64, help="paper: 480")
ap.add_argument("--batch-size", type=int, default=16)
ap.add_argument("--pretrained", default="none", help="imagenet, none, or a weight file")
ap.add_argument("--max-iterations", type=int, default=None, help="cap iterations per epoch (quick tries)")
args = ap.parse_args()
work = Path(args.work)

config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, size=args.size,
                     pretrained=args.pretrained, max_iterations=args.max_iterations)
summary = training.train(work / "dataset_A", work / "model_A", config)
print("Model A:", work / "model_A" / "model.nnp")
print("learning curve (Cost, Training Error, Validation Error):", work / "model_A" / "learning_curve.png")
