"""Progress bars are drawn only on a terminal, and never when the caller hides them."""

from __future__ import annotations

import io

from sdesam.progress import progress_bar


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def drawn(stream: io.StringIO, show: bool) -> str:
    for _ in progress_bar(range(3), show=show, file=stream, desc="work", mininterval=0):
        pass
    return stream.getvalue()


def test_a_bar_is_drawn_on_a_terminal_only_and_never_when_hidden():
    assert "work" in drawn(Terminal(), show=True)
    assert drawn(io.StringIO(), show=True) == ""   # a log file or CI: no frames
    assert drawn(Terminal(), show=False) == ""     # --no-progress on a terminal
