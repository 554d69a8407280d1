r"""Internal linear combination (ILC) in pixel space and in harmonic space.

The ILC estimates components of known SEDs (the columns of a fixed mixing matrix $A$,
shape ``(n_freq, n_comp)``) with the weights
$W = (A^T C^{-1} A)^{-1} A^T C^{-1}$, where $C$ is the empirical frequency-frequency
covariance of the data in a region (pixel ILC) or in a multipole bin (harmonic ILC).

The per-patch and per-multipole linear algebra is batched in JAX (one compiled program, no
Python loop over patches or pixels); spherical-harmonic transforms use healpy on the host.
Conventions follow fgbuster 2.0 (``ilc``, ``harmonic_ilc``, ``harmonic_ilc_alm``):

* $C^{-1}$ is computed through the correlation matrix,
  $C^{-1} = \mathrm{inv}(C / (\sigma \sigma^T)) / (\sigma \sigma^T)$, $\sigma^2 = \mathrm{diag}\,C$,
  which keeps very noisy channels invertible (pixel ILC: ``inv``; harmonic ILC: a
  pseudo-inverse with NumPy's default cut ``1e-15``, non-finite entries set to 0).
* Pixel ILC: one set of weights per patch, shared by every Stokes parameter of its pixels
  (the covariance uses all of them as samples); a pixel with any bad entry is left out and
  gets ``UNSEEN``; an empty patch gets ``UNSEEN`` weights and covariance.
* Harmonic ILC: weights per multipole ``ell`` (and per T, E, B), with the covariance
  averaged over each bin ``[lbins[i], lbins[i + 1])`` with weights $2\ell + 1$; multipoles
  outside every bin keep their own.
"""

from __future__ import annotations

import dataclasses
import logging
from functools import partial

import healpy as hp
import jax
import jax.numpy as jnp
import numpy as np

from . import _healpix as hpx
from ._constants import UNSEEN
from ._mixing import MixingMatrix

__all__ = [
    "HarmonicILCResult",
    "ILCResult",
    "harmonic_ilc",
    "harmonic_ilc_alm",
    "ilc",
]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ILCResult:
    """Output of :func:`ilc` (NumPy arrays, fgbuster's layout).

    Attributes:
        s: Component maps, shape ``(n_comp, [n_stokes,] n_pix)``; ``UNSEEN`` at bad pixels.
        W: ILC weights, ``(n_comp, n_freq)`` without patches, else
            ``(n_patch, n_comp, n_freq)``; ``UNSEEN`` for empty patches.
        freq_cov: Empirical covariance, ``(n_freq, n_freq)`` or ``(n_patch, n_freq, n_freq)``.
        components: Names of the components.
        mask_good: True at the pixels used, shape ``(n_pix,)``.
    """

    s: np.ndarray
    W: np.ndarray
    freq_cov: np.ndarray
    components: list
    mask_good: np.ndarray


@dataclasses.dataclass(frozen=True)
class HarmonicILCResult:
    """Output of :func:`harmonic_ilc` and :func:`harmonic_ilc_alm` (NumPy arrays).

    Attributes:
        s: Component maps ``(n_comp, [3,] n_pix)`` (:func:`harmonic_ilc`) or alms
            ``(n_comp, [3,] n_lm)`` (:func:`harmonic_ilc_alm`).
        W: Weights, shape ``([n_stokes,] lmax + 1, n_comp, n_freq)``.
        cl_in: Spectra of the input alms (``healpy.alm2cl``), divided by ``fsky`` if given.
        cl_out: Spectra of the output alms, divided by ``fsky`` if given.
        fsky: The sky fraction the spectra were divided by (``None``: not divided).
    """

    s: np.ndarray
    W: np.ndarray
    cl_in: np.ndarray
    cl_out: np.ndarray
    fsky: float | None


def _fixed_mixing_matrix(components, instrument) -> jax.Array:
    mm = components if isinstance(components, MixingMatrix) else MixingMatrix(*components)
    if mm.n_param:
        raise ValueError(
            f"`components` must have no free parameter for an ILC; got {mm.params}. Fix them "
            "(e.g. Dust(353.0, temp=20.0, beta_d=1.54))."
        )
    return mm.eval(instrument.frequency), mm


def _check_n_freq(n_freq_data: int, A, name: str = "data") -> None:
    if n_freq_data != A.shape[-2]:
        raise ValueError(
            f"`{name}` has {n_freq_data} frequency maps (first axis) but `instrument` has "
            f"{A.shape[-2]} frequencies."
        )


# -- pixel ILC --------------------------------------------------------------------------------
def _regularized_inverse(cov: jax.Array) -> jax.Array:
    """Inverse of ``cov`` (..., n, n) through its correlation matrix (``inv``)."""
    sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
    scale = sd[..., :, None] * sd[..., None, :]
    return jnp.linalg.inv(cov / scale) / scale


def _ilc_weights(A: jax.Array, inv_cov: jax.Array) -> jax.Array:
    """$(A^T C^{-1} A)^{-1} A^T C^{-1}$ for a batch of ``inv_cov`` (..., n_freq, n_freq)."""
    AtC = jnp.einsum("fc,...fg->...cg", A, inv_cov)  # (..., n_comp, n_freq)
    AtCA = jnp.einsum("...cf,fk->...ck", AtC, A)
    return jnp.linalg.solve(AtCA, AtC)


@partial(jax.jit, static_argnames=("n_patch",))
def _pixel_ilc_kernel(A, d, ids, good, n_patch: int):
    """Batched pixel ILC over patches.

    Args:
        A: ``(n_freq, n_comp)``.
        d: Samples ``(n_samp, n_freq)`` (a sample is one Stokes entry of one pixel).
        ids: Patch of each sample, ``(n_samp,)`` in ``[0, n_patch)``.
        good: ``(n_samp,)`` bool; bad samples are left out of every patch.
        n_patch: Number of patches (static).

    Returns:
        ``(W, cov, s, count)``: ``(n_patch, n_comp, n_freq)``, ``(n_patch, n_freq, n_freq)``,
        ``(n_samp, n_comp)``, ``(n_patch,)``.
    """
    dtype = d.dtype
    w = good.astype(dtype)
    count = jax.ops.segment_sum(w, ids, num_segments=n_patch)
    total = jax.ops.segment_sum(d * w[:, None], ids, num_segments=n_patch)
    mean = total / jnp.maximum(count, jnp.ones((), dtype))[:, None]
    dc = (d - mean[ids]) * w[:, None]
    outer = jax.ops.segment_sum(dc[:, :, None] * dc[:, None, :], ids, num_segments=n_patch)
    cov = outer / (count - jnp.ones((), dtype))[:, None, None]
    usable = count > 1
    eye = jnp.broadcast_to(jnp.eye(d.shape[-1], dtype=dtype), cov.shape)
    safe_cov = jnp.where(usable[:, None, None], cov, eye)
    W = _ilc_weights(A, _regularized_inverse(safe_cov))
    s = jnp.einsum("scf,sf->sc", W[ids], d)
    return W, cov, s, count


def ilc(components, instrument, data, patch_ids=None) -> ILCResult:
    """Pixel-domain ILC, globally or independently in each patch.

    Args:
        components: Components with no free parameter (or a :class:`MixingMatrix`).
        instrument: Anything with ``frequency`` as a key or an attribute (GHz, or
            bandpasses).
        data: Maps ``(n_freq, [n_stokes,] n_pix)``; ``UNSEEN`` or masked entries mark bad
            pixels (a pixel is bad if any of its entries is).
        patch_ids: Optional non-negative integer ids, broadcastable to
            ``data.shape[1:]`` (usually ``(n_pix,)``): the ILC is computed independently for
            each id.

    Returns:
        An :class:`ILCResult`.

    Raises:
        ValueError: wrong shapes, frequency count, negative ids, free parameters.

    Examples:
        >>> import numpy as np, fgjax
        >>> rng = np.random.default_rng(0)
        >>> nu = np.array([30.0, 100.0, 200.0, 300.0])
        >>> d = rng.normal(size=(4, 48)) + rng.normal(size=48)  # noise + CMB
        >>> res = ilc([fgjax.CMB()], {"frequency": nu}, d)
        >>> res.W.shape, res.s.shape
        ((1, 4), (1, 48))
    """
    inst = hpx.standardize(instrument)
    A, mm = _fixed_mixing_matrix(components, inst)
    maps, bad = hpx.as_maps(data)
    _check_n_freq(maps.shape[0], A)
    n_freq, n_comp = A.shape
    sample_shape = maps.shape[1:]
    if patch_ids is None:
        ids = np.zeros(sample_shape, dtype=np.int64)
    else:
        ids = np.asarray(patch_ids)
        if ids.dtype.kind not in "ui":
            raise TypeError(f"`patch_ids` must hold integers; got dtype {ids.dtype}.")
        try:
            ids = np.broadcast_to(ids, sample_shape)
        except ValueError:
            raise ValueError(
                f"`patch_ids` must be broadcastable to data.shape[1:] = {sample_shape} "
                f"(one id per pixel); got shape {ids.shape}."
            ) from None
        if ids.size and ids.min() < 0:
            raise ValueError(f"`patch_ids` must be non-negative; got minimum {ids.min()}.")
    n_patch = int(ids.max()) + 1
    # samples in the algebra's layout: (n_pix, [n_stokes]) flattened
    d = jnp.asarray(hpx.to_pixel_major(maps).reshape(-1, n_freq), dtype=A.dtype)
    ids_flat = jnp.asarray(ids.T.reshape(-1), dtype=jnp.int32)
    good = np.broadcast_to(~bad, ids.T.shape[::-1]).T.reshape(-1)
    W, cov, s, count = _pixel_ilc_kernel(A, d, ids_flat, jnp.asarray(good), n_patch)
    W, cov, s, count = (np.asarray(v) for v in (W, cov, s, count))
    empty = count == 0
    W = np.where(empty[:, None, None], UNSEEN, W)
    cov = np.where(empty[:, None, None], UNSEEN, cov)
    s = np.where(good[:, None], s, UNSEEN).reshape(ids.T.shape + (n_comp,))
    if patch_ids is None:
        W, cov = W[0], cov[0]
    return ILCResult(
        s=hpx.from_pixel_major(s),
        W=W,
        freq_cov=cov,
        components=mm.components,
        mask_good=~bad,
    )


# -- harmonic ILC -----------------------------------------------------------------------------
def _bin_operator(lbins, n_ell: int) -> np.ndarray:
    """``(n_ell, n_ell)`` matrix averaging over each bin with weights ``2 ell + 1``."""
    B = np.eye(n_ell)
    if lbins is None:
        return B
    lbins = np.asarray(lbins).astype(int)
    for lmin, lmax in zip(
        lbins[:-1], lbins[1:], strict=False
    ):  # a few bins: a host loop over edges
        lmax = min(int(lmax), n_ell)
        lmin = int(lmin)
        if lmax <= lmin:
            continue
        dof = 2.0 * np.arange(lmin, lmax) + 1.0
        B[lmin:lmax] = 0.0
        B[lmin:lmax, lmin:lmax] = dof / dof.sum()
    return B


def _pinv_regularized(cov: jax.Array) -> jax.Array:
    """Pseudo-inverse through the correlation matrix; non-finite entries set to zero."""
    diag = jnp.diagonal(cov, axis1=-2, axis2=-1)
    inv_std = jnp.where(diag > 0, 1.0 / jnp.sqrt(jnp.where(diag > 0, diag, 1.0)), 0.0)
    inv_std = jnp.where(jnp.isfinite(inv_std), inv_std, 0.0).astype(cov.dtype)
    cov = jnp.where(jnp.isfinite(cov), cov, jnp.zeros((), cov.dtype))
    scale = inv_std[..., :, None] * inv_std[..., None, :]
    return jnp.linalg.pinv(cov * scale, rtol=1e-15) * scale


@jax.jit
def _harmonic_ilc_kernel(A, re, im, ell, grid, w_re, w_im, binning):
    """Weights per multipole and the cleaned alms.

    Args:
        A: ``(n_freq, n_comp)``.
        re, im: Real and imaginary parts of the alms, ``(n_stokes, n_freq, n_lm + 1)``, the
            last entry zero (padding target).
        ell: Multipole of each lm, ``(n_lm,)`` int.
        grid: ``(n_ell, n_ell)`` index of ``(ell, m)`` in the lm axis (``n_lm`` if m > ell).
        w_re, w_im: ``(n_ell, n_ell)`` weights of the real and imaginary products: 1 and 0
            for m = 0, 2 and 2 for 0 < m <= ell, 0 beyond.
        binning: ``(n_ell, n_ell)`` bin-averaging operator.

    Returns:
        ``(W, s_re, s_im)``: ``(n_stokes, n_ell, n_comp, n_freq)`` and
        ``(n_stokes, n_comp, n_lm)`` twice.
    """
    n_ell = binning.shape[0]
    dtype = re.dtype
    re_g, im_g = re[..., grid], im[..., grid]  # (n_stokes, n_freq, n_ell, n_m)
    cov = jnp.einsum("sflm,sglm,lm->sfgl", re_g, re_g, w_re) + jnp.einsum(
        "sflm,sglm,lm->sfgl", im_g, im_g, w_im
    )
    dof = jnp.asarray(2.0, dtype) * jnp.arange(n_ell, dtype=dtype) + jnp.ones((), dtype)
    cov = cov / dof[None, None, None, :]
    cov = jnp.einsum("lk,sfgk->slfg", binning, cov)  # (n_stokes, n_ell, n_freq, n_freq)
    inv_cov = _pinv_regularized(cov)
    AtC = jnp.einsum("fc,slfg->slcg", A, inv_cov)
    AtCA = jnp.einsum("slcf,fk->slck", AtC, A)
    W = jnp.einsum("slck,slkf->slcf", jnp.linalg.pinv(AtCA), AtC)
    Wg = W[:, ell]  # (n_stokes, n_lm, n_comp, n_freq)
    s_re = jnp.einsum("slcf,sfl->scl", Wg, re[..., :-1])
    s_im = jnp.einsum("slcf,sfl->scl", Wg, im[..., :-1])
    return W, s_re, s_im


def _lm_grid(lmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(grid, w_re, w_im)`` of :func:`_harmonic_ilc_kernel` for healpy's alm layout."""
    n_lm = (lmax + 1) * (lmax + 2) // 2
    l_grid, m_grid = np.meshgrid(np.arange(lmax + 1), np.arange(lmax + 1), indexing="ij")
    valid = m_grid <= l_grid
    grid = np.where(valid, hp.Alm.getidx(lmax, l_grid, np.minimum(m_grid, l_grid)), n_lm)
    w_re = np.where(valid, np.where(m_grid == 0, 1.0, 2.0), 0.0)
    w_im = np.where(valid & (m_grid > 0), 2.0, 0.0)
    return grid.astype(np.int32), w_re, w_im


def _alm_lmax(n_lm: int) -> int:
    lmax = int((np.sqrt(8 * n_lm + 1) - 3) / 2 + 0.5)
    if (lmax + 1) * (lmax + 2) // 2 != n_lm:
        raise ValueError(
            f"`alms` must have (lmax + 1)(lmax + 2) / 2 entries on the last axis (healpy "
            f"layout, mmax = lmax); got {n_lm}."
        )
    return lmax


def harmonic_ilc_alm(components, instrument, alms, lbins=None, fsky=None) -> HarmonicILCResult:
    """ILC of spherical-harmonic coefficients, independently per multipole bin.

    Args:
        components: Components with no free parameter (or a :class:`MixingMatrix`).
        instrument: Anything with ``frequency`` (GHz) as a key or an attribute.
        alms: Complex alms in healpy's layout, shape ``(n_freq, [n_stokes,] n_lm)``; with
            ``n_stokes`` (1 or 3, T E B) the weights are independent for each.
        lbins: Bin edges in ell: the covariance is averaged in ``[lbins[i], lbins[i+1])``;
            multipoles outside every bin have their own weights.
        fsky: If given (and non-zero), the output spectra are divided by it.

    Returns:
        A :class:`HarmonicILCResult` whose ``s`` holds the component alms
        ``(n_comp, [n_stokes,] n_lm)``.
    """
    inst = hpx.standardize(instrument)
    A, _ = _fixed_mixing_matrix(components, inst)
    alms = np.asarray(alms)
    if alms.ndim not in (2, 3):
        raise ValueError(
            f"`alms` must have shape (n_freq, [n_stokes,] n_lm); got shape {alms.shape}."
        )
    _check_n_freq(alms.shape[0], A, "alms")
    lmax = _alm_lmax(alms.shape[-1])
    cl_in = np.array([hp.alm2cl(a) for a in alms])
    stacked = alms[:, None] if alms.ndim == 2 else alms  # (n_freq, n_stokes, n_lm)
    stacked = np.ascontiguousarray(np.swapaxes(stacked, 0, 1))  # (n_stokes, n_freq, n_lm)
    ell = hp.Alm.getlm(lmax)[0]
    grid, w_re, w_im = _lm_grid(lmax)
    pad = np.zeros(stacked.shape[:-1] + (1,), dtype=stacked.dtype)
    stacked = np.concatenate((stacked, pad), axis=-1)
    dtype = A.dtype
    W, s_re, s_im = _harmonic_ilc_kernel(
        A,
        jnp.asarray(stacked.real, dtype=dtype),
        jnp.asarray(stacked.imag, dtype=dtype),
        jnp.asarray(ell, dtype=jnp.int32),
        jnp.asarray(grid),
        jnp.asarray(w_re, dtype=dtype),
        jnp.asarray(w_im, dtype=dtype),
        jnp.asarray(_bin_operator(lbins, lmax + 1), dtype=dtype),
    )
    W = np.asarray(W)
    s = np.asarray(s_re) + 1j * np.asarray(s_im)  # (n_stokes, n_comp, n_lm)
    s = np.swapaxes(s, 0, 1)  # (n_comp, n_stokes, n_lm)
    if alms.ndim == 2:
        s, W = s[:, 0], W[0]
    s = np.ascontiguousarray(s)
    cl_out = np.array([hp.alm2cl(a) for a in s])
    if fsky:
        cl_in, cl_out = cl_in / fsky, cl_out / fsky
    return HarmonicILCResult(s=s, W=W, cl_in=cl_in, cl_out=cl_out, fsky=fsky)


def _map_alms(maps, fwhm, lmax: int, weights, iter: int) -> np.ndarray:
    """alms of each frequency map (healpy, host), beams deconvolved if ``fwhm`` is given."""
    alms = []
    for fmap in maps:  # one SHT per frequency
        if weights is not None:
            fmap = hp.ma(fmap) * weights
        alms.append(hp.map2alm(fmap, lmax=lmax, iter=iter))
    alms = np.array(alms)
    if fwhm is not None:
        pol = alms.ndim == 3
        for alm, f in zip(alms, fwhm, strict=False):
            bl = hp.gauss_beam(np.radians(f / 60.0), lmax, pol=pol)
            if pol:
                for i in range(3):  # T, E, B
                    alm[i] = hp.almxfl(alm[i], 1.0 / bl[:, i])
            else:
                alm[:] = hp.almxfl(alm, 1.0 / bl)
    return alms


def _harmonic_ilc(
    components, instrument, data, lbins, weights, iter, legacy_fsky: bool
) -> HarmonicILCResult:
    inst = hpx.standardize(instrument)
    if np.ndim(data) == 3 and np.shape(data)[1] not in (1, 3):
        raise ValueError(
            f"`data` must be T or IQU maps, shape (n_freq, [1 or 3,] n_pix); got {np.shape(data)}."
        )
    maps, bad = hpx.as_maps(data)
    squeeze = maps.ndim == 3 and maps.shape[1] == 1
    if squeeze:
        maps = maps[:, 0]
        if np.ma.isMaskedArray(data):
            data = data[:, 0]
    nside = hpx.check_nside_of_npix(maps.shape[-1])
    lmax = 3 * nside - 1
    if lbins is not None:
        lmax = min(lmax, int(np.max(lbins)))
    if weights is not None:
        weights = np.asarray(weights, dtype=float)
        if weights.shape != (maps.shape[-1],):
            raise ValueError(
                f"`weights` must be a map of shape ({maps.shape[-1]},); got {weights.shape}."
            )
        if np.any(bad & (weights != 0)):
            raise ValueError("`weights` must be zero where `data` is masked.")
        fsky = float(np.mean(weights**2) ** 2 / np.mean(weights**4))
    elif legacy_fsky:  # fgbuster 2.0 divides by the fraction of *bad* pixels (0: no division)
        fsky = float(bad.sum()) / bad.size
    else:
        fsky = 1.0 - float(bad.sum()) / bad.size
    fwhm = inst.fwhm if inst.fwhm is not None and np.any(inst.fwhm) else None
    source = data if np.ma.isMaskedArray(data) else maps
    alms = _map_alms(source, fwhm, lmax, weights, iter)
    res = harmonic_ilc_alm(components, inst, alms, lbins, fsky)
    s_maps = np.array([hp.alm2map(np.ascontiguousarray(a), nside) for a in res.s])
    if squeeze:
        s_maps = s_maps[:, None]
    return dataclasses.replace(res, s=s_maps)


def harmonic_ilc(
    components, instrument, data, lbins=None, weights=None, iter=3
) -> HarmonicILCResult:
    """Harmonic-domain ILC of HEALPix maps (weights per multipole bin, T/E/B separately).

    Args:
        components: Components with no free parameter (or a :class:`MixingMatrix`).
        instrument: Anything with ``frequency`` (GHz) and optionally ``fwhm`` (arcmin) as keys
            or attributes; with ``fwhm`` the Gaussian beams are deconvolved from the alms.
        data: Maps ``(n_freq, [1 or 3,] n_pix)``; ``UNSEEN`` pixels are zeroed by healpy.
        lbins: Bin edges in ell (see :func:`harmonic_ilc_alm`); ``lmax`` is
            ``min(3 * nside - 1, max(lbins))``.
        weights: Optional apodization map multiplied to the data before the transforms.
        iter: Iterations of ``healpy.map2alm``.

    Returns:
        A :class:`HarmonicILCResult`; ``s`` are maps ``(n_comp, [3,] n_pix)``; spectra are
        divided by ``fsky`` (MASTER formula with ``weights``, else the fraction of good
        pixels).
    """
    return _harmonic_ilc(components, instrument, data, lbins, weights, iter, legacy_fsky=False)
