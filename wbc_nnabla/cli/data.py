"""Commands of the first stages: the taxonomy, cell sources, WBC masks and centres, datasets (section II.3)."""
from __future__ import annotations

from pathlib import Path

from ..recipe import PAPER
from .common import CLIError, command, seed


def _cmd_classes(args) -> None:
    from .. import classes
    print("six classes (Table 1 order):", ", ".join(f"{i} {c}" for i, c in enumerate(classes.CLASSES6)))
    print("five classes:", ", ".join(classes.CLASSES5))
    for cat in classes.TAXONOMY:
        print(f"  {cat.name:12s} -> {str(cat.class6):10s} / {cat.class5:10s}  synonyms: {', '.join(cat.synonyms)}")


def _cmd_cells(args) -> None:
    from .. import fileio
    df = fileio.read_cells(args.source, dedupe_flag=None)
    print(f"{len(df)} cells from {args.source}")
    print(df["label"].replace("", "(unlabeled)").value_counts().sort_index().to_string())
    copies = fileio.copy_groups(df)
    if copies:
        print(f"{sum(len(g) - 1 for g in copies)} file(s) are byte-identical copies of another listed file "
              f"(build-dataset and finetune refuse them; drop the copies or keep each on one side of a split):")
        for rows in copies:
            print("  " + " = ".join(f"{df['source'].iat[i]} ({df['label'].iat[i] or 'unlabeled'})" for i in rows))


def _add_io(sub) -> None:
    p = command(sub, "classes", _cmd_classes, "list the class taxonomy (names, synonyms, five-class view)")
    p = command(sub, "cells", _cmd_cells,
                "read a labeled cell source and print its class counts and any byte-identical copies")
    p.add_argument("source", help="class folder tree, path,label CSV or NNC dataset CSV/folder")


def _cmd_segment(args) -> None:
    from .. import segmentation
    s = segmentation.segment_images(args.inputs, args.out, gallery=args.gallery, overwrite=args.overwrite)
    msg = f"{s['images']} masks (0 outside, 255 WBC) in {s['out']}; {s['empty']} without a nucleus (empty mask)"
    if s["gallery"] is not None:
        msg += f"; overlay of {s['gallery_images']} (a seeded sample) in {s['gallery']}"
    print(msg)


def _cmd_locate(args) -> None:
    from .. import segmentation
    table = segmentation.locate_images(args.inputs, args.out, overwrite=args.overwrite)
    print(f"{len(table)} WBC centres in {table.attrs['images']} fields -> {Path(args.out)}")


def _add_cells(sub) -> None:
    p = command(sub, "segment", _cmd_segment, "WBC masks (background removal, dataset 1 of section II.3)")
    p.add_argument("inputs", nargs="+", metavar="IMAGES_OR_FOLDERS",
                   help="single-cell crops, or folders searched recursively")
    p.add_argument("--out", required=True, help="output folder: one mask PNG per image (same stem)")
    p.add_argument("--gallery", type=int, default=48, metavar="N",
                   help="overlay N cells, a seeded sample across sub-folders, in OUT/gallery.png (default 48, 0 = none)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it is an earlier segment output (never another folder)")
    p = command(sub, "locate", _cmd_locate, "WBC centres in smear field images")
    p.add_argument("inputs", nargs="+", metavar="FIELDS_OR_FOLDERS",
                   help="field images, or folders searched recursively")
    p.add_argument("--out", required=True, help="CSV with one image,x,y row per located WBC (pixels)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _cmd_build_dataset(args) -> None:
    """Section II.3 of Sasaki et al. (2020): crop around each WBC, remove or keep the background, balance the six
    classes with the 8 dihedral variants, split per source cell (and smear) into train/valid, write an NNC
    dataset folder. See docs/datasets.md."""
    import time

    from .. import datasets
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


def _add_datasets(sub) -> None:
    p = command(sub, "build-dataset", _cmd_build_dataset,
                "build teacher dataset ①/② or the inference set (crop, background, dihedral balancing, split)",
                describe=True)
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
    p.add_argument("--seed", type=seed, default=0, help="seed of the split and variant choice (default 0)")
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


def register(sub) -> None:
    """Add ``classes``, ``cells``, ``segment``, ``locate`` and ``build-dataset`` to the sub-command parsers."""
    _add_io(sub)
    _add_cells(sub)
    _add_datasets(sub)
