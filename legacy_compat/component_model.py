"""Drop-in for ``fgbuster.component_model``: fgbuster's SED classes, backed by fgjax.

NumPy in, NumPy out, float64. Every evaluation runs inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import numpy as np
import sympy

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


def _involved(expr, names: tuple[str, ...], wrt: tuple[str, ...]):
    """Indices of the parameters that the derivative of ``expr`` along ``wrt`` involves.

    None when that derivative is identically constant.
    """
    deriv = expr
    for name in wrt:
        deriv = sympy.diff(deriv, sympy.Symbol(name))
    if not deriv.free_symbols:
        return None
    symbols = {str(s) for s in deriv.free_symbols}
    return tuple(i for i, name in enumerate(names) if name in symbols)


def _legacy_shape(full, params, involved):
    """Cut a fully broadcast derivative down to the shape fgbuster gives it.

    fgbuster lambdifies every derivative on its own, so the result only carries the axes of
    the parameters it involves (plus the frequency axis), and an identically constant
    derivative comes back 0-d. ``full`` (shape ``broadcast(params) + (n_freq,)``) is constant
    along every other axis, so index 0 of those axes holds the whole information.
    """
    if involved is None:
        return full.reshape(-1)[0] if full.size else full.sum()
    lead = full.shape[:-1]
    target = np.broadcast_shapes(*(np.shape(params[i]) for i in involved))
    padded = (1,) * (len(lead) - len(target)) + target
    index = tuple(slice(None) if t == n else slice(0, 1) for t, n in zip(padded, lead, strict=True))
    return full[index].reshape(target + full.shape[-1:])


class _NumpyAPI:
    """eval/diff/diff_diff of an fgjax component, in float64 with NumPy outputs.

    Derivatives keep fgbuster's shapes (only the axes of the parameters they involve; 0-d
    when constant) on top of fgjax's fully broadcast ones.
    """

    def _derivative_plan(self, order: int):
        expr = getattr(self, "expr", None)
        if expr is None:  # a user subclass of Component: no symbolic form, keep full shapes
            return None
        cache = self.__dict__.setdefault("_legacy_plans", {})
        key = (order, str(expr))
        if key not in cache:
            names = tuple(self.params)
            if order == 1:
                cache[key] = [_involved(expr, names, (n,)) for n in names]
            else:
                cache[key] = [[_involved(expr, names, (a, b)) for b in names] for a in names]
        return cache[key]

    @x64
    def eval(self, nu, *params):
        return super().eval(nu, *params)

    @x64
    def diff(self, nu, *params):
        out = super().diff(nu, *params)
        plan = self._derivative_plan(1)
        if plan is None:
            return out
        return [_legacy_shape(d, params, inv) for d, inv in zip(out, plan, strict=True)]

    @x64
    def diff_diff(self, nu, *params):
        out = super().diff_diff(nu, *params)
        plan = self._derivative_plan(2)
        if plan is None or not params:
            return out
        return [
            [_legacy_shape(d, params, inv) for d, inv in zip(row, prow, strict=True)]
            for row, prow in zip(out, plan, strict=True)
        ]


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
