"""Commands of scoring (section III, Table 1, Fig. 9) and Grad-CAM (the paper's discussion):
``score``, ``compare``, ``gradcam``."""
from __future__ import annotations

from pathlib import Path

from .common import command, cutoff, fraction, p_text


def _cmd_score(args) -> None:
    from .. import report, scoring
    from .review import reviewed_agreement
    result = scoring.score(args.predictions, pending_threshold=args.pending_threshold,
                           pending_margin=args.pending_margin, target_accuracy=args.target_accuracy)
    reviewed = reviewed_agreement(result, args.reviewed)
    out = report.write_score(result, args.out_dir, figures=not args.no_figures,
                             gallery=not args.no_gallery, overwrite=args.overwrite,
                             extra_sections=reviewed.sections() if reviewed else (),
                             extra_files=reviewed.files() if reviewed else None)
    if reviewed:
        from ..review.commands import agreement_lines
        print(agreement_lines(reviewed))
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


def _cmd_compare(args) -> None:
    from .. import report, scoring
    a, b = (scoring.score(p, pending_threshold=args.pending_threshold, pending_margin=args.pending_margin)
            for p in (args.pred_a, args.pred_b))
    result = scoring.compare(a, b, name_a=args.name_a, name_b=args.name_b)
    out = report.write_compare(result, args.out_dir, figures=not args.no_figures, overwrite=args.overwrite)
    s = result.summary
    for v in ("5", "6"):
        notes = [s[f"p_{k}{v}_note"] for k in scoring.TESTS if f"p_{k}{v}_note" in s]
        print(f"{v} classes: {args.name_a} {s['accuracy' + v + '_mean_a']:.3f}, {args.name_b} "
              f"{s['accuracy' + v + '_mean_b']:.3f}, mean diff {s['mean_diff' + v]:+.3f}, rank-sum p "
              f"{p_text(s['p_ranksum' + v])}, signed-rank p {p_text(s['p_signedrank' + v])}"
              + (f" ({'; '.join(notes)})" if notes else ""))
    shown = "report.html, " if not args.no_figures else ""
    print(f"wrote {out}/ ({shown}comparison.json, per_smear_pairs.csv, recall_change.csv)")


def _add_pending_flags(p, model_cutoff: bool = False) -> None:
    """The judgement-pending flags; ``model_cutoff``: ``--pending-threshold`` also takes ``model`` (score)."""
    text = "hold cells whose top probability is below T for a human ('judgement pending')"
    if model_cutoff:
        text += ("; 'model': the cut-off set on the model's own validation cells for --target-accuracy "
                 "(default 0.99; five classes; docs/scoring.md)")
    p.add_argument("--pending-threshold", type=cutoff if model_cutoff else fraction, metavar="T", help=text)
    p.add_argument("--pending-margin", type=fraction, metavar="M",
                   help="also hold Band/Segment and Lymph/Mono calls whose pair probabilities differ by less than M")
    p.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--no-figures", action="store_true", help="write tables and JSON only (no figures, no report)")


def _add_scoring(sub) -> None:
    p = command(sub, "score", _cmd_score,
                "per-smear accuracy, Table 1, differential and pending cells of a predictions CSV")
    p.add_argument("predictions", help="predictions CSV (path, smear, label, pred6, pred5, prob_*)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created; see docs/scoring.md)")
    _add_pending_flags(p, model_cutoff=True)
    p.add_argument("--target-accuracy", type=fraction, metavar="A",
                   help="report the lowest top-probability cut-off whose kept labeled cells reach accuracy A")
    p.add_argument("--no-gallery", action="store_true", help="skip the image gallery of disagreeing cells")
    p.add_argument("--reviewed", metavar="REVIEW", default=None,
                   help="also report AI-vs-reviewer agreement against a review database (wbc-nnabla review) or a "
                        "labels CSV (review-export): per class, overall, the reviewed differential and what became "
                        "of the pending cells (docs/review.md)")
    p = command(sub, "compare", _cmd_compare,
                "compare two models' per-smear accuracies on the same smears (Wilcoxon, Fig. 9)")
    p.add_argument("pred_a", metavar="PRED_A", help="predictions CSV of the first model")
    p.add_argument("pred_b", metavar="PRED_B", help="predictions CSV of the second model (same cells)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder (created)")
    p.add_argument("--name-a", default="Model A", help="label of the first model (default: Model A)")
    p.add_argument("--name-b", default="Model B", help="label of the second model (default: Model B)")
    _add_pending_flags(p)


def _cmd_gradcam(args) -> None:
    from .. import gradcam
    table = gradcam.write_gradcam(args.model, args.images, args.out, class_name=args.class_name,
                                  size=args.size, batch_size=args.batch_size, alpha=args.alpha,
                                  overwrite=args.overwrite, progress=not args.quiet)
    size = table.attrs["size"]
    print(f"Grad-CAM of {len(table)} image(s) at {size}x{size} -> {Path(args.out)} "
          f"(gradcam.csv, *_gradcam.png, *_cam.npy)")


def _add_gradcam(sub) -> None:
    p = command(sub, "gradcam", _cmd_gradcam, "Grad-CAM heat maps: where the CNN looks (paper's discussion)")
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


def register(sub) -> None:
    """Add ``score``, ``compare`` and ``gradcam`` to the sub-command parsers."""
    _add_scoring(sub)
    _add_gradcam(sub)
