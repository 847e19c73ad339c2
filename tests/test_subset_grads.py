"""Closed-form gradients of chosen samples equal the gathered rows of all per-sample gradients."""

import pytest
import torch

from sdesam.problems import LinearRegression, LogisticRegression, TeacherStudent


@pytest.mark.parametrize("problem", [
    LinearRegression(torch.randn(7, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)),
    LogisticRegression(torch.randn(7, 3, dtype=torch.float64), torch.tensor([0., 1.] * 3 + [1.]), l2=0.2),
    TeacherStudent(n=7, inputs=1, hidden=2, noise=0.2),
], ids=["linear", "logistic", "generic"])
def test_subset_grads_are_the_gathered_rows(problem):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, problem.dim, generator=gen, dtype=torch.float64)
    idx = torch.randint(0, problem.n, (5, 2, 3), generator=gen)
    rows = problem.sample_grads(x).gather(-2, idx.unsqueeze(-1).expand(5, 2, 3, problem.dim))
    assert torch.allclose(problem.subset_grads(x, idx), rows, atol=1e-13)
