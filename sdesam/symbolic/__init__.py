"""Symbolic derivation of the two-parameter (eta, rho) SDEs of the SAM family.

    >>> from sdesam.symbolic import derive, rho, eta
    >>> d = derive("m-usam", losses, [x, y], batch=4, micro=2, sampling="without-replacement")
    >>> d.drift, d.diffusion, d.closed_form, d.formula, d.verify(), d.latex()

What the paper describes, and this module derives: for the unnormalised rules the drift is the
negative gradient of ``f + rho/2 |grad f|^2 + c rho/2 tr V`` -- c = 0 for n-USAM, c(B) for
mini-batch USAM, c(m) for m-USAM (1/m with replacement, (N-m)/(m(N-1)) without) -- so the
SGN-variance regulariser grows as m shrinks. The normalised rules (n-SAM, SAM, m-SAM) follow
the same pattern, ``-grad(f + rho E|grad f_S|)`` with S of size N (n-SAM: |grad f|), B or m,
which has no closed form; ``derive`` returns their drift for concrete losses and
:meth:`Derivation.verify` checks it against that pattern. At rho = 0 every rule's diffusion is
SGD's ``c(B) V``, for every m. RW-SAM (``lam=``) and user rules with an elementwise ``scale``
derive on concrete losses (scaled unnormalised rules on generic losses too) and verify against
``-grad f - rho E_S[H_S u_S]``; so do RW-SAM's readings with weights on the descent gradient or
on the response to the perturbation, and with a drawn perturbation (see
:func:`sdesam.symbolic.references.first_order_form`).
"""

from .derivation import EXPECTATIONS, GENERIC, Derivation, derive, matrices_equal, supports
from .examples import example_losses
from .step import enumerated_moments, one_step_map
from .symbols import eta, lam, rho

__all__ = ["derive", "Derivation", "rho", "eta", "lam", "GENERIC", "EXPECTATIONS",
           "supports", "example_losses", "one_step_map", "enumerated_moments",
           "matrices_equal"]
