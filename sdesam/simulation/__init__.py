"""Simulation of many chains at once: the discrete ensembles of every rule
(:mod:`~sdesam.simulation.ensemble`), the hand-written first-order SDEs and their integrator
(:mod:`~sdesam.simulation.sde`), the SDE compiled from any symbolic derivation
(:mod:`~sdesam.simulation.derived_sde`), the shared Brownian motion
(:mod:`~sdesam.simulation.brownian`), what a run keeps and how divergence is counted
(:mod:`~sdesam.simulation.chains`), the inputs every one of them checks and draws alike --
learning rate, a rule's rho and lam, start points, batches, drawn samples
(:mod:`~sdesam.simulation.inputs`) -- and the weak-error comparison of the two
(:mod:`~sdesam.simulation.compare`), with its exact side: the moments and weak errors of the
affine rules (:mod:`~sdesam.simulation.exact_moments`, :mod:`~sdesam.simulation.exact_expansion`),
the control variates built on them (:mod:`~sdesam.simulation.control_variates`) and the sqrt(eta)
error that dropping the noise-induced term leaves, for any rule
(:mod:`~sdesam.simulation.linear_response`). Each simulation layer declares the rule facts it
implements (``supports``; see :mod:`sdesam.layers`)."""
