"""The other side of the bracket: exact minimal perturbations and certified lower bounds.

``certified lower bound <= true minimal norm <= best attack norm``, per sample:

- :func:`lower_bound`: linear bound propagation (CROWN-style relaxations) over lp balls
  intersected with the input box, and a certified radius per sample.
- :func:`exact`: the minimal perturbation of a piecewise-linear network as a MILP (Linf, L1,
  HiGHS) or MIQP (L2, SCIP), with every witness re-checked by the model itself.

See docs/certify.md.
"""
from .api import CertifyResult, check_time_limit, default_attack, exact, lower_bound, verify_witness
from .bounds import certified_radius, concretize, propagate
from .graph import Graph, build_graph

__all__ = ["CertifyResult", "check_time_limit", "default_attack", "Graph", "build_graph", "certified_radius",
           "concretize", "exact", "lower_bound", "propagate", "verify_witness"]
