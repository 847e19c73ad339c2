"""RW-SAM's weights: the maximiser over the simplex of sum_i p_i a_i + H(P)/lambda is the
Gibbs distribution p_i = exp(lambda a_i) / sum_j exp(lambda a_j), derived with a Lagrange
multiplier and checked to be the unique maximum (the objective is strictly concave)."""

from sdesam.symbolic.gibbs import derive_gibbs_weights
from sdesam.symbolic.report import main_of, run_script


def build(report):
    """Derive the weights for several sizes; check stationarity, normalisation and concavity."""
    for n in (2, 3, 5):
        result = derive_gibbs_weights(n)
        report.check(f"n={n}: Lagrange solution equals softmax(lambda a)", lambda: result.matches_softmax)
        report.check(f"n={n}: objective strictly concave on the simplex", lambda: result.concave)
        report.check(f"n={n}: lambda -> 0 gives uniform weights", lambda: result.uniform_at_zero)
        report.add_latex(f"Gibbs weights, n={n}", result.latex)


main = main_of(build, "rw_sam_weights")

if __name__ == "__main__":
    run_script(main)
