"""Stand-in for torchvision so peer libraries import; see benchmarks/stubs/README.md."""
from . import models

__version__ = "0.0.0+minnorm-stub"
__all__ = ["models"]
