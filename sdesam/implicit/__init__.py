"""Implicit regularisation of a rule: the noise-induced part of its first-order drift.

To first order in rho a rule's step is ``G = G0 + rho G1`` (:func:`sdesam.algorithms.direction`
differentiated in rho at rho = 0, so every rule is read from the registry by its facts). Its
drift is ``-E_S[G0 + rho G1]`` over the mini-batch S; the *noise-induced* first-order part is

    N1 = -(E_S[G1(S)] - G1_det),

``G1_det`` the same term of its deterministic counterpart (the rule with the perturbation along
the full gradient and the full-data descent gradient: n-SAM's ``H grad f/|grad f|`` for
normalised rules, n-USAM's ``H grad f`` for unnormalised ones; at a critical point, where
``grad f/|grad f|`` is undefined, ``G1_det`` is taken as 0, the smallest element of the
subdifferential of ``|grad f|``). For m-USAM, ``N1 = -c(m)/2 grad tr V`` exactly.

Reported per rule: the **push** ``<N1, -grad tr V>/|grad tr V|`` (per unit rho; > 0 lowers
tr V), the **equivalent m** (the micro-batch size at which m-SAM -- m-USAM for unnormalised
rules -- has the same push: interpolated linearly in log m between the divisors of B for the
normalised family, solved in closed form from the sampling factor c(m) for the unnormalised
one), the effective sample size ``1/sum p_i^2`` of Gibbs weights (mean over batches) and the
zeroth-order **bias** ``<E_S[G0] - grad f, grad tr V>/|grad tr V|`` (non-zero only for rules
whose descent gradient is weighted).

Expectations over S are exact, by enumeration of all ordered index tuples (small problems), or
Monte Carlo over sampled batches with standard errors; the same batches serve every rule, so
differences between rules are measured with common random numbers. Perturbations drawn from
the batch (:attr:`Rule.ascent_draw`) are averaged over draws inside each batch (exactly, by
enumerating the draws, in exact mode). A network enters as a :class:`ModuleProblem`.

Modules, by job: :mod:`~sdesam.implicit.problems` (networks, Taylor models and batch views as
problems), :mod:`~sdesam.implicit.batches` (enumerated or sampled batches),
:mod:`~sdesam.implicit.diagnose` (first-order terms and :func:`diagnose`; :func:`supports` is
the layer's declaration), :mod:`~sdesam.implicit.equivalent` (equivalent m),
:mod:`~sdesam.implicit.cost` (passes per step).
"""

from .batches import MAX_ENUMERATED, Batches, enumerate_batches, sample_batches
from .cost import passes_per_step
from .diagnose import (LOCAL_MODEL_DIM, SUPPORT, Spec, deterministic_counterpart, diagnose,
                       first_order_terms, micro_family_rule, noise_induced_drift, supports)
from .equivalent import (add_equivalent_m, divisors, equivalent_m, equivalent_m_continuous)
from .problems import LocalQuadratic, ModuleProblem, batch_view

__all__ = ["LOCAL_MODEL_DIM", "MAX_ENUMERATED", "SUPPORT", "Batches", "LocalQuadratic",
           "ModuleProblem", "Spec", "add_equivalent_m", "batch_view", "deterministic_counterpart",
           "diagnose", "divisors", "enumerate_batches", "equivalent_m", "equivalent_m_continuous",
           "first_order_terms", "micro_family_rule", "noise_induced_drift", "passes_per_step",
           "sample_batches", "supports"]
