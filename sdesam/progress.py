"""Progress bars: one rule for every layer -- drawn only on a terminal.

A bar is shown when the caller asks for it *and* standard error is a terminal, so logs, CI and
captured output never fill with carriage-return frames. ``--no-progress`` still hides it on a
terminal.
"""

from __future__ import annotations

from typing import Any, Iterable

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **options: Any) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total=``), drawn only when ``show``
    and standard error is a terminal (tqdm's ``disable=None``)."""
    return tqdm(iterable, disable=None if show else True, **options)
