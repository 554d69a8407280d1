"""Physical constants and the K_RJ <-> K_CMB conversion, as used by fgbuster.

Frequencies are in GHz everywhere. ``H_OVER_K`` is ``h * 1e9 / k`` in K / GHz, taken from
SciPy's CODATA values; ``TCMB`` is the Planck 2015 CMB temperature (astropy's
``Planck15.Tcmb0``), which fgbuster uses.
"""

from __future__ import annotations

import jax.numpy as jnp
from scipy import constants as _sc

H_OVER_K: float = _sc.h * 1e9 / _sc.k
"""Planck constant over Boltzmann constant, in K per GHz."""

TCMB: float = 2.7255
"""CMB monopole temperature in K."""

UNSEEN: float = -1.6375e30
"""HEALPix bad-pixel value (``healpy.UNSEEN``)."""

_PREFIX_SCALE = {"": 1.0, "m": 1e3, "u": 1e6}
_BASES = ("K_CMB", "K_RJ")


def parse_units(units: str) -> tuple[str, float]:
    """Split a unit string into its base (``'K_CMB'`` or ``'K_RJ'``) and prefix scale.

    Args:
        units: One of ``K_CMB``, ``mK_CMB``, ``uK_CMB``, ``K_RJ``, ``mK_RJ``, ``uK_RJ``.

    Returns:
        ``(base, scale)``, where ``scale`` converts K to the prefixed unit (1, 1e3 or 1e6).

    Raises:
        ValueError: `units` is not one of the above.

    Examples:
        >>> parse_units("uK_CMB")
        ('K_CMB', 1000000.0)
    """
    if isinstance(units, str):
        for base in _BASES:
            prefix = units[: -len(base)]
            if units.endswith(base) and prefix in _PREFIX_SCALE:
                return base, _PREFIX_SCALE[prefix]
    allowed = ", ".join(p + b for b in _BASES for p in ("", "m", "u"))
    raise ValueError(f"`units` must be one of {allowed}; got {units!r}.")


def K_RJ_to_K_CMB_expression(nu: str = "nu") -> str:
    """SymPy source of the K_RJ -> K_CMB conversion factor at frequency ``nu`` (GHz).

    The factor is $(e^x - 1)^2 / (e^x x^2)$ with $x = h\\nu / k T_{CMB}$, written with
    ``expm1`` for accuracy at low frequency.
    """
    x = f"({H_OVER_K!r} * {nu} / {TCMB!r})"
    return f"(expm1({x})**2 / (exp({x}) * {x}**2))"


def K_RJ_to_K_CMB(nu):
    """K_RJ -> K_CMB conversion factor at frequencies ``nu`` (GHz); a pure JAX function.

    Multiply a map in K_RJ by this factor to get K_CMB.
    """
    x = H_OVER_K * jnp.asarray(nu) / TCMB
    return jnp.expm1(x) ** 2 / (jnp.exp(x) * x**2)
