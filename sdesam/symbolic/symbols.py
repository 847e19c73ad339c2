"""The two small parameters of the SDE expansion (and RW-SAM's temperature), shared by every
derivation, and the names they reserve."""

import sympy

rho = sympy.Symbol("rho", nonnegative=True)
"""Perturbation radius of the ascent step."""

eta = sympy.Symbol("eta", positive=True)
"""Learning rate; also the time step of the SDE (step k of the algorithm is time k * eta)."""

lam = sympy.Symbol("lambda", nonnegative=True)
"""Inverse temperature of RW-SAM's Gibbs weights (the default when no number is given)."""

RESERVED: tuple[sympy.Symbol, ...] = (rho, eta, lam)
"""The package's own symbols, which results print by name."""

RESERVED_NAMES: frozenset[str] = frozenset(symbol.name for symbol in RESERVED)
"""Names a user's loss, variable or temperature may not use: a user's ``Symbol("rho")`` is not
the package's (which carries assumptions), yet both would print as ``rho`` in one result."""
