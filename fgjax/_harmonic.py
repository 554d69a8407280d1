r"""Parametric component separation in the harmonic domain: :func:`harmonic_comp_sep`.

The maps are turned into spherical-harmonic coefficients (healpy, on the host); one set of
spectral parameters is fitted to all the multipoles $\ell_{\min} \le \ell \le \ell_{\max}$
with a noise covariance $N_\ell$ per multipole. The likelihood is fgbuster's spectral
likelihood summed over the real coefficients of the $a_{\ell m}$,

$$\log L(x) = \tfrac12 \sum_{\ell} \mathrm{tr}\big[(A^T N_\ell^{-1} A)^{-1} A^T C_\ell A\big],
\qquad C_\ell = \sum_{m} N_\ell^{-1} d_{\ell m} d_{\ell m}^T N_\ell^{-1},$$

where the sum over $m$ runs over the $2\ell + 1$ real coefficients of multipole $\ell$
($\mathrm{Re}\,a_{\ell 0}$, then $\sqrt2\,\mathrm{Re}\,a_{\ell m}$ and
$\sqrt2\,\mathrm{Im}\,a_{\ell m}$ for $m > 0$), one block per Stokes field (T, or E and B).
The fit is one compiled damped-Newton loop (:func:`fgjax._optimize.batched_newton`) on the
closed-form value, gradient and Hessian of
:func:`fgjax._likelihood.logL_hessian_from_covariance`.
"""

from __future__ import annotations

import dataclasses
import logging
import operator

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from . import _healpix as hpx
from ._bandpass import as_frequencies
from ._likelihood import (
    DiagonalInvN,
    fisher_from_amplitude_covariance,
    logL_hessian_from_covariance,
)
from ._mixing import MixingMatrix
from ._optimize import batched_newton, reciprocal_mask
from ._recipes import _parse_minimize_kwargs

__all__ = ["HarmonicSeparationResult", "harmonic_comp_sep"]

logger = logging.getLogger(__name__)

_ARCMIN = np.pi / (180.0 * 60.0)  # radians per arcminute


@dataclasses.dataclass(frozen=True)
class HarmonicSeparationResult:
    r"""Output of :func:`harmonic_comp_sep` (NumPy arrays).

    Attributes:
        params: Parameter labels (``'Dust.beta_d'``...).
        x: Best-fit parameters ``(n_param,)``.
        Sigma: Inverse Fisher matrix ``(n_param, n_param)``.
        Sigma_inv: Fisher matrix $F_{ij} = \sum_{\ell, m} (\partial_i A\, s_{\ell m})^T
            (N_\ell^{-1} - N_\ell^{-1} A M_\ell^{-1} A^T N_\ell^{-1})
            (\partial_j A\, s_{\ell m})$ at ``x`` (fgbuster's, from the amplitudes).
        s: Component alms ``(n_comp, [2,] n_alm)`` (complex, healpy layout for ``lmax``;
            E and B for polarisation), zero below ``lmin``: the GLS estimate
            $s_{\ell m} = (A^T N_\ell^{-1} A)^{-1} A^T N_\ell^{-1} d_{\ell m}$.
        cl_in: Auto spectra of the (beam-deconvolved) data alms divided by ``fsky``,
            ``(n_freq, [2,] lmax + 1)`` (TT, or EE and BB).
        cl_out: Same for the components, ``(n_comp, [2,] lmax + 1)``.
        fsky: $\langle w^2 \rangle$ over the pixels, $w$ the mask times the good-pixel
            indicator (the fraction of pixels used for a 0/1 mask).
        lmin: First multipole used.
        lmax: Last multipole used.
        nit: Newton iterations.
        success: Whether the fit converged.
    """

    params: list
    x: np.ndarray
    Sigma: np.ndarray
    Sigma_inv: np.ndarray
    s: np.ndarray
    cl_in: np.ndarray
    cl_out: np.ndarray
    fsky: float
    lmin: int
    lmax: int
    nit: int
    success: bool


# -- host helpers (NumPy / healpy) -----------------------------------------------------------
def _as_int(value, name: str) -> int:
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"`{name}` must be an integer; got {value!r}.") from None


def _ells(lmax: int) -> np.ndarray:
    """Multipole of each entry of a healpy alm array of ``lmax`` (m-major layout)."""
    import healpy as hp

    return np.asarray(hp.Alm.getlm(lmax)[0])


def _ms(lmax: int) -> np.ndarray:
    import healpy as hp

    return np.asarray(hp.Alm.getlm(lmax)[1])


def real_coefficients(alm, lmax: int, lmin: int = 0):
    r"""Real coefficients of healpy alms, ordered as the alm array (m-major).

    For each $\ell \ge$ ``lmin``: $\mathrm{Re}\,a_{\ell 0}$, and $\sqrt2\,\mathrm{Re}\,a_{\ell m}$,
    $\sqrt2\,\mathrm{Im}\,a_{\ell m}$ for $m > 0$, so that their sum of squares is
    $\sum_{m=-\ell}^{\ell} |a_{\ell m}|^2$ for a real field.

    Args:
        alm: ``(..., n_alm)`` complex, healpy layout for ``lmax``.
        lmax: Maximum multipole of the layout.
        lmin: First multipole kept.

    Returns:
        ``(coefficients (..., n_coef), ell (n_coef,))``.
    """
    alm = np.asarray(alm)
    ell, m = _ells(lmax), _ms(lmax)
    keep = ell >= lmin
    a, ell, m = alm[..., keep], ell[keep], m[keep]
    pos = m > 0
    out = np.concatenate(
        (a.real[..., ~pos], np.sqrt(2.0) * a.real[..., pos], np.sqrt(2.0) * a.imag[..., pos]),
        axis=-1,
    )
    return out, np.concatenate((ell[~pos], ell[pos], ell[pos]))


def _raw_covariance(alm, lmax: int, lmin: int) -> np.ndarray:
    r"""$R_\ell = \sum_m d_{\ell m} d_{\ell m}^T$ over the real coefficients.

    Args:
        alm: ``(n_stokes, n_freq, n_alm)`` complex.

    Returns:
        ``(n_ell, n_stokes, n_freq, n_freq)`` for $\ell$ in ``[lmin, lmax]``.
    """
    ell, m = _ells(lmax), _ms(lmax)
    weight = np.where(m > 0, 2.0, 1.0)  # m > 0 stands for +m and -m
    n_stokes, n_freq, _ = alm.shape
    n_ell = lmax - lmin + 1
    R = np.zeros((n_ell, n_stokes, n_freq, n_freq))
    for s in range(n_stokes):
        a = alm[s]
        for i in range(n_freq):
            for j in range(i, n_freq):
                prod = weight * (a[i].real * a[j].real + a[i].imag * a[j].imag)
                R[:, s, i, j] = R[:, s, j, i] = np.bincount(ell, prod, minlength=lmax + 1)[lmin:]
    return R


def _check_maps(data):
    """``(maps (n_freq, n_stokes_in, n_pix), bad (n_pix,), fields)``."""
    if np.ndim(data) not in (2, 3):
        raise ValueError(
            "`data` must have shape (n_freq, n_pix), (n_freq, 2, n_pix) [QU] or "
            f"(n_freq, 3, n_pix) [IQU]; got shape {np.shape(data)}."
        )
    maps, bad = hpx.as_maps(data, "data")
    if maps.ndim == 2:
        return maps[:, None], bad, "T"
    if maps.shape[1] == 3:
        return maps, bad, "IQU"
    if maps.shape[1] == 2:
        return maps, bad, "QU"
    raise ValueError(
        "`data` with 3 dimensions must have 2 (Q, U) or 3 (I, Q, U) Stokes maps on axis 1; "
        f"got shape {maps.shape}."
    )


def _map2alm(maps, fields: str, lmax: int, n_iter: int) -> np.ndarray:
    """``(n_stokes, n_freq, n_alm)``: T, or E and B."""
    import healpy as hp

    out = []
    for m in maps:  # host loop over the frequencies
        if fields == "T":
            out.append(hp.map2alm(m[0], lmax=lmax, iter=n_iter)[None])
        else:
            iqu = m if fields == "IQU" else np.concatenate((np.zeros_like(m[:1]), m))
            out.append(np.asarray(hp.map2alm(iqu, lmax=lmax, iter=n_iter, pol=True))[1:])
    return np.stack(out, axis=1)


def _beams(fwhm, n_freq: int, lmax: int, fields: str) -> np.ndarray:
    """``(n_stokes, n_freq, lmax + 1)`` Gaussian beam transfer functions."""
    import healpy as hp

    fwhm = np.broadcast_to(np.asarray(fwhm, dtype=float), (n_freq,))
    if not np.all(np.isfinite(fwhm)) or np.any(fwhm < 0):
        raise ValueError(f"`instrument` fwhm must be finite and non-negative (arcmin); got {fwhm}.")
    cols = (0,) if fields == "T" else (1, 2)
    bl = np.stack([hp.gauss_beam(f * _ARCMIN, lmax=lmax, pol=True) for f in fwhm])
    return np.moveaxis(bl[:, :, cols], -1, 0)


def _white_invN(std, fields, bl, lmin, lmax, n_freq):
    """Diagonal ``(n_ell, n_stokes, n_freq)`` inverse noise from the depths (uK arcmin)."""
    depth = std.depth_i if fields == "T" else std.depth_p
    if depth is None:
        which = "depth_i" if fields == "T" else "depth_p"
        raise ValueError(
            f"no noise model: pass `invN`, or an `instrument` with `{which}` (uK_CMB arcmin)."
        )
    depth = np.broadcast_to(np.asarray(depth, dtype=float), (n_freq,)) * _ARCMIN
    n_stokes = 1 if fields == "T" else 2
    diag = np.broadcast_to(1.0 / depth**2, (lmax - lmin + 1, n_stokes, n_freq))
    if bl is not None:
        diag = diag * np.moveaxis(bl[:, :, lmin:], -1, 0) ** 2  # N_l = depth^2 / b_l^2
    return np.ascontiguousarray(diag)


def _user_invN(invN, lmin, lmax, n_freq, n_stokes):
    """Validate ``invN``: diagonal ``(n_ell, n_stokes, n_freq)`` or full with two freq axes."""
    invN = np.asarray(invN, dtype=float)
    n_ell = lmax - lmin + 1
    expected = (
        f"(L, {n_freq}) [diagonal], (L, {n_freq}, {n_freq}) or (L, {n_stokes}, {n_freq}, "
        f"{n_freq}) with L = lmax + 1 = {lmax + 1} or lmax - lmin + 1 = {n_ell}"
    )
    if invN.ndim not in (2, 3, 4) or invN.shape[0] not in (lmax + 1, n_ell):
        raise ValueError(f"`invN` must have shape {expected}; got {invN.shape}.")
    if invN.shape[0] == lmax + 1:
        invN = invN[lmin:]
    if invN.ndim == 2:
        ok = invN.shape[1:] == (n_freq,)
    elif invN.ndim == 3:
        ok = invN.shape[1:] == (n_freq, n_freq)
    else:
        ok = invN.shape[1:] == (n_stokes, n_freq, n_freq)
    if not ok:
        raise ValueError(f"`invN` must have shape {expected}; got {invN.shape}.")
    if not np.all(np.isfinite(invN)):
        raise ValueError("`invN` must be finite (no NaN or inf).")
    if invN.ndim == 2:
        if np.any(invN <= 0):
            raise ValueError("`invN` (diagonal) must be positive.")
        return np.ascontiguousarray(np.broadcast_to(invN[:, None], (n_ell, n_stokes, n_freq)))
    if invN.ndim == 3:
        invN = np.broadcast_to(invN[:, None], (n_ell, n_stokes, n_freq, n_freq))
    if not np.allclose(invN, np.swapaxes(invN, -1, -2), rtol=1e-10, atol=0.0):
        raise ValueError("`invN` must be symmetric.")
    if np.any(np.linalg.eigvalsh(invN) <= 0):
        raise ValueError("`invN` must be positive definite at every multipole.")
    return np.ascontiguousarray(invN)


# -- the compiled core -----------------------------------------------------------------------
def _apply(invN, X):
    """``invN @ X`` with X ``(n_ell, S, n_freq, k)``."""
    if isinstance(invN, DiagonalInvN):
        return invN.diag[..., None] * X
    return jnp.matmul(invN, X)


@eqx.filter_jit
def _fit(mm, freqs, R, invN, x0, lo, hi, maxiter, recip):
    """Newton fit of the global parameters; returns ``(x, done, nit)``."""
    C = _apply(invN, jnp.swapaxes(_apply(invN, R), -1, -2))  # invN R invN (both symmetric)
    comp = tuple(mm.comp_of_param)
    lead = R.shape[:-2]

    def vgh(X):
        A, A_dB, A_dBdB = mm.taylor(freqs, X[0])
        A = jnp.broadcast_to(A, lead + A.shape)
        A_dB = jnp.broadcast_to(A_dB, lead + A_dB.shape)
        A_dBdB = jnp.broadcast_to(A_dBdB, lead + A_dBdB.shape)
        f, g, H, singular = logL_hessian_from_covariance(A, A_dB, A_dBdB, comp, C, invN)
        return jnp.where(singular, jnp.inf, -f)[None], -g[None], -H[None]

    X, done, nit = batched_newton(vgh, x0[None], lo, hi, maxiter, reciprocal=recip)
    return X[0], done[0], nit[0]


@eqx.filter_jit
def _outputs(mm, freqs, x, R, invN, alm_re, alm_im, ell_index):
    """Fisher matrix, per-ell operator W and the component alms at ``x``.

    ``alm_re``/``alm_im``: ``(n_stokes, n_freq, n_alm_used)``; ``ell_index`` the row of
    each alm in the per-ell arrays.
    """
    A, A_dB, _ = mm.taylor(freqs, x, second=False)
    lead = R.shape[:-2]
    A = jnp.broadcast_to(A, lead + A.shape)  # (n_ell, S, f, c)
    NA = _apply(invN, A)
    M = jnp.einsum("...fa,...fb->...ab", A, NA)
    W = jnp.linalg.solve(M, jnp.swapaxes(NA, -1, -2))  # (n_ell, S, c, f)
    S = jnp.einsum("...cf,...fg,...dg->...cd", W, R, W)
    F = fisher_from_amplitude_covariance(
        A, jnp.broadcast_to(A_dB, lead + A_dB.shape), tuple(mm.comp_of_param), S, invN
    )
    Wa = jnp.moveaxis(W[ell_index], 0, -1)  # (S, c, f, n_alm_used)
    s_re = jnp.einsum("scfa,sfa->csa", Wa, alm_re)
    s_im = jnp.einsum("scfa,sfa->csa", Wa, alm_im)
    return F, s_re, s_im


# -- the recipe ------------------------------------------------------------------------------
def harmonic_comp_sep(
    components,
    instrument,
    data,
    invN=None,
    lmin: int = 2,
    lmax: int | None = None,
    mask=None,
    iter: int = 3,  # noqa: A002  (healpy's name)
    **minimize_kwargs,
) -> HarmonicSeparationResult:
    r"""Fit global spectral parameters to the spherical-harmonic coefficients of maps.

    The maps (masked pixels set to zero, times ``mask``) are transformed with healpy's
    ``map2alm`` and, when the instrument has beams, deconvolved by Gaussian beams. The
    spectral likelihood is summed over the real coefficients of every multipole in
    ``[lmin, lmax]``, with one (frequency x frequency) inverse noise $N_\ell^{-1}$ per
    multipole, and maximised by a compiled damped-Newton loop with exact Hessians.

    Args:
        components: Components list or a :class:`fgjax.MixingMatrix`.
        instrument: Anything :func:`fgjax._healpix.standardize` accepts: ``frequency``
            (GHz), optional ``depth_i`` / ``depth_p`` (uK_CMB arcmin) and ``fwhm`` (arcmin).
        data: Maps in healpy RING ordering: ``(n_freq, n_pix)`` (temperature),
            ``(n_freq, 2, n_pix)`` (Q, U) or ``(n_freq, 3, n_pix)`` (I, Q, U; the fit uses
            E and B only). ``hp.UNSEEN`` (or masked entries) mark bad pixels.
        invN: Inverse noise per multipole: ``(L, n_freq)`` (diagonal), ``(L, n_freq,
            n_freq)``, or ``(L, n_stokes, n_freq, n_freq)`` (per field, T or E/B), with
            ``L = lmax + 1`` (rows below ``lmin`` unused) or ``lmax - lmin + 1``. Default:
            white noise from the depths, $N_\ell = \sigma^2 / b_\ell^2$ ($\sigma$ in
            uK rad; $b_\ell = 1$ without beams), ``depth_i`` for T, ``depth_p`` for E, B.
        lmin: First multipole of the fit.
        lmax: Last multipole; default ``3 * nside - 1`` (also the largest allowed).
        mask: Optional ``(n_pix,)`` weights (0/1 or apodised) multiplied into the maps.
        iter: healpy ``map2alm`` iterations.
        **minimize_kwargs: SciPy-style keywords: ``options={'maxiter': 200}``, ``bounds``
            (one ``(lo, hi)`` per parameter, ``None`` for unbounded) and ``x0``
            ``(n_param,)`` (default: the components' defaults).

    Returns:
        A :class:`HarmonicSeparationResult`.

    Raises:
        ValueError: Malformed ``data``, ``mask``, ``invN``, ``lmin``/``lmax``, a frequency
            count of ``instrument`` that does not match ``data``, or no noise model.

    Examples:
        >>> import numpy as np, healpy as hp, fgjax
        >>> from fgjax._harmonic import harmonic_comp_sep
        >>> freqs = np.array([30.0, 70.0, 100.0, 150.0, 220.0, 353.0])
        >>> mm = fgjax.MixingMatrix(fgjax.CMB(), fgjax.Dust(nu0=353.0, temp=20.0))
        >>> A = np.asarray(mm.eval(freqs, 1.54))
        >>> amps = np.stack([hp.synfast(np.ones(24), 8) for _ in range(2)])
        >>> res = harmonic_comp_sep(mm, {"frequency": freqs, "depth_i": np.ones(6)}, A @ amps)
        >>> bool(abs(res.x[0] - 1.54) < 1e-6)
        True
    """
    mm = components if isinstance(components, MixingMatrix) else MixingMatrix(*components)
    maps, bad, fields = _check_maps(data)
    n_freq, _, n_pix = maps.shape
    nside = hpx.check_nside_of_npix(n_pix, "data")
    std = hpx.standardize(instrument)
    n_inst = hpx.instrument_frequency_count(std)
    if n_inst != n_freq:
        raise ValueError(
            f"`instrument` has {n_inst} frequencies but `data` has {n_freq} maps (axis 0)."
        )
    freqs = as_frequencies(std.frequency)
    lmin = _as_int(lmin, "lmin")
    lmax = 3 * nside - 1 if lmax is None else _as_int(lmax, "lmax")
    if lmax > 3 * nside - 1:
        raise ValueError(f"`lmax` must be at most 3 * nside - 1 = {3 * nside - 1}; got {lmax}.")
    if lmin < 0 or lmin >= lmax:
        raise ValueError(f"`lmin` must satisfy 0 <= lmin < lmax = {lmax}; got lmin={lmin}.")
    n_iter = _as_int(iter, "iter")
    if n_iter < 0:
        raise ValueError(f"`iter` must be non-negative; got {n_iter}.")

    weight = (~bad).astype(float)
    if mask is not None:
        mask = np.asarray(mask, dtype=float)
        if mask.shape != (n_pix,):
            raise ValueError(f"`mask` must have shape ({n_pix},); got {mask.shape}.")
        if not np.all(np.isfinite(mask)) or np.any(mask < 0):
            raise ValueError("`mask` must be finite and non-negative.")
        weight = weight * mask
    fsky = float(np.mean(weight**2))
    if fsky == 0.0:
        raise ValueError("`data`/`mask` leave no pixel to use.")
    maps = np.where(weight > 0, maps, 0.0) * weight

    dtype = jnp.zeros(()).dtype  # the caller's precision (x64 or not)
    if dtype != np.float64:
        logger.warning("fitting in %s: enable x64 for fgbuster's float64 accuracy.", dtype)

    alm = _map2alm(maps, fields, lmax, n_iter)  # (S, n_freq, n_alm)
    n_stokes = alm.shape[0]
    bl = None
    if std.fwhm is not None:
        bl = _beams(std.fwhm, n_freq, lmax, fields)
        alm = alm / bl[..., _ells(lmax)]
    if invN is None:
        invN_arr = _white_invN(std, fields, bl, lmin, lmax, n_freq)
    else:
        invN_arr = _user_invN(invN, lmin, lmax, n_freq, n_stokes)
    invN_j = jnp.asarray(invN_arr, dtype)
    invN_j = DiagonalInvN(invN_j) if invN_arr.ndim == 3 else invN_j

    R = jnp.asarray(_raw_covariance(alm, lmax, lmin), dtype)
    maxiter, lo, hi, x0 = _parse_minimize_kwargs(minimize_kwargs, mm.n_param)
    x0 = np.asarray(mm.defaults if x0 is None else x0, dtype=float)
    if x0.shape != (mm.n_param,):
        raise ValueError(f"`x0` must have shape ({mm.n_param},); got {x0.shape}.")
    if mm.n_param:
        x, done, nit = _fit(
            mm,
            freqs,
            R,
            invN_j,
            jnp.asarray(x0, dtype),
            jnp.asarray(lo, dtype),
            jnp.asarray(hi, dtype),
            jnp.asarray(maxiter),
            reciprocal_mask(mm.reciprocal, x0, lo, hi),
        )
    else:
        x, done, nit = jnp.zeros((0,), dtype), jnp.asarray(True), jnp.asarray(0)

    ell = _ells(lmax)
    used = ell >= lmin
    F, s_re, s_im = _outputs(
        mm,
        freqs,
        x,
        R,
        invN_j,
        jnp.asarray(alm.real[..., used], dtype),
        jnp.asarray(alm.imag[..., used], dtype),
        jnp.asarray(ell[used] - lmin),
    )
    F = np.asarray(F, dtype=float)
    try:
        Sigma = np.linalg.inv(F)
    except np.linalg.LinAlgError:
        Sigma = np.full_like(F, np.nan)
    s = np.zeros((mm.n_comp, n_stokes, alm.shape[-1]), dtype=complex)
    s[..., used] = np.asarray(s_re) + 1j * np.asarray(s_im)

    import healpy as hp

    def spectra(a):  # (n, S, n_alm) -> (n, S, lmax + 1)
        return np.stack([[hp.alm2cl(b, lmax=lmax) for b in row] for row in a]) / fsky

    cl_in = spectra(np.swapaxes(alm, 0, 1))
    cl_out = spectra(s)
    if fields == "T":
        s, cl_in, cl_out = s[:, 0], cl_in[:, 0], cl_out[:, 0]
    return HarmonicSeparationResult(
        params=list(mm.params),
        x=np.asarray(x, dtype=float),
        Sigma=Sigma,
        Sigma_inv=F,
        s=s,
        cl_in=cl_in,
        cl_out=cl_out,
        fsky=fsky,
        lmin=lmin,
        lmax=lmax,
        nit=int(nit),
        success=bool(done),
    )
