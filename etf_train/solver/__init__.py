"""The nearest simplex ETF and its gradient: the node (node.py), the closed form and its backward (polar.py),
a Riemannian solver (riemannian.py), a Newton polar iteration that never synchronises with the host (newton.py)
and the dense declarative-node gradient used as a cross-check (ddn.py)."""

from .ddn import ddn_vjp
from .newton import polar_newton
from .node import BACKWARDS, METHODS, autocast_off, nearest_etf
from .polar import (
    centre,
    factors_from_solution,
    objective,
    polar_factors,
    polar_from_factors,
    polar_vjp,
    procrustes_target,
    tangent_project,
)
from .riemannian import SolveInfo, riemannian_trust_region

__all__ = [
    "BACKWARDS",
    "METHODS",
    "SolveInfo",
    "autocast_off",
    "centre",
    "ddn_vjp",
    "factors_from_solution",
    "nearest_etf",
    "objective",
    "polar_factors",
    "polar_from_factors",
    "polar_newton",
    "polar_vjp",
    "procrustes_target",
    "riemannian_trust_region",
    "tangent_project",
]
