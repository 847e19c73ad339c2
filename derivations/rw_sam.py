"""RW-SAM's drift on concrete losses: the exact expectation over batches of the rho-expanded
direction, with the Gibbs weights of the exact per-sample gradient norms. At first order it is
-grad f - rho E_S[H_S u_S] with u_S the normalised Gibbs-weighted gradient of batch S; lam = 0
gives SAM's drift; as lam -> infinity each batch perturbs along its largest-norm sample (ties
share the weight equally)."""

import sympy

from sdesam.algorithms import SAMPLING_SCHEMES
from sdesam.symbolic import derive, example_losses, matrices_equal, rho
from sdesam.symbolic.report import main_of, run_script


def build(report):
    """Concrete checks (1-D and 2-D, both sampling schemes), the lam = 0 and lam -> inf limits."""
    lam = sympy.Symbol("lambda", nonnegative=True)
    for sampling in SAMPLING_SCHEMES:
        for dim in (1, 2):
            losses, variables = example_losses(dim)
            losses = losses[:3]
            d = derive("rw-sam", losses, variables, batch=2, sampling=sampling, lam=2)
            report.check(f"rw-sam lam=2, {dim}-D (N=3, B=2), {sampling}: drift = -grad f - rho E[H_S u_S]",
                         d.verify)
            report.check(f"rw-sam lam=2, {dim}-D, {sampling}: Sigma(rho=0) = c(B) V", d.verify_diffusion)
            sam = derive("sam", losses, variables, batch=2, sampling=sampling)
            zero = derive("rw-sam", losses, variables, batch=2, sampling=sampling, lam=0)
            report.check(f"rw-sam lam=0, {dim}-D, {sampling}: drift = SAM's drift",
                         lambda: matrices_equal(zero.drift, sam.drift))
        losses, variables = example_losses(2)
        d = derive("rw-sam", losses[:3], variables, batch=2, sampling=sampling, lam=lam)
        at = dict(zip(variables, (sympy.Rational(1, 2), -1)))
        limit = d.large_lam_drift(at).subs(rho, 1)
        far = d.drift.xreplace(at).subs({lam: 300, rho: 1})
        report.check(f"rw-sam 2-D, {sampling}: drift at lam=300 equals the lam -> inf limit at (1/2, -1)",
                     lambda: max(abs(float(sympy.N(a - b, 30))) for a, b in zip(far, limit)) < 1e-9)
        report.add_latex(f"rw-sam, lam -> infinity, 2-D example at (1/2, -1), {sampling}",
                         r"b = " + sympy.latex(d.large_lam_drift(at)))


main = main_of(build, "rw_sam")

if __name__ == "__main__":
    run_script(main)
