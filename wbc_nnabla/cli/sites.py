"""Commands of the cross-lab wing (:mod:`wbc_nnabla.sites`): ``adapt``, ``infomax``, ``finetune``,
``self-train`` and ``domain-reference``, and the console line of the domain-shift check."""
from __future__ import annotations

from ..sites.settings import (ADABN_BATCH, ADVISED_ADAPT_IMAGES, DEFAULT_PAD, MAX_ADAPT_IMAGES, MIN_ADAPT_IMAGES, PADS,
                              SELECT_FOLDS, FinetuneConfig, InfoMaxConfig, SelfTrainConfig)
from .common import (CLIError, add_config_flags, add_setting_flags, add_stain_arguments, command, seed, settings_from,
                     stain_reference)


def domain_line(summary: dict) -> str:
    """One console line of a predict run's domain-shift check (wbc_nnabla.sites.domain)."""
    from ..sites import domain
    if not summary.get("available"):
        return f"domain-shift check unavailable: {summary.get('reason', 'no reference')}"
    run, bad = summary["run"], domain.outside_smears(summary)
    sites = summary.get("site_references") or []
    text = (f"domain-shift check: {run['share_outside']:.1%} of cells outside the training domain"
            + (f" (training cells and the labelled cells of {len(sites)} fine-tuning site(s))" if sites else "")
            + f" (median distance to the training cells {run['median_distance']:.2f}, cell threshold "
            f"{summary['cell_threshold']:.2f})")
    if run["outside_domain"] or bad:
        text += f"; WARNING {domain.WARNING}" + (f" (smears: {', '.join(bad)})" if bad else "")
    if summary.get("scale"):
        text += f"\nscale: {domain.scale_warning(summary['scale'])}"
    return text




def _cmd_adapt(args) -> None:
    """Re-estimate every BatchNorm layer's running mean/var on a new site's cells (AdaBN, Li et al. 2016); labels
    are not needed, every other parameter is copied unchanged. See docs/inference.md."""
    from ..sites.adaptation import adapt_batchnorm
    r = adapt_batchnorm(args.model, args.site_cells, args.out, size=args.size, batch_size=args.batch_size,
                        max_images=args.max_images, seed=args.seed, overwrite=args.overwrite, skip_bad=args.skip_bad,
                        scale=not args.no_scale, train_cells=args.train_cells, pad=args.pad, stain=args.stain,
                        stain_reference=stain_reference(args.stain, args.stain_reference))
    for why in r["skipped"]:
        print(f"skipped: {why}")
    print(f"AdaBN: {r['layers']} BatchNorm layers of {args.model} re-estimated on {r['n_cells']} of "
          f"{r['n_listed']} cells of {args.site_cells} at {r['size']} px (seed {r['seed']}) -> {r['out']}")
    if r["stain"] != "none":
        print(f"colour: {r['stain']} towards {args.stain_reference} (the statistics are estimated on the cells so "
              f"standardised; predict applies it to every cell)")
    if r["n_cells"] < ADVISED_ADAPT_IMAGES:
        print(f"cells: {r['n_cells']} used; with fewer than {ADVISED_ADAPT_IMAGES} one sample's accuracy was up to "
              f"0.06 lower than with all of a site's cells (docs/inference.md): give adapt more if the site has them")
    if r["scale"]:
        s = r["scale"]
        print(f"scale: median WBC share {s['site']['median']:.3f} of the crop here, {s['training']['median']:.3f} "
              f"in training: every crop is viewed {s['zoom']:.2f}x wider (stored as the model's zoom"
              + (f"; the band around a crop filled by {r['pad']})" if s["zoom"] > 1 else ")"))
    elif not args.no_scale:
        print("scale: not adapted (the model stores no training WBC scale; give --train-cells)")


def _add_adaptation(sub) -> None:
    p = command(sub, "adapt", _cmd_adapt,
                "adapt a model to another lab's unlabelled cells (AdaBN: BatchNorm statistics)", describe=True)
    p.add_argument("model", help="model .nnp / .h5 to adapt (never changed)")
    p.add_argument("site_cells", help="the new site's cells: any cell source (folder, CSV, NNC dataset); "
                                      "labels ignored")
    p.add_argument("out", help="adapted model .nnp to write (records the adaptation in wbc_nnabla.json)")
    p.add_argument("--size", type=int, default=None,
                   help="input side in pixels (default: the model's training size; required if it stores none)")
    p.add_argument("--batch-size", type=int, default=ADABN_BATCH,
                   help="images per batch statistic (default %(default)s)")
    p.add_argument("--max-images", type=int, default=MAX_ADAPT_IMAGES,
                   help=f"site cells drawn, a seeded sample (default %(default)s; at least {MIN_ADAPT_IMAGES} "
                        f"readable cells are required)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the cell sample (default 0)")
    p.add_argument("--no-scale", action="store_true",
                   help="BatchNorm statistics only: do not re-frame the site's crops to the training WBC scale")
    p.add_argument("--train-cells", default=None, metavar="CELLS",
                   help="training cells (e.g. the dataset's train.csv) to measure the training WBC scale of a "
                        "model that stores none")
    p.add_argument("--pad", choices=PADS, default=None,
                   help="when the scale zooms the crops out, fill the band around each crop with the crop "
                        "mirrored (reflect), its edge pixels repeated (replicate) or its slide-background "
                        f"colour (background); default {DEFAULT_PAD}")
    add_stain_arguments(p, "(the statistics are estimated on the cells so standardised, and predict applies it "
                            "to every cell)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the model)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable, corrupt or too small images (listed) instead of stopping")


def _add_site_arguments(p, cells: str, cells_help: str, out_help: str, settings, skip_bad: bool = True,
                        model_help: str = "model .nnp / .h5 to start from (never changed)") -> None:
    """The arguments every command deriving a model from a site's cells shares (``finetune``,
    ``infomax``, ``self-train``): MODEL, the cells, OUT, the ``settings`` dataclass's flags,
    ``--overwrite``, ``--skip-bad`` (with ``skip_bad``) and ``--no-progress``."""
    p.add_argument("model", help=model_help)
    p.add_argument(cells, help=cells_help)
    p.add_argument("out", help=out_help)
    add_config_flags(p, "settings")
    add_setting_flags(p, settings)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the model)")
    if skip_bad:
        p.add_argument("--skip-bad", action="store_true",
                       help="leave out unreadable, corrupt or too small images (listed) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_infomax(args) -> None:
    """After `adapt`: train every parameter but the classifier on a new site's unlabelled cells so that each cell's
    call is sure while the mean call of a batch stays near a class prior (SHOT-IM, Liang et al. 2020), then
    re-estimate the BatchNorm statistics on the same cells. Check the result on some labelled cells of the site.
    See docs/cross_site.md."""
    from ..sites.infomax import infomax
    r = infomax(args.model, args.site_cells, args.out, settings_from(InfoMaxConfig, args), overwrite=args.overwrite,
                progress=not args.no_progress, skip_bad=args.skip_bad, max_images=args.max_images)
    for why in r["skipped"]:
        print(f"skipped: {why}")
    first, last = r["first"], r["last"]
    print(f"infomax: {args.model} trained on {r['n_cells']} of {r['n_listed']} cells of {args.site_cells} "
          f"({r['settings']['iterations']} updates; entropy {first['entropy']:.3f} -> {last['entropy']:.3f}, "
          f"KL from the prior {first['kl']:.3f} -> {last['kl']:.3f}) -> {r['out']}")


def _add_infomax(sub) -> None:
    p = command(sub, "infomax", _cmd_infomax,
                "adapt a model to another lab's unlabelled cells (information maximisation)", describe=True)
    _add_site_arguments(p, "site_cells", "the new site's cells: any cell source (folder, CSV, NNC dataset); "
                                         "labels ignored",
                        "adapted model .nnp to write (records the run in wbc_nnabla.json)", InfoMaxConfig,
                        model_help="model .nnp / .h5 to start from, best one `adapt` made (never changed)")
    p.add_argument("--max-images", type=int, default=MAX_ADAPT_IMAGES,
                   help=f"site cells drawn, a seeded sample (default %(default)s; at least {MIN_ADAPT_IMAGES})")


def _cmd_finetune(args) -> None:
    """Fine-tune a model on a new site's labelled cells (best at most about 100, after `adapt` on its unlabelled
    cells): BatchNorm statistics frozen, AdaBound at a small step, the paper's geometric augmentation. Labels:
    the model's classes, or Neutrophil for Band/Segment. See docs/cross_site.md."""
    import pandas as pd

    from ..sites.finetune import MIN_SITE_REFERENCE_CELLS, finetune
    if args.select:
        given = [f"--{name.replace('_', '-')}" for name in ("alpha", "final_lr", "iterations")
                 if getattr(args, name) is not None]
        if given:
            raise CLIError(f"--select chooses {', '.join(given)} by cross-validation; give one or the other")
    r = finetune(args.model, args.labelled_cells, args.out, settings_from(FinetuneConfig, args),
                 overwrite=args.overwrite, progress=not args.no_progress, select=args.select, folds=args.folds)
    if r["selection"]:
        sel = r["selection"]
        mean = pd.DataFrame(sel["table"]).groupby(["alpha", "iterations"])["accuracy"].mean()
        for (alpha, iterations), acc in mean.items():
            print(f"cross-validation ({sel['folds']} folds): step {alpha:g}, {iterations} iterations: "
                  f"held-out accuracy {acc:.3f}")
        print(f"chosen: step {sel['chosen']['alpha']:g} (final_lr {sel['chosen']['final_lr']:g}), "
              f"{sel['chosen']['iterations']} iterations")
    counts = ", ".join(f"{k} {v}" for k, v in r["per_class"].items())
    print(f"fine-tuned {args.model} on {r['n_cells']} labelled cells ({counts}) for "
          f"{r['settings']['iterations']} iterations at {r['settings']['size']} px "
          f"(Cost {r['cost_first']:.3f} -> {r['cost_last']:.3f}) -> {r['out']}")
    print("domain-shift check: cells like these labelled ones now count as inside the model's domain"
          if r["site_domain_reference"] else
          f"domain-shift check: unchanged (fewer than {MIN_SITE_REFERENCE_CELLS} labelled cells; cells like "
          f"these are still compared with the training cells only)")


def _add_finetune(sub) -> None:
    p = command(sub, "finetune", _cmd_finetune,
                "fine-tune a model on a few labelled cells of another lab", describe=True)
    _add_site_arguments(p, "labelled_cells", "the site's labelled cells: class folders, path,label CSV or NNC dataset",
                        "fine-tuned model .nnp to write (records the fine-tuning in wbc_nnabla.json)", FinetuneConfig,
                        skip_bad=False)
    p.add_argument("--select", action="store_true",
                   help="choose the step (--alpha, --final-lr) and --iterations by cross-validation inside the "
                        "labelled cells (steps 1e-4 and 1e-3, 100 and 200 iterations; not with those flags), "
                        "then fine-tune on all of them with the best; about 3 x --folds fine-tunings more")
    p.add_argument("--folds", type=int, default=SELECT_FOLDS, help="folds of --select (default %(default)s)")


def _cmd_self_train(args) -> None:
    """Class-balanced self-training on a new site's unlabelled cells (the paper's semi-supervised proposal): the
    model labels the cells, is fine-tuned on the most confident share of each predicted class, and labels them
    again, for a few rounds. Best after `adapt`. Pseudo-labels repeat the model's own mistakes: check the result
    on labelled cells. See docs/cross_site.md."""
    from ..sites.selftraining import self_train
    r = self_train(args.model, args.site_cells, args.out, settings_from(SelfTrainConfig, args),
                   overwrite=args.overwrite, progress=not args.no_progress, skip_bad=args.skip_bad)
    print("\n".join(f"round {d['round']}: {d['n_pseudo']} of {d['n_cells']} cells pseudo-labelled "
                    f"({', '.join(f'{k} {v}' for k, v in d['per_class'].items())}); "
                    f"Cost {d['cost_first']:.3f} -> {d['cost_last']:.3f}" for d in r["rounds"]))
    print(f"self-trained {args.model} on {args.site_cells} -> {r['out']}")


def _add_self_train(sub) -> None:
    p = command(sub, "self-train", _cmd_self_train,
                "self-train a model on another lab's unlabelled cells (pseudo-labels)", describe=True)
    _add_site_arguments(p, "site_cells", "the site's cells: a folder, CSV or NNC dataset (labels ignored)",
                        "self-trained model .nnp to write (records each round in wbc_nnabla.json)", SelfTrainConfig)


def _cmd_domain_reference(args) -> None:
    """Compute what the model's training cells look like (colour descriptors of a seeded sample of
    DATASET/train.csv) and write a copy of MODEL with it, so `predict` can warn about cells outside the training
    domain. `train` stores it already; this is for older models. See docs/inference.md."""
    from ..sites.reference import add_domain_reference
    ref = add_domain_reference(args.model, args.dataset, args.out, size=args.size, seed=args.seed,
                               overwrite=args.overwrite)
    print(f"domain reference of {ref['n_cells']} training images of {args.dataset} (cell threshold "
          f"{ref['cell_threshold']:.2f}) stored with {args.model} -> {args.out}")


def _add_domain(sub) -> None:
    p = command(sub, "domain-reference", _cmd_domain_reference,
                "store the domain-shift reference in a model trained without one", describe=True)
    p.add_argument("model", help="model .nnp / .h5 (never changed)")
    p.add_argument("dataset", help="the NNC dataset folder the model was trained on (train.csv is read)")
    p.add_argument("out", help="model .nnp to write (the same parameters, with the reference)")
    p.add_argument("--size", type=int, default=None, help="input side in pixels (default: the model's size)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the image sample (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the model)")


def register(sub) -> None:
    """Add ``adapt``, ``infomax``, ``finetune``, ``self-train`` and ``domain-reference`` to the sub-command parsers."""
    for add in (_add_adaptation, _add_infomax, _add_finetune, _add_self_train, _add_domain):
        add(sub)
