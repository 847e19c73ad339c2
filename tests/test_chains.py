"""What a simulation keeps, and how both layers report chains that diverge."""

import pytest
import torch

from sdesam.simulation import ensemble, sde
from sdesam.simulation.chains import chunk_size, recorded_steps
from sdesam.problems import Problem, Quadratic


def unstable_problem():
    """f_i = -|x - c_i|^2 / 2: every step multiplies x - c by about (1 + eta)."""
    return Quadratic(-torch.eye(2, dtype=torch.float64).expand(3, 2, 2),
                     torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.3]], dtype=torch.float64))


STARTS = torch.tensor([[1e6, 0.0], [0.0, 1e6], [0.1, 0.0], [0.0, -0.2], [0.3, 0.1]], dtype=torch.float64)
COMMON = dict(eta=0.5, rho=0.0, batch=1, x0=STARTS, chains=5, seed=0, diverge_at=1e7)


@pytest.mark.parametrize("layer", ["ensemble", "sde"])
def test_a_diverging_run_reports_its_diverged_chains_and_leaves_them_out(layer):
    """Two chains start at 1e6 and pass 1e7 within 6 steps (1.5^6 > 10); the three others stay
    below it for the 8 steps, and the statistics are over those three alone."""
    if layer == "ensemble":
        run = ensemble.run(unstable_problem(), "sgd", steps=8, test_fns=["coord0"], **COMMON)
    else:
        run = sde.simulate(unstable_problem(), "sgd", horizon=4.0, dt=0.5, test_fns=["coord0"],
                           **COMMON)
    assert run.diverged_count == 2 and run.diverged.tolist() == [True, True, False, False, False]
    assert ((run.diverged_step[:2] >= 5) & (run.diverged_step[:2] <= 7)).all()
    assert (run.diverged_step[2:] == -1).all()
    # frozen at the last state inside the bound, never updated again
    assert (run.final[:2].norm(dim=-1) <= 1e7).all() and (run.final[:2].norm(dim=-1) > 1e6).all()
    assert torch.equal(run.states[-1], run.final)
    assert torch.equal(run.states[-1, :2], run.states[run.diverged_step.max(), :2])
    coord = run.moments["coord0"]
    assert coord.count[0] == 5 and coord.count[-1] == 3
    assert torch.allclose(coord.mean[-1], run.final[2:, 0].mean())


class Cliff(Problem):
    """f_i(x) = sqrt(2 - x) (+ a sample offset): descent pushes x past 2, where the gradient
    is NaN."""

    n, dim = 2, 1

    def sample_losses(self, x):
        return torch.sqrt(2 - x) + torch.tensor([0.0, 0.1], dtype=x.dtype)


def test_nan_states_count_as_diverged_and_do_not_poison_the_mean():
    run = ensemble.run(Cliff(), "sgd", eta=0.5, rho=0.0, batch=1, seed=0, steps=3, chains=2,
                       x0=torch.tensor([[1.9], [-100.0]], dtype=torch.float64),
                       test_fns=["sq_norm"], keep_states=False)
    assert run.states is None and run.diverged.tolist() == [True, False]
    assert run.diverged_step.tolist() == [2, -1]
    assert torch.isfinite(run.moments["sq_norm"].mean).all() and torch.isfinite(run.final).all()
    assert run.moments["sq_norm"].count.tolist() == [2, 2, 1, 1]
    with pytest.raises(ValueError, match="x0 must lie within diverge_at"):
        ensemble.run(Cliff(), "sgd", eta=0.5, rho=0.0, batch=1, seed=0, steps=3, chains=2,
                     x0=[1e9])


def test_runs_keep_only_what_is_asked_and_the_same_iterates_whatever_they_keep():
    problem = Quadratic(torch.eye(2, dtype=torch.float64).expand(3, 2, 2),
                        torch.tensor([[0.5, 0.0], [-0.5, 0.0], [0.0, 0.3]], dtype=torch.float64))
    kwargs = dict(eta=0.1, rho=0.2, batch=2, x0=[1.0, -1.0], chains=30, seed=4)
    full = ensemble.run(problem, "usam", steps=7, **kwargs)
    sparse = ensemble.run(problem, "usam", steps=7, every=3, test_fns=["loss"], chunk=4, **kwargs)
    end = ensemble.run(problem, "usam", steps=7, every=None, keep_states=False, **kwargs)
    assert full.states.shape == (8, 30, 2) and sparse.steps.tolist() == [0, 3, 6, 7]
    assert torch.equal(sparse.states, full.states[[0, 3, 6, 7]])
    assert end.states is None and torch.equal(end.final, full.final)
    assert torch.allclose(sparse.moments["loss"].mean, problem.loss(full.states[[0, 3, 6, 7]]).mean(1))
    path = sde.simulate(problem, "usam", horizon=0.7, every=2, keep_states=True, **kwargs)
    assert path.steps.tolist() == [0, 2, 4, 6, 7]
    assert torch.allclose(path.times, path.steps.double() * 0.1)
    assert torch.equal(sde.simulate(problem, "usam", horizon=0.7, every=None, keep_states=False,
                                    chunk=3, **kwargs).final, path.final)


def test_recorded_steps_and_chunk_sizes():
    assert recorded_steps(7, 3) == [0, 3, 6, 7] and recorded_steps(6, 3) == [0, 3, 6]
    assert recorded_steps(5, None) == [0, 5]
    assert chunk_size(10_000, 64 * 20, budget=2**20) == 102 and chunk_size(5, 10**9) == 1
    with pytest.raises(ValueError, match="every must be a positive integer"):
        recorded_steps(5, 0)
