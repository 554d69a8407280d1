"""fgbuster's NumPy API on top of fgjax: change ``fgbuster`` to ``legacy_compat`` in imports.

Every call runs in JAX's float64 mode inside a context (the user's own JAX code keeps its
settings) and returns NumPy arrays.
"""

from .component_model import *  # noqa: F403
from .component_model import __all__ as _cm_all
from .mixingmatrix import *  # noqa: F403
from .mixingmatrix import __all__ as _mm_all

__all__ = [*_cm_all, *_mm_all]
