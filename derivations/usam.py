"""Mini-batch USAM: drift -grad(f + rho/2 |grad f|^2 + c(B) rho/2 tr V)."""

import sympy

from sdesam.symbolic.report import main_of, run_script


def build(report):
    """Generic (symbolic B) and concrete checks, both sampling schemes."""
    report.rule("usam", batch=2, symbolic_sizes=(sympy.Symbol("B", positive=True, integer=True), None))


main = main_of(build, "usam")

if __name__ == "__main__":
    run_script(main)
