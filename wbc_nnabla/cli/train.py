"""``train``: WBC Model A (ImageNet start) or Model B (``--init`` Model A), section II.4.

The settings come in layers (:func:`wbc_nnabla.cli.common.settings_from`): the defaults (the
paper's), ``--recipe``'s data file, ``--config FILE`` (a recipe file, or the ``config.json`` a run
saved, which reproduces that run), ``--set KEY=VALUE`` for the settings that have no flag, then
the paper's flags. The command line asks the model to record what the cross-lab wing reads
(``site_record``: the domain-shift check of ``predict``, the re-framing of ``adapt``).
"""
from __future__ import annotations

from pathlib import Path

from ..recipe import RECIPE_NAMES, AdaBoundConfig, Augmentation, TrainConfig, config_record, recipe_config
from .common import add_config_flags, add_setting_flags, command, settings_from


def train_settings(args) -> TrainConfig:
    """The :class:`~wbc_nnabla.recipe.TrainConfig` of a ``train`` command line."""
    base = recipe_config(args.recipe or "paper", TrainConfig(site_record=True))
    extra = {"progress": False} if args.no_progress else {}
    if args.no_augmentation:
        extra["augmentation"] = {"enabled": False}
    return settings_from(TrainConfig, args, base, config_record, extra)


def cmd_train(args) -> None:
    """ResNet + AdaBound + ImageAugmentation training (paper section II.4). Writes model.nnp, model.h5, config.json,
    learning_curve.csv/.png, monitor/, checkpoints/ into OUT. Settings without a flag are config keys (--set,
    --config; docs/training.md, "Settings")."""
    from .. import training
    s = training.train(args.dataset, args.out, train_settings(args), resume=args.resume)
    b = s["best"]
    which = (f"weights averaged over epochs {b['averaged_epochs'][0]}-{b['averaged_epochs'][1]}"
             if "averaged_epochs" in b else f"best epoch {b['epoch']}")
    print(f"{which}: Validation Error {b['validation_error']:.4f}, "
          f"misclassification {b.get('validation_misclassification', float('nan')):.3f}")
    print(f"model: {Path(args.out) / 'model.nnp'}  learning curve: {Path(args.out) / 'learning_curve.png'}")


def register(sub) -> None:
    """Add ``train`` to the sub-command parsers: the paper's flags; the research settings are config keys."""
    p = command(sub, "train", cmd_train,
                "train WBC Model A (ImageNet start) or fine-tune Model B (--init A.nnp)", describe=True)
    p.add_argument("dataset", help="NNC dataset folder with train.csv and valid.csv (x:image,y:label)")
    p.add_argument("out", help="output folder")
    p.add_argument("--recipe", choices=RECIPE_NAMES, default=None,
                   help="paper (default): the paper's ImageAugmentation; robust: plus colour terms and a wide "
                        "Magnification (its measured gain is on one foreign set only: docs/cross_site.md)")
    add_config_flags(p, "training settings")
    add_setting_flags(p, TrainConfig)
    p.add_argument("--resume", action="store_true", help="continue the last checkpoint in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_setting_flags(p.add_argument_group("AdaBound"), AdaBoundConfig)
    g = p.add_argument_group("ImageAugmentation (training graph only; default: the --recipe's value)")
    add_setting_flags(g, Augmentation)
    g.add_argument("--no-augmentation", action="store_true",
                   help="train without any augmentation (ImageAugmentation and every other term)")
