"""Problems: N per-sample losses f_i(x) evaluated for many chains at once (see ``base``)."""

from .base import Problem
from .quadratic import Quadratic
from .regression import LinearRegression, LogisticRegression
from .symbolic_family import SympyProblem, from_sympy
from .teacher_student import TeacherStudent

__all__ = ["Problem", "Quadratic", "LinearRegression", "LogisticRegression", "TeacherStudent",
           "SympyProblem", "from_sympy"]

try:  # the escape landscape lives in its own module, added alongside this package
    from .landscape import SharpFlatLandscape  # noqa: F401
except ModuleNotFoundError as error:  # only a missing landscape module is tolerated
    if error.name != f"{__name__}.landscape":
        raise
else:
    __all__.append("SharpFlatLandscape")
