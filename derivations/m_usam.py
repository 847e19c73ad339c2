"""m-USAM: drift -grad(f + rho/2 |grad f|^2 + c(m) rho/2 tr V); c(m) = 1/m with replacement,
(N-m)/(m(N-1)) without -- derived from the SGN moments, not assumed -- and the diffusion at
rho = 0 is SGD's c(B) V for every m (disjoint micro-batches are negatively correlated)."""

import sympy

from sdesam.symbolic import GENERIC, derive
from sdesam.symbolic.report import main_of, run_script


def build(report):
    """Generic (symbolic B, m) and concrete checks; the derived tr V factor in closed form."""
    B, m, N = sympy.symbols("B m N", positive=True, integer=True)
    report.rule("m-usam", batch=4, micro=2, symbolic_sizes=(B, m))
    x, y = sympy.symbols("x y", real=True)
    expected = {"with-replacement": 1 / m, "without-replacement": (N - m) / (m * (N - 1))}
    for sampling, factor in expected.items():
        d = derive("m-usam", GENERIC, [x, y], batch=B, micro=m, sampling=sampling)
        report.check(f"m-usam generic, {sampling}: tr V factor c(m) = {factor}",
                     lambda: sympy.simplify(d.noise_factor - factor) == 0)
    report.check("c(m) decreases in m (stronger regulariser for smaller m), without replacement",
                 lambda: sympy.simplify(sympy.diff(expected["without-replacement"], m)
                                        + N / (m**2 * (N - 1))) == 0)


main = main_of(build, "m_usam")

if __name__ == "__main__":
    run_script(main)
