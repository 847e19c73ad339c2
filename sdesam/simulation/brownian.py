"""A Brownian motion fixed on a time grid, shared by ``torchsde.sdeint`` and the fast loop.

The increment over grid cell k is a Gaussian drawn from a generator seeded by ``(seed, k)``.
So the path is fixed once the seed is chosen (as if pre-sampled), any cell can be queried in
any order, the same increments reach ``torchsde.sdeint(bm=...)`` and
:func:`sdesam.simulation.sde.euler_maruyama`, and no ``steps x chains x N`` tensor is ever stored.
"""

from __future__ import annotations

import torch
from torchsde import BaseBrownian

from sdesam.validation import InputError, positive_int


def time_grid(horizon: float, dt: float, dtype: torch.dtype = torch.float64,
              device: str | torch.device = "cpu") -> torch.Tensor:
    """Times ``t_0 = 0, t_{k+1} = t_k + dt`` up to ``horizon`` (``horizon / dt`` must be an
    integer), accumulated one addition at a time exactly as ``torchsde`` advances its clock,
    so that the solver lands on every grid point without sub-steps or interpolation."""
    if not dt > 0 or not horizon > 0:
        raise InputError(f"horizon and dt must be positive; got horizon={horizon!r}, dt={dt!r}")
    count = round(horizon / dt)
    if abs(count * dt - horizon) > 1e-9 * horizon:
        raise InputError(f"horizon must be a whole number of steps dt; got horizon={horizon}, dt={dt}")
    times = [torch.zeros((), dtype=dtype, device=device)]
    for _ in range(count):
        times.append(times[-1] + dt)
    return torch.stack(times)


class FixedGridBrownian(BaseBrownian):
    """Brownian motion of shape ``size = (chains, channels)`` on the grid ``times``.

    ``bm(ta, tb)`` returns ``W(tb) - W(ta)`` for grid points ``ta < tb``; other times raise a
    ValueError (this object never interpolates). :meth:`increment` gives cell k directly.
    """

    def __init__(self, times: torch.Tensor, size: tuple[int, int], seed: int,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> None:
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.dim() != 1 or times.numel() < 2 or not bool((times.diff() > 0).all()):
            raise InputError("times must be a strictly increasing 1-D grid with at least 2 points")
        if len(size) != 2:
            raise InputError(f"size must be (chains, channels) of positive integers; got {size!r}")
        positive_int("chains", size[0])
        positive_int("channels", size[1])
        self._times = times.cpu()
        self._size = torch.Size(size)
        self._seed = int(seed)
        self._dtype = dtype
        self._device = torch.device(device)
        self._generator = torch.Generator(device=self._device)

    def increment(self, k: int) -> torch.Tensor:
        """``W(t_{k+1}) - W(t_k)``: Gaussian with variance ``t_{k+1} - t_k``, fixed by (seed, k)."""
        if not 0 <= k < self._times.numel() - 1:
            raise InputError(f"k must lie in [0, {self._times.numel() - 1}); got {k}")
        self._generator.manual_seed(self._seed * 1_000_003 + k)
        # normal_ with the standard deviation draws the numbers of randn(...) * std, bit for
        # bit, without a second pass over the increment
        noise = torch.empty(self._size, dtype=self._dtype, device=self._device)
        return noise.normal_(0.0, float(self._times[k + 1] - self._times[k]) ** 0.5,
                             generator=self._generator)

    def _index(self, t: float | torch.Tensor) -> int:
        """The grid index of time ``t``; raises unless ``t`` is a grid point."""
        value = float(t)
        k = int(torch.searchsorted(self._times, torch.tensor(value, dtype=torch.float64)))
        for candidate in (k - 1, k):
            if 0 <= candidate < self._times.numel():
                spacing = float(self._times[1] - self._times[0])
                if abs(float(self._times[candidate]) - value) <= 1e-9 * spacing:
                    return candidate
        raise ValueError(f"time {value} is not a point of this Brownian object's grid")

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803 (torchsde API)
        """``W(tb) - W(ta)`` (``W(ta) - W(t_0)`` when ``tb`` is None); no Levy areas."""
        if return_U or return_A:
            raise InputError("FixedGridBrownian provides increments only (levy_area_approximation='none')")
        start, stop = (0, self._index(ta)) if tb is None else (self._index(ta), self._index(tb))
        if stop < start:
            raise ValueError(f"need ta <= tb; got ta={ta}, tb={tb}")
        total = torch.zeros(self._size, dtype=self._dtype, device=self._device)
        for k in range(start, stop):
            total = total + self.increment(k)
        return total

    def __repr__(self) -> str:
        return (f"FixedGridBrownian(steps={self._times.numel() - 1}, size={tuple(self._size)}, "
                f"seed={self._seed}, dtype={self._dtype}, device={self._device})")

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def shape(self) -> torch.Size:
        return self._size

    @property
    def levy_area_approximation(self) -> str:
        return "none"

    @property
    def times(self) -> torch.Tensor:
        """The grid (float64, on CPU)."""
        return self._times
