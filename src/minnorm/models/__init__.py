"""Reference architectures, Normalize, safe weight loading, and the shipped weights."""
from .architectures import (
    ACTIVATIONS,
    ARCHITECTURES,
    MLP,
    Normalize,
    ResNetSmall,
    SmallCNN,
    build_model,
    make_activation,
    normalized,
)
from .weights import WEIGHTS_DIR, load_shipped, load_state, load_weights, save_weights, shipped_info, shipped_names

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "MLP", "WEIGHTS_DIR", "Normalize", "ResNetSmall", "SmallCNN", "build_model",
    "load_shipped", "load_state", "load_weights", "make_activation", "normalized", "save_weights", "shipped_info",
    "shipped_names",
]
