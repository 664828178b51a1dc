"""minnorm: small adversarial perturbations, found fast, turned into honest robustness numbers."""
from . import attacks, core
from .core import AttackResult
from .evaluation import evaluate, evaluate_norms

__version__ = "0.1.0"
__all__ = ["AttackResult", "attacks", "core", "evaluate", "evaluate_norms", "__version__"]
