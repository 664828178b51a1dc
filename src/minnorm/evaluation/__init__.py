"""Evaluation: running attacks over data, metrics, robustness measures, best-of ensembles, reports.

Attacks never import this package; it knows attacks only through the registry.
"""
from .results import Evaluation as Evaluation
from .run import evaluate as evaluate
