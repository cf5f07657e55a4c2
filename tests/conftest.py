"""Shared fixtures: the read-only ../shared/data folder (skipped when absent), the demo data,
the tiny NNC dataset and trained model (built once per session, see helpers.py), the tiny demo run."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("WBC_SHARED_DATA", ROOT.parent / "shared" / "data"))

#: The test modules that take longest, longest first: ``make test`` (``-n auto --dist loadfile``, one
#: module per worker at a time, each worker taking the next module when it runs short) hands them out
#: in this order, so that the workers end together (a greedy schedule, longest first). The order comes
#: from ``--durations=0`` of a full run; the modules not listed follow in name order.
LONGEST_FIRST = ("test_pipeline.py", "test_training.py", "test_domain.py", "test_gradcam.py", "test_finetune.py",
                 "test_examples.py", "test_infomax.py", "test_hostile.py", "test_cross_site.py", "test_adaptation.py",
                 "test_export.py", "test_framing.py", "test_inference.py", "test_augmentation.py",
                 "test_selftraining.py", "test_settings.py", "test_scoring.py", "test_ensemble.py", "test_models.py",
                 "test_architecture.py", "test_datasets.py", "test_regression.py")


def pytest_configure(config):
    """Keep :data:`LONGEST_FIRST` under xdist: its default orders modules by their number of tests."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
    """The modules of :data:`LONGEST_FIRST` first, in its order; each module's tests keep theirs."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


def shared_path(name: str) -> Path:
    """``../shared/data/<name>``, or skip the test with a reason when it is absent."""
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"{p} not present (set WBC_SHARED_DATA to the shared data folder)")
    return p


@pytest.fixture
def pbc6() -> Path:
    return shared_path("pbc6")


@pytest.fixture
def zheng() -> Path:
    return shared_path("zheng2018-d1")


@pytest.fixture
def bccd() -> Path:
    return shared_path("bccd-fields")


@pytest.fixture
def demo_dir() -> Path:
    from wbc_nnabla import fileio
    return fileio.demo_data()


#: The tiny demo settings shared by the pipeline tests and the notebook (examples/demo.ipynb
#: uses the same values when WBC_TINY=1, so it resumes this run instead of training again).
TINY_DEMO = dict(epochs_a=1, epochs_b=1, train_size=40, infer_size=40, total_a=120, total_b=120)

#: The ``demo`` preset's split for the 120 full-size cells (``fileio.demo_data()``): 40 held out as 4
#: pseudo-smears of 10. The preset's own (5 x 24) is sized for the cells ``make demo`` trains on
#: (``fileio.demo_data("small")``, 100 per class), which ``pipeline.demo`` and the tiny demo run use.
FULL_SPLIT = dict(pseudo_smears=4, cells_per_smear=10)


@pytest.fixture(scope="session")
def tiny_demo_run(tmp_path_factory):
    """One end-to-end ``pipeline.demo`` run at tiny settings; returns (out folder, summary)."""
    from wbc_nnabla import pipeline
    out = tmp_path_factory.mktemp("demo") / "run"
    summary = pipeline.demo(out, progress=False, **TINY_DEMO)
    return out, summary


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """NNC dataset of demo cells, 2 train / 1 valid image per class (12 / 6): :func:`helpers.demo_nnc_dataset`."""
    from helpers import demo_nnc_dataset
    return demo_nnc_dataset(tmp_path_factory.mktemp("tiny"), 2, 1)


@pytest.fixture(scope="session")
def tiny_model(tiny_dataset, tmp_path_factory) -> Path:
    """Training folder of "some trained model": 2 tiny epochs on ``tiny_dataset`` (:func:`helpers.tiny_model`).

    ``model.nnp`` (ResNet-18, six classes, 32 px), ``model.h5``, ``config.json``,
    ``monitor/``, ... Shared by every test module: read it, never write into it.
    """
    pytest.importorskip("nnabla")
    from helpers import tiny_model
    return tiny_model(tiny_dataset, tmp_path_factory.mktemp("tiny_model") / "A")


@pytest.fixture(scope="session")
def tiny_gn_model(tiny_dataset, tmp_path_factory) -> Path:
    """Training folder of the same tiny run as ``tiny_model`` with GroupNorm (``--norm group``).

    ``model.nnp`` (ResNet-18 with GroupNorm, six classes, 32 px), ``model.h5``, ``config.json``...
    Read it, never write into it.
    """
    pytest.importorskip("nnabla")
    from helpers import tiny_model
    return tiny_model(tiny_dataset, tmp_path_factory.mktemp("tiny_gn_model") / "A", norm="group")


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    """``$WBC_NNABLA_CACHE`` in a temporary folder for a module's tests (``pytestmark =
    pytest.mark.usefixtures("onnx_cache")``): its ONNX conversions stay out of the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("WBC_NNABLA_CACHE", str(tmp_path_factory.mktemp("onnx-cache")))
    yield
    mp.undo()
