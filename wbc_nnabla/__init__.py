"""wbc_nnabla: CNN white-blood-cell screening on Sony's nnabla.

A reference implementation of Sasaki, Oda, Nozaka, Nakano, Fujioka and Takami,
"Artificial intelligence analysis with convolutional neural network for
peripheral blood smear screening in leukocyte classification" (Hirosaki
University, 2020). The study is a pipeline of stages joined by files::

    cell images -> NNC dataset CSVs -> model .nnp -> predictions CSV -> score tables, report

The paper's library: :mod:`~wbc_nnabla.fileio` (cell sources, images, NNC CSVs; safe outputs in
:mod:`~wbc_nnabla.outputs`), :mod:`~wbc_nnabla.segmentation`, :mod:`~wbc_nnabla.datasets`,
:mod:`~wbc_nnabla.models`, :mod:`~wbc_nnabla.engine` / :mod:`~wbc_nnabla.training` (model file:
:mod:`~wbc_nnabla.modelfile`), :mod:`~wbc_nnabla.predictor` (predictions file:
:mod:`~wbc_nnabla.predictions`), :mod:`~wbc_nnabla.scoring`, :mod:`~wbc_nnabla.report`,
:mod:`~wbc_nnabla.gradcam`, :mod:`~wbc_nnabla.pipeline`; the settings in :mod:`~wbc_nnabla.recipe`
(declared with :mod:`~wbc_nnabla.settings`), the classes in :mod:`~wbc_nnabla.classes`, errors in
:mod:`~wbc_nnabla.errors`. The cross-lab wing (other labs' cells): :mod:`wbc_nnabla.sites`.
See docs/architecture.md.
"""
__version__ = "0.1.0"

import importlib  # noqa: E402
import warnings  # noqa: E402

from .classes import CLASSES5, CLASSES6  # noqa: E402,F401

#: Modules that moved into the cross-lab wing in 0.2.0: ``from wbc_nnabla import adaptation`` still works
#: (with a DeprecationWarning) and gives ``wbc_nnabla.sites.adaptation``.
MOVED_TO_SITES = {"adaptation": "adaptation", "finetune": "finetune", "selftraining": "selftraining",
                  "domain": "domain", "domain_model": "reference", "framing": "framing", "stain": "stain"}


def __getattr__(name: str):
    # PEP 562: called only for names the package does not define
    if name in MOVED_TO_SITES:
        new = f"{__name__}.sites.{MOVED_TO_SITES[name]}"
        warnings.warn(f"wbc_nnabla.{name} moved to {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
