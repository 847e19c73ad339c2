"""The two small parameters of the SDE expansion (and RW-SAM's temperature), shared by every derivation."""

import sympy

rho = sympy.Symbol("rho", nonnegative=True)
"""Perturbation radius of the ascent step."""

eta = sympy.Symbol("eta", positive=True)
"""Learning rate; also the time step of the SDE (step k of the algorithm is time k * eta)."""

lam = sympy.Symbol("lambda", nonnegative=True)
"""Inverse temperature of RW-SAM's Gibbs weights (the default when no number is given)."""
