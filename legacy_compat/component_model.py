"""Drop-in for ``fgbuster.component_model``: fgbuster's SED classes, backed by fgjax.

NumPy in, NumPy out, float64. Every evaluation runs inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import fgjax

from ._convert import x64

H_OVER_K = fgjax.H_OVER_K
"""h * 1e9 / k: frequencies in GHz."""

K_RJ2K_CMB = fgjax.K_RJ_to_K_CMB_expression("nu")
"""SymPy source of the K_RJ -> K_CMB factor at ``nu`` (GHz), for AnalyticComponent strings."""

K_RJ2K_CMB_NU0 = K_RJ2K_CMB + " / " + fgjax.K_RJ_to_K_CMB_expression("nu0")
"""The same factor divided by its value at ``nu0``."""

__all__ = [
    "Component",
    "AnalyticComponent",
    "CMB",
    "ThermalSZ",
    "Dust",
    "Synchrotron",
    "ModifiedBlackBody",
    "PowerLaw",
    "FreeFree",
]


class _NumpyAPI:
    """eval/diff/diff_diff of an fgjax component, in float64 with NumPy outputs."""

    @x64
    def eval(self, nu, *params):
        return super().eval(nu, *params)

    @x64
    def diff(self, nu, *params):
        return super().diff(nu, *params)

    @x64
    def diff_diff(self, nu, *params):
        return super().diff_diff(nu, *params)


class Component(_NumpyAPI, fgjax.AbstractComponent):
    """Abstract SED (fgbuster's ``Component``): subclasses implement ``sed``."""


class AnalyticComponent(_NumpyAPI, fgjax.AnalyticComponent):
    """fgbuster's ``AnalyticComponent(analytic_expr, **fixed_params)``."""


class ModifiedBlackBody(_NumpyAPI, fgjax.ModifiedBlackBody):
    """fgbuster's ``ModifiedBlackBody(nu0, temp=None, beta_d=None, units='K_CMB')``."""


class Dust(ModifiedBlackBody):
    """Alias of :class:`ModifiedBlackBody`."""


class PowerLaw(_NumpyAPI, fgjax.PowerLaw):
    """fgbuster's ``PowerLaw(nu0, beta_pl=None, nu_pivot=None, running=0., units='K_CMB')``."""


class Synchrotron(PowerLaw):
    """Alias of :class:`PowerLaw`."""


class CMB(_NumpyAPI, fgjax.CMB):
    """fgbuster's ``CMB(units='K_CMB')``."""


class ThermalSZ(_NumpyAPI, fgjax.ThermalSZ):
    """fgbuster's ``ThermalSZ(units='uK_CMB')``."""


class FreeFree(_NumpyAPI, fgjax.FreeFree):
    """fgbuster's ``FreeFree(logEM=None, Te=None, units='K_CMB')``; works (fgbuster's raises
    under SymPy 1.14), and its emission-measure parameter is named ``logEM``."""
