r"""Forecasts of the tensor-to-scalar ratio $r$ after parametric component separation.

What this module answers is "what do foreground residuals and noise do to $r$?", in the
framework of Errard et al. (2011, PRD 84, 063005; "E11") and Stompor, Errard & Poletti
(2016, PRD 94, 083526; "S16"):

* :func:`get_statistical_information`: the Fisher information of the spectral parameters and
  component amplitudes of a single pixel.
* :func:`get_post_comp_sep_power`: white-noise plus statistical-residual power of the CMB
  after a multi-resolution component separation.
* :func:`xForecast`: pixel-domain fit of the spectral parameters on noise-free foreground
  maps, post-separation noise, statistical and systematic residual spectra, and the
  likelihood of $r$ with its best fit and 68% bound.
* :func:`harmonic_xForecast`: the same forecast with the spectral likelihood written on the
  multipoles (beams and $\ell$-dependent noise taken into account).

Layout. The JAX core (residual algebra, noise spectra, the $r$ likelihood, its fit and its
68% bound) is pure and differentiable: :func:`fit_r` returns $r$ and $\sigma(r)$ whose
gradients with respect to every input spectrum follow from the implicit function theorem,
so the whole chain from spectral parameters to $\sigma(r)$ can be differentiated. The shell
(map spectra with healpy, the spectral fit, figures) runs on the host.

Units: maps and $C_\ell$ in $\mu K_{CMB}$ and $\mu K_{CMB}^2$, depths in
$\mu K_{CMB}$ arcmin, beams (``fwhm``) in arcmin, frequencies in GHz.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import types
import warnings
from typing import Any, NamedTuple

import equinox as eqx
import healpy as hp
import jax
import jax.numpy as jnp
import numpy as np

from ._bandpass import as_frequencies
from ._mixing import MixingMatrix

__all__ = [
    "RLikelihood",
    "ResidualSpectra",
    "XForecastResult",
    "cmb_weights",
    "fit_r",
    "foreground_cross_spectra",
    "foreground_residual_spectra",
    "get_post_comp_sep_power",
    "get_statistical_information",
    "harmonic_xForecast",
    "noise_after_comp_sep",
    "r_likelihood",
    "r_neg2_log_likelihood",
    "sigma_r_68cl",
    "white_noise_shape",
    "xForecast",
]

logger = logging.getLogger(__name__)

_R_GRID = (-5.0, 0.0, 500)  # log10 range and size of the coarse grid of the r fit (fgbuster's)
_SR_GRID_TOP, _SR_GRID_N = 2.0, 1000  # the sigma(r) search grid runs up to 10**2
_N_BISECT = 80  # bisection steps inside a grid cell: far below float64 resolution
_DELTA_68 = 1.0  # Delta(-2 ln L) of a 68% interval for one parameter
_CL_68 = 0.68


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _mixing_matrix(components) -> MixingMatrix:
    if isinstance(components, MixingMatrix):
        return components
    if not isinstance(components, (list, tuple)):
        raise TypeError(
            "`components` must be a list of components (e.g. [CMB(), Dust(150.0)]) or a "
            f"MixingMatrix; got {type(components).__name__}."
        )
    return MixingMatrix(*components)


def _component_index(mm: MixingMatrix, target_comp: str, name: str = "target_comp") -> int:
    names = mm.components
    if target_comp not in names:
        raise ValueError(f"`{name}` {target_comp!r} is not one of the components {names}.")
    return names.index(target_comp)


def _instrument(instrument) -> types.SimpleNamespace:
    from ._healpix import standardize  # host-side instrument adapter shared with the recipes

    return standardize(instrument)


def _float_dtype():
    return jnp.result_type(float)


def _check_ell_range(lmin, lmax, nside: int | None) -> tuple[int, int]:
    for value, name in ((lmin, "lmin"), (lmax, "lmax")):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"`{name}` must be an integer multipole, got {value!r}.")
    lmin, lmax = int(lmin), int(lmax)
    if lmin < 0:
        raise ValueError(f"`lmin` must be >= 0, got {lmin}.")
    if lmin >= lmax:
        raise ValueError(f"`lmin` must be smaller than `lmax`, got lmin={lmin}, lmax={lmax}.")
    if nside is not None and lmax > 3 * nside - 1:
        raise ValueError(
            f"`lmax` must be at most 3 * nside - 1 = {3 * nside - 1} for maps at nside "
            f"{nside}, got {lmax}."
        )
    return lmin, lmax


def _check_nonnegative(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a real number, got {value!r}.") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`{name}` must be finite and >= 0, got {value}.")
    return value


def _bb_templates(lmin: int, lmax: int, BlBl=None, BuBu=None) -> tuple[np.ndarray, np.ndarray]:
    """Lensing BB ($A_{lens} = 1$) and tensor BB ($r = 1$) over ``lmin .. lmax``, uK^2.

    A user spectrum is either indexed by multipole from 0 (length > ``lmax``) or given on
    ``lmin .. lmax`` exactly (length ``lmax - lmin + 1``). ``None`` takes fgjax's CAMB spectra.
    """
    n_ell = lmax - lmin + 1
    out = []
    for value, name, row in ((BlBl, "BlBl", "lensed_scalar"), (BuBu, "BuBu", "tensor")):
        if value is None:
            from ._spectra import SPECTRA_ROWS, cmb_spectra

            value = getattr(cmb_spectra(lmax), row)[SPECTRA_ROWS["BB"], lmin:]
        else:
            value = np.asarray(value, dtype=float)
            if value.ndim != 1:
                raise ValueError(f"`{name}` must be a 1-d C_ell array, got shape {value.shape}.")
            if value.shape[0] > lmax and value.shape[0] != n_ell:
                value = value[lmin : lmax + 1]
            elif value.shape[0] != n_ell:
                raise ValueError(
                    f"`{name}` must hold C_ell for ell = 0 .. >= lmax ({lmax}) or exactly for "
                    f"ell = lmin .. lmax ({n_ell} values); got {value.shape[0]} values."
                )
            if not np.all(np.isfinite(value)) or np.any(value < 0):
                raise ValueError(f"`{name}` must be finite and >= 0.")
        out.append(np.array(value, dtype=float))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# Statistical information and multi-resolution noise
# ---------------------------------------------------------------------------------------------
def get_statistical_information(
    components,
    freqs,
    var_t=None,
    var_p=None,
    pol_angle=(0, 0, np.pi / 4),
    pol_frac=(1, 1, 1),
    *,
    x=None,
):
    r"""Fisher information of one pixel on the component amplitudes and spectral parameters.

    The data model of a pixel is $d = A\,s$ per Stokes parameter, with $A$ evaluated at the
    default parameters (or `x`) and every component amplitude set to 1; the derivative with
    respect to a spectral parameter is its column of $\partial A$, multiplied in Q by
    ``pol_frac * cos(2 pol_angle)`` and in U by ``pol_frac * sin(2 pol_angle)`` of its
    component. The information is $F = B^T N^{-1} B$ with $B$ = [amplitude columns of each
    Stokes block | derivative columns].

    Args:
        components: Components of the mixing matrix (or a :class:`MixingMatrix`).
        freqs: Frequencies in GHz, shape ``(n_freq,)`` (or bandpasses).
        var_t: Noise variance of the temperature channels, ``(n_freq,)``; ``None`` leaves T out.
        var_p: Noise variance of each polarisation channel (Q and U), ``(n_freq,)``; ``None``
            leaves Q and U out.
        pol_angle: Polarisation angle (rad) of each component, ``(n_comp,)``.
        pol_frac: Polarisation fraction of each component, ``(n_comp,)``; forced to 1
            without temperature (as fgbuster).
        x: Spectral parameters at which to evaluate; default ``mixing.defaults``.

    Returns:
        Square matrix of side ``n_stokes * n_comp + n_param``: amplitudes T (if any), Q, U
        (component-major within each Stokes block), then the spectral parameters.

    Raises:
        ValueError: both variances are ``None``, or a shape does not fit.
    """
    if var_t is None and var_p is None:
        raise ValueError("At least one of `var_t` and `var_p` must be given.")
    mm = _mixing_matrix(components)
    n_comp, n_param = mm.n_comp, mm.n_param
    freqs = as_frequencies(freqs)
    dtype = _float_dtype()
    if x is None:
        x = jnp.asarray(mm.defaults, dtype=dtype)
    x = jnp.asarray(x, dtype=dtype)
    if x.shape != (n_param,):
        raise ValueError(f"`x` must have shape ({n_param},) for {mm.params}, got {x.shape}.")
    pol_angle = np.asarray(pol_angle, dtype=float)
    pol_frac = np.asarray(pol_frac, dtype=float)
    if var_t is None:
        pol_frac = np.ones_like(pol_frac)
    for value, name in ((pol_angle, "pol_angle"), (pol_frac, "pol_frac")):
        if value.shape != (n_comp,):
            raise ValueError(
                f"`{name}` must have one value per component ({n_comp}), got shape {value.shape}."
            )

    A = mm(freqs, x)  # (n_freq, n_comp)
    n_freq = A.shape[0]
    if n_param:
        dA = jnp.concatenate(mm.diff(freqs, *(x[i] for i in range(n_param))), axis=-1)
    else:
        dA = jnp.zeros((n_freq, 0), dtype=A.dtype)
    comp = np.asarray(mm.comp_of_param, dtype=int)

    blocks, variances = [], []
    stokes = (["T"] if var_t is not None else []) + (["Q", "U"] if var_p is not None else [])
    n_stokes = len(stokes)
    for i, st in enumerate(stokes):
        if st == "T":
            scale = np.ones(n_param)
        elif st == "Q":
            scale = pol_frac[comp] * np.cos(2 * pol_angle[comp])
        else:
            scale = pol_frac[comp] * np.sin(2 * pol_angle[comp])
        left = jnp.zeros((n_freq, n_comp * i), dtype=A.dtype)
        right = jnp.zeros((n_freq, n_comp * (n_stokes - i - 1)), dtype=A.dtype)
        blocks.append(
            jnp.concatenate([left, A, right, dA * jnp.asarray(scale, A.dtype)[None, :]], -1)
        )
        var = var_t if st == "T" else var_p
        var = np.asarray(var, dtype=float)
        if var.shape != (n_freq,):
            raise ValueError(
                f"`{'var_t' if st == 'T' else 'var_p'}` must have shape ({n_freq},), "
                f"got {var.shape}."
            )
        if np.any(~np.isfinite(var)) or np.any(var <= 0):
            raise ValueError("Noise variances must be positive and finite.")
        variances.append(var)
    B = jnp.concatenate(blocks, axis=0)  # (n_stokes * n_freq, n_stokes * n_comp + n_param)
    n_inv = jnp.asarray(1.0 / np.concatenate(variances), dtype=B.dtype)
    return B.T @ (n_inv[:, None] * B)


def white_noise_shape(nside: int, nside_wn: int) -> np.ndarray:
    r"""Expected power spectrum of unit white noise made constant on pixels of ``nside_wn``.

    White noise of unit variance per pixel at ``nside`` is averaged in the pixels of
    ``nside_wn`` and brought back to ``nside``; the expected ``healpy.anafast`` spectrum of
    the result (``lmax = 3 nside - 1``), divided by the pixel area in sr, is returned. It is
    1 at every multipole for ``nside_wn >= nside``; for ``nside_wn = 0`` (one value for the
    whole sky) it is 1 at $\ell = 0$ and 0 elsewhere.

    fgbuster estimates this shape by 10,000 random simulations cached on disk; here it is
    the exact expectation: the averaging is a projection $P$ and anafast is quadratic in the
    map, so $E[C_\ell] = \sum_b C_\ell(1_b) / k$ over the coarse pixels $b$ ($1_b$ is the
    indicator map of $b$, $k$ the number of fine pixels in it): one transform per coarse
    pixel, no randomness and no cache.

    Args:
        nside: HEALPix resolution of the maps.
        nside_wn: Resolution at which the noise is constant (0: whole sky).

    Returns:
        Array of shape ``(3 * nside,)``.
    """
    nside, nside_wn = int(nside), int(nside_wn)
    n_ell = 3 * nside
    if nside_wn >= nside:
        return np.ones(n_ell)
    if nside_wn == 0:
        out = np.zeros(n_ell)
        out[0] = 1.0
        return out
    if not hp.isnsideok(nside_wn):
        raise ValueError(f"`nsides` must hold valid HEALPix nsides or 0, got {nside_wn}.")
    n_coarse = hp.nside2npix(nside_wn)
    coarse = hp.ud_grade(np.arange(n_coarse, dtype=float), nside)  # coarse pixel of each pixel
    coarse = np.rint(coarse).astype(np.int64)
    k = hp.nside2npix(nside) // n_coarse
    # HEALPix grids are invariant under phi -> phi + pi/2 and z -> -z at every nside, so
    # coarse pixels related by them have the same spectrum: one transform per orbit.
    theta, _ = hp.pix2ang(nside_wn, np.arange(n_coarse))
    rings, ring = np.unique(np.round(theta, 12), return_inverse=True)
    n_rings = rings.size
    first = np.searchsorted(ring, np.arange(n_rings))  # RING order: rings are contiguous
    size = np.bincount(ring, minlength=n_rings)
    position = np.arange(n_coarse) - first[ring]
    key = np.minimum(ring, n_rings - 1 - ring) * 4 * n_coarse + position % (size[ring] // 4)
    _, representative, weight = np.unique(key, return_index=True, return_counts=True)
    reduce = _auto_spectrum_operator(n_ell - 1)
    total = np.zeros(n_ell)
    chunk = max(1, 2**22 // hp.nside2npix(nside))  # indicator maps transformed per call
    for start in range(0, representative.size, chunk):  # bounded memory
        ids = representative[start : start + chunk]
        maps = (coarse[None, :] == ids[:, None]).astype(float)  # (n_ids, n_pix) indicators
        alms = np.atleast_2d(hp.map2alm(maps, lmax=n_ell - 1, iter=3, pol=False))
        power = np.asarray((np.abs(alms) ** 2) @ reduce)  # anafast of each indicator
        total += weight[start : start + chunk] @ power
    total /= k
    return total / hp.nside2pixarea(nside)


def _auto_spectrum_operator(lmax: int):
    """Sparse ``(n_alm, lmax + 1)`` map from ``|a_lm|^2`` (healpy order) to ``C_ell``."""
    import scipy.sparse as sps

    ell, m = hp.Alm.getlm(lmax)
    weight = np.where(m == 0, 1.0, 2.0) / (2.0 * ell + 1.0)
    return sps.csr_matrix((weight, (np.arange(ell.size), ell)), shape=(ell.size, lmax + 1))


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
    r"""Noise plus statistical foreground residuals of a multi-resolution separation.

    Each spectral parameter $p$ is fitted at resolution ``nsides[p]``. The variance of the
    ``target_comp`` amplitude is the inverse of :func:`get_statistical_information` (at
    ``instrument`` depths, in uK_CMB rad) restricted to the parameters fitted at least as
    finely as each unique resolution $n$; each level is weighted by the increment of
    :func:`white_noise_shape` between consecutive resolutions, the finest being the
    pixel-resolution white noise with all parameters fixed.

    Args:
        components: Components of the mixing matrix (or a :class:`MixingMatrix`).
        instrument: ``frequency`` and ``depth_i`` / ``depth_p`` (uK_CMB arcmin), as keys or
            attributes.
        nside: Resolution of the maps; the spectra have ``lmax = 3 nside - 1``.
        nsides: Resolution at which each spectral parameter is fitted (0: whole sky).
        nosum_and_white_noise: Return each resolution's term and the white-noise levels
            instead of their sum.
        temp: Include temperature.
        pol: Include polarisation (Q and U, identical outputs).
        target_comp: Name of the component whose power is returned.
        pol_angle: Polarisation angle (rad) of each component.
        pol_frac: Polarisation fraction of each component.

    Returns:
        ``(n_stokes, 3 nside)`` power, or with ``nosum_and_white_noise`` a tuple of the
        terms ``(n_stokes, n_level, 3 nside)`` and the levels ``(n_level, n_stokes)``;
        ``n_level`` is the number of unique ``nsides`` plus one.

    Raises:
        ValueError: neither ``temp`` nor ``pol``, a missing depth, or ``nsides`` not one per
            spectral parameter.
    """
    if not (temp or pol):
        raise ValueError("At least one of `temp` and `pol` must be True.")
    mm = _mixing_matrix(components)
    inst = _instrument(instrument)
    nsides = np.asarray(nsides, dtype=np.int64).reshape(-1)
    if nsides.shape != (mm.n_param,):
        raise ValueError(
            f"`nsides` must give one resolution per spectral parameter ({mm.n_param}: "
            f"{mm.params}), got {nsides.shape[0]}."
        )
    var_t = var_p = None
    if temp:
        if inst.depth_i is None:
            raise ValueError("`temp=True` needs `instrument.depth_i`.")
        var_t = np.radians(inst.depth_i / 60.0) ** 2
    if pol:
        if inst.depth_p is None:
            raise ValueError("`pol=True` needs `instrument.depth_p`.")
        var_p = np.radians(inst.depth_p / 60.0) ** 2
    info = np.asarray(
        get_statistical_information(
            mm, inst.frequency, var_t, var_p, pol_angle=pol_angle, pol_frac=pol_frac
        )
    )
    n_stokes = int(bool(temp)) + 2 * int(bool(pol))
    target = np.arange(n_stokes) * mm.n_comp + _component_index(mm, target_comp)
    n_amp = n_stokes * mm.n_comp

    def target_variance(free):
        keep = np.concatenate([np.ones(n_amp, dtype=bool), free])
        return np.diag(np.linalg.inv(info[np.ix_(keep, keep)]))[target]

    levels, shapes = [], []
    for n in np.unique(nsides):
        levels.append(target_variance(nsides >= n))
        shapes.append(white_noise_shape(nside, n))
    levels.append(target_variance(np.zeros(mm.n_param, dtype=bool)))
    shapes.append(white_noise_shape(nside, nside))
    levels = np.array(levels)  # (n_level, n_stokes)
    shapes = np.array(shapes)  # (n_level, n_ell)
    shapes[1:] = shapes[1:] - shapes[:-1]
    terms = np.einsum("ns,nl->snl", levels, shapes)
    if nosum_and_white_noise:
        return terms, levels
    return terms.sum(1)


# ---------------------------------------------------------------------------------------------
# Residual algebra (pure JAX)
# ---------------------------------------------------------------------------------------------
def cmb_weights(mixing: MixingMatrix, nu, x, n_inv, i_comp: int = 0):
    r"""Row ``i_comp`` of $W = (A^T N^{-1} A)^{-1} A^T N^{-1}$ and its first two derivatives.

    Args:
        mixing: The mixing matrix.
        nu: Frequencies (GHz) or bandpasses.
        x: Spectral parameters, ``(n_param,)``.
        n_inv: Diagonal of $N^{-1}$, ``(n_freq,)`` (only its shape across channels matters).
        i_comp: Component whose weights are returned (the CMB).

    Returns:
        ``(w, w_dB, w_dBdB)`` of shapes ``(n_freq,)``, ``(n_param, n_freq)`` and
        ``(n_param, n_param, n_freq)``; derivatives by forward-mode autodiff.
    """
    freqs = as_frequencies(nu)

    from ._likelihood import DiagonalInvN, W

    inv_noise = DiagonalInvN(jnp.asarray(n_inv))

    def w_of(params):
        return W(mixing(freqs, params), inv_noise)[i_comp]

    x = jnp.asarray(x)
    w = w_of(x)
    w_dB = jnp.moveaxis(jax.jacfwd(w_of)(x), -1, 0)
    w_dBdB = jnp.moveaxis(jax.jacfwd(jax.jacfwd(w_of))(x), (-2, -1), (0, 1))
    return w, w_dB, w_dBdB


class ResidualSpectra(NamedTuple):
    r"""Foreground residual spectra of S16 (ell axis first), uK_CMB^2.

    Attributes:
        yy: $w^T C_\ell w$, ``(n_ell,)``.
        YY: $W_{,\beta} C_\ell W_{,\beta}^T$, ``(n_ell, n_param, n_param)``.
        yz: $w^T C_\ell v$ with $v = \mathrm{tr}(\Sigma W_{,\beta\beta})$, ``(n_ell,)``.
        Yy: $W_{,\beta} C_\ell w$, ``(n_ell, n_param)``.
        Yz: $W_{,\beta} C_\ell v$, ``(n_ell, n_param)``.
        bias: systematic residuals $yy + 2 yz$ (S16, eq. 23), ``(n_ell,)``.
        stat: statistical residuals $\mathrm{tr}(\Sigma\, YY)$ (E11, eq. 12), ``(n_ell,)``.
        var: variance of the residuals (S16, eq. 28), ``(n_ell,)``.
    """

    yy: jax.Array
    YY: jax.Array
    yz: jax.Array
    Yy: jax.Array
    Yz: jax.Array
    bias: jax.Array
    stat: jax.Array
    var: jax.Array


def foreground_residual_spectra(w, w_dB, w_dBdB, Sigma, cl_fgs) -> ResidualSpectra:
    r"""Systematic and statistical foreground residuals in the recovered CMB.

    Args:
        w: CMB weights, ``(n_freq,)`` or ``(n_ell, n_freq)`` (multipole-dependent).
        w_dB: Their derivatives, ``(n_param, n_freq)`` or ``(n_ell, n_param, n_freq)``.
        w_dBdB: Second derivatives, ``(n_param, n_param, n_freq)`` or with a leading
            ``n_ell`` axis.
        Sigma: Covariance of the spectral parameters, ``(n_param, n_param)``.
        cl_fgs: Foreground cross-spectra, ``(n_freq, n_freq, n_ell)``.

    Returns:
        :class:`ResidualSpectra`.
    """
    C = jnp.moveaxis(jnp.asarray(cl_fgs), -1, 0)  # (n_ell, n_freq, n_freq)
    n_ell, n_freq = C.shape[0], C.shape[-1]
    w = jnp.broadcast_to(w, (n_ell, n_freq))
    w_dB = jnp.broadcast_to(w_dB, (n_ell,) + w_dB.shape[-2:])
    w_dBdB = jnp.broadcast_to(w_dBdB, (n_ell,) + w_dBdB.shape[-3:])
    v = jnp.einsum("ij,lijf->lf", Sigma, w_dBdB)
    yy = jnp.einsum("lf,lfg,lg->l", w, C, w)
    YY = jnp.einsum("lif,lfg,ljg->lij", w_dB, C, w_dB)
    yz = jnp.einsum("lf,lfg,lg->l", w, C, v)
    Yy = jnp.einsum("lif,lfg,lg->li", w_dB, C, w)
    Yz = jnp.einsum("lif,lfg,lg->li", w_dB, C, v)
    stat = jnp.einsum("ij,lij->l", Sigma, YY)
    var = stat**2 + 2 * jnp.einsum("li,ij,lj->l", Yy, Sigma, Yy)
    return ResidualSpectra(yy, YY, yz, Yy, Yz, yy + 2 * yz, stat, var)


def noise_after_comp_sep(A, depth_p, ell, fwhm=None, i_comp: int = 0):
    r"""Noise power of component ``i_comp`` after separation, $[(A^T N_\ell^{-1} A)^{-1}]_{cc}$.

    $N_\ell$ is diagonal: $(\mathrm{depth}_\nu$ [uK rad]$)^2 / b_\ell^2$ with Gaussian beams.

    Args:
        A: Mixing matrix ``(n_freq, n_comp)``.
        depth_p: Polarisation depths, uK_CMB arcmin, ``(n_freq,)``.
        ell: Multipoles, ``(n_ell,)``.
        fwhm: Beam FWHM in arcmin, ``(n_freq,)``; ``None`` for no beam.
        i_comp: Component index.

    Returns:
        ``(n_ell,)`` array in uK_CMB^2.
    """
    dtype = A.dtype
    ell = jnp.asarray(ell).astype(dtype)
    sigma2 = jnp.radians(jnp.asarray(depth_p, dtype=dtype) / 60.0) ** 2  # (n_freq,)
    if fwhm is None:
        inv_nl = jnp.broadcast_to((1.0 / sigma2)[:, None], (sigma2.shape[0], ell.shape[0]))
    else:
        s = jnp.radians(jnp.asarray(fwhm, dtype=dtype) / 60.0) / math.sqrt(8 * math.log(2))
        bl2 = jnp.exp(-(ell * (ell + 1))[None, :] * (s**2)[:, None])  # b_ell^2
        inv_nl = bl2 / sigma2[:, None]
    AtNA = jnp.einsum("fi,fl,fj->lij", A, inv_nl, A)
    return jnp.linalg.inv(AtNA)[:, i_comp, i_comp]


# ---------------------------------------------------------------------------------------------
# The likelihood of r (pure JAX)
# ---------------------------------------------------------------------------------------------
class RLikelihood(NamedTuple):
    r"""Inputs of the noise-averaged likelihood of $r$ (S16, appendix C; fgbuster's form).

    $-2\ln L(r) = \sum_\ell \nu_\ell\,[\ln M_\ell(r) + D_\ell / M_\ell(r)]$ with
    $M_\ell(r) = $ ``fixed`` $+\, r\,$ ``tensor`` and $\nu_\ell = (2\ell + 1) f_{sky}$.

    Attributes:
        dof: $\nu_\ell$, ``(n_ell,)``.
        data: $D_\ell$: fiducial BB + noise + statistical and systematic residuals.
        fixed: $A_{lens}\,C_\ell^{lens}$ + noise + statistical residuals.
        tensor: $C_\ell^{BB}$ of tensors at $r = 1$.
    """

    dof: jax.Array
    data: jax.Array
    fixed: jax.Array
    tensor: jax.Array


def r_likelihood(ell, fsky, cl_bb_fid, cl_lens, cl_tensor, noise, stat, bias, Alens=1.0):
    r"""Assemble :class:`RLikelihood` from spectra over ``ell`` (all ``(n_ell,)``, uK^2).

    Args:
        ell: Multipoles.
        fsky: Observed sky fraction.
        cl_bb_fid: Fiducial BB of the data, $A_{lens} C^{lens} + r_{fid} C^{tensor}$.
        cl_lens: Lensing BB at $A_{lens} = 1$.
        cl_tensor: Tensor BB at $r = 1$.
        noise: Noise after separation.
        stat: Statistical residuals $\mathrm{tr}(\Sigma YY)$ (in model and data).
        bias: Systematic residuals $yy + 2yz$ (data only).
        Alens: Lensing amplitude of the model.
    """
    noise = jnp.asarray(noise)
    dtype = noise.dtype
    dof = (2 * jnp.asarray(ell).astype(dtype) + 1) * fsky
    data = cl_bb_fid + noise + stat + bias
    fixed = cl_lens * Alens + noise + stat
    return RLikelihood(dof, data, fixed, jnp.asarray(cl_tensor, dtype=dtype))


def r_neg2_log_likelihood(r, lik: RLikelihood):
    r"""$-2 \ln L(r)$ up to a constant (see :class:`RLikelihood`); pure, any shape of ``r``."""
    r = jnp.asarray(r)
    lead = (1,) * r.ndim

    def ell_axis(a):
        return jnp.reshape(a, lead + jnp.shape(a))

    model = ell_axis(lik.fixed) + ell_axis(lik.tensor) * r[..., None]
    return jnp.sum(ell_axis(lik.dof) * (jnp.log(model) + ell_axis(lik.data) / model), axis=-1)


def _bisect(f, lo, hi):
    """Root of ``f`` in ``[lo, hi]`` with ``f(lo) <= 0 <= f(hi)``: fixed bisection steps."""

    def step(_, bounds):
        a, b = bounds
        m = 0.5 * (a + b)
        neg = f(m) <= 0
        return jnp.where(neg, m, a), jnp.where(neg, b, m)

    a, b = jax.lax.fori_loop(0, _N_BISECT, step, (lo, hi))
    return 0.5 * (a + b)


def _implicit(root, g, interior):
    """Attach implicit-function gradients to a root of ``g``: value unchanged, d root/d theta
    = -g_theta / g_r (zero where the root sits on a bound, ``interior`` False)."""
    r0 = jax.lax.stop_gradient(root)
    slope = jax.lax.stop_gradient(jax.grad(g)(r0))
    safe = jnp.where(interior, slope, 1.0)
    corrected = r0 - g(r0) / safe
    return jnp.where(interior, corrected - jax.lax.stop_gradient(corrected - r0), r0)


def fit_r(lik: RLikelihood, sigma_r_68CL: bool = False):
    r"""Best-fit $r$ and its 68% bound: fgbuster's procedure, solved exactly, differentiable.

    The best fit minimises $-2\ln L$ over $r \ge 0$: coarse grid ``logspace(-5, 0, 500)``,
    then the root of $\partial_r(-2\ln L)$ between the grid neighbours of the minimum
    (bisection, exact to float64; a bound when the minimum is there, $r \in [0, 1]$).
    $\sigma(r)$ is the distance from $r_{fit}$ to the crossing of $\Delta(-2\ln L) = 1$ above
    it, located on ``logspace(log10 r_fit, 2, 1000)`` and refined by bisection. With
    ``sigma_r_68CL``, $\sigma(r) = r_{68} - r_{fit}$ where $[r_{fit}, r_{68}]$ holds 68% of
    the likelihood $\exp(-\Delta/2)$ above $r_{fit}$ (flat prior in $r$; for a Gaussian
    likelihood away from 0 this is 0.994 $\sigma$; for $r_{fit} = 0$ it is the 68% upper limit).

    Derivatives with respect to every field of ``lik`` follow the implicit function theorem
    (the roots are not differentiated through the iterations). Works under ``jit``/``vmap``.

    Returns:
        ``(r_fit, sigma_r, found)``: ``found`` is False when $\Delta(-2\ln L)$ stays below 1
        up to $r = 100$ (then ``sigma_r`` is $100 - r_{fit}$).
    """
    dtype = lik.data.dtype

    def L(r):
        return r_neg2_log_likelihood(r, lik)

    def g(r):
        return jax.grad(L)(r)

    lo_exp, hi_exp, n_grid = _R_GRID
    grid = jnp.logspace(lo_exp, hi_exp, n_grid, dtype=dtype)
    values = L(grid)
    i = jnp.argmin(values)
    lo = jnp.where(i == 0, 0.0, grid[jnp.maximum(i - 1, 0)])
    hi = jnp.where(i == n_grid - 1, 1.0, grid[jnp.minimum(i + 1, n_grid - 1)])
    g_lo, g_hi = g(lo), g(hi)
    root = _bisect(g, lo, hi)
    r_star = jnp.where(g_lo >= 0, lo, jnp.where(g_hi <= 0, hi, root))
    interior = (g_lo < 0) & (g_hi > 0)
    r_fit = _implicit(r_star, g, interior)
    L_min = L(r_fit)

    if not sigma_r_68CL:

        def h(r):
            return L(r) - L_min - _DELTA_68

        r_sg = jax.lax.stop_gradient(r_fit)
        start = jnp.log10(jnp.where(r_sg > 0, r_sg, 10.0**lo_exp))
        frac = jnp.linspace(0.0, 1.0, _SR_GRID_N, dtype=dtype)
        sgrid = 10.0 ** (start + (_SR_GRID_TOP - start) * frac)
        hv = h(sgrid)
        above = hv >= 0
        found = jnp.any(above)
        j = jnp.argmax(above)
        a = jnp.where(j == 0, r_sg, sgrid[jnp.maximum(j - 1, 0)])
        b = sgrid[j]
        a = jnp.where(h(a) > 0, r_sg, a)
        root = _bisect(h, a, b)
        r1 = jnp.where(found, root, sgrid[-1])
        r1 = _implicit(r1, h, found)
        return r_fit, r1 - r_fit, found
    sigma = sigma_r_68cl(lik, r_fit)
    return r_fit, sigma, jnp.isfinite(sigma)


def sigma_r_68cl(lik: RLikelihood, r_fit, n_grid: int = 4001):
    r"""68% one-sided bound above ``r_fit`` of $L(r) \propto \exp(-\Delta(-2\ln L)/2)$.

    The likelihood is integrated (trapezoid, flat prior in $r$) on a linear grid from
    ``r_fit`` to where $\Delta(-2\ln L)$ reaches 50; the bound is where the cumulative
    integral reaches 68% of the total. Returns $r_{68} - r_{fit}$.
    """
    dtype = lik.data.dtype

    def L(r):
        return r_neg2_log_likelihood(r, lik)

    L_min = L(r_fit)
    r_sg = jax.lax.stop_gradient(r_fit)
    # Extent of the grid: where Delta reaches 50, bracketed on a log grid up to r = 100.
    probe = r_sg + jnp.logspace(-8.0, 2.0, 400, dtype=dtype)
    delta = L(probe) - jax.lax.stop_gradient(L_min)
    k = jnp.argmax(delta >= 50.0)
    top = jnp.where(jnp.any(delta >= 50.0), probe[k], probe[-1])
    t = jnp.linspace(0.0, 1.0, n_grid, dtype=dtype)
    grid = r_fit + (top - r_sg) * t
    like = jnp.exp(-0.5 * (L(grid) - L_min))
    cum = jnp.concatenate(
        [jnp.zeros(1, dtype=dtype), jnp.cumsum(0.5 * (like[1:] + like[:-1]) * jnp.diff(grid))]
    )
    r68 = jnp.interp(_CL_68 * cum[-1], cum, grid)
    return r68 - r_fit


def _gridding_bounds(lik: RLikelihood, legacy: bool):
    """fgbuster's ``gridding`` bounds on a linear grid ``r in [-0.05, 0.1]`` (10,000 points).

    Returns ``(neg 5 sigma, neg 68%, pos 68%, pos 5 sigma)`` distances from the grid
    minimum. ``legacy`` weights the grid by ``exp(-Delta)`` as fgbuster does; otherwise by the
    likelihood ``exp(-Delta / 2)``.
    """
    grid = np.linspace(-0.05, 0.1, num=10000)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.asarray(r_neg2_log_likelihood(jnp.asarray(grid), lik))
    good = ~np.isnan(values)
    grid, values = grid[good], values[good]
    i = int(np.argmin(values))
    r_best = grid[i]
    like = np.exp(-(values - values.min()) * (1.0 if legacy else 0.5))
    pos, neg = grid > r_best, grid < r_best
    if not (pos.any() and neg.any()):
        raise ValueError(
            f"`gridding`: the likelihood of r peaks at the edge of [-0.05, 0.1] (r = {r_best:g});"
            " its bounds are not defined there."
        )
    cum = np.cumsum(like[pos])
    cum /= cum[-1]
    cum_neg = np.cumsum(like[neg][::-1])
    cum_neg /= cum_neg[-1]
    rs_pos, rs_neg = grid[pos], grid[neg][::-1]
    return (
        r_best - rs_neg[np.argmin(np.abs(cum_neg - 0.999999))],
        r_best - rs_neg[np.argmin(np.abs(cum_neg - _CL_68))],
        rs_pos[np.argmin(np.abs(cum - _CL_68))] - r_best,
        rs_pos[np.argmin(np.abs(cum - 0.999999))] - r_best,
    )


# ---------------------------------------------------------------------------------------------
# Host side: map spectra, inputs, result, figure
# ---------------------------------------------------------------------------------------------
def _check_maps(d_fgs, n_freq: int) -> tuple[np.ndarray, int]:
    d = np.asarray(d_fgs)
    if not np.issubdtype(d.dtype, np.floating):
        d = d.astype(float)
    if d.ndim != 3 or d.shape[1] not in (2, 3):
        raise ValueError(
            "`d_fgs` must have shape (n_freq, n_stokes, n_pix) with n_stokes 2 (Q, U) or 3 "
            f"(I, Q, U); got {d.shape}."
        )
    if d.shape[0] != n_freq:
        raise ValueError(
            f"`d_fgs` has {d.shape[0]} frequency maps but `instrument` has {n_freq} channels."
        )
    if not hp.isnpixok(d.shape[-1]):
        raise ValueError(f"`d_fgs`: {d.shape[-1]} pixels is not a HEALPix map size (12 nside^2).")
    if not np.all(np.isfinite(d)):
        raise ValueError("`d_fgs` must be finite; set masked pixels to 0, not UNSEEN or NaN.")
    if np.any(d == hp.UNSEEN):
        raise ValueError("`d_fgs` holds UNSEEN pixels; set masked pixels to 0 instead.")
    return d, hp.npix2nside(d.shape[-1])


def _cross_spectra(alms: np.ndarray, lmax: int) -> np.ndarray:
    """Cross-spectra of ``alms`` ``(n_map, n_alm)`` (healpy order): ``(n_map, n_map, lmax + 1)``."""
    reduce = _auto_spectrum_operator(lmax)
    re, im = alms.real, alms.imag
    out = np.empty((alms.shape[0], alms.shape[0], lmax + 1))
    for f in range(alms.shape[0]):
        out[f] = (reduce.T @ (re[f][:, None] * re.T + im[f][:, None] * im.T)).T
    return out


def foreground_cross_spectra(d_fgs, lmax: int, iter: int = 10):
    r"""E and B cross-spectra of foreground maps, and the observed sky fraction (healpy).

    The maps are transformed with ``healpy.map2alm(..., iter=iter)`` (I set to 0 when only
    Q and U are given) and every pair of channels is cross-correlated; the spectra are
    divided by $f_{sky}$, the fraction of pixels where the first map is non-zero (masked
    pixels are zeros).

    Args:
        d_fgs: Maps ``(n_freq, 2 or 3, n_pix)``, uK_CMB.
        lmax: Largest multipole.
        iter: Jacobi iterations of ``map2alm``.

    Returns:
        ``(cl_ee, cl_bb, fsky)``, the spectra of shape ``(n_freq, n_freq, lmax + 1)``.
    """
    d = np.asarray(d_fgs, dtype=float)
    n_freq, n_pix = d.shape[0], d.shape[-1]
    fsky = float(np.count_nonzero(d[0, 0] != 0.0)) / n_pix
    if fsky == 0:
        raise ValueError("`d_fgs`: the first map is zero everywhere (no observed pixel).")
    if d.shape[1] == 2:
        d = np.concatenate([np.zeros((n_freq, 1, n_pix)), d], axis=1)
    alms = [hp.map2alm(m, lmax=lmax, iter=iter, pol=True) for m in d]  # loop over channels
    alm_e = np.stack([a[1] for a in alms])
    alm_b = np.stack([a[2] for a in alms])
    return _cross_spectra(alm_e, lmax) / fsky, _cross_spectra(alm_b, lmax) / fsky, fsky


def _check_no_cmb(w, cl_ee, lmin: int, lmax: int) -> None:
    """Raise if the recovered CMB carries E-mode power comparable to the CMB's own."""
    from ._spectra import SPECTRA_ROWS, cmb_spectra

    w = np.asarray(w)
    w = np.broadcast_to(w, (lmax + 1 - lmin, w.shape[-1])) if w.ndim == 1 else w
    ee_rec = np.einsum("lf,fgl,lg->l", w, cl_ee[..., lmin : lmax + 1], w).sum()
    ee_cmb = cmb_spectra(lmax).lensed_scalar[SPECTRA_ROWS["EE"], lmin:].sum()
    if ee_rec > 0.5 * ee_cmb:
        raise ValueError(
            "`d_fgs` must hold foregrounds only (no CMB): the E-mode power of the recovered "
            f"CMB over ell {lmin}..{lmax} is {ee_rec / ee_cmb:.2g} times the CMB's own."
        )


@dataclasses.dataclass(frozen=True)
class XForecastResult:
    r"""Result of :func:`xForecast` / :func:`harmonic_xForecast` (NumPy arrays, uK_CMB^2).

    Attributes:
        x: Fitted spectral parameters ``(n_param,)``.
        params: Their names.
        Sigma: Their covariance; ``Sigma_inv`` its inverse (the Fisher matrix).
        s: Separated components (pixel domain: ``(n_comp, n_stokes, n_pix)``; ``None`` for the
            harmonic forecast).
        ell: Multipoles ``lmin .. lmax``.
        noise: Noise after separation; ``stat``, ``bias``, ``var``: statistical and
            systematic residuals and their variance (S16).
        BB: Fiducial BB ($A_{lens}$, $r$); ``BuBu``: tensor BB at $r = 1$; ``BlBl``: lensing
            BB at $A_{lens} = 1$.
        r_fit, sigma_r: Best-fit $r$ and its 68% error (see :func:`fit_r`).
        sigma_r_found: False when $\Delta(-2\ln L) = 1$ was not reached below $r = 100$.
        bounds: With ``gridding``, ``(neg 5 sigma, neg 68%, pos 68%, pos 5 sigma)``.
        fsky: Observed sky fraction.
        likelihood: The :class:`RLikelihood` (to evaluate or differentiate $L(r)$).
        separation: The component-separation result the forecast started from.
        figure: The matplotlib Figure when ``make_figure`` (else ``None``).
    """

    x: np.ndarray
    params: list
    Sigma: np.ndarray
    Sigma_inv: np.ndarray
    s: Any
    ell: np.ndarray
    noise: np.ndarray
    bias: np.ndarray
    stat: np.ndarray
    var: np.ndarray
    BB: np.ndarray
    BuBu: np.ndarray
    BlBl: np.ndarray
    r_fit: float
    sigma_r: float
    sigma_r_found: bool
    fsky: float
    likelihood: RLikelihood
    bounds: tuple | None = None
    separation: Any = None
    figure: Any = None

    @property
    def cosmo_params(self) -> dict:
        """fgbuster's layout: ``{'r': (r_fit, sigma_r)}`` (plus ``'bounds'`` with gridding)."""
        out = {"r": (self.r_fit, self.sigma_r)}
        if self.bounds is not None:
            out["bounds"] = self.bounds
        return out


def _draw(ell, BB, BuBu, stat, bias, noise, r, lmin, lmax, lik, target):
    """fgbuster's xForecast figure, drawn on a matplotlib Figure (no pyplot, no display)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 12), facecolor="w", edgecolor="k")
    ax = fig.add_subplot(1, 1, 1)
    ax0 = fig.add_axes((0.2, 0.2, 0.15, 0.2))
    ax0.set_title(rf"$\ell_{{\min}}={lmin} \rightarrow \ell_{{\max}}={lmax}$", fontsize=16)
    ax.loglog(ell, BB, color="DarkGray", linestyle="-", label="BB tot", linewidth=2.0)
    ax.loglog(
        ell,
        BuBu * r,
        color="DarkGray",
        linestyle="--",
        label=f"primordial BB for r={r}",
        linewidth=2.0,
    )
    ax.loglog(ell, stat, color="DarkOrange", label="statistical residuals", linewidth=2.0)
    ax.loglog(
        ell, bias, color="DarkOrange", linestyle="--", label="systematic residuals", linewidth=2.0
    )
    ax.loglog(
        ell,
        noise,
        color="DarkBlue",
        linestyle="--",
        label="noise after component separation",
        linewidth=2.0,
    )
    ax.legend()
    ax.set_xlabel(r"$\ell$", fontsize=20)
    ax.set_ylabel(r"$C_\ell$ [$\mu$K$^2$]", fontsize=20)
    ax.set_xlim(lmin, lmax)
    r_grid = np.logspace(-4, -1, num=500)
    chi2 = np.asarray(r_neg2_log_likelihood(jnp.asarray(r_grid), lik))
    ax0.semilogx(
        r_grid,
        np.exp(-0.5 * (chi2 - chi2.min())),
        color="DarkOrange",
        linestyle="-",
        linewidth=2.0,
        alpha=0.8,
    )
    ax0.axvline(x=r, color="k", linestyle="--")
    ax0.set_ylabel(r"$\mathcal{L}(r)$", fontsize=20)
    ax0.set_xlabel(r"tensor-to-scalar ratio $r$", fontsize=20)
    if target:
        fig.savefig(os.fspath(target))
    return fig


# ---------------------------------------------------------------------------------------------
# Forecasts
# ---------------------------------------------------------------------------------------------
class _Separation(NamedTuple):
    x: np.ndarray
    Sigma: np.ndarray
    Sigma_inv: np.ndarray
    s: Any
    result: Any


def _native_separation(mm, freqs, d_pix, n_inv, x0, minimize_kwargs) -> _Separation:
    """Spectral fit with fgjax's ``comp_sep`` (shared A, diagonal white noise per pixel).

    ``d_pix`` is pixel-major ``(n_pix, n_stokes, n_freq)``; ``s`` comes back component-major
    ``(n_comp, n_stokes, n_pix)`` as fgbuster's xForecast returns it.
    """
    from ._likelihood import DiagonalInvN
    from ._optimize import comp_sep

    dtype = _float_dtype()
    res = comp_sep(
        functools.partial(mm, freqs),
        jnp.asarray(d_pix, dtype=dtype),
        DiagonalInvN(jnp.asarray(n_inv, dtype=dtype)),
        jnp.asarray(x0, dtype=dtype),
        **minimize_kwargs,
    )
    return _Separation(
        np.asarray(res.x),
        np.asarray(res.Sigma),
        np.asarray(res.Sigma_inv),
        np.asarray(res.s).T,
        res,
    )


def _validate(components, inst, lmin, lmax, Alens, r, nside, BlBl, BuBu):
    mm = _mixing_matrix(components)
    if inst.depth_p is None:
        raise ValueError("`instrument` must provide `depth_p` (uK_CMB arcmin) for a forecast.")
    freqs = as_frequencies(inst.frequency)
    n_freq = freqs.n_freq
    if inst.depth_p.shape != (n_freq,):
        raise ValueError(
            f"`instrument.depth_p` must have {n_freq} values, got {inst.depth_p.shape}."
        )
    if inst.fwhm is not None and inst.fwhm.shape != (n_freq,):
        raise ValueError(f"`instrument.fwhm` must have {n_freq} values, got {inst.fwhm.shape}.")
    lmin, lmax = _check_ell_range(lmin, lmax, nside)
    Alens = _check_nonnegative(Alens, "Alens")
    r = _check_nonnegative(r, "r")
    i_cmb = _component_index(mm, "CMB", "components")
    if mm.n_param == 0:
        raise ValueError("`components` have no free spectral parameter: nothing to forecast.")
    templates = _bb_templates(lmin, lmax, BlBl, BuBu)
    return mm, inst, freqs, lmin, lmax, Alens, r, i_cmb, templates


def _finish(
    *,
    mm,
    inst,
    x,
    Sigma,
    Sigma_inv,
    s,
    separation,
    spectra,
    noise,
    fsky,
    nside,
    lmin,
    lmax,
    Alens,
    r,
    make_figure,
    multires,
    l_knee,
    alpha_knee,
    gridding,
    sigma_r_68CL,
    templates,
    i_cmb,
    legacy,
):
    """Residuals, noise and the r likelihood, common to the pixel and harmonic forecasts."""
    ell = np.arange(lmin, lmax + 1)
    noise = np.asarray(noise)
    lens, tensor = templates
    BB = lens * Alens + r * tensor
    stat = np.asarray(spectra.stat)
    tr_sigma_yy = stat
    if multires:
        if mm.n_param != 3:
            raise ValueError(
                "`multires=True` follows LiteBIRD's three parameters fitted at nsides "
                f"(64, 8, 4), (64, 4, 2), (64, 0, 2); these components have {mm.n_param}."
            )
        if lmin < 2:
            raise ValueError("`multires=True` needs `lmin >= 2`.")
        terms = [
            get_post_comp_sep_power(
                mm, inst, nside, ns, temp=False, pol=True, pol_angle=(0, 0, 0), pol_frac=(1, 1, 1)
            )[0, lmin - 2 : lmax - 1]
            for ns in ((64, 8, 4), (64, 4, 2), (64, 0, 2))
        ]
        tr_sigma_yy = (terms[0] + terms[1] + terms[2]) / 3 / 2  # fgbuster's ad-hoc factor 2
        stat = tr_sigma_yy.copy()
    if l_knee != 0:
        boost = 1 + (float(l_knee) / ell) ** float(alpha_knee)
        tr_sigma_yy = tr_sigma_yy * boost
        noise = noise * boost  # fgbuster reports the boosted noise
    dtype = spectra.bias.dtype
    lik = _r_likelihood_jit(
        *(jnp.asarray(a, dtype=dtype) for a in (ell, fsky, BB, lens, tensor, noise, tr_sigma_yy)),
        spectra.bias,
        jnp.asarray(Alens, dtype),
    )
    r_fit, sigma_r, found = _fit_r_jit(lik, bool(sigma_r_68CL))
    r_fit, sigma_r, found = float(r_fit), float(sigma_r), bool(found)
    if not found:
        warnings.warn(
            "xForecast: Delta(-2 ln L) stays below 1 up to r = 100; sigma_r is a lower bound.",
            RuntimeWarning,
            stacklevel=3,
        )
    bounds = _gridding_bounds(lik, legacy) if gridding else None
    figure = None
    if make_figure:
        target = None if make_figure is True else make_figure
        figure = _draw(
            ell, BB, tensor, stat, np.asarray(spectra.bias), noise, r, lmin, lmax, lik, target
        )
    logger.info("xForecast: r = %g +- %g", r_fit, sigma_r)
    return XForecastResult(
        x=np.asarray(x),
        params=mm.params,
        Sigma=np.asarray(Sigma),
        Sigma_inv=np.asarray(Sigma_inv),
        s=s,
        ell=ell,
        noise=np.asarray(noise),
        bias=np.asarray(spectra.bias),
        stat=np.asarray(stat),
        var=np.asarray(spectra.var),
        BB=BB,
        BuBu=tensor,
        BlBl=lens,
        r_fit=r_fit,
        sigma_r=sigma_r,
        sigma_r_found=found,
        fsky=fsky,
        likelihood=lik,
        bounds=bounds,
        separation=separation,
        figure=figure,
    )


_fit_r_jit = jax.jit(fit_r, static_argnums=1)
_r_likelihood_jit = jax.jit(r_likelihood)


@eqx.filter_jit
def _pixel_core(mm, freqs, x, n_inv, Sigma, cl, depth_p, ell, fwhm, i_cmb):
    """CMB weights at ``x``, foreground residual spectra and post-separation noise."""
    w, w_dB, w_dBdB = cmb_weights(mm, freqs, x, n_inv, i_cmb)
    spectra = foreground_residual_spectra(w, w_dB, w_dBdB, Sigma, cl)
    noise = noise_after_comp_sep(mm(freqs, x), depth_p, ell, fwhm, i_cmb)
    return w, spectra, noise


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
    _separate=None,
    _legacy=False,
    **minimize_kwargs,
) -> XForecastResult:
    r"""Forecast $r$ and $\sigma(r)$ from noise-free foreground maps (S16; E11).

    1. Fit the spectral parameters of ``components`` on the Q and U maps ``d_fgs`` with the
       pixel spectral likelihood, white noise ``depth_p`` per pixel (``comp_sep``): best fit
       ``x`` and covariance ``Sigma``.
    2. Noise of the recovered CMB, $[(A^T N_\ell^{-1} A)^{-1}]_{CMB}$ (beams from
       ``instrument.fwhm`` when given).
    3. BB cross-spectra of the maps (healpy, divided by $f_{sky}$).
    4. Systematic (``bias``) and statistical (``stat``) residuals from the CMB row of $W$ and
       its derivatives at ``x``.
    5. The likelihood of $r$ (see :class:`RLikelihood`), its best fit and 68% error
       (:func:`fit_r`).

    Args:
        components: Components, one of them ``CMB`` (or a :class:`MixingMatrix`).
        instrument: ``frequency`` (GHz), ``depth_p`` (uK_CMB arcmin) and optionally ``fwhm``
            (arcmin), as keys or attributes.
        d_fgs: Foreground maps without CMB, ``(n_freq, n_stokes, n_pix)``, n_stokes 2 (Q, U)
            or 3 (I, Q, U; I is not used in the fit); masked pixels set to 0.
        lmin: Lowest multipole of the likelihood, ``0 <= lmin < lmax``.
        lmax: Highest multipole of the likelihood, ``lmax <= 3 nside - 1``.
        Alens: Lensing amplitude of the model and the data (>= 0).
        r: Fiducial tensor-to-scalar ratio of the data (>= 0).
        make_figure: ``True`` draws fgbuster's figure (returned as ``result.figure``, a
            matplotlib Figure not attached to pyplot); a path also saves it there.
        multires: Statistical residuals of LiteBIRD's multi-resolution separation
            (:func:`get_post_comp_sep_power`, fgbuster's recipe).
        l_knee: Knee multipole of the boost of noise and statistical residuals by
            $1 + (\ell_{knee}/\ell)^{\alpha_{knee}}$.
        alpha_knee: Slope of that boost.
        gridding: Also grid $L(r)$ on $[-0.05, 0.1]$ for 68% and 5-sigma bounds.
        sigma_r_68CL: $\sigma(r)$ from the 68% integral of the likelihood above $r_{fit}$
            instead of $\Delta(-2\ln L) = 1$ (see :func:`fit_r`).
        BlBl: Lensing BB ($A_{lens}=1$) to use instead of fgjax's CAMB spectrum, uK^2,
            indexed from $\ell = 0$ or given on ``lmin .. lmax``.
        BuBu: Tensor BB at $r = 1$, same conventions.
        **minimize_kwargs: Passed to the spectral fit (``comp_sep``).

    Returns:
        :class:`XForecastResult`.

    Raises:
        ValueError: bad multipole range (``lmin >= lmax``, ``lmax > 3 nside - 1``), maps
            whose shape does not fit the instrument, maps that contain CMB, negative ``r``
            or ``Alens``, no ``CMB`` component, or no ``depth_p``.
    """
    inst = _instrument(instrument)
    d, nside = _check_maps(d_fgs, as_frequencies(inst.frequency).n_freq)
    mm, inst, freqs, lmin, lmax, Alens, r, i_cmb, templates = _validate(
        components, inst, lmin, lmax, Alens, r, nside, BlBl, BuBu
    )
    dtype = _float_dtype()
    n_inv = (hp.nside2resol(nside, arcmin=True) / inst.depth_p) ** 2  # (n_freq,)
    d_sep = d[:, 1:] if d.shape[1] == 3 else d
    x0 = np.asarray(mm.defaults, dtype=float)
    separate = _native_separation if _separate is None else _separate
    sep = separate(mm, freqs, np.ascontiguousarray(d_sep.T), n_inv, x0, dict(minimize_kwargs))
    cl_ee, cl_bb, fsky = foreground_cross_spectra(d, lmax)
    w, spectra, noise = _pixel_core(
        mm,
        freqs,
        jnp.asarray(sep.x, dtype=dtype),
        jnp.asarray(n_inv, dtype=dtype),
        jnp.asarray(sep.Sigma, dtype=dtype),
        jnp.asarray(cl_bb[..., lmin:], dtype=dtype),
        jnp.asarray(inst.depth_p, dtype=dtype),
        jnp.arange(lmin, lmax + 1).astype(dtype),
        None if inst.fwhm is None else jnp.asarray(inst.fwhm, dtype=dtype),
        i_cmb,
    )
    _check_no_cmb(w, cl_ee, lmin, lmax)
    return _finish(
        mm=mm,
        inst=inst,
        x=sep.x,
        Sigma=sep.Sigma,
        Sigma_inv=sep.Sigma_inv,
        s=sep.s,
        separation=sep.result,
        spectra=spectra,
        noise=noise,
        fsky=fsky,
        nside=nside,
        lmin=lmin,
        lmax=lmax,
        Alens=Alens,
        r=r,
        make_figure=make_figure,
        multires=multires,
        l_knee=l_knee,
        alpha_knee=alpha_knee,
        gridding=gridding,
        sigma_r_68CL=sigma_r_68CL,
        templates=templates,
        i_cmb=i_cmb,
        legacy=_legacy,
    )


class _HarmonicObjective(eqx.Module):
    """$-\\log L(x)$ of the harmonic spectral likelihood: ``fun(x, (cw, n_inv))``."""

    mixing: MixingMatrix = eqx.field(static=True)
    freqs: Any

    def __call__(self, x, args):
        from ._likelihood import DiagonalInvN, logL_from_covariance

        cw, n_inv = args
        value, _ = logL_from_covariance(self.mixing(self.freqs, x), cw, DiagonalInvN(n_inv))
        return -value


def _harmonic_inputs(depth_p, fwhm, ell, dtype):
    """Inverse noise per multipole and channel, ``b_ell^2 / depth^2`` (uK rad)^-2."""
    ell = jnp.asarray(ell).astype(dtype)
    sigma2 = jnp.radians(jnp.asarray(depth_p, dtype=dtype) / 60.0) ** 2
    if fwhm is None:
        return jnp.broadcast_to((1.0 / sigma2)[None, :], (ell.shape[0], sigma2.shape[0]))
    s = jnp.radians(jnp.asarray(fwhm, dtype=dtype) / 60.0) / math.sqrt(8 * math.log(2))
    return jnp.exp(-(ell * (ell + 1))[:, None] * (s**2)[None, :]) / sigma2[None, :]


@eqx.filter_jit
def _harmonic_core(fun, x, n_inv, dof, cl_pol, cl_bb, depth_p, ell, fwhm, i_cmb):
    r"""Fisher matrix, per-multipole CMB weights, residual spectra and noise at ``x``.

    The Fisher matrix is the Hessian of $-\log L$ for the data the model explains at ``x``,
    $P_\ell \hat C_\ell P_\ell^T$ with $P_\ell = A W_\ell$ (fgbuster's pixel-domain
    Fisher matrix, written on the multipoles).
    """
    from ._likelihood import DiagonalInvN, W

    mm, freqs = fun.mixing, fun.freqs
    A = mm(freqs, x)
    P = A @ W(A, DiagonalInvN(n_inv))  # (n_ell, n_freq, n_freq)
    model = jnp.einsum("lfg,lgh,lkh->lfk", P, cl_pol, P)
    cw_model = dof[:, None, None] * (n_inv[:, :, None] * model * n_inv[:, None, :])
    fisher = jax.hessian(lambda y: fun(y, (jax.lax.stop_gradient(cw_model), n_inv)))(x)
    Sigma = jnp.linalg.inv(fisher)
    w, w_dB, w_dBdB = jax.vmap(cmb_weights, in_axes=(None, None, None, 0, None))(
        mm, freqs, x, n_inv, i_cmb
    )
    spectra = foreground_residual_spectra(w, w_dB, w_dBdB, Sigma, cl_bb)
    noise = noise_after_comp_sep(A, depth_p, ell, fwhm, i_cmb)
    return Sigma, fisher, w, spectra, noise


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
) -> XForecastResult:
    r""":func:`xForecast` with the spectral likelihood written on the multipoles.

    fgbuster has no such function; this is fgjax's. The spectral parameters are fitted to the
    E and B cross-spectra $\hat C_\ell$ of the foreground maps over ``lmin .. lmax``, with
    the noise-averaged harmonic likelihood

    $\log L(x) = \tfrac12 \sum_\ell \nu_\ell \mathrm{tr}[N_\ell^{-1} A M_\ell^{-1} A^T
    N_\ell^{-1} (\hat C^{EE}_\ell + \hat C^{BB}_\ell)]$, $M_\ell = A^T N_\ell^{-1} A$,
    $N_\ell = \mathrm{diag}(\mathrm{depth}^2 / b_\ell^2)$, $\nu_\ell = (2\ell+1) f_{sky}$,

    so beams (``instrument.fwhm``) and the multipole range weight the fit as they weight the
    residuals. ``Sigma`` is the inverse Fisher matrix of that likelihood at the best fit (for
    the data $P_\ell \hat C_\ell P_\ell^T$, the part the model explains); the CMB weights
    $W_\ell$ depend on $\ell$. Without beams and with ``lmin = 2``,
    ``lmax = 3 nside - 1`` it approaches the pixel-domain :func:`xForecast` (Parseval).
    Steps 2-5 and every argument are those of :func:`xForecast` (no ``multires``);
    ``result.s`` is ``None`` and ``result.separation`` the :class:`MinimizeResult` of the fit.
    """
    inst = _instrument(instrument)
    d, nside = _check_maps(d_fgs, as_frequencies(inst.frequency).n_freq)
    mm, inst, freqs, lmin, lmax, Alens, r, i_cmb, templates = _validate(
        components, inst, lmin, lmax, Alens, r, nside, BlBl, BuBu
    )
    from ._optimize import minimize

    dtype = _float_dtype()
    ell = np.arange(lmin, lmax + 1)
    cl_ee, cl_bb, fsky = foreground_cross_spectra(d, lmax)
    fwhm = None if inst.fwhm is None else jnp.asarray(inst.fwhm, dtype=dtype)
    depth = jnp.asarray(inst.depth_p, dtype=dtype)
    n_inv = _harmonic_inputs(depth, fwhm, ell, dtype)  # (n_ell, n_freq)
    dof = (2 * ell + 1) * fsky
    cl_pol = jnp.asarray(np.moveaxis((cl_ee + cl_bb)[..., lmin:], -1, 0), dtype=dtype)
    cw = jnp.asarray(dof, dtype=dtype)[:, None, None] * (
        n_inv[:, :, None] * cl_pol * n_inv[:, None, :]
    )
    fun = _HarmonicObjective(mm, freqs)
    x0 = jnp.asarray(mm.defaults, dtype=dtype)
    fit = minimize(fun, x0, (cw, n_inv), **minimize_kwargs)
    x = jnp.asarray(fit.x, dtype=dtype)
    Sigma, fisher, w, spectra, noise = _harmonic_core(
        fun,
        x,
        n_inv,
        jnp.asarray(dof, dtype=dtype),
        cl_pol,
        jnp.asarray(cl_bb[..., lmin:], dtype=dtype),
        depth,
        jnp.asarray(ell).astype(dtype),
        fwhm,
        i_cmb,
    )
    _check_no_cmb(w, cl_ee, lmin, lmax)
    return _finish(
        mm=mm,
        inst=inst,
        x=np.asarray(x),
        Sigma=np.asarray(Sigma),
        Sigma_inv=np.asarray(fisher),
        s=None,
        separation=fit,
        spectra=spectra,
        noise=noise,
        fsky=fsky,
        nside=nside,
        lmin=lmin,
        lmax=lmax,
        Alens=Alens,
        r=r,
        make_figure=make_figure,
        multires=False,
        l_knee=l_knee,
        alpha_knee=alpha_knee,
        gridding=gridding,
        sigma_r_68CL=sigma_r_68CL,
        templates=templates,
        i_cmb=i_cmb,
        legacy=False,
    )
