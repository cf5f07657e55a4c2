"""How far last-bit differences carry through the run of ``tests/test_regression.py``.

Another CPU (AVX2 against AVX-512 kernels) rounds some sums differently in the last bits. This
script stands in for one: it repeats the run with every parameter multiplied by ``1 + s * 2**-22``
(``s`` in {-1, 0, 1} at random: up to two units in the last place of float32) right after
initialisation and after every update, for several noise seeds, and records the largest change of
each group of numbers the golden file keeps (``test_regression.change``: relative to the stored value,
or to ``FLOOR`` below it) in the golden file's ``noise`` entry. The test's tolerance of a group is 10
times its largest change.

    .venv/bin/python tests/golden/measure_noise.py [RUNS]      # from the repository root; minutes
"""
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import test_regression as regression  # noqa: E402
from wbc_nnabla import training  # noqa: E402

STEP = 2.0 ** -22


class NoisySolver:
    """A solver that nudges every parameter it updates (and once at the start) by a relative ``STEP``."""

    def __init__(self, solver, rng):
        self._solver, self._rng = solver, rng
        self._nudge()

    def _nudge(self):
        for v in training.parameters().values():
            v.d = v.d * (1 + STEP * self._rng.randint(-1, 2, v.shape)).astype(np.float32)

    def update(self):
        self._solver.update()
        self._nudge()

    def __getattr__(self, name):
        return getattr(self._solver, name)


def run(root: Path, seed=None) -> dict:
    """The kept numbers of the run in ``root`` (nudged with noise ``seed``; None: as it is)."""
    real = training.make_solver
    if seed is not None:
        rng = np.random.RandomState(seed)
        training.make_solver = lambda cfg: NoisySolver(real(cfg), rng)
    try:
        return regression.flat(regression.numbers(*regression.tiny_run(root)))
    finally:
        training.make_solver = real


def main(runs: int = 4) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = run(Path(tmp) / "base")
        golden = json.loads(regression.GOLDEN.read_text())
        assert base == regression.flat(golden), "the golden file is not this run's: regenerate it first"
        worst = {}
        for seed in range(runs):
            for k, v in run(Path(tmp) / f"noise{seed}", seed).items():
                worst[k] = max(worst.get(k, 0.0), regression.change(v, base[k]))
    groups = sorted({g for g, _ in worst})
    top = sorted(worst.items(), key=lambda kv: -kv[1])
    golden["noise"] = dict(runs=runs, relative_step=STEP, floor=regression.FLOOR,
                           max_change={g: max(v for (h, _), v in worst.items() if h == g) for g in groups},
                           largest={"/".join(k): v for k, v in top[:5]}, how=__doc__.split("\n\n")[1].replace("\n", " "))
    regression.GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
    for g, v in golden["noise"]["max_change"].items():
        print(f"{g:14s} largest change {v:.3g}: rtol 10x = {10 * v:.3g}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 4)
