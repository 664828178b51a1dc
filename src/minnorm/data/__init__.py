"""Dataset readers (IDX, CIFAR python batches, .npz/.pt files) and the embedded Fashion-MNIST sample.

Datasets are ``(x, y)`` tensor pairs: x float32 ``[N, C, H, W]`` in [0, 1], y int64 ``[N]``.
"""
from .cifar import CIFAR10_CLASS_NAMES, RefusedPickle, RestrictedUnpickler, load_cifar10, read_cifar10_batch, restricted_load
from .datasets import (
    CLASS_NAMES,
    DEFAULT_FASHION_MNIST_ROOT,
    SAMPLE_PATH,
    batches,
    check_pair,
    fashion_mnist_root,
    load_fashion_mnist,
    load_sample,
    resolve_dataset,
    to_tensors,
)
from .idx import read_idx, write_idx

__all__ = [
    "CIFAR10_CLASS_NAMES", "CLASS_NAMES", "DEFAULT_FASHION_MNIST_ROOT", "SAMPLE_PATH", "RefusedPickle",
    "RestrictedUnpickler", "batches", "check_pair", "fashion_mnist_root", "load_cifar10", "load_fashion_mnist",
    "load_sample", "read_cifar10_batch", "read_idx", "resolve_dataset", "restricted_load", "to_tensors", "write_idx",
]
