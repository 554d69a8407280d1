"""Drop-in for ``fgbuster.cosmology``: r forecasts after component separation, on fgjax.

Same names, signatures and result fields as fgbuster 2.0.0; NumPy in and out, float64.
Differences, all deliberate:

* ``xForecast(..., sigma_r_68CL=True)`` works (fgbuster raises ``UnboundLocalError``): it
  returns the distance from ``r_fit`` to the bound holding 68% of the likelihood above it
  (see :func:`fgjax._cosmology.fit_r`).
* The best fit of ``r`` and ``sigma(r)`` are solved to float64 precision (fgbuster refines its
  grids with ``scipy.optimize.minimize`` and passes ``**minimize_kwargs`` to those fits too;
  here they only go to the spectral fit).
* ``make_figure`` draws on a matplotlib ``Figure`` that is not shown (no display needed),
  stored as ``res.figure``; a path (``make_figure='xf.png'``) also saves it.
* The CMB spectra are fgjax's CAMB Planck 2018 spectra unless ``BlBl`` (lensing BB) and
  ``BuBu`` (tensor BB at r = 1) are given (keyword-only, uK_CMB^2).
* ``get_post_comp_sep_power`` computes the white-noise shapes of coarse resolutions exactly
  (no random simulations, no cache written to the package directory).
* Bad input (multipole range, map shapes, maps containing CMB, negative ``r``) raises
  ``ValueError`` before any work.
"""

from __future__ import annotations

import functools

import numpy as np

from fgjax import _cosmology as _cz

from . import algebra as _algebra
from ._convert import x64
from .mixingmatrix import MixingMatrix

__all__ = [
    "get_statistical_information",
    "get_post_comp_sep_power",
    "xForecast",
]


@x64
def get_statistical_information(
    components, freqs, var_t=None, var_p=None, pol_angle=(0, 0, np.pi / 4), pol_frac=(1, 1, 1)
):
    """Drop-in for ``fgbuster.cosmology.get_statistical_information``.

    See :func:`fgjax._cosmology.get_statistical_information`. ``pol_frac`` given as a NumPy
    array is not modified (fgbuster sets it to 1 in place when ``var_t`` is None).
    """
    return _cz.get_statistical_information(
        list(components),
        np.asarray(freqs, dtype=float),
        var_t,
        var_p,
        pol_angle=pol_angle,
        pol_frac=pol_frac,
    )


@x64
def get_post_comp_sep_power(
    components,
    instrument,
    nside,
    nsides,
    nosum_and_white_noise=False,
    temp=False,
    pol=False,
    target_comp="CMB",
    pol_angle=(0, 0, np.pi / 2),
    pol_frac=(1, 1, 1),
):
    """Drop-in for ``fgbuster.cosmology.get_post_comp_sep_power``.

    See :func:`fgjax._cosmology.get_post_comp_sep_power`.
    """
    return _cz.get_post_comp_sep_power(
        list(components),
        instrument,
        nside,
        nsides,
        nosum_and_white_noise=nosum_and_white_noise,
        temp=temp,
        pol=pol,
        target_comp=target_comp,
        pol_angle=pol_angle,
        pol_frac=pol_frac,
    )


def _legacy_separation(components):
    """fgbuster's step 1: ``algebra.comp_sep`` with a full diagonal ``invN`` matrix."""

    def separate(mm, freqs, d_pix, n_inv, x0, minimize_kwargs):
        legacy_mm = MixingMatrix(*components)

        def A_ev(x):  # fgbuster's evaluator, with its pure JAX twin for the traced fit
            return np.asarray(mm(freqs, np.asarray(x, dtype=float)))

        A_ev.jax = functools.partial(mm, freqs)
        A_dB_ev = legacy_mm.diff_evaluator(freqs)
        res = _algebra.comp_sep(
            A_ev, d_pix, np.diag(n_inv), A_dB_ev, legacy_mm.comp_of_dB, x0, **minimize_kwargs
        )
        res.s = np.asarray(res.s).T
        return _cz._Separation(res.x, res.Sigma, res.Sigma_inv, res.s, res)

    return separate


@x64
def xForecast(
    components,
    instrument,
    d_fgs,
    lmin,
    lmax,
    Alens=1.0,
    r=0.001,
    make_figure=False,
    multires=False,
    l_knee=0,
    alpha_knee=0,
    gridding=False,
    sigma_r_68CL=False,
    *,
    BlBl=None,
    BuBu=None,
    **minimize_kwargs,
):
    """Drop-in for ``fgbuster.xForecast`` (Stompor et al. 2016; Errard et al. 2011).

    Returns fgbuster's result: the ``comp_sep`` ``OptimizeResult`` (``x``, ``Sigma``,
    ``Sigma_inv``, ``s`` of shape ``(n_comp, n_stokes, n_pix)``, ...) with ``params``,
    ``noise``, ``bias``, ``stat``, ``var``, ``BB``, ``BuBu``, ``BlBl``, ``ell`` and
    ``cosmo_params = {'r': (r_fit, sigma_r)}`` (1-element arrays; plus ``'bounds'`` with
    ``gridding``), and ``figure`` with ``make_figure``. See :func:`fgjax._cosmology.xForecast`.
    """
    components = list(components)
    out = _cz.xForecast(
        components,
        instrument,
        d_fgs,
        lmin,
        lmax,
        Alens=Alens,
        r=r,
        make_figure=make_figure,
        multires=multires,
        l_knee=l_knee,
        alpha_knee=alpha_knee,
        gridding=gridding,
        sigma_r_68CL=sigma_r_68CL,
        BlBl=BlBl,
        BuBu=BuBu,
        _separate=_legacy_separation(components),
        _legacy=True,
        **minimize_kwargs,
    )
    res = out.separation
    res.params = list(out.params)
    res.s = out.s
    return _with_forecast(res, out)


def _with_forecast(res, out):
    """Copy xForecast's spectra, r constraint, bounds and figure onto the result ``res``."""
    for key in ("noise", "bias", "stat", "var", "BB", "BuBu", "BlBl", "ell"):
        setattr(res, key, getattr(out, key))
    res.cosmo_params = {"r": (np.array([out.r_fit]), np.array([out.sigma_r]))}
    if out.bounds is not None:
        res.cosmo_params["bounds"] = tuple(float(b) for b in out.bounds)
    if out.figure is not None:
        res.figure = out.figure
    return res


@x64
def harmonic_xForecast(
    components,
    instrument,
    d_fgs,
    lmin,
    lmax,
    Alens=1.0,
    r=0.001,
    make_figure=False,
    l_knee=0,
    alpha_knee=0,
    gridding=False,
    sigma_r_68CL=False,
    *,
    BlBl=None,
    BuBu=None,
    **minimize_kwargs,
):
    """fgjax extension (fgbuster has none): :func:`xForecast` with a harmonic spectral fit.

    Not in ``__all__`` (``from legacy_compat import *`` gives fgbuster's names only). Returns
    an ``OptimizeResult`` with xForecast's fields (``s`` is ``None``); see
    :func:`fgjax._cosmology.harmonic_xForecast`.
    """
    import scipy.optimize

    out = _cz.harmonic_xForecast(
        list(components),
        instrument,
        d_fgs,
        lmin,
        lmax,
        Alens=Alens,
        r=r,
        make_figure=make_figure,
        l_knee=l_knee,
        alpha_knee=alpha_knee,
        gridding=gridding,
        sigma_r_68CL=sigma_r_68CL,
        BlBl=BlBl,
        BuBu=BuBu,
        **minimize_kwargs,
    )
    fit = out.separation
    res = scipy.optimize.OptimizeResult(
        x=out.x,
        fun=fit.fun,
        nit=fit.nit,
        nfev=fit.nfev,
        success=fit.success,
        status=fit.status,
        message=fit.message,
        Sigma=out.Sigma,
        Sigma_inv=out.Sigma_inv,
        s=None,
        params=list(out.params),
    )
    return _with_forecast(res, out)
