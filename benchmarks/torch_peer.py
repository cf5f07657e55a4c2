"""PyTorch eager on the weights of a wbc_nnabla model: the reference peer of bench_inference.py.

Not part of the package, and not run under the project's Python: nnabla needs Python <= 3.10 and the
PyTorch wheel on this disk is for 3.11, so bench_inference.py runs this script in a subprocess of an
interpreter that has ``torch`` and ``numpy`` (``--torch-python``; see its docstring). The network is
built here from what the parent wrote, so nothing of wbc_nnabla is imported:

* ``spec.json``: the ResNet wiring of :func:`wbc_nnabla.models.stages` (each convolution's parameter
  scopes, kernel and stride; projection shortcuts), BatchNorm's epsilon and the norm (``batch`` only);
* ``params.npz``: the model's parameters by their nnabla names (``conv1/conv/W``, ``bn1/bn/mean``...,
  ``preprocess/scale``/``bias``, ``fc/affine/W`` ``(512, C)``).

The graph is what a PyTorch user would run: ``F.conv2d`` then ``F.batch_norm`` in eval mode (BatchNorm
not folded), ReLU, max pool, residual adds, global average pool, linear, softmax, in
``torch.inference_mode``. Prints one JSON object: images/s (best and median of ``--repeats`` timed runs
after a warm-up) per thread count, and writes the probabilities of ``--inputs`` to ``--probs``.

    python3 torch_peer.py SPEC PARAMS --inputs X.npy --probs P.npy --threads 1 2 --repeats 5
"""
import argparse
import json
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F


class Peer:
    """The ResNet of ``spec`` on ``params`` (float32 tensors), forward only."""

    def __init__(self, spec: dict, params: dict):
        if spec.get("norm", "batch") != "batch":
            raise SystemExit(f"torch_peer: only BatchNorm networks, not norm={spec['norm']!r}")
        self.spec = spec
        self.p = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in params.items()}

    def conv_bn(self, x, c: dict, relu: bool):
        k = c["kernel"]
        x = F.conv2d(x, self.p[f"{c['conv']}/conv/W"], stride=c["stride"], padding=k // 2)
        bn = c["bn"] + "/bn/"
        x = F.batch_norm(x, self.p[bn + "mean"].reshape(-1), self.p[bn + "var"].reshape(-1),
                         self.p[bn + "gamma"].reshape(-1), self.p[bn + "beta"].reshape(-1), training=False,
                         eps=self.spec["bn_eps"])
        return F.relu(x) if relu else x

    def __call__(self, x):
        x = x * self.p["preprocess/scale"] + self.p["preprocess/bias"]
        x = self.conv_bn(x, self.spec["stem"], True)
        x = F.max_pool2d(x, 3, 2, 1)
        for block in self.spec["blocks"]:
            h = x
            for i, c in enumerate(block["convs"]):
                h = self.conv_bn(h, c, i < len(block["convs"]) - 1)
            short = self.conv_bn(x, block["projection"], False) if block["projection"] else x
            x = F.relu(h + short)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.softmax(x @ self.p["fc/affine/W"] + self.p["fc/affine/b"], dim=1)


def timed(net: Peer, x, repeats: int) -> dict:
    """images/s of ``net(x)`` over ``repeats`` runs after one warm-up."""
    net(x)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        net(x)
        rates.append(len(x) / (time.perf_counter() - t0))
    return dict(best=max(rates), median=statistics.median(rates))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("spec")
    ap.add_argument("params")
    ap.add_argument("--inputs", required=True, help=".npy float32 (N, 3, S, S) in [0, 1]: probabilities of these")
    ap.add_argument("--probs", required=True, help=".npy to write the probabilities (N, C) to")
    ap.add_argument("--speed", help=".npy float32 batch to time (default: --inputs)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    with open(args.spec) as f:
        spec = json.load(f)
    net = Peer(spec, dict(np.load(args.params)))
    out = dict(torch=torch.__version__, python=sys.version.split()[0], speed={})
    with torch.inference_mode():
        np.save(args.probs, np.concatenate([net(torch.from_numpy(b)).numpy()
                                            for b in np.array_split(np.load(args.inputs), 8) if len(b)]))
        x = torch.from_numpy(np.load(args.speed or args.inputs))
        for n in args.threads:
            torch.set_num_threads(n)
            out["speed"][n] = dict(timed(net, x, args.repeats), shape=list(x.shape))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
