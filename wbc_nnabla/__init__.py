"""wbc_nnabla: CNN white-blood-cell screening on Sony's nnabla.

A reference implementation of Sasaki, Oda, Nozaka, Nakano, Fujioka and Takami,
"Artificial intelligence analysis with convolutional neural network for
peripheral blood smear screening in leukocyte classification" (Hirosaki
University, 2020). The study is a pipeline of stages joined by files::

    cell images -> NNC dataset CSVs -> model .nnp -> predictions CSV -> score tables, report

Stage modules: :mod:`~wbc_nnabla.fileio` (cell sources, images, NNC CSVs;
safe outputs in :mod:`~wbc_nnabla.outputs`), :mod:`~wbc_nnabla.segmentation`, :mod:`~wbc_nnabla.datasets`,
:mod:`~wbc_nnabla.models` / :mod:`~wbc_nnabla.training` (model file:
:mod:`~wbc_nnabla.modelfile`), :mod:`~wbc_nnabla.predictor` (predictions file:
:mod:`~wbc_nnabla.predictions`), :mod:`~wbc_nnabla.scoring`, :mod:`~wbc_nnabla.report`,
:mod:`~wbc_nnabla.gradcam`, :mod:`~wbc_nnabla.pipeline`; the settings in
:mod:`~wbc_nnabla.recipe`, the classes in :mod:`~wbc_nnabla.classes`, errors in
:mod:`~wbc_nnabla.errors`. See docs/architecture.md.
"""
__version__ = "0.1.0"

from .classes import CLASSES5, CLASSES6  # noqa: E402,F401
