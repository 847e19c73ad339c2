"""n-SAM, SAM, m-SAM: no closed-form drift; at first order it is -grad(f + rho E|grad f_S|)
with |S| = N, B or m, and E|grad f_S| grows as |S| shrinks (the m-sharpness pattern)."""

import sympy

from sdesam.symbolic import example_losses
from sdesam.symbolic.report import main_of, run_script
from sdesam.symbolic.sampling import sample_distribution
from sdesam.symbolic.taylor import gradient


def expected_norm(losses, variables, size, sampling, point):
    """E|grad f_S| at ``point`` for a uniform sample S of ``size``, by exact enumeration."""
    total = 0
    for part, p in sample_distribution(len(losses), size, sampling):
        g = gradient(sum(losses[i] for i in part) / len(part), variables).subs(dict(zip(variables, point)))
        total += p * sympy.sqrt(g.dot(g))
    return total


def build(report):
    """Concrete checks of the three rules and of the monotonicity of E|grad f_S| in |S|."""
    report.rule("n-sam", batch=2)
    report.rule("sam", batch=2)
    report.rule("m-sam", batch=4, micro=2)
    losses, variables = example_losses(2)
    for sampling in ("with-replacement", "without-replacement"):
        for point in [(0, 0), (1, -1), (sympy.Rational(1, 2), 2)]:
            norms = [expected_norm(losses, variables, s, sampling, point) for s in (1, 2, 3, 4)]
            report.check(f"E|grad f_S| decreases with |S| at {point}, {sampling}: "
                         + ", ".join(f"{float(v):.4f}" for v in norms),
                         lambda: all(a >= b for a, b in zip(norms, norms[1:])))


main = main_of(build, "sam_variants")

if __name__ == "__main__":
    run_script(main)
