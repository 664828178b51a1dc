"""Build src/minnorm/data/fashion_mnist_sample.npz: the first 1,000 Fashion-MNIST test images
(uint8) and labels, compressed, so the demo and the tests run without the dataset.

    python scripts/make_sample.py [--root /usr/share/datasets/fashion-mnist] [--count 1000]
"""
from __future__ import annotations

import argparse

import numpy as np

from minnorm.data import SAMPLE_PATH, fashion_mnist_root, read_idx
from minnorm.data.datasets import _idx_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=None, help="folder with the IDX files (default: $MINNORM_DATA or the Debian path)")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--out", default=str(SAMPLE_PATH))
    args = parser.parse_args()
    base = fashion_mnist_root(args.root)
    x = read_idx(_idx_file(base, "t10k-images"))[: args.count]
    y = read_idx(_idx_file(base, "t10k-labels"))[: args.count]
    assert x.dtype == np.uint8 and y.dtype == np.uint8
    np.savez_compressed(args.out, x=x, y=y)
    print(f"wrote {args.out}: x {x.shape} {x.dtype}, y {y.shape}, classes {np.bincount(y, minlength=10).tolist()}")


if __name__ == "__main__":
    main()
