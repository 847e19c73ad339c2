"""Argument checks shared by every layer: one wording for every error, raised before any work.

Each check returns the (normalised) value it accepts and raises :class:`InputError` -- a
``ValueError``, so callers that catch ``ValueError`` keep working -- with a message that names
the argument and says what is accepted. The command line turns an ``InputError`` into a one-line
message and exit status 2 (see :mod:`sdesam.cli`).
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
    """``value`` if it is a number >= 0 or a sympy expression (compared symbolically: kept)."""
    if hasattr(value, "free_symbols") and getattr(value, "free_symbols"):
        return value
    try:
        negative = bool(value < 0)
    except TypeError:
        raise InputError(f"{name} must be >= 0 (a number or a sympy symbol); got {value!r}")
    if negative or (isinstance(value, float) and not math.isfinite(value)):
        raise InputError(f"{name} must be >= 0 (a number or a sympy symbol); got {value!r}")
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
