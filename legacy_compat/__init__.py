"""fgbuster's NumPy API on top of fgjax: change ``fgbuster`` to ``legacy_compat`` in imports.

The package mirrors fgbuster 2.0.0's module tree (``component_model``, ``mixingmatrix``,
``algebra``, ``separation_recipes``, ``observation_helpers``, ``cosmology``,
``visualization``), and ``from legacy_compat import *`` gives exactly the names that
``from fgbuster import *`` gives. Every call runs in JAX's float64 mode inside a context (the
user's own JAX code keeps its settings) and returns NumPy arrays.

Unmodified fgbuster scripts run with ``python -m legacy_compat script.py [args]``, or with
:func:`alias_fgbuster` inside a running session; ``python -m legacy_compat --compare
script.py`` checks them number by number against a real fgbuster install.
"""

from . import (
    algebra,
    component_model,
    cosmology,
    mixingmatrix,
    observation_helpers,
    separation_recipes,
)
from . import visualization as visualization  # not in __all__: fgbuster's star import lacks it
from ._alias import alias_fgbuster as alias_fgbuster  # public, outside the star import
from ._alias import unalias_fgbuster as unalias_fgbuster
from .component_model import (
    CMB,
    AnalyticComponent,
    Component,
    Dust,
    FreeFree,
    ModifiedBlackBody,
    PowerLaw,
    Synchrotron,
    ThermalSZ,
)
from .cosmology import get_post_comp_sep_power, get_statistical_information, xForecast
from .mixingmatrix import MixingMatrix
from .observation_helpers import (
    get_instrument,
    get_noise_realization,
    get_observation,
    get_sky,
)
from .separation_recipes import (
    adaptive_comp_sep,
    basic_comp_sep,
    harmonic_ilc,
    harmonic_ilc_alm,
    ilc,
    multi_res_comp_sep,
    weighted_comp_sep,
)

# fgbuster/__init__.py star-imports observation_helpers, separation_recipes,
# component_model, mixingmatrix and cosmology, each of which has an __all__, and has no
# __all__ of its own: a star import of fgbuster therefore also yields the submodules bound
# on the package by those imports (algebra comes in through separation_recipes), but not
# visualization, which nothing imports.
__all__ = [
    # observation_helpers.__all__
    "get_sky",
    "get_instrument",
    "get_observation",
    "get_noise_realization",
    # separation_recipes.__all__
    "basic_comp_sep",
    "weighted_comp_sep",
    "ilc",
    "harmonic_ilc",
    "harmonic_ilc_alm",
    "adaptive_comp_sep",
    "multi_res_comp_sep",
    # component_model.__all__
    "Component",
    "AnalyticComponent",
    "CMB",
    "ThermalSZ",
    "Dust",
    "Synchrotron",
    "ModifiedBlackBody",
    "PowerLaw",
    "FreeFree",
    # mixingmatrix.__all__
    "MixingMatrix",
    # cosmology.__all__ (fgbuster 2.0.0's cosmology module lists all three)
    "get_statistical_information",
    "get_post_comp_sep_power",
    "xForecast",
    # submodules bound on the package
    "algebra",
    "component_model",
    "cosmology",
    "mixingmatrix",
    "observation_helpers",
    "separation_recipes",
]
