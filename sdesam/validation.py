"""Argument checks shared by every layer: one wording for every error, raised before any work.

Each check returns the (normalised) value it accepts and raises :class:`InputError` -- a
``ValueError``, so callers that catch ``ValueError`` keep working -- with a message that names
the argument and says what is accepted. The command line turns an ``InputError`` into a one-line
message and exit status 2 (see :mod:`sdesam.cli`).

Which error, everywhere in ``sdesam``:

- :class:`InputError`: an argument, setting or input file the caller can correct -- a wrong
  value, type, shape or combination, a rule a layer does not implement, a missing file --
  refused before any work is done;
- plain ``ValueError``: a request the object or data at hand cannot answer, found while working
  (a ``loss_fn`` that does not return per-sample losses, a derivation with no reference to
  verify against, a step that is not affine), or an inconsistency in the package's own
  declarations; ``RuntimeError``: a call out of order (``second_step`` before ``first_step``);
  ``TypeError``: an internal function handed the wrong kind of object by package code.

An integer that must be positive is checked by :func:`positive_int`, a seed by :func:`seed`
(never inline).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class InputError(ValueError):
    """A bad argument or input file, detected before any work was done."""


def positive_int(name: str, value: Any) -> int:
    """``value`` if it is an integer >= 1 (booleans refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InputError(f"{name} must be a positive integer; got {value!r}")
    return value


def int_at_least(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an integer >= ``minimum`` (booleans refused)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


SEED_LIMIT = 2**64
"""Seeds are integers in ``[0, SEED_LIMIT)``: what numpy's and torch's generators both accept."""


def seed(name: str, value: Any) -> int:
    """``value`` if it is a seed: an integer in ``[0, 2^64)`` (booleans refused). Every layer that
    takes a seed from a user checks it here, so a negative one is refused before any work rather
    than deep in a task by numpy."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < SEED_LIMIT:
        raise InputError(f"{name} must be an integer in [0, 2**64) (a seed); got {value!r}")
    return value


def _real(value: Any) -> float | None:
    """``value`` as a finite float, or None when it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def positive_number(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number > 0."""
    real = _real(value)
    if real is None or not real > 0:
        raise InputError(f"{name} must be a positive number (finite, > 0); got {value!r}")
    return real


def non_negative_number(name: str, value: Any) -> float:
    """``value`` as a float if it is a finite number >= 0."""
    real = _real(value)
    if real is None or not real >= 0:
        raise InputError(f"{name} must be a non-negative number (finite, >= 0); got {value!r}")
    return real


def fraction(name: str, value: Any, *, inclusive_high: bool = False) -> float:
    """``value`` as a float in [0, 1) (or [0, 1] with ``inclusive_high``)."""
    real = _real(value)
    ok = real is not None and real >= 0 and (real <= 1 if inclusive_high else real < 1)
    if not ok:
        interval = "[0, 1]" if inclusive_high else "[0, 1)"
        raise InputError(f"{name} must be a number in {interval}; got {value!r}")
    return real


def non_negative_or_symbol(name: str, value: Any) -> Any:
    """``value`` if it is a finite number >= 0 or a sympy expression with symbols (compared
    symbolically: kept); NaN and infinities, float or sympy, are refused."""
    if getattr(value, "free_symbols", None):
        return value
    try:
        number = None if isinstance(value, (str, bytes, bool)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise InputError(f"{name} must be a finite number >= 0 or a sympy symbol; got {value!r}")
    return value


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def finite_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """``value`` if every entry is finite (no NaN or infinity)."""
    if not bool(torch.isfinite(value).all()):
        bad = int((~torch.isfinite(value)).sum())
        raise InputError(f"{name} must be finite; got {bad} non-finite entries of {value.numel()}")
    return value


def device(name: str, value: str) -> str:
    """``value`` if it names a usable torch device (a CUDA device only when CUDA is available)."""
    try:
        parsed = torch.device(value)
    except (RuntimeError, TypeError):
        raise InputError(f"{name} must be a torch device such as cpu or cuda; got {value!r}")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{name} {value!r} requested but CUDA is not available")
    return value


NON_SMOOTH_FUNCTIONS: tuple[str, ...] = ("Abs", "sign", "Piecewise", "Heaviside", "DiracDelta",
                                         "Min", "Max", "floor", "ceiling", "frac", "Mod")
"""sympy functions a smooth loss may not contain (nor its gradient: DiracDelta from Heaviside)."""


def sympy_variables(name: str, value: Any) -> list:
    """``value`` as a list of distinct sympy Symbols (at least one)."""
    import sympy

    variables = [value] if isinstance(value, sympy.Symbol) else list(value or ())
    if not variables or not all(isinstance(v, sympy.Symbol) for v in variables):
        raise InputError(f"{name} must be a non-empty list of sympy Symbols; got {value!r}")
    if len(set(variables)) != len(variables):
        raise InputError(f"{name} must be distinct symbols; got {variables!r}")
    return variables


def no_reserved_names(name: str, value: Any, reserved: Iterable[str]) -> None:
    """Refuse a sympy expression (or list of them) that uses a symbol whose name is
    ``reserved``: a user's ``Symbol("rho")`` is another symbol than the package's, yet both
    print as ``rho``, so a result using both would read as one."""
    import sympy

    items = value if isinstance(value, (list, tuple)) else [value]
    used = set().union(*(sympy.sympify(item).free_symbols for item in items))
    clash = sorted({str(s) for s in used} & set(reserved))
    if clash:
        raise InputError(f"{name} uses the reserved symbol name(s) {', '.join(clash)} (the "
                         f"package's own symbols {', '.join(sorted(reserved))}); rename them")


def smooth_losses(name: str, value: Any, variables: list, reserved: Iterable[str] = ()) -> list:
    """``value`` as a list of sympy expressions, smooth in ``variables`` (no Abs, sign,
    Piecewise, Heaviside, Min/Max, floor... in a loss or its gradient), using no symbol named
    as one of ``reserved``, in which every variable occurs (a variable absent from every loss
    would get a zero drift and verify vacuously)."""
    import sympy

    try:
        losses = [sympy.sympify(loss) for loss in value]
    except (TypeError, sympy.SympifyError):
        raise InputError(f"{name} must be a list of sympy expressions; got {value!r}") from None
    if not losses:
        raise InputError(f"{name} must contain at least one per-sample loss")
    kinds = tuple(getattr(sympy, kind) for kind in NON_SMOOTH_FUNCTIONS)
    for i, loss in enumerate(losses):
        no_reserved_names(f"{name}[{i}]", loss, reserved)
        for where in [loss] + [sympy.diff(loss, v) for v in variables]:
            bad = where.atoms(*kinds)
            if bad:
                culprit = min(bad, key=lambda e: len(str(e)))
                part = "" if where is loss else " (in its gradient)"
                raise InputError(f"{name}[{i}] is not smooth{part}: it contains {culprit}; "
                                 f"the expansion needs smooth losses (no {', '.join(NON_SMOOTH_FUNCTIONS)})")
    used = set().union(*(loss.free_symbols for loss in losses))
    missing = [str(v) for v in variables if v not in used]
    if missing:
        raise InputError(f"variables {', '.join(missing)} occur in none of the {name}: "
                         "their drift would be 0 and nothing could verify it")
    return losses
