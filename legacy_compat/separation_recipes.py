"""Drop-in for ``fgbuster.separation_recipes``: same names, signatures and result fields.

Each call runs the fgjax recipe in float64 (``jax.enable_x64`` context) and returns a
``scipy.optimize.OptimizeResult`` with fgbuster's field names and layouts (pixel axis last,
``healpy.UNSEEN`` at masked pixels and empty patches).

Differences from fgbuster 2.0, all on inputs where fgbuster fails or returns nothing:

* ``harmonic_ilc`` on T-only maps with ``fwhm`` deconvolves the beam (fgbuster raises);
  ``lbins=None`` means no binning (fgbuster raises).
* ``adaptive_comp_sep`` and ``multi_res_comp_sep`` also return ``Sigma`` (per cluster).
* Bad input raises ``ValueError`` / ``TypeError`` naming the argument instead of an
  ``AssertionError`` or an ``IndexError`` deep in the algebra.
"""

from __future__ import annotations

import healpy as hp
import numpy as np
from scipy.optimize import OptimizeResult

from fgjax import _ilc, _recipes

from ._convert import x64

__all__ = [
    "basic_comp_sep",
    "weighted_comp_sep",
    "ilc",
    "harmonic_ilc",
    "harmonic_ilc_alm",
    "adaptive_comp_sep",
    "multi_res_comp_sep",
]


def _as_result(fields: dict) -> OptimizeResult:
    res = OptimizeResult()
    for k, v in fields.items():
        res[k] = v
    return res


@x64
def ilc(components, instrument, data, patch_ids=None):
    """Drop-in for ``fgbuster.ilc``; see ``fgjax.ilc``.

    Returns:
        ``OptimizeResult`` with ``s``, ``W``, ``freq_cov`` and ``components``.
    """
    r = _ilc.ilc(components, instrument, data, patch_ids)
    return _as_result({"s": r.s, "W": r.W, "freq_cov": r.freq_cov, "components": r.components})


@x64
def harmonic_ilc_alm(components, instrument, alms, lbins=None, fsky=None):
    """Drop-in for ``fgbuster.harmonic_ilc_alm``; see ``fgjax.harmonic_ilc_alm``.

    Returns:
        ``OptimizeResult`` with ``s`` (alms), ``W``, ``cl_in``, ``cl_out`` and ``fsky``.
    """
    r = _ilc.harmonic_ilc_alm(components, instrument, alms, lbins, fsky)
    return _as_result({"s": r.s, "W": r.W, "cl_in": r.cl_in, "cl_out": r.cl_out, "fsky": fsky})


@x64
def harmonic_ilc(components, instrument, data, lbins=None, weights=None, iter=3):
    """Drop-in for ``fgbuster.harmonic_ilc``; see ``fgjax.harmonic_ilc``.

    As fgbuster 2.0, without ``weights`` the spectra are divided by the fraction of *masked*
    pixels when it is non-zero (``fsky`` holds that fraction; 0 for full-sky maps).

    Returns:
        ``OptimizeResult`` with ``s`` (maps), ``W``, ``cl_in``, ``cl_out`` and ``fsky``.
    """
    r = _ilc._harmonic_ilc(components, instrument, data, lbins, weights, iter, legacy_fsky=True)
    return _as_result(
        {"s": r.s, "W": r.W, "cl_in": r.cl_in, "cl_out": r.cl_out, "fsky": float(r.fsky)}
    )


def _newton_kwargs(minimize_kwargs: dict) -> dict:
    """fgbuster's SciPy keywords for the batched Newton fit: ``method``/``tol`` dropped."""
    return {k: v for k, v in minimize_kwargs.items() if k not in ("method", "tol", "jac", "hess")}


def _sep_result(r, fields) -> OptimizeResult:
    out = {"params": list(r.params)}
    for k in fields:
        v = getattr(r, k)
        if v is not None:
            out[k] = v
    out["nit"] = r.nit
    out["success"] = r.success
    out["message"] = r.message
    return _as_result(out)


_PATCH_FIELDS = ("x", "Sigma", "Sigma_inv", "s", "chi", "chi_dB", "invAtNA", "mask_good")
_JOINT_FIELDS = ("x", "x_map", "Sigma", "Sigma_inv", "s", "chi", "invAtNA", "mask_good")


@x64
def basic_comp_sep(components, instrument, data, nside=0, **minimize_kwargs):
    """Drop-in for ``fgbuster.basic_comp_sep``; see ``fgjax.basic_comp_sep``.

    ``minimize_kwargs`` as fgbuster's (``method``, ``tol``, ``options``, ``bounds``): all
    patches are fitted at once by a batched Newton method with the exact Hessian, which
    honours ``options['maxiter']``, ``bounds`` and ``x0``; SciPy's ``method`` and ``tol``
    are accepted and not used (the Newton fit converges further than fgbuster's settings;
    ``fgjax.basic_comp_sep(..., method=...)`` runs SciPy or optax instead).

    Returns:
        ``OptimizeResult`` with ``params``, ``x``, ``Sigma``, ``Sigma_inv``, ``s``, ``chi``,
        ``chi_dB``, ``invAtNA``, ``mask_good``, ``nit``, ``success``, ``message``.
    """
    r = _recipes.basic_comp_sep(
        components, instrument, data, nside, **_newton_kwargs(minimize_kwargs)
    )
    return _sep_result(r, _PATCH_FIELDS)


@x64
def weighted_comp_sep(components, instrument, data, cov, nside=0, **minimize_kwargs):
    """Drop-in for ``fgbuster.weighted_comp_sep``; see ``fgjax.weighted_comp_sep``.

    Returns:
        ``OptimizeResult`` with the fields of :func:`basic_comp_sep`; ``invAtNA`` per pixel.
    """
    r = _recipes.weighted_comp_sep(
        components, instrument, data, cov, nside, **_newton_kwargs(minimize_kwargs)
    )
    return _sep_result(r, _PATCH_FIELDS)


@x64
def adaptive_comp_sep(components, instrument, data, patch_ids, **minimize_kwargs):
    """Drop-in for ``fgbuster.adaptive_comp_sep`` (``checkpoint`` included).

    Returns:
        ``OptimizeResult`` with ``params``, ``x`` and ``x_map`` (lists, one entry per
        parameter), ``Sigma`` and ``Sigma_inv`` over the concatenated cluster values (fgbuster
        gives none), ``s``, ``chi``, ``invAtNA``, ``mask_good``, ``nit``, ``success``.
    """
    r = _recipes.adaptive_comp_sep(
        components, instrument, data, patch_ids, **_newton_kwargs(minimize_kwargs)
    )
    return _sep_result(r, _JOINT_FIELDS)


@x64
def multi_res_comp_sep(components, instrument, data, nsides, **minimize_kwargs):
    """Drop-in for ``fgbuster.multi_res_comp_sep``; see :func:`adaptive_comp_sep`."""
    r = _recipes.multi_res_comp_sep(
        components, instrument, data, nsides, **_newton_kwargs(minimize_kwargs)
    )
    return _sep_result(r, _JOINT_FIELDS)


# -- fgbuster's private HEALPix helpers ------------------------------------------------------
# Not public API, but fgbuster's own tests and some scripts import them from
# fgbuster.separation_recipes. nside 0 means one global value.
def _my_nside2npix(nside):
    return 1 if nside == 0 else hp.nside2npix(nside)


def _my_ud_grade(map_in, nside_out):
    m = np.asarray(map_in, dtype=float)
    if nside_out == 0:
        return m.mean(keepdims=True).reshape(1)
    if m.size == 1:
        return np.full(hp.nside2npix(nside_out), m.reshape(()))
    return hp.ud_grade(m, nside_out)


def _empirical_harmonic_covariance(alms):
    """Cross spectra of every pair of frequencies: ``(..., n_freq, n_freq, lmax + 1)``
    for alms of shape ``(n_freq, ..., n_lm)``."""
    alms = np.asarray(alms)
    n_freq, lead = alms.shape[0], alms.shape[1:-1]
    flat = alms.reshape(n_freq, -1, alms.shape[-1])
    lmax = hp.Alm.getlmax(alms.shape[-1])
    out = np.empty((flat.shape[1], n_freq, n_freq, lmax + 1))
    for k in range(flat.shape[1]):  # Stokes parameters (at most 3), not pixels
        for f1 in range(n_freq):
            for f2 in range(f1, n_freq):
                out[k, f1, f2] = out[k, f2, f1] = hp.alm2cl(flat[f1, k], flat[f2, k])
    return out.reshape(lead + (n_freq, n_freq, lmax + 1))
