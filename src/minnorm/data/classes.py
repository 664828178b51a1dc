"""Class names of the data sets minnorm knows, looked up from a run's data description.

Reports print ``3 Dress`` instead of ``3`` when the data set is known: the embedded sample and
Fashion-MNIST (Xiao et al., 2017) and CIFAR-10 (Krizhevsky, 2009). Anything else (a path, a
tensor pair passed from Python) has no names unless the run's data description carries a
``class_names`` list.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from .cifar import CIFAR10_CLASS_NAMES
from .datasets import CLASS_NAMES as FASHION_MNIST_CLASS_NAMES

__all__ = ["CIFAR10_CLASS_NAMES", "FASHION_MNIST_CLASS_NAMES", "class_label", "class_names"]

_BY_NAME = {"sample": FASHION_MNIST_CLASS_NAMES, "fashion-mnist": FASHION_MNIST_CLASS_NAMES,
            "fashionmnist": FASHION_MNIST_CLASS_NAMES, "cifar10": CIFAR10_CLASS_NAMES,
            "cifar-10": CIFAR10_CLASS_NAMES}


def class_names(data: str | Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The class names of a data set: ``data`` is its name as ``--data`` takes it (``sample``,
    ``fashion-mnist:train``, ``cifar10``) or a run's ``config["data"]`` (its ``class_names``
    win, else its ``name``). ``None`` when unknown."""
    if isinstance(data, Mapping):
        given = data.get("class_names")
        if isinstance(given, Sequence) and not isinstance(given, str) and given:
            return tuple(str(n) for n in given)
        data = data.get("name")
    if not isinstance(data, str):
        return None
    base = data.partition(":")[0].strip().lower().replace("_", "-")
    return _BY_NAME.get(base)


def class_label(k: int, names: Sequence[str] | None, short: bool = False) -> str:
    """``"3 Dress"`` (``"Dress"`` when ``short``), or ``"3"`` without names or out of their range."""
    k = int(k)
    if names is None or not 0 <= k < len(names):
        return str(k)
    return names[k] if short else f"{k} {names[k]}"
