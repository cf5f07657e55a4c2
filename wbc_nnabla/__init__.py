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
__version__ = "0.2.0"

import importlib  # noqa: E402
import importlib.abc  # noqa: E402
import importlib.util  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402

from .classes import CLASSES5, CLASSES6  # noqa: E402,F401

#: Modules that moved into the cross-lab wing in 0.2.0: ``from wbc_nnabla import adaptation`` still works
#: (with a DeprecationWarning) and gives ``wbc_nnabla.sites.adaptation``.
MOVED_TO_SITES = {"adaptation": "adaptation", "finetune": "finetune", "selftraining": "selftraining",
                  "domain": "domain", "domain_model": "reference", "framing": "framing", "stain": "stain"}


def _moved(name: str):
    """The wing's module that ``wbc_nnabla.<name>`` became (with a DeprecationWarning)."""
    new = f"{__name__}.sites.{MOVED_TO_SITES[name]}"
    warnings.warn(f"wbc_nnabla.{name} moved to {new}", DeprecationWarning, stacklevel=3)
    return importlib.import_module(new)


def __getattr__(name: str):
    # PEP 562: called only for names the package does not define (``from wbc_nnabla import adaptation``)
    if name in MOVED_TO_SITES:
        return _moved(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import wbc_nnabla.adaptation`` / ``from wbc_nnabla.finetune import X``: the moved module itself."""

    def find_spec(self, fullname, path=None, target=None):
        package, _, name = fullname.rpartition(".")
        return importlib.util.spec_from_loader(fullname, self) if package == __name__ and name in MOVED_TO_SITES \
            else None

    def create_module(self, spec):
        module = _moved(spec.name.rpartition(".")[2])
        self.specs = getattr(self, "specs", {})
        self.specs[spec.name] = (module.__spec__, module.__loader__)
        return module

    def exec_module(self, module):
        # the wing's module is already executed; the import system gave it the old name's spec: undo that
        module.__spec__, module.__loader__ = self.specs.pop(module.__spec__.name)


sys.meta_path.append(_MovedModules())
