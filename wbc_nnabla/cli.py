"""``wbc-nnabla``: a thin command line over the Python API.

Each sub-command is a few lines: parse flags, call the stage's API, print
where the outputs are. Sections are grouped by pipeline stage. Stage modules
are imported inside each command, so ``--help`` and the commands that need no
network (classes, cells, score, compare, ...) never load nnabla.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import typing
from pathlib import Path
from typing import List, Optional

from . import __version__
from .errors import WBCError
# nnabla-free (standard library only): the paper's numbers and the settings' fields build the flags.
from .recipe import (ADABN_BATCH, ADVISED_ADAPT_IMAGES, ARCH_NAMES, BACKEND_NAMES, CONTEXT_NAMES, DEFAULT_PAD, FLAG,
                     MAX_ADAPT_IMAGES, MIN_ADAPT_IMAGES, PADS, PAPER, PRECISION_NAMES, RECIPE_NAMES, SELECT_FOLDS,
                     STAIN_METHODS, AdaBoundConfig, Augmentation, FinetuneConfig, InfoMaxConfig, SelfTrainConfig,
                     TrainConfig, WEIGHT_INIT_NAMES, recipe_augmentation)


class CLIError(WBCError):
    """An error the CLI reports as one line (no traceback), exit code 2."""


# ----------------------------------------------------------------------------- classes / io


def _cmd_classes(args) -> int:
    from . import classes
    print("six classes (Table 1 order):", ", ".join(f"{i} {c}" for i, c in enumerate(classes.CLASSES6)))
    print("five classes:", ", ".join(classes.CLASSES5))
    for cat in classes.TAXONOMY:
        print(f"  {cat.name:12s} -> {str(cat.class6):10s} / {cat.class5:10s}  synonyms: {', '.join(cat.synonyms)}")
    return 0


def _cmd_cells(args) -> int:
    from . import fileio
    df = fileio.read_cells(args.source, dedupe_flag=None)
    print(f"{len(df)} cells from {args.source}")
    print(df["label"].replace("", "(unlabeled)").value_counts().sort_index().to_string())
    copies = fileio.copy_groups(df)
    if copies:
        print(f"{sum(len(g) - 1 for g in copies)} file(s) are byte-identical copies of another listed file "
              f"(build-dataset and finetune refuse them; drop the copies or keep each on one side of a split):")
        for rows in copies:
            print("  " + " = ".join(f"{df['source'].iat[i]} ({df['label'].iat[i] or 'unlabeled'})" for i in rows))
    return 0


def _add_io(sub) -> None:
    p = sub.add_parser("classes", help="list the class taxonomy (names, synonyms, five-class view)")
    p.set_defaults(func=_cmd_classes)
    p = sub.add_parser("cells", help="read a labeled cell source and print its class counts and any byte-identical copies")
    p.add_argument("source", help="class folder tree, path,label CSV or NNC dataset CSV/folder")
    p.set_defaults(func=_cmd_cells)


# ----------------------------------------------------------------------------- cells: segment, locate


def _cmd_segment(args) -> int:
    from . import segmentation
    s = segmentation.segment_images(args.inputs, args.out, gallery=args.gallery, overwrite=args.overwrite)
    msg = f"{s['images']} masks (0 outside, 255 WBC) in {s['out']}; {s['empty']} without a nucleus (empty mask)"
    if s["gallery"] is not None:
        msg += f"; overlay of {s['gallery_images']} (a seeded sample) in {s['gallery']}"
    print(msg)
    return 0


def _cmd_locate(args) -> int:
    from . import segmentation
    table = segmentation.locate_images(args.inputs, args.out, overwrite=args.overwrite)
    print(f"{len(table)} WBC centres in {table.attrs['images']} fields -> {Path(args.out)}")
    return 0


def _add_cells(sub) -> None:
    p = sub.add_parser("segment", help="WBC masks (background removal, dataset 1 of section II.3)")
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS",
                   help="single-cell crops, or folders searched recursively")
    p.add_argument("--out", required=True, help="output folder: one mask PNG per image (same stem)")
    p.add_argument("--gallery", type=int, default=48, metavar="N",
                   help="overlay N cells, a seeded sample across sub-folders, in OUT/gallery.png (default 48, 0 = none)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an earlier segment output (never another folder)")
    p.set_defaults(func=_cmd_segment)
    p = sub.add_parser("locate", help="WBC centres in smear field images")
    p.add_argument("inputs", nargs="+", metavar="FIELDS_OR_FOLDERS",
                   help="field images, or folders searched recursively")
    p.add_argument("--out", required=True, help="CSV with one image,x,y row per located WBC (pixels)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_cmd_locate)


# ----------------------------------------------------------------------------- datasets: build-dataset


def _cmd_build_dataset(args) -> int:
    import time

    from . import datasets
    if args.background is None and not args.inference:
        raise CLIError("--background is required: remove (dataset ①, only the WBC kept) or keep (dataset ②)")
    t0 = time.time()
    out = datasets.build_dataset(
        args.source, args.out, background=args.background, crop=args.crop, crop_um=args.crop_um,
        pixel_um=args.pixel_um, size=args.size, total=args.total, valid_fraction=args.valid_fraction,
        seed=args.seed, inference=args.inference, locate=args.locate, skip_bad=args.skip_bad,
        overwrite=args.overwrite, pad_mode=args.pad_mode, progress=not args.no_progress, dedupe=args.dedupe)
    report = out.report
    print(f"{report['cells']} source cells -> {report['images']} images ({report['mode']}, background "
          f"{report['background']}) in {time.time() - t0:.1f} s")
    for c, d in report["classes"].items():
        if report["mode"] == "inference":
            print(f"  {c:10s} {d['sources']:6d} cells")
        else:
            print(f"  {c:10s} {d['sources']:6d} sources -> train {d['train_images']:6d}  valid {d['valid_images']:6d}")
    for w in report["warnings"]:
        print(f"warning: {w}")
    if report.get("duplicates_dropped"):
        print(f"dropped {report['duplicates_dropped']} repeated cell(s) of the source (--dedupe)")
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} bad image(s), listed in {out / 'build_report.md'}")
    print(f"dataset: {out.path}")
    return 0


def _add_datasets(sub) -> None:
    p = sub.add_parser(
        "build-dataset",
        help="build teacher dataset ①/② or the inference set (crop, background, dihedral balancing, split)",
        description="Section II.3 of Sasaki et al. (2020): crop around each WBC, remove or keep the "
                    "background, balance the six classes with the 8 dihedral variants, split per "
                    "source cell (and smear) into train/valid, write an NNC dataset folder. "
                    "See docs/datasets.md.")
    p.add_argument("source", help="class folders, path,label[,smear][,x,y] CSV, NNC CSV/folder, "
                                  "Pascal VOC folder (Annotations/ + JPEGImages/) or a folder of images")
    p.add_argument("out", help="dataset folder to create (not inside a source folder)")
    p.add_argument("--background", choices=("remove", "keep"), default=None,
                   help="remove: dataset ① (only the WBC kept); keep: dataset ② (required unless "
                        "--inference, where the default is keep)")
    p.add_argument("--crop", type=int, default=PAPER.crop, help=f"crop side in pixels (default {PAPER.crop})")
    p.add_argument("--crop-um", type=float, default=None, help="crop side in micrometres (with --pixel-um)")
    p.add_argument("--pixel-um", type=float, default=None, help="micrometres per pixel of the source images")
    p.add_argument("--size", type=int, default=None,
                   help=f"output side in pixels (default {PAPER.train_size}, or {PAPER.infer_size} with --inference)")
    p.add_argument("--total", type=int, default=None,
                   help=f"images in train+valid (default {PAPER.total_a} for remove, {PAPER.total_b} for keep)")
    p.add_argument("--valid-fraction", type=float, default=0.2, help="share of images in valid.csv (default 0.2)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the split and variant choice (default 0)")
    p.add_argument("--inference", action="store_true",
                   help="inference set: crop and resize only (cells.csv + test.csv), no split or augmentation")
    p.add_argument("--locate", action="store_true",
                   help="find WBCs in field images that have no x,y centre")
    p.add_argument("--pad-mode", choices=("reflect", "constant", "replicate"), default="reflect",
                   help="padding where a crop leaves the image (default reflect)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and list them in the report")
    p.add_argument("--dedupe", action="store_true",
                   help="drop cells the source lists twice with the same label and smear, and report how many "
                        "(default: a repeated cell is an error naming both rows)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_build_dataset)


# ----------------------------------------------------------------------------- training


def _cmd_train(args) -> int:
    from . import training
    solver = _settings(AdaBoundConfig, args)
    given = {f.name: getattr(args, f.name) for f in _setting_fields(Augmentation) if getattr(args, f.name) is not None}
    aug = recipe_augmentation(args.recipe, **given, flip_lr=not args.no_flip, flip_ud=not args.no_flip,
                              enabled=not args.no_augmentation)
    config = _settings(      # TrainConfig's setting fields (norm, label_smoothing, ...) from their flags
        TrainConfig, args,
        epochs=args.epochs, batch_size=args.batch_size, size=args.size, seed=args.seed, pretrained=args.pretrained,
        init=args.init, arch=args.arch, solver=solver, augmentation=aug, context=args.context,
        train_eval_limit=args.train_eval_limit, export_size=args.export_size, progress=not args.no_progress,
        bn_recalibration=args.bn_recalibration, weight_init=args.weight_init)
    s = training.train(args.dataset, args.out, config, resume=args.resume)
    b = s["best"]
    which = (f"weights averaged over epochs {b['averaged_epochs'][0]}-{b['averaged_epochs'][1]}"
             if "averaged_epochs" in b else f"best epoch {b['epoch']}")
    print(f"{which}: Validation Error {b['validation_error']:.4f}, "
          f"misclassification {b.get('validation_misclassification', float('nan')):.3f}")
    print(f"model: {Path(args.out) / 'model.nnp'}  learning curve: {Path(args.out) / 'learning_curve.png'}")
    return 0


def _add_training(sub) -> None:
    t = TrainConfig()
    p = sub.add_parser("train", help="train WBC Model A (ImageNet start) or fine-tune Model B (--init A.nnp)",
                       description="ResNet + AdaBound + ImageAugmentation training (paper section II.4). "
                                   "Writes model.nnp, model.h5, config.json, learning_curve.csv/.png, monitor/, "
                                   "checkpoints/ into OUT.")
    p.add_argument("dataset", help="NNC dataset folder with train.csv and valid.csv (x:image,y:label)")
    p.add_argument("out", help="output folder")
    p.add_argument("--epochs", type=int, default=t.epochs, help=f"epochs (paper: {PAPER.epochs})")
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--size", type=int, default=t.size,
                   help=f"training input size in pixels (paper: {PAPER.train_size})")
    p.add_argument("--export-size", type=int, default=t.export_size, help="input size of model.nnp (default --size)")
    p.add_argument("--seed", type=_seed, default=t.seed)
    p.add_argument("--arch", default=t.arch, choices=ARCH_NAMES)
    p.add_argument("--pretrained", default=t.pretrained,
                   help="imagenet (file cached in ~/nnabla_data/nnp_models/imagenet/), a .nnp/.h5 path, or none")
    p.add_argument("--init", default=t.init, help="start from every parameter of this model (Model B: Model A's .nnp)")
    p.add_argument("--weight-init", default=t.weight_init, choices=WEIGHT_INIT_NAMES,
                   help="initialiser of convolution weights not loaded from --pretrained/--init: glorot "
                        "(nnabla's default, uniform) or he (Kaiming normal, fan_out, as torchvision) "
                        "(default %(default)s)")
    p.add_argument("--context", default=t.context, choices=CONTEXT_NAMES)
    p.add_argument("--resume", action="store_true", help="continue the last checkpoint in OUT")
    p.add_argument("--train-eval-limit", type=int, default=t.train_eval_limit,
                   help="Training Error on a seeded class-stratified sample of N training images (default all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--bn-recalibration", type=int, default=t.bn_recalibration, metavar="N",
                   help="re-estimate BatchNorm statistics on N clean training images before each "
                        "evaluation and export (default %(default)s; 0: off, as NNC; a no-op with --norm group; "
                        "see docs/training.md)")
    _add_settings(p, TrainConfig, defaults=True)
    _add_settings(p.add_argument_group("AdaBound"), AdaBoundConfig, defaults=True)
    p.add_argument("--recipe", choices=RECIPE_NAMES, default="paper",
                   help="paper (default): the paper's ImageAugmentation; robust: plus colour terms and a wide "
                        "Magnification, for cells of other labs (docs/cross_site.md). Flags below override it")
    g = p.add_argument_group("ImageAugmentation (training graph only; default: the --recipe's value)")
    _add_settings(g, Augmentation, defaults=False)
    g.add_argument("--no-flip", action="store_true", help="no random left-right/up-down mirror")
    g.add_argument("--no-augmentation", action="store_true", help="train without any augmentation (ImageAugmentation and the colour terms)")
    p.set_defaults(func=_cmd_train)


# ----------------------------------------------------------------------------- inference, export (issues 5, 6)


def _expected_classes(spec: str):
    from . import classes
    if spec in ("", "auto"):
        return None
    if spec.lower() == "six":
        return list(classes.CLASSES6)
    return [c.strip() for c in spec.split(",") if c.strip()]


def _cmd_predict(args) -> int:
    from . import outputs, predictions, predictor
    from .modelfile import ModelError
    out = Path(args.out)
    if out.suffix.lower() != ".csv":
        raise CLIError(f"{out}: the predictions file must end in .csv")
    cells = Path(args.cells)
    if cells.is_dir():
        outputs.check_not_inside(out, [cells])          # never write into a source folder
    elif out.resolve() == cells.resolve():
        raise CLIError(f"{out}: is the cell list itself; choose another output")
    inputs = [Path(args.model), cells]
    for target in (out, predictions.run_config_path(out)):    # before the run, not after it
        outputs.check_output(target, "predict", args.overwrite, inputs, folder=False)
    try:
        engine = predictor.load_backend(args.model, args.backend, args.threads, args.precision, args.size,
                                        args.calibration, cells=args.cells)
        how = ("auto: nnabla on GPU, else the fastest measured" if args.backend == args.precision == "auto"
               else "as asked")
        print(f"backend: {engine.name} {engine.precision} ({how}); model {args.model} ({engine.meta['arch']}"
              f"{' with GroupNorm' if engine.meta.get('norm') == 'group' else ''}, "
              f"classes {', '.join(engine.class_names)}, trained at "
              f"{str(engine.meta['input_size']) + ' px' if engine.meta.get('input_size') else 'an unstored size'})")
        df = predictor.predict(engine, args.cells, size=args.size, batch_size=args.batch_size,
                               expected_classes=_expected_classes(args.classes), progress=not args.no_progress,
                               skip_bad=args.skip_bad, stain=args.stain,
                               stain_reference=_stain_reference(args.stain, args.stain_reference), prior=args.prior,
                               tta=args.tta)
    except (ModelError, ValueError) as e:
        raise CLIError(str(e)) from None
    predictions.write_predictions(df, out, config=predictor.run_config(df, args.model, args.cells),
                                  overwrite=args.overwrite, inputs=inputs)
    rate = len(df) / df.attrs["seconds"] if df.attrs["seconds"] > 0 else float("nan")
    print(f"{len(df)} cells at {df.attrs['size']} px in {df.attrs['seconds']:.1f} s ({rate:.1f} cells/s) "
          f"-> {out} (+ {out.with_suffix('.json').name})")
    if df.attrs.get("int8"):
        c = df.attrs["int8"]
        print(f"int8 ({c['chosen'].replace('_', ' ')} weights) checked on {c['calibration']}: accuracy "
              f"{c['int8_accuracy']:.4f} vs fp32 {c['fp32_accuracy']:.4f}, same class {100 * c['same_class']:.1f}%")
    for why in df.attrs.get("skipped", ()):
        print(f"skipped: {why}")
    for smear, est in list(df.attrs.get("prior_estimated", {}).items())[:3]:
        print(f"estimated prior of smear {smear} ({est['cells']} cells): "
              + ", ".join(f"{c} {v:.3f}" for c, v in est["shares"].items()))
    print(_domain_line(df.attrs.get("domain", {})))
    return 0


def _domain_line(summary: dict) -> str:
    """One console line of a predict run's domain-shift check (wbc_nnabla.domain)."""
    from . import domain
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


def _cmd_export(args) -> int:
    from .export import export_onnx, read_onnx_meta
    from .modelfile import ModelError
    try:
        path = export_onnx(args.model, args.onnx, opset=args.opset, overwrite=args.overwrite)
        meta = read_onnx_meta(path)
    except (ModelError, ValueError) as e:
        raise CLIError(str(e)) from None
    print(f"{args.model} -> {path} (ONNX opset {args.opset}, {meta['arch']}"
          f"{' with GroupNorm' if meta.get('norm') == 'group' else ''}, input x (N,3,H,W) RGB [0,1], "
          f"output y softmax over {', '.join(meta['class_names'])}; trained at "
          f"{str(meta['input_size']) + ' px' if meta.get('input_size') else 'an unstored size'})")
    return 0


def _stain_reference(method: str, source) -> Optional[dict]:
    """The ``--stain`` target computed from the ``--stain-reference`` cells (None without them)."""
    if method == "none" or source is None:
        if source is not None:
            raise CLIError("--stain-reference is given but --stain is none")
        return None
    from . import fileio, stain
    return stain.reference(list(fileio.read_cell_images(source, dedupe_flag=None)["path"]))


def _add_stain_arguments(p, note: str) -> None:
    """``--stain`` and ``--stain-reference`` of ``predict`` and ``adapt``; ``note`` ends the first's help."""
    p.add_argument("--stain", choices=STAIN_METHODS, default="none",
                   help="colour standardisation of each cell towards --stain-reference: white-balance "
                        "(background gains), reinhard (L*a*b* mean/std) or macenko (stain separation); default "
                        f"none {note}. See docs/cross_site.md")
    p.add_argument("--stain-reference", default=None, metavar="CELLS",
                   help="cells whose colours are the target of --stain: the model's training cells, e.g. "
                        "its dataset's train.csv")


def _add_inference(sub) -> None:
    p = sub.add_parser("predict", help="predict cell classes with a trained model (predictions CSV)")
    p.add_argument("model", help="model .nnp / .h5, or an .onnx exported by `wbc-nnabla export`")
    p.add_argument("cells", help="cell images: folder (images, class or smear sub-folders, inference dataset), "
                                 "path,label[,smear] CSV or NNC dataset CSV")
    p.add_argument("out", help="predictions CSV to write (columns path, smear, label, pred6, pred5, prob_*)")
    p.add_argument("--size", type=int, default=None,
                   help=f"input side in pixels (default: the model's training size; the paper infers at "
                        f"{PAPER.infer_size})")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default 16)")
    p.add_argument("--backend", choices=BACKEND_NAMES, default="auto",
                   help="auto (default): nnabla on a GPU context, else the fastest CPU backend measured")
    p.add_argument("--precision", choices=PRECISION_NAMES, default="auto",
                   help="int8: the ONNX export quantised on calibration cells, refused if it loses more than "
                        "0.005 accuracy on them (onnxruntime); fp32; auto (default): int8 only if measured "
                        "faster and as accurate (docs/inference.md)")
    p.add_argument("--calibration", default=None, metavar="CELLS",
                   help="labelled cells to calibrate int8 on, never the cells predicted (default: the model's "
                        "validation cells, found through the config.json beside it)")
    p.add_argument("--classes", default="auto",
                   help="expected model classes: 'six' (the paper's), a comma list, or 'auto' (accept the "
                        "model's; default)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for opencv/onnxruntime, 1-1024 (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and the .json beside it) if it exists")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable, corrupt or too small images (listed) instead of stopping")
    _add_stain_arguments(p, "(not with a model adapt made: adapt --stain instead)")
    p.add_argument("--prior", default="none", metavar="PRIOR",
                   help="correct the probabilities from the balanced training classes to a smear's expected "
                        "differential: none (default), normal (a healthy adult's), estimate (each smear's "
                        "own, estimated from its cells without labels; >= 50 cells a smear), or "
                        "Class=share,... (e.g. Segment=0.57,Band=0.03,Lymph=0.3,Mono=0.06,Eosinophil=0.03,"
                        "Basophil=0.01); a fixed prior lowers the sensitivity to rare cells, see docs/inference.md")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the probabilities over each cell's 8 turned and "
                        "mirrored views (8x the time); see docs/inference.md")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)
    p = sub.add_parser("export", help="export a model .nnp/.h5 to ONNX (for OpenCV / onnxruntime)")
    p.add_argument("model", help="model .nnp or .h5")
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (>= 13; default 13)")
    p.add_argument("--overwrite", action="store_true", help="replace the ONNX file if it exists (never the model)")
    p.set_defaults(func=_cmd_export)


# ----------------------------------------------------------------------------- ensembles


def _cmd_ensemble(args) -> int:
    from .ensemble import ensemble
    df = ensemble(args.members, args.out, overwrite=args.overwrite, match=args.match)
    print(f"{len(df)} cells, mean probabilities of {len(args.members)} models -> {args.out} "
          f"(+ {Path(args.out).with_suffix('.json').name})")
    return 0


def _add_ensemble(sub) -> None:
    p = sub.add_parser("ensemble", help="average several models' predictions CSVs of the same cells into one",
                       description="One predictions CSV from several models' predictions of the same cells: "
                                   "each cell's probabilities are averaged and the class of highest mean is "
                                   "its prediction. Predict every member with the same --prior. "
                                   "See docs/inference.md.")
    p.add_argument("members", nargs="+", metavar="PRED",
                   help="predictions CSVs of the same cells by different models (at least 2; never changed)")
    p.add_argument("out", metavar="OUT", help="the ensemble's predictions CSV (+ a .json listing the members)")
    p.add_argument("--match", choices=("path", "source"), default="path",
                   help="pair the members' rows by image file (default), or by the source cell each image was "
                        "made from (build-dataset's manifest): Model A on cells with the background removed "
                        "and Model B on the same cells as photographed; the first member's paths are kept")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and its .json) if it exists")
    p.set_defaults(func=_cmd_ensemble)


# ----------------------------------------------------------------------------- site adaptation


def _cmd_adapt(args) -> int:
    from .adaptation import adapt_batchnorm
    r = adapt_batchnorm(args.model, args.site_cells, args.out, size=args.size, batch_size=args.batch_size,
                        max_images=args.max_images, seed=args.seed, overwrite=args.overwrite, skip_bad=args.skip_bad,
                        scale=not args.no_scale, train_cells=args.train_cells, pad=args.pad, stain=args.stain,
                        stain_reference=_stain_reference(args.stain, args.stain_reference))
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
    return 0


def _add_adaptation(sub) -> None:
    p = sub.add_parser("adapt", help="adapt a model to another lab's unlabelled cells (AdaBN: BatchNorm statistics)",
                       description="Re-estimate every BatchNorm layer's running mean/var on a new site's cells "
                                   "(AdaBN, Li et al. 2016); labels are not needed, every other parameter is "
                                   "copied unchanged. See docs/inference.md.")
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
    p.add_argument("--seed", type=_seed, default=0, help="seed of the cell sample (default 0)")
    p.add_argument("--no-scale", action="store_true",
                   help="BatchNorm statistics only: do not re-frame the site's crops to the training WBC scale")
    p.add_argument("--train-cells", default=None, metavar="CELLS",
                   help="training cells (e.g. the dataset's train.csv) to measure the training WBC scale of a "
                        "model that stores none")
    p.add_argument("--pad", choices=PADS, default=None,
                   help="when the scale zooms the crops out, fill the band around each crop with the crop "
                        "mirrored (reflect), its edge pixels repeated (replicate) or its slide-background "
                        f"colour (background); default {DEFAULT_PAD}")
    _add_stain_arguments(p, "(the statistics are estimated on the cells so standardised, and predict applies it "
                            "to every cell)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the model)")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out unreadable, corrupt or too small images (listed) instead of stopping")
    p.set_defaults(func=_cmd_adapt)


def _add_site_arguments(p, cells: str, cells_help: str, out_help: str, settings, skip_bad: bool = True,
                        model_help: str = "model .nnp / .h5 to start from (never changed)") -> None:
    """The arguments every command deriving a model from a site's cells shares (``finetune``,
    ``infomax``, ``self-train``): MODEL, the cells, OUT, the ``settings`` dataclass's flags,
    ``--overwrite``, ``--skip-bad`` (with ``skip_bad``) and ``--no-progress``."""
    p.add_argument("model", help=model_help)
    p.add_argument(cells, help=cells_help)
    p.add_argument("out", help=out_help)
    _add_settings(p, settings, defaults=True)
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the model)")
    if skip_bad:
        p.add_argument("--skip-bad", action="store_true",
                       help="leave out unreadable, corrupt or too small images (listed) instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _cmd_infomax(args) -> int:
    from .adaptation import infomax
    r = infomax(args.model, args.site_cells, args.out, _settings(InfoMaxConfig, args), overwrite=args.overwrite,
                progress=not args.no_progress, skip_bad=args.skip_bad, max_images=args.max_images)
    for why in r["skipped"]:
        print(f"skipped: {why}")
    first, last = r["first"], r["last"]
    print(f"infomax: {args.model} trained on {r['n_cells']} of {r['n_listed']} cells of {args.site_cells} "
          f"({r['settings']['iterations']} updates; entropy {first['entropy']:.3f} -> {last['entropy']:.3f}, "
          f"KL from the prior {first['kl']:.3f} -> {last['kl']:.3f}) -> {r['out']}")
    return 0


def _add_infomax(sub) -> None:
    p = sub.add_parser("infomax", help="adapt a model to another lab's unlabelled cells (information maximisation)",
                       description="After `adapt`: train every parameter but the classifier on a new site's "
                                   "unlabelled cells so that each cell's call is sure while the mean call of a "
                                   "batch stays near a class prior (SHOT-IM, Liang et al. 2020), then re-estimate "
                                   "the BatchNorm statistics on the same cells. Check the result on some "
                                   "labelled cells of the site. See docs/cross_site.md.")
    _add_site_arguments(p, "site_cells", "the new site's cells: any cell source (folder, CSV, NNC dataset); "
                                         "labels ignored",
                        "adapted model .nnp to write (records the run in wbc_nnabla.json)", InfoMaxConfig,
                        model_help="model .nnp / .h5 to start from, best one `adapt` made (never changed)")
    p.add_argument("--max-images", type=int, default=MAX_ADAPT_IMAGES,
                   help=f"site cells drawn, a seeded sample (default %(default)s; at least {MIN_ADAPT_IMAGES})")
    p.set_defaults(func=_cmd_infomax)


def _cmd_finetune(args) -> int:
    import pandas as pd

    from .finetune import MIN_SITE_REFERENCE_CELLS, finetune
    if args.select:
        given = [f"--{name.replace('_', '-')}" for name in ("alpha", "final_lr", "iterations")
                 if getattr(args, name) != getattr(FinetuneConfig, name)]
        if given:
            raise CLIError(f"--select chooses {', '.join(given)} by cross-validation; give one or the other")
    r = finetune(args.model, args.labelled_cells, args.out, _settings(FinetuneConfig, args),
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
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model on a few labelled cells of another lab",
                       description="Fine-tune a model on a new site's labelled cells (best at most about 100, "
                                   "after `adapt` on its unlabelled cells): BatchNorm statistics frozen, "
                                   "AdaBound at a small step, the paper's geometric augmentation. Labels: the "
                                   "model's classes, or Neutrophil for Band/Segment. See docs/cross_site.md.")
    _add_site_arguments(p, "labelled_cells", "the site's labelled cells: class folders, path,label CSV or NNC dataset",
                        "fine-tuned model .nnp to write (records the fine-tuning in wbc_nnabla.json)", FinetuneConfig,
                        skip_bad=False)
    p.add_argument("--select", action="store_true",
                   help="choose the step (--alpha, --final-lr) and --iterations by cross-validation inside the "
                        "labelled cells (steps 1e-4 and 1e-3, 100 and 200 iterations; not with those flags), "
                        "then fine-tune on all of them with the best; about 3 x --folds fine-tunings more")
    p.add_argument("--folds", type=int, default=SELECT_FOLDS, help="folds of --select (default %(default)s)")
    p.set_defaults(func=_cmd_finetune)


def _cmd_self_train(args) -> int:
    from .selftraining import self_train
    r = self_train(args.model, args.site_cells, args.out, _settings(SelfTrainConfig, args), overwrite=args.overwrite,
                   progress=not args.no_progress, skip_bad=args.skip_bad)
    for d in r["rounds"]:
        counts = ", ".join(f"{k} {v}" for k, v in d["per_class"].items())
        print(f"round {d['round']}: {d['n_pseudo']} of {d['n_cells']} cells pseudo-labelled ({counts}); "
              f"Cost {d['cost_first']:.3f} -> {d['cost_last']:.3f}")
    print(f"self-trained {args.model} on {args.site_cells} -> {r['out']}")
    return 0


def _add_self_train(sub) -> None:
    p = sub.add_parser("self-train", help="self-train a model on another lab's unlabelled cells (pseudo-labels)",
                       description="Class-balanced self-training on a new site's unlabelled cells (the paper's "
                                   "semi-supervised proposal): the model labels the cells, is fine-tuned on the "
                                   "most confident share of each predicted class, and labels them again, for a "
                                   "few rounds. Best after `adapt`. Pseudo-labels repeat the model's own "
                                   "mistakes: check the result on labelled cells. See docs/cross_site.md.")
    _add_site_arguments(p, "site_cells", "the site's cells: a folder, CSV or NNC dataset (labels ignored)",
                        "self-trained model .nnp to write (records each round in wbc_nnabla.json)", SelfTrainConfig)
    p.set_defaults(func=_cmd_self_train)


# ----------------------------------------------------------------------------- scoring, report


def _seed(text: str) -> int:
    """``--seed``: an integer in [0, :data:`~wbc_nnabla.sampling.MAX_SEED`] (argparse names the flag)."""
    from .sampling import check_seed
    try:
        return check_seed(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer in [0, 2**31 - 1], got {text!r}") from None


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {v}")
    return v


def _cmd_score(args) -> int:
    from . import report, scoring
    from .predictions import PredictionsError
    try:
        result = scoring.score(args.predictions, pending_threshold=args.pending_threshold,
                               pending_margin=args.pending_margin, target_accuracy=args.target_accuracy)
        out = report.write_score(result, args.out_dir, figures=not args.no_figures,
                                 gallery=not args.no_gallery, overwrite=args.overwrite)
    except PredictionsError as e:
        raise CLIError(str(e)) from None
    s = result.summary
    print(f"{s['n_cells']} cells, {s['n_smears']} smears: accuracy 6 classes {s['accuracy6_mean']:.3f} "
          f"+- {s['accuracy6_sd']:.3f} (pooled {s['accuracy6_pooled']:.3f}), 5 classes "
          f"{s['accuracy5_mean']:.3f} +- {s['accuracy5_sd']:.3f} (pooled {s['accuracy5_pooled']:.3f}); "
          f"{s['n_pending']} pending")
    cut = s.get("pending_threshold_from")
    if cut:
        prior = "with the predictions' class prior" if isinstance(cut["prior"], dict) else "no class prior"
        print(f"judgement-pending cut-off {cut['threshold']:.4f} from the model's {cut['n_cells']} calibration cells "
              f"(five classes, accuracy {cut['accuracy']:.3f} on the {cut['n_kept']} it keeps there; target "
              f"{cut['target']:g}, {prior})"
              + ("; these predictions averaged --tta views, the calibration cells did not" if cut.get("tta") else ""))
    if args.target_accuracy is not None:
        th = s.get("threshold_at_target6")
        print(f"target accuracy {args.target_accuracy:g} (6 classes): "
              + (f"threshold {th:.4f}, coverage {s['coverage_at_target6']:.3f}" if th is not None else "not reached"))
    if s.get("domain_check") == "unavailable":
        print(f"domain-shift check unavailable: {s['domain_check_reason']}")
    else:
        print(f"domain-shift check: {s['domain_share_outside']:.1%} of cells outside the training domain; "
              + (f"WARNING {len(s['smears_outside_domain'])} smear(s) outside: {', '.join(s['smears_outside_domain'])}"
                 if s["smears_outside_domain"] else "every smear inside"))
    shown = "report.html, " if not args.no_figures else ""
    print(f"wrote {out}/ ({shown}summary.json, per_smear.csv, confusion6.csv, confusion5.csv, ...)")
    return 0


def _p_text(p) -> str:
    """A p-value for the console: 3 significant digits, ``n/a`` when the test reports none (NaN)."""
    return "n/a" if p is None or p != p else f"{p:.3g}"


def _cmd_compare(args) -> int:
    from . import report, scoring
    from .predictions import PredictionsError
    try:
        a, b = (scoring.score(p, pending_threshold=args.pending_threshold, pending_margin=args.pending_margin)
                for p in (args.pred_a, args.pred_b))
        result = scoring.compare(a, b, name_a=args.name_a, name_b=args.name_b)
        out = report.write_compare(result, args.out_dir, figures=not args.no_figures, overwrite=args.overwrite)
    except PredictionsError as e:
        raise CLIError(str(e)) from None
    s = result.summary
    for v in ("5", "6"):
        notes = [s[f"p_{k}{v}_note"] for k in scoring.TESTS if f"p_{k}{v}_note" in s]
        print(f"{v} classes: {args.name_a} {s['accuracy' + v + '_mean_a']:.3f}, {args.name_b} "
              f"{s['accuracy' + v + '_mean_b']:.3f}, mean diff {s['mean_diff' + v]:+.3f}, rank-sum p "
              f"{_p_text(s['p_ranksum' + v])}, signed-rank p {_p_text(s['p_signedrank' + v])}"
              + (f" ({'; '.join(notes)})" if notes else ""))
    shown = "report.html, " if not args.no_figures else ""
    print(f"wrote {out}/ ({shown}comparison.json, per_smear_pairs.csv, recall_change.csv)")
    return 0


def _cutoff(text: str):
    """``--pending-threshold`` of ``score``: a number in [0, 1], or ``model`` (scoring.MODEL_CUTOFF)."""
    return "model" if text.strip().lower() == "model" else _fraction(text)


def _add_pending_flags(p, model_cutoff: bool = False) -> None:
    """The judgement-pending flags; ``model_cutoff``: ``--pending-threshold`` also takes ``model`` (score)."""
    text = "hold cells whose top probability is below T for a human ('judgement pending')"
    if model_cutoff:
        text += ("; 'model': the cut-off set on the model's own validation cells for --target-accuracy "
                 "(default 0.99; five classes; docs/scoring.md)")
    p.add_argument("--pending-threshold", type=_cutoff if model_cutoff else _fraction, metavar="T", help=text)
    p.add_argument("--pending-margin", type=_fraction, metavar="M",
                   help="also hold Band/Segment and Lymph/Mono calls whose pair probabilities differ by less than M")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--no-figures", action="store_true", help="write tables and JSON only (no figures, no report)")


def _add_scoring(sub) -> None:
    p = sub.add_parser("score", help="per-smear accuracy, Table 1, differential and pending cells of a predictions CSV")
    p.add_argument("predictions", help="predictions CSV (path, smear, label, pred6, pred5, prob_*)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created; see docs/scoring.md)")
    _add_pending_flags(p, model_cutoff=True)
    p.add_argument("--target-accuracy", type=_fraction, metavar="A",
                   help="report the lowest top-probability cut-off whose kept labeled cells reach accuracy A")
    p.add_argument("--no-gallery", action="store_true", help="skip the image gallery of disagreeing cells")
    p.set_defaults(func=_cmd_score)
    p = sub.add_parser("compare", help="compare two models' per-smear accuracies on the same smears (Wilcoxon, Fig. 9)")
    p.add_argument("pred_a", metavar="PRED_A", help="predictions CSV of the first model")
    p.add_argument("pred_b", metavar="PRED_B", help="predictions CSV of the second model (same cells)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--name-a", default="Model A", help="label of the first model (default: Model A)")
    p.add_argument("--name-b", default="Model B", help="label of the second model (default: Model B)")
    _add_pending_flags(p)
    p.set_defaults(func=_cmd_compare)


# ----------------------------------------------------------------------------- Grad-CAM


def _cmd_gradcam(args) -> int:
    from . import gradcam
    try:
        table = gradcam.write_gradcam(args.model, args.images, args.out, class_name=args.class_name,
                                      size=args.size, batch_size=args.batch_size, alpha=args.alpha,
                                      overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as e:  # a bad model file or setting (ModelError), or nnabla's own ValueError
        raise CLIError(str(e)) from None
    size = table.attrs["size"]
    print(f"Grad-CAM of {len(table)} image(s) at {size}x{size} -> {Path(args.out)} "
          f"(gradcam.csv, *_gradcam.png, *_cam.npy)")
    return 0


def _add_gradcam(sub) -> None:
    p = sub.add_parser("gradcam", help="Grad-CAM heat maps: where the CNN looks (paper's discussion)")
    p.add_argument("model", help="model .nnp (or .h5) written by wbc_nnabla")
    p.add_argument("images", nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder (<stem>_gradcam.png, <stem>_cam.npy, gradcam.csv)")
    p.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                   help="explain this class (any accepted spelling, e.g. Band, SNE, lymphocyte); "
                        "default: each image's predicted class")
    p.add_argument("--size", type=int, default=None, metavar="S", help="network input size in pixels (default: the model's)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per pass (default 8)")
    p.add_argument("--alpha", type=float, default=0.4, help="heat-map weight in the overlay, 0-1 (default 0.4)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an earlier gradcam output (never another folder)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_gradcam)


# ----------------------------------------------------------------------------- pipeline: reproduce, demo


def _print_headline(summary: dict, out) -> None:
    out = Path(out)
    print(f"report: {out / 'report.html'}  (Markdown: {out / 'report.md'})")
    for tag in ("A", "B"):
        print(f"WBC Model {tag}: per-smear accuracy 6 classes {summary[f'accuracy6_mean_{tag}']:.3f} "
              f"± {summary[f'accuracy6_sd_{tag}']:.3f}, 5 classes {summary[f'accuracy5_mean_{tag}']:.3f} "
              f"± {summary[f'accuracy5_sd_{tag}']:.3f} (pooled {summary[f'accuracy6_pooled_{tag}']:.3f} / "
              f"{summary[f'accuracy5_pooled_{tag}']:.3f})")
    print(f"Wilcoxon rank-sum A vs B: p = {_p_text(summary['p_ranksum5'])} (5 classes), "
          f"{_p_text(summary['p_ranksum6'])} (6 classes); {summary['n_inference_cells']} cells in "
          f"{summary['n_smears']} smears; {summary['seconds']:.0f} s")


def config_overrides(args) -> dict:
    """The ``reproduce``/``demo`` settings given on the command line (the preset supplies the rest)."""
    from .pipeline import Config
    return {f.name: getattr(args, f.name) for f in _setting_fields(Config) if getattr(args, f.name) is not None}


def _cmd_reproduce(args) -> int:
    from . import pipeline
    try:
        summary = pipeline.reproduce(args.source, args.out, preset=args.preset, inference=args.inference,
                                     config_file=args.config, progress=not args.quiet, **config_overrides(args))
    except ValueError as e:
        raise CLIError(str(e)) from None
    _print_headline(summary, args.out)
    return 0


def _cmd_demo(args) -> int:
    from . import pipeline
    try:
        summary = pipeline.demo(args.out, progress=not args.quiet, **config_overrides(args))
    except ValueError as e:
        raise CLIError(str(e)) from None
    _print_headline(summary, args.out)
    return 0


def _add_run_flags(p) -> None:
    from .pipeline import Config
    g = p.add_argument_group("settings (override the preset; see docs/method.md)")
    g.add_argument("--config", help="JSON file of settings (applied after the preset, before these flags)")
    _add_settings(g, Config, defaults=False)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pipeline(sub) -> None:
    from .pipeline import PRESETS
    p = sub.add_parser("reproduce", help="run the paper's whole study: datasets, Model A/B, scoring, report")
    p.add_argument("source", help="labeled teacher cells (class folders, path,label[,smear] CSV, NNC CSV)")
    p.add_argument("out", help="output folder: new, empty or an earlier reproduce output (re-running skips "
                               "complete stages and runs again those whose inputs changed)")
    p.add_argument("--preset", choices=tuple(PRESETS), default="paper",
                   help="paper: the paper's settings; recommended: infer at the training scale; demo: minutes on a CPU")
    p.add_argument("--inference", help="labeled inference set; default: a held-out part of SOURCE")
    _add_run_flags(p)
    p.set_defaults(func=_cmd_reproduce)
    p = sub.add_parser("demo", help="reproduce on the embedded demo cells with the demo preset (make demo)")
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    _add_run_flags(p)
    p.set_defaults(func=_cmd_demo)


# ----------------------------------------------------------------------------- flags from dataclass fields


def _setting_fields(cls) -> list:
    """The fields of dataclass ``cls`` that are command-line flags (:func:`wbc_nnabla.recipe.setting`)."""
    return [f for f in dataclasses.fields(cls) if FLAG in f.metadata]


def _add_settings(group, cls, defaults: bool) -> None:
    """Add a ``--field-name`` flag to ``group`` for each setting field of dataclass ``cls``.

    The flag's type is the field's (``Optional[X]`` gives ``X``); its help and
    other argparse keywords come from the field's metadata. With ``defaults``
    the field's default is the flag's; without, the flag defaults to None
    ("not given", e.g. so that a preset decides). Field types: int, float, str or an Optional of one,
    or bool (a switch: given means True); a field named ``seed`` is checked by :func:`_seed`.
    """
    hints = typing.get_type_hints(cls)
    for f in _setting_fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) is typing.Union:            # Optional[X] -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        if kind is bool:
            group.add_argument("--" + f.name.replace("_", "-"), action="store_true",
                               default=f.default if defaults else None, **f.metadata[FLAG])
            continue
        group.add_argument("--" + f.name.replace("_", "-"), type=_seed if f.name == "seed" else kind,
                           default=f.default if defaults else None, **f.metadata[FLAG])


def _settings(cls, args, **more):
    """An instance of dataclass ``cls`` from the flags :func:`_add_settings` made (and ``more`` fields)."""
    return cls(**{f.name: getattr(args, f.name) for f in _setting_fields(cls)}, **more)


def _cmd_domain_reference(args) -> int:
    from .domain_model import add_domain_reference
    ref = add_domain_reference(args.model, args.dataset, args.out, size=args.size, seed=args.seed,
                               overwrite=args.overwrite)
    print(f"domain reference of {ref['n_cells']} training images of {args.dataset} (cell threshold "
          f"{ref['cell_threshold']:.2f}) stored with {args.model} -> {args.out}")
    return 0


def _add_domain(sub) -> None:
    p = sub.add_parser("domain-reference", help="store the domain-shift reference in a model trained without one",
                       description="Compute what the model's training cells look like (colour descriptors of a "
                                   "seeded sample of DATASET/train.csv) and write a copy of MODEL with it, so "
                                   "`predict` can warn about cells outside the training domain. `train` stores "
                                   "it already; this is for older models. See docs/inference.md.")
    p.add_argument("model", help="model .nnp / .h5 (never changed)")
    p.add_argument("dataset", help="the NNC dataset folder the model was trained on (train.csv is read)")
    p.add_argument("out", help="model .nnp to write (the same parameters, with the reference)")
    p.add_argument("--size", type=int, default=None, help="input side in pixels (default: the model's size)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the image sample (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (never the model)")
    p.set_defaults(func=_cmd_domain_reference)


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    """The ``wbc-nnabla`` argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="wbc-nnabla",
        description="CNN white-blood-cell screening on nnabla (Sasaki et al., 2020).")
    parser.add_argument("--version", action="version", version=f"wbc-nnabla {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_io, _add_cells, _add_datasets, _add_training, _add_inference, _add_ensemble, _add_adaptation,
                _add_infomax, _add_finetune, _add_self_train,
                _add_domain, _add_scoring,
                _add_gradcam, _add_pipeline):
        add(sub)
    return parser


def help_markdown(width: int = 100) -> str:
    """The CLI reference (``docs/cli.md``): every sub-command's ``--help``, at a fixed width."""
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps help to the terminal width
    try:
        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parts = ["# Command-line reference", "",
                 "Generated from `wbc-nnabla --help` by `wbc_nnabla.cli.help_markdown()`; "
                 "a test checks that it matches the installed command.", "",
                 "```text", parser.format_help().rstrip(), "```", ""]
        for name, p in sub.choices.items():
            parts += [f"## wbc-nnabla {name}", "", "```text", p.format_help().rstrip(), "```", ""]
        return "\n".join(parts)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (WBCError, FileExistsError, FileNotFoundError) as e:
        print(f"wbc-nnabla {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an output that cannot be written: permissions, read-only or full file system
        print(f"wbc-nnabla {args.command}: error: {_os_error_text(e, args)}", file=sys.stderr)
        return 1


def _os_error_text(e: OSError, args) -> str:
    """``PATH: cause`` of an OSError, naming the output rather than its temporary (one line)."""
    from . import outputs
    names = [n for n in (e.filename, getattr(e, "filename2", None)) if n is not None]
    names = [os.fsdecode(n) if isinstance(n, (str, bytes)) else str(n) for n in names]
    meant = [outputs.output_of_temporary(n) for n in names]
    # os.replace(temporary, output) names both: the output is the one to report
    path = next((o for n, o in zip(names, meant) if str(o) != n), meant[-1] if meant else None)
    if path is None:
        path = next((getattr(args, k) for k in ("out", "out_dir", "onnx") if getattr(args, k, None)), "output")
    cause = e.strerror or str(e) or type(e).__name__
    return f"{path}: {cause}"


if __name__ == "__main__":
    sys.exit(main())
