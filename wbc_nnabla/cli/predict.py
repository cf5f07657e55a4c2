"""Commands of inference (section III): ``predict``, ``export`` (ONNX) and ``ensemble``."""
from __future__ import annotations

from pathlib import Path

from ..recipe import BACKEND_NAMES, PAPER, PRECISION_NAMES
from .common import CLIError, add_stain_arguments, command, stain_reference
from .sites import domain_line


def _expected_classes(spec: str):
    from .. import classes
    if spec in ("", "auto"):
        return None
    if spec.lower() == "six":
        return list(classes.CLASSES6)
    return [c.strip() for c in spec.split(",") if c.strip()]


def _cmd_predict(args) -> None:
    from .. import outputs, predictions, predictor
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
    engine = predictor.load_backend(args.model, args.backend, args.threads, args.precision, args.size,
                                    args.calibration, cells=args.cells)
    how = ("auto: nnabla on GPU, else the fastest measured" if args.backend == args.precision == "auto"
           else "as asked")
    print(f"backend: {engine.name} {engine.precision} ({how}); model {args.model} ({engine.meta.arch}"
          f"{' with GroupNorm' if engine.meta.norm == 'group' else ''}, "
          f"classes {', '.join(engine.class_names)}, trained at "
          f"{str(engine.meta.input_size) + ' px' if engine.meta.input_size else 'an unstored size'})")
    result = predictor.predict_run(engine, args.cells, size=args.size, batch_size=args.batch_size,
                                    expected_classes=_expected_classes(args.classes), progress=not args.no_progress,
                                    skip_bad=args.skip_bad, stain=args.stain,
                                    stain_reference=stain_reference(args.stain, args.stain_reference),
                                    prior=args.prior, tta=args.tta)
    df, run = result
    predictions.write_predictions(df, out, config=predictor.run_config(result, args.model, args.cells),
                                  overwrite=args.overwrite, inputs=inputs)
    rate = len(df) / run.seconds if run.seconds > 0 else float("nan")
    print(f"{len(df)} cells at {run.size} px in {run.seconds:.1f} s ({rate:.1f} cells/s) "
          f"-> {out} (+ {out.with_suffix('.json').name})")
    if run.int8:
        c = run.int8
        print(f"int8 ({c['chosen'].replace('_', ' ')} weights) checked on {c['calibration']}: accuracy "
              f"{c['int8_accuracy']:.4f} vs fp32 {c['fp32_accuracy']:.4f}, same class {100 * c['same_class']:.1f}%")
    for why in run.skipped:
        print(f"skipped: {why}")
    for smear, est in list((run.prior_estimated or {}).items())[:3]:
        print(f"estimated prior of smear {smear} ({est['cells']} cells): "
              + ", ".join(f"{c} {v:.3f}" for c, v in est["shares"].items()))
    print(domain_line(run.domain or {}))


def _cmd_export(args) -> None:
    from ..export import export_onnx, read_onnx_meta
    path = export_onnx(args.model, args.onnx, opset=args.opset, overwrite=args.overwrite)
    meta = read_onnx_meta(path)
    print(f"{args.model} -> {path} (ONNX opset {args.opset}, {meta.arch}"
          f"{' with GroupNorm' if meta.norm == 'group' else ''}, input x (N,3,H,W) RGB [0,1], "
          f"output y softmax over {', '.join(meta.class_names)}; trained at "
          f"{str(meta.input_size) + ' px' if meta.input_size else 'an unstored size'})")


def _add_inference(sub) -> None:
    p = command(sub, "predict", _cmd_predict, "predict cell classes with a trained model (predictions CSV)")
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
    add_stain_arguments(p, "(not with a model adapt made: adapt --stain instead)")
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
    p = command(sub, "export", _cmd_export, "export a model .nnp/.h5 to ONNX (for OpenCV / onnxruntime)")
    p.add_argument("model", help="model .nnp or .h5")
    p.add_argument("--onnx", required=True, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=13, help="ONNX opset (>= 13; default 13)")
    p.add_argument("--overwrite", action="store_true", help="replace the ONNX file if it exists (never the model)")


def _cmd_ensemble(args) -> None:
    """One predictions CSV from several models' predictions of the same cells: each cell's probabilities are
    averaged and the class of highest mean is its prediction. Predict every member with the same --prior. See
    docs/inference.md."""
    from ..ensemble import ensemble
    df = ensemble(args.members, args.out, overwrite=args.overwrite, match=args.match)
    print(f"{len(df)} cells, mean probabilities of {len(args.members)} models -> {args.out} "
          f"(+ {Path(args.out).with_suffix('.json').name})")


def _add_ensemble(sub) -> None:
    p = command(sub, "ensemble", _cmd_ensemble,
                "average several models' predictions CSVs of the same cells into one", describe=True)
    p.add_argument("members", nargs="+", metavar="PRED",
                   help="predictions CSVs of the same cells by different models (at least 2; never changed)")
    p.add_argument("out", metavar="OUT", help="the ensemble's predictions CSV (+ a .json listing the members)")
    p.add_argument("--match", choices=("path", "source"), default="path",
                   help="pair the members' rows by image file (default), or by the source cell each image was "
                        "made from (build-dataset's manifest): Model A on cells with the background removed "
                        "and Model B on the same cells as photographed; the first member's paths are kept")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and its .json) if it exists")


def register(sub) -> None:
    """Add ``predict``, ``export`` and ``ensemble`` to the sub-command parsers."""
    _add_inference(sub)
    _add_ensemble(sub)
