"""Evaluation: running attacks over data, metrics, robustness measures, best-of ensembles, reports.

Attacks never import this package; it knows attacks only through the registry.
"""
from .norms import evaluate_norms as evaluate_norms
from .results import Evaluation as Evaluation
from .robustness import *  # noqa: F401,F403  (Table I measures of Balda et al.; names in its __all__)
from .run import evaluate as evaluate
