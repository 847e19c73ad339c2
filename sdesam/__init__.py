"""sdesam: sharpness-aware minimization through stochastic differential equations.

Layers (see README): ``algorithms`` (the update rules, defined once), ``symbolic`` (sympy
derivation of each rule's SDE), ``problems``/``ensemble``/``sde``/``compare`` (simulate SDEs
against the discrete algorithms), ``sgn`` (gradient-noise statistics), ``optim``/``train``
(SAM, m-SAM and RW-SAM for nn.Module training) and ``plotting``.
"""

__version__ = "0.1.0"
"""The package version, defined here only: pyproject.toml reads it (``[tool.setuptools.dynamic]``)
and ``sdesam --version`` prints it."""
