"""Built-in concrete loss families for demos, the CLI and the derivation scripts."""

from __future__ import annotations

import sympy

from sdesam.validation import InputError


def example_losses(dim: int = 2) -> tuple[list[sympy.Expr], list[sympy.Symbol]]:
    """Four non-quadratic per-sample losses whose gradient noise depends on x.

    2-D: ``f_i(x, y) = (x - a_i)^2/2 + (y - b_i x)^2/2 + x^4/12``; 1-D:
    ``f_i(x) = (x - a_i)^2/2 + b_i x^3/3 + x^4/12``. With ``b_i`` differing across samples,
    tr V changes with x, so the tr V term of the drift is not a constant.
    """
    a = [1, -1, 2, 0]
    b = [1, 2, -1, sympy.Rational(1, 2)]
    if dim == 1:
        x = sympy.Symbol("x", real=True)
        return [(x - ai) ** 2 / 2 + bi * x**3 / 3 + x**4 / 12 for ai, bi in zip(a, b)], [x]
    if dim == 2:
        x, y = sympy.symbols("x y", real=True)
        return [(x - ai) ** 2 / 2 + (y - bi * x) ** 2 / 2 + x**4 / 12 for ai, bi in zip(a, b)], [x, y]
    raise InputError(f"dim must be 1 or 2; got {dim!r}")
