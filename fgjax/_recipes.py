r"""Parametric component separation of HEALPix maps: fgbuster's recipes, batched in JAX.

Recipes (fgbuster 2.0 semantics, same argument names):

* :func:`basic_comp_sep`: noise from the instrument depths (prewhitening), one set of
  spectral parameters for the whole sky (``nside=0``) or one per pixel of an nside map.
* :func:`weighted_comp_sep`: noise from per-pixel variance maps.
* :func:`adaptive_comp_sep`: any cluster map per parameter, all fitted jointly;
  :func:`multi_res_comp_sep`: the clusters are the pixels of one nside per parameter.

How a fit runs. The data are reduced once: pixels that share their mixing matrix form a
*group* (a patch, or for adaptive fits a unique combination of clusters), and with a noise
shared inside a group the likelihood depends on the data only through the per-group
$\sum N^{-1} d d^T N^{-1}$ (the fast path of :mod:`fgjax._likelihood`; pixel-dependent
noise takes the general per-pixel path). On the fast path the maps are read from the
host in blocks of pixels, twice (this reduction, then the outputs), so the device never
holds a whole copy of them. Parameters that an SED sees only through their reciprocal
(a black-body temperature) are stepped in ``1/x``, where the likelihood is close to
quadratic. Independent patches are then fitted together by
the batched damped Newton method of :func:`fgjax._optimize.batched_newton` with exact
Hessians: on the fast path in closed form from the SED derivatives
(:func:`fgjax._likelihood.logL_hessian_from_covariance`), otherwise by autodiff. The
patches iterate together in compiled loops; every few iterations the ones still running
are gathered into a smaller batch (no Python loop over patches). Joint fits assemble the
full Hessian of all the cluster values from the per-group blocks. The likelihood, its
by-products and the Fisher matrix all come from :mod:`fgjax._likelihood`.

An explicit ``method`` (SciPy or optax) hands the fit itself to
:func:`fgjax._optimize.comp_sep` / ``multi_comp_sep``; the outputs are the same functions
of the best-fit parameters either way.

Outputs follow fgbuster's layout: pixel axis last, ``UNSEEN`` at bad pixels and at patches
or clusters without a good pixel, ``mask_good``; ``Sigma`` is given for every scheme
(per patch, or over all the cluster values of a joint fit).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import logging
import os
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from . import _healpix as hpx
from ._bandpass import as_frequencies
from ._constants import UNSEEN
from ._likelihood import (
    DiagonalInvN,
    Wd,
    fisher_from_amplitude_covariance,
    invAtNA,
    logL,
    logL_from_covariance,
    logL_hessian_from_covariance,
)
from ._mixing import MixingMatrix
from ._optimize import (
    JointAlgebra,
    batched_newton,
    newton_iterate,
    newton_result,
    newton_start,
    reciprocal_bounds,
    reciprocal_mask,
    reciprocal_vgh,
    to_reciprocal,
)

__all__ = [
    "SeparationResult",
    "adaptive_comp_sep",
    "basic_comp_sep",
    "multi_res_comp_sep",
    "weighted_comp_sep",
]

logger = logging.getLogger(__name__)

_DEFAULT_MAXITER = 200


@dataclasses.dataclass(frozen=True)
class SeparationResult:
    r"""Output of the parametric recipes (NumPy arrays, fgbuster's layout).

    Attributes:
        params: Parameter labels (``'Dust.beta_d'``...).
        x: Best-fit parameters: ``(n_param,)`` for a global fit, ``(n_param, n_patch)``
            per patch; for adaptive / multi-resolution fits a list with one array of
            cluster values per parameter. ``UNSEEN`` where no good pixel constrains it.
        Sigma: Inverse Fisher matrix: ``(n_param, n_param)``, ``(n_param, n_param,
            n_patch)`` per patch; ``(n_x, n_x)`` over the concatenated cluster values of a
            joint fit.
        Sigma_inv: The Fisher matrix, same layout.
        s: Components, ``(n_comp, [n_stokes,] n_pix)``.
        chi: Prewhitened residuals $L^T (d - A s)$, ``(n_freq, [n_stokes,] n_pix)``.
        chi_dB: Per parameter, residuals projected on the prewhitened $\partial_i A s$,
            ``([n_stokes,] n_pix)`` (basic and weighted recipes; ``None`` otherwise).
        invAtNA: Component covariance $(A^T N^{-1} A)^{-1}$ (layout as fgbuster's, see
            each recipe).
        mask_good: Pixels used, ``(n_pix,)``.
        x_map: Adaptive / multi-resolution fits: per parameter its map ``(n_pix,)``.
        nit: Newton iterations (per patch for patch fits).
        success: Converged (per patch for patch fits).
        message: A short description of the outcome.
    """

    params: list
    x: np.ndarray | list | None
    Sigma: np.ndarray | None
    Sigma_inv: np.ndarray | None
    s: np.ndarray
    chi: np.ndarray
    chi_dB: list | None
    invAtNA: np.ndarray
    mask_good: np.ndarray
    x_map: list | None = None
    nit: np.ndarray | int = 0
    success: np.ndarray | bool = True
    message: str = ""


# -- setup ------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Setup:
    mm: MixingMatrix
    freqs: object
    inst: object
    maps: np.ndarray  # (n_freq, S, n_pix) as given (no copy where possible), bad not zeroed
    bad: np.ndarray  # (n_pix,)
    has_stokes: bool
    nside: int | None

    @functools.cached_property
    def d(self) -> np.ndarray:
        """The data pixel-major ``(n_pix, S, n_freq)``, zero at bad pixels (a copy, made on
        first use: the batched fast path reads :attr:`maps` directly)."""
        d = np.array(np.asarray(self.maps).T, order="C")  # always a copy: zeroed below,
        # and the maps may be the user's own array (a transposed one is viewed, not copied)
        if self.bad.any():
            d[self.bad] = 0.0
        return d

    @property
    def n_pix(self) -> int:
        return self.maps.shape[-1]

    @property
    def shape(self) -> tuple:
        """``(n_pix, S, n_freq)``: the shape of :attr:`d`."""
        return self.maps.shape[::-1]


def _setup(components, instrument, data, need_nside: bool) -> _Setup:
    inst = hpx.standardize(instrument)
    mm = components if isinstance(components, MixingMatrix) else MixingMatrix(*components)
    freqs = as_frequencies(inst.frequency)
    maps, bad = hpx.as_maps(data)
    if maps.shape[0] != freqs.n_freq:
        raise ValueError(
            f"`data` has {maps.shape[0]} frequency maps (first axis) but `instrument` has "
            f"{freqs.n_freq} frequencies."
        )
    if maps.ndim == 3 and maps.shape[1] not in (1, 2, 3):
        raise ValueError(
            f"`data` must have 1, 2 or 3 Stokes parameters (axis 1); got shape {maps.shape}."
        )
    try:
        nside = hpx.check_nside_of_npix(maps.shape[-1])
    except ValueError:
        if need_nside:
            raise
        nside = None  # plain pixels: fine without depths and without patches
    has_stokes = maps.ndim == 3
    if not has_stokes:
        maps = maps[:, None, :]
    return _Setup(mm, freqs, inst, maps, bad, has_stokes, nside)


_NEWTON = (None, "newton")


def minimize_method(kwargs: dict):
    """The ``method`` keyword (``None`` or ``"newton"``: the batched Newton fit)."""
    return kwargs.get("method")


def _delegated(kwargs: dict) -> dict:
    """Keywords for :mod:`fgjax._optimize` (``method`` other than the batched Newton)."""
    return {k: kwargs[k] for k in ("method", "tol", "options", "callback") if k in kwargs}


def _delegate_patches(setup, invN, group, n_group, X0, lo, hi, kwargs):
    """Fit with :func:`fgjax._optimize.multi_comp_sep` / ``comp_sep`` (SciPy or optax)."""
    from ._optimize import comp_sep, multi_comp_sep  # noqa: PLC0415

    mm, freqs = setup.mm, setup.freqs

    def mixing(x):
        return mm(freqs, x)

    bounds = None
    if np.isfinite(lo).any() or np.isfinite(hi).any():
        bounds = [
            (None if np.isinf(a) else a, None if np.isinf(b) else b)
            for a, b in zip(lo, hi, strict=False)
        ]
    d = jnp.asarray(setup.d)
    if n_group == 1:
        res = comp_sep(mixing, d, invN, jnp.asarray(X0[0]), bounds=bounds, **_delegated(kwargs))
        x = jnp.asarray(res.x)[None]
        return x, np.array([bool(res.success)]), np.array([int(res.nit)])
    res = multi_comp_sep(
        mixing, d, invN, jnp.asarray(X0), jnp.asarray(group), n_patch=n_group, bounds=bounds,
        **_delegated(kwargs),
    )  # fmt: skip
    x = jnp.where(jnp.isfinite(res.x), res.x, jnp.asarray(X0))
    return x, np.full(n_group, bool(res.success)), np.full(n_group, int(res.nit))


def _parse_minimize_kwargs(kwargs: dict, n_param: int):
    """maxiter, bounds and x0 from SciPy-style ``minimize`` keywords (others are ignored)."""
    kwargs = dict(kwargs)
    x0 = kwargs.pop("x0", None)
    if kwargs.get("method") not in _NEWTON:
        kwargs = {k: v for k, v in kwargs.items() if k in ("bounds", "options")}
    options = dict(kwargs.pop("options", None) or {})
    maxiter = int(options.pop("maxiter", _DEFAULT_MAXITER))
    if maxiter < 0:
        raise ValueError(f"`options['maxiter']` must be non-negative; got {maxiter}.")
    bounds = kwargs.pop("bounds", None)
    lo = np.full(n_param, -np.inf)
    hi = np.full(n_param, np.inf)
    if bounds is not None:
        if hasattr(bounds, "lb") and hasattr(bounds, "ub"):  # scipy.optimize.Bounds
            lo = np.broadcast_to(np.asarray(bounds.lb, float), (n_param,)).copy()
            hi = np.broadcast_to(np.asarray(bounds.ub, float), (n_param,)).copy()
        else:
            bounds = list(bounds)
            if len(bounds) != n_param:
                raise ValueError(
                    f"`bounds` must have one (min, max) pair per parameter ({n_param}); got "
                    f"{len(bounds)}."
                )
            for i, (a, b) in enumerate(bounds):
                lo[i] = -np.inf if a is None else a
                hi[i] = np.inf if b is None else b
    ignored = sorted(k for k in kwargs if k not in ("method", "tol", "jac", "hess", "callback"))
    ignored = [] if minimize_method(kwargs) not in _NEWTON else ignored
    ignored += sorted(k for k in options if k not in ("disp", "gtol", "ftol", "xtol", "eps"))
    if ignored:
        logger.info("minimize keywords not used by the batched Newton fit: %s", ignored)
    return maxiter, lo, hi, x0


def _patch_x0(x0, mm: MixingMatrix, n_group: int, dtype) -> np.ndarray:
    """Starting points (n_group, n_param): the defaults, or ``x0`` of shape (n_param,),
    (n_param, n_patch) (fgbuster's output layout) or (n_patch, n_param)."""
    if x0 is None:
        return np.broadcast_to(_defaults(mm, dtype), (n_group, mm.n_param))
    x0 = np.asarray(x0, dtype=dtype)
    if x0.shape == (mm.n_param,):
        return np.broadcast_to(x0, (n_group, mm.n_param))
    if x0.shape == (mm.n_param, n_group):
        return x0.T
    if x0.shape == (n_group, mm.n_param):
        return x0
    raise ValueError(
        f"`x0` must have shape ({mm.n_param},) or ({mm.n_param}, {n_group}); got {x0.shape}."
    )


# -- per-group objectives ---------------------------------------------------------------------
# A "group" is a set of pixels sharing their parameters. theta: (n_group, n_param).
def _mixing(mm, freqs, theta):
    """A for each group: (n_group, n_freq, n_comp), also with no free parameter."""
    A = mm.eval(freqs, *(theta[:, i] for i in range(mm.n_param)))
    return jnp.broadcast_to(A, (theta.shape[0],) + A.shape[-2:])


_VGH_BATCH = 128  # groups evaluated together: XLA's work memory follows this, not n_group


def _fast_vgh(mm, freqs, pw, C, theta):
    """-logL, gradient and Hessian per group (:func:`_fast_vgh_groups`), evaluated in
    batches of :data:`_VGH_BATCH` groups (a compiled loop over the batches): for 768
    patches the work memory of a Newton iteration falls from 9.5 MB to 3.2 MB at the
    same speed."""
    if theta.shape[0] <= _VGH_BATCH:
        return _fast_vgh_groups(mm, freqs, pw, C, theta)

    def one(theta_C):
        f, g, H = _fast_vgh_groups(mm, freqs, pw, theta_C[1][None], theta_C[0][None])
        return f[0], g[0], H[0]

    return jax.lax.map(one, (theta, C), batch_size=_VGH_BATCH)


def _fast_vgh_groups(mm, freqs, pw, C, theta):
    """-logL, gradient and Hessian per group.

    The Hessian is the closed form of :func:`fgjax._likelihood.logL_hessian_from_covariance`;
    the value and gradient are forward-mode autodiff of :func:`logL_from_covariance`
    along the columns' derivatives, whose rounding is far smaller where the signal dwarfs
    the noise (the closed-form
    gradient is a difference of terms of the size of logL: noiseless fits then stop up to
    1e-4 away from the exact minimum). The minimum is where the accurate gradient vanishes;
    the Hessian only sets the steps.
    """
    A, A_dB, A_dBdB = mm.taylor(freqs, theta)
    comp = tuple(mm.comp_of_param)
    Aw = pw[None, :, :, None] * A[:, None]  # (n_group, S, n_freq, n_comp)
    aw = pw[None, :, None, :] * A_dB[:, None]  # (n_group, S, n_param, n_freq)
    bw = pw[None, :, None, None, :] * A_dBdB[:, None]

    def hess(Aw_g, aw_g, bw_g, C_g):
        _, _, H, singular = logL_hessian_from_covariance(Aw_g, aw_g, bw_g, comp, C_g)
        return H, singular

    cols = np.asarray(comp)
    onehot = jnp.asarray(np.eye(A.shape[-1])[cols], dtype=A.dtype)  # (n_param, n_comp)

    def value_grad(Aw_g, aw_g, C_g):
        def value(Aw_):
            return -logL_from_covariance(Aw_, C_g)[0]

        # d/dx_i moves column c_i of A along a_i: one JVP per parameter, through the
        # likelihood only (the SED derivatives are already in aw)
        dirs = jnp.moveaxis(aw_g, -2, 0)[..., :, None] * onehot[:, None, None, :]
        g = jax.vmap(lambda v: jax.jvp(value, (Aw_g,), (v,))[1])(dirs)
        return value(Aw_g), g

    f, g = jax.vmap(value_grad)(Aw, aw, C)
    H, singular = jax.vmap(hess)(Aw, aw, bw, C)
    return jnp.where(singular, jnp.inf, f), g, -H


def _pixel_values(mm, freqs, n_group, group, d, n_inv, theta):
    """-logL per group from per-pixel data d (n_pix, S, n_freq) and noise n_inv (same)."""
    A = _mixing(mm, freqs, theta)[group]  # (n_pix, n_freq, n_comp)

    def one(a, dp, n):
        return logL(a, dp, DiagonalInvN(n), throw=False)

    per_pix = jax.vmap(one)(A, d, n_inv)
    singular = ~jnp.isfinite(per_pix)
    val = jax.ops.segment_sum(jnp.where(singular, 0.0, per_pix), group, num_segments=n_group)
    bad = jax.ops.segment_max(singular.astype(jnp.int32), group, num_segments=n_group) > 0
    return -val, bad


def _value_grad_hess(values, theta):
    """Values, gradients and Hessians of a separable per-group objective.

    ``values(theta) -> ((n_group,), flags)`` depends on row ``g`` of ``theta`` only, so
    the gradient of the sum gives every group's gradient and ``n_param`` batched
    Hessian-vector products give every group's Hessian. Flagged (singular) groups get an
    infinite value.
    """
    n_param = theta.shape[-1]

    def total(t):
        v, flags = values(t)
        return jnp.sum(v), (v, flags)

    def grad(t):
        g, aux = jax.grad(total, has_aux=True)(t)
        return g, aux

    (g, (f, flags)), lin = jax.linearize(grad, theta)
    eye = jnp.eye(n_param, dtype=theta.dtype)
    tangents = jnp.broadcast_to(eye[:, None, :], (n_param,) + theta.shape)
    H = jax.vmap(lambda v: lin(v)[0])(tangents)  # (k, g, i)
    return jnp.where(flags, jnp.inf, f), g, jnp.moveaxis(H, 0, -1)


# -- compiled fits ----------------------------------------------------------------------------
@eqx.filter_jit
def _patches_start(mm, freqs, pw, C, U0, lo, hi, recip):
    """Newton state of independent fits, one per group (fast path), in the coordinates
    of ``recip`` (:func:`fgjax._optimize.reciprocal_mask`; ``U0``, ``lo``, ``hi`` in them)."""
    return newton_start(reciprocal_vgh(partial(_fast_vgh, mm, freqs, pw, C), recip), U0, lo, hi)


@eqx.filter_jit
def _patches_iterate(mm, freqs, pw, C, state, lo, hi, n_iter, recip):
    """``n_iter`` more Newton iterations of the groups in ``state`` (fast path)."""
    vgh = reciprocal_vgh(partial(_fast_vgh, mm, freqs, pw, C), recip)
    return newton_iterate(vgh, state, lo, hi, n_iter)


@eqx.filter_jit
def _fit_patches_pixel(mm, freqs, group, d, n_inv, X0, lo, hi, maxiter, recip):
    """Independent fits, one per group (per-pixel noise)."""
    n_group = X0.shape[0]

    def values(theta):
        return _pixel_values(mm, freqs, n_group, group, d, n_inv, theta)

    return batched_newton(partial(_value_grad_hess, values), X0, lo, hi, maxiter, reciprocal=recip)


@jax.jit
def _take_groups(tree, take):
    return jax.tree_util.tree_map(lambda a: a[take], tree)


_ROUND = 1  # Newton iterations between two compactions of the batch of patches
_MIN_BATCH = 8  # smallest compacted batch
_BASE = 4  # compacted batch sizes are powers of this: few sizes, so few compiled programs


def _fit_patches_in_rounds(mm, freqs, pw, C, X0, lo, hi, maxiter: int):
    """Independent fits, one per group, in one batch that shrinks as the groups converge.

    All the groups iterate together for a few Newton iterations (one compiled loop); then
    the ones still running are gathered, with their whole Newton state, into a batch of
    the next power of four (padded with copies of one of them; few batch sizes, so few
    compiled programs), and so on: the cost follows
    the number of groups still running rather than the slowest one. A host loop over
    rounds (about ``log2(n_group)`` of them), never over groups.
    """
    n_group = X0.shape[0]
    X0, lo, hi = np.asarray(X0), np.asarray(lo), np.asarray(hi)
    recip = reciprocal_mask(mm.reciprocal, X0, lo, hi)
    lo, hi = (jnp.asarray(b) for b in reciprocal_bounds(lo, hi, recip))
    state = _patches_start(mm, freqs, pw, C, jnp.asarray(to_reciprocal(X0, recip)), lo, hi, recip)
    X, done, nit = (np.array(a) for a in newton_result(state))
    idx = np.arange(n_group)  # the groups of the current batch
    left = int(maxiter)
    while left > 0:
        small = idx.size <= _MIN_BATCH
        k = left if small or n_group <= 64 else min(_ROUND, left)
        state = _patches_iterate(mm, freqs, pw, C, state, lo, hi, jnp.asarray(k), recip)
        left -= k
        running = ~np.asarray(state["done"])
        if left == 0 or not running.any() or small:
            break
        size = max(_MIN_BATCH, _BASE ** int(np.ceil(np.log(running.sum()) / np.log(_BASE))))
        if size < idx.size:  # compact: keep the running groups only
            for out, a in zip((X, done, nit), newton_result(state), strict=True):
                out[idx] = np.asarray(a)
            keep = np.nonzero(running)[0]
            keep = np.concatenate((keep, np.full(size - keep.size, keep[0])))
            state, C = _take_groups((state, C), jnp.asarray(keep))
            idx = idx[keep]
    for out, a in zip((X, done, nit), newton_result(state), strict=True):
        out[idx] = np.asarray(a)
    return to_reciprocal(X, recip), done, nit


@eqx.filter_jit
def _fit_joint_fast(mm, freqs, pw, C, algebra, gidx, x0, lo, hi, maxiter, recip):
    """One joint fit of all the cluster values (fast path): ``-logL = sum_g f_g(x[gidx[g]])``
    over the groups, with the Hessian kept as the groups' blocks (:class:`JointAlgebra`).

    ``recip`` flags per parameter the ones fitted in ``1/x`` (applied per group, which by
    the chain rule is the same as in ``x``: each cluster value is one coordinate);
    ``x0``, ``lo``, ``hi`` are in those coordinates.
    """
    n_x = x0.shape[0]
    group_vgh = reciprocal_vgh(partial(_fast_vgh, mm, freqs, pw, C), recip)

    def vgh(X):
        f, g, H = group_vgh(X[0][gidx])  # per group: (n_group,), (n_group, n_param), ...
        g_x = jnp.zeros((n_x,), X.dtype).at[gidx].add(g)
        return jnp.sum(f)[None], g_x[None], H[None]

    state = newton_start(vgh, x0[None], lo, hi, algebra)
    X, done, nit = newton_result(newton_iterate(vgh, state, lo, hi, maxiter, algebra=algebra))
    return X[0], done[0], nit[0]


# -- deterministic outputs at the best fit ----------------------------------------------------
def _separate(mm, freqs, theta, group, d, root):
    """s, chi, chi_dB at ``theta`` (n_group, n_param), and the whitened A and dA per group.

    Args:
        root: Square root of the diagonal inverse noise, broadcastable to
            ``(n_pix, S, n_freq)``.

    Returns:
        ``s`` (n_pix, S, n_comp), ``chi`` (n_pix, S, n_freq), ``chi_dB`` (n_param, n_pix, S)
        or None, ``A`` (n_group, n_freq, n_comp), ``dA`` (n_group, n_param, n_freq, n_comp).
    """
    A = _mixing(mm, freqs, theta)  # (n_group, n_freq, n_comp)
    Aw = root[..., None] * A[group][:, None]  # (n_pix, S, n_freq, n_comp)
    dw = root * d
    s = Wd(Aw, dw, None, throw=False)
    chi = dw - jnp.einsum("psfc,psc->psf", Aw, s)
    if mm.n_param == 0:
        return s, chi, None, A, None
    dA = jax.vmap(jax.jacfwd(lambda t: _mixing(mm, freqs, t[None])[0]))(theta)  # (g,f,c,i)
    dA = jnp.moveaxis(dA, -1, 1)  # (n_group, n_param, n_freq, n_comp)
    dAs = jnp.einsum("pifc,psc->ipsf", dA[group], s) * root[None]
    norm = jnp.sqrt(jnp.sum(dAs * dAs, axis=-1))
    chi_dB = jnp.sum(chi[None] * dAs, axis=-1) / norm
    return s, chi, chi_dB, A, dA


def _directional_fisher(loglike, n_param, dtype):
    """-Hessian at t = 0 of ``loglike(t)`` (the mixing matrix moved linearly along dA)."""
    return -jax.hessian(loglike)(jnp.zeros((n_param,), dtype))


@eqx.filter_jit
def _group_operators(mm, freqs, pw, theta):
    """Per group and Stokes, at ``theta``: the prewhitened ``A`` (n_group, S, f, c),
    ``invAtNA`` (n_group, S, c, c), ``W = invAtNA A^T`` (n_group, S, c, f), the
    prewhitened column derivatives ``a_i`` (n_group, S, n_param, f) and their unit
    vectors (both None without parameters)."""
    A, A_dB, _ = mm.taylor(freqs, theta, second=False)
    Aw = pw[None, :, :, None] * A[:, None]
    inv = invAtNA(Aw, None, throw=False)
    W = jnp.einsum("gscC,gsfC->gscf", inv, Aw)
    if mm.n_param == 0:
        return Aw, inv, W, None, None
    aw = pw[None, :, None] * A_dB[:, None]
    return Aw, inv, W, aw, aw / jnp.sqrt(jnp.sum(aw * aw, axis=-1, keepdims=True))


def _dot_last(a, b):
    """``sum(a * b, axis=-1)`` written out term by term: elementwise operations only, so
    XLA fuses the gathers of the groups' operators into them (a reduction over the last
    axis is compiled as its own kernel, fed by a materialised per-pixel gather)."""
    return sum(a[..., k] * b[..., k] for k in range(a.shape[-1]))


@partial(jax.jit, static_argnames=("cols", "want_chi_dB"))  # plain jit: called per block
def _block_outputs(x, bad, group, pw, ops, cols, S_g, want_chi_dB: bool):
    """The outputs of one block of pixels (:func:`_pixel_blocks`) from its raw data ``x``.

    ``s = W d`` and ``chi = d - A s`` per pixel, with W and A of the pixel's group;
    ``chi_dB`` is ``chi`` projected on the prewhitened ``dA/dx_i s``: with one column per
    parameter that is ``sign(s_c) chi . a_i / |a_i|``. The groups' operators are gathered
    one component at a time into elementwise expressions (:func:`_dot_last`), which keeps
    XLA's work memory for a block at a few times the block's data. Also adds the block's
    per-group ``sum s s^T`` to ``S_g`` (n_group + 1, S, c, c), the last row collecting the
    padding pixels.

    Returns:
        ``s`` (P, S, c), ``chi`` (P, S, f), ``chi_dB`` (n_param, P, S) or None, and the
        updated ``S_g``.
    """
    Aw, _, W, _, unit = ops
    d = _whitened(x, bad, pw)  # (P, S, f); padding pixels (group n_group) clip to a group
    n_comp = Aw.shape[-1]
    s = jnp.stack([_dot_last(W[:, :, c][group], d) for c in range(n_comp)], -1)  # (P, S, c)
    chi = d - sum(Aw[:, :, :, c][group] * s[..., c, None] for c in range(n_comp))
    S_g = S_g.at[group].add(s[..., :, None] * s[..., None, :])
    if not want_chi_dB or unit is None:
        return s, chi, None, S_g
    proj = jnp.stack([_dot_last(chi, unit[:, :, i][group]) for i in range(unit.shape[2])])
    sign = jnp.sign(jnp.moveaxis(s[..., jnp.asarray(cols)], -1, 0))  # (n_param, P, S)
    return s, chi, proj * sign, S_g


@eqx.filter_jit
def _fisher_from_sums(mm, ops, S_g):
    """fgbuster's Fisher matrix (``fisher_logL_dB_dB`` at the separated ``s``) per group,
    from each group's ``sum s s^T``."""
    Aw, _, _, aw, _ = ops
    comp = tuple(mm.comp_of_param)
    return jax.vmap(lambda A_, a_, S_: fisher_from_amplitude_covariance(A_, a_, comp, S_))(
        Aw, aw, S_g
    )


def _fast_outputs(mm, freqs, pw, theta, maps, bad, group, n_group, want_chi_dB=True):
    """Outputs of a fit with noise shared by the pixels of each group (prewhitening
    ``pw``; ``group`` the group of each pixel), computed block by block from the maps
    (:func:`_pixel_blocks`) and copied straight into the host outputs: the device never
    holds the whole data, so the working memory is that of the outputs plus a block.

    Returns:
        ``s`` (n_pix, S, c), ``chi`` (n_pix, S, f), ``chi_dB`` (n_param, n_pix, S) or None
        (float64 host arrays, writable), ``invAtNA`` (n_group, S, c, c) and the Fisher
        matrices (n_group, n_param, n_param) or None.
    """
    n_freq, S, n_pix = maps.shape
    ops = _group_operators(mm, freqs, pw, theta)
    n_comp, n_param = mm.n_comp, mm.n_param
    want_chi_dB = bool(want_chi_dB and n_param)
    # float64 host outputs as fgbuster's, whatever the precision of the fit
    s = np.empty((n_pix, S, n_comp))
    chi = np.empty((n_pix, S, n_freq))
    chi_dB = np.empty((n_param, n_pix, S)) if want_chi_dB else None
    S_g = jnp.zeros((n_group + 1, S, n_comp, n_comp), ops[1].dtype)
    cols = tuple(mm.comp_of_param)

    def write(a, b, sb, chib, dBb):
        s[a:b] = np.asarray(sb)[: b - a]
        chi[a:b] = np.asarray(chib)[: b - a]
        if want_chi_dB:
            chi_dB[:, a:b] = np.asarray(dBb)[:, : b - a]

    pending = None  # the previous block, copied while the device computes this one
    for a, b, x, bad_b, group_b in _pixel_blocks(maps, bad, group, n_group):
        sb, chib, dBb, S_g = _block_outputs(
            x, bad_b, group_b, pw, ops, cols=cols, S_g=S_g, want_chi_dB=want_chi_dB
        )
        if pending is not None:
            write(*pending)
        pending = (a, b, sb, chib, dBb)
    write(*pending)
    F = None if n_param == 0 else _fisher_from_sums(mm, ops, S_g[:-1])
    return s, chi, chi_dB, ops[1], F


def _pixel_blocks(maps, bad, group, n_group: int):
    """The maps ``(n_freq, S, n_pix)`` (host, as given) in blocks of consecutive pixels:
    yields ``(a, b, x, bad, group)`` for pixels ``a:b``, all of one shape (one compiled
    program: the last block is padded with bad pixels of group ``n_group``)."""
    n_pix = maps.shape[-1]
    P = min(n_pix, max(-(-n_pix // _BLOCKS), _MIN_BLOCK))
    group = np.asarray(group)
    bad = np.asarray(bad)
    for a in range(0, n_pix, P):
        b = min(a + P, n_pix)
        x, bad_b, group_b = maps[..., a:b], bad[a:b], group[a:b]
        if b - a < P:
            pad = P - (b - a)
            x = np.concatenate([x, np.zeros(x.shape[:-1] + (pad,), x.dtype)], -1)
            bad_b = np.concatenate([bad_b, np.ones(pad, bool)])
            group_b = np.concatenate([group_b, np.full(pad, n_group, group_b.dtype)])
        yield a, b, x, bad_b, group_b


@eqx.filter_jit
def _post_pixel(mm, freqs, theta, group, d, n_inv, n_group):
    """Outputs of a fit with per-pixel diagonal noise ``n_inv`` (n_pix, S, n_freq)."""
    s, chi, chi_dB, A, dA = _separate(mm, freqs, theta, group, d, jnp.sqrt(n_inv))
    Ap = A[group]  # (n_pix, n_freq, n_comp)
    inv = invAtNA(Ap[:, None], DiagonalInvN(n_inv), throw=False)  # (n_pix, S, c, c)
    if mm.n_param == 0:
        return s, chi, chi_dB, inv, None
    dAp = dA[group]

    def one(Ap_, dAp_, s_, n_):
        model = jnp.einsum("fc,sc->sf", Ap_, s_)
        return _directional_fisher(
            lambda t: logL(Ap_ + jnp.tensordot(t, dAp_, 1), model, DiagonalInvN(n_), throw=False),
            mm.n_param,
            Ap_.dtype,
        )

    F_pix = jax.vmap(one)(Ap, dAp, s, n_inv)
    return s, chi, chi_dB, inv, jax.ops.segment_sum(F_pix, group, num_segments=n_group)


class _Layout(eqx.Module):
    """The pixels sorted by group and cut into chunks of ``K`` pixels, each chunk inside
    one group (the last chunk of a group zero-padded).

    Per-group work then runs as batched products over ``(n_chunk, K)`` blocks whose size is
    that of the data (at most ``n_group * (K - 1)`` padding pixels), whatever the group
    sizes: equal patches of ``K`` pixels are exactly one chunk each, and a cluster holding
    most of the sky is many chunks (no padding to the largest group).
    """

    src: jax.Array  # (n_chunk * K,) pixel at each padded position (n_pix: padding)
    chunk_group: jax.Array  # (n_chunk,) group of each chunk
    K: int = eqx.field(static=True)
    n_group: int = eqx.field(static=True)

    @property
    def n_chunk(self) -> int:
        return self.chunk_group.shape[0]

    def pad(self, x):
        """(n_pix, ...) -> (n_chunk, K, ...), zero in the padding (one gather)."""
        flat = jnp.take(x, self.src, axis=0, mode="fill", fill_value=0)
        return flat.reshape((self.n_chunk, self.K) + x.shape[1:])

    def group_sum(self, x):
        """Per-chunk values (n_chunk, ...) summed per group: (n_group, ...)."""
        if self.n_chunk == self.n_group:  # one chunk per group, in group order
            return x
        return jax.ops.segment_sum(
            x, self.chunk_group, num_segments=self.n_group, indices_are_sorted=True
        )


_CHUNK = 64  # pixels per chunk: an nside-8 patch of an nside-64 map is one chunk


def _grouping(group: np.ndarray, n_group: int) -> _Layout:
    """The :class:`_Layout` of the pixels' group ids (host)."""
    group = np.asarray(group)
    order = np.argsort(group, kind="stable")
    counts = np.bincount(group, minlength=n_group)
    K = int(np.clip(counts.max(initial=1), 1, _CHUNK))
    chunks = -(-counts // K)
    if chunks.sum() == 0:  # no pixel at all: one empty chunk keeps the shapes valid
        chunks[0] = 1
    first_chunk = np.concatenate(([0], np.cumsum(chunks)[:-1]))
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    # the i-th pixel in group order sits at position i - starts[g] of its group g, that is
    # at slot first_chunk[g] * K + i - starts[g] (a group's chunks are consecutive)
    slot = np.take(first_chunk * K - starts, group[order])
    slot += np.arange(group.size, dtype=slot.dtype)
    src = np.full(int(chunks.sum()) * K, group.size, dtype=slot.dtype)
    src[slot] = order
    chunk_group = np.repeat(np.arange(n_group), chunks)
    return _Layout(jnp.asarray(src), jnp.asarray(chunk_group), K, int(n_group))


def _stokes_classes(pw: np.ndarray):
    """Stokes parameters with the same prewhitening share ``A^T N^-1 A``, so their
    likelihoods add up to one with the sum of their covariances. Returns one prewhitening
    row per class and the classes (tuples of Stokes indices): Q and U with ``depth_p``
    are one class, which halves the work of the fit."""
    rows, inverse = np.unique(np.asarray(pw), axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    classes = tuple(tuple(int(i) for i in np.nonzero(inverse == u)[0]) for u in range(len(rows)))
    return jnp.asarray(rows), classes


_BLOCKS = 32  # the maps are read in about this many blocks: a block is all the device holds
_MIN_BLOCK = 1024  # pixels: smaller maps are one block


def _chunk_blocks(maps, bad, layout: _Layout):
    """The maps ``(n_freq, S, n_pix)`` (host, as given) read in blocks of whole chunks of
    the layout (:class:`_Layout`), each gathered on the host: yields ``x (f, S, B*K)``,
    ``drop (B*K,)`` (bad pixels and padding) and the group of each chunk ``(B,)``
    (``n_group`` for padding chunks).
    All the blocks have the same shape (one compiled program); the device never holds
    more than a block of the data (a whole copy on the device would be 1x the input)."""
    n_pix = maps.shape[-1]
    K, n_chunk, n_group = layout.K, layout.n_chunk, layout.n_group
    B = min(n_chunk, max(-(-n_chunk // _BLOCKS), -(-_MIN_BLOCK // K)))
    n_block = -(-n_chunk // B)
    src_all = np.asarray(layout.src)
    group_all = np.asarray(layout.chunk_group)
    bad = np.asarray(bad)
    # two host buffers in turn, not a fresh array per block (whose freed memory the heap
    # keeps): a buffer is refilled two blocks later, when :func:`_fit_covariance` has
    # waited for the computation that read it
    bufs = [np.empty(maps.shape[:-1] + (B * K,), maps.dtype) for _ in range(min(2, n_block))]
    for b in range(n_block):
        src = np.full(B * K, n_pix, src_all.dtype)
        part = src_all[b * B * K : (b + 1) * B * K]
        src[: part.size] = part
        cg = np.full(B, n_group, group_all.dtype)
        part = group_all[b * B : (b + 1) * B]
        cg[: part.size] = part
        idx = np.minimum(src, n_pix - 1)
        x = np.take(maps, idx, axis=-1, out=bufs[b % 2])
        drop = (src >= n_pix) | bad[idx]
        yield x, drop, cg


def _whitened(x, drop, pw):
    """A block of raw data ``(f, S, N)`` prewhitened and pixel-major ``(N, S, f)``, zero
    at dropped pixels (traced)."""
    return jnp.where(drop[:, None, None], 0, jnp.transpose(x, (2, 1, 0)) * pw[None])


@partial(jax.jit, static_argnames=("classes", "K"))  # plain jit: called per block
def _block_covariance(x, drop, pw, chunk_group, classes, C, K: int):
    """Adds one block's per-group, per-Stokes-class (:func:`_stokes_classes`) sum of the
    outer products of the prewhitened data to ``C`` (n_group + 1, n_class, f, f), the last
    row collecting the padding chunks."""
    d = _whitened(x, drop, pw)
    d = d.reshape((-1, K) + d.shape[1:])  # (B, K, S, f): chunks
    Cb = jnp.einsum("nksf,nksg->nsfg", d, d)
    Cb = jnp.stack([sum(Cb[:, i] for i in idx) for idx in classes], 1)
    return C.at[chunk_group].add(Cb)


def _fit_covariance(maps, bad, pw, layout: _Layout, classes):
    """Per group and Stokes class, the sum of the outer products of the prewhitened data
    ``(n_group, n_class, f, f)``: the maps read once, block by block (:func:`_chunk_blocks`)."""
    n_freq = maps.shape[0]
    C = jnp.zeros((layout.n_group + 1, len(classes), n_freq, n_freq), pw.dtype)
    for x, drop, cg in _chunk_blocks(maps, bad, layout):
        previous = C
        C = _block_covariance(x, drop, pw, cg, classes=classes, C=C, K=layout.K)
        previous.block_until_ready()  # two blocks in flight at most: dispatch is async
    return C[:-1]


@eqx.filter_jit
def _group_covariance(dw, layout: _Layout):
    """Per (group, Stokes) sums of outer products of whitened data ``dw`` (n_pix, S, f)
    already on the device: ``(n_group, S, f, f)``, by one batched product over the
    chunks (the benchmarks' one-pass floor)."""
    d = layout.pad(dw)
    return layout.group_sum(jnp.einsum("nksf,nksg->nsfg", d, d))


# -- packing ----------------------------------------------------------------------------------
def _writable(values) -> np.ndarray:
    """A float64 host array we may write into: ``values`` itself when it is one."""
    values = np.asarray(values)
    if values.dtype != np.float64 or not values.flags.writeable:
        values = np.array(values, dtype=float)
    return values


def _pack_maps(values, bad: np.ndarray, has_stokes: bool) -> np.ndarray:
    """(n_pix, S, k) -> (k, [S,] n_pix) with UNSEEN at bad pixels (written in place into
    ``values`` when it is a writable float64 host array, else into a copy)."""
    out = _writable(values)
    if not has_stokes:
        out = out[:, 0]
    out[bad] = UNSEEN
    return out.T


def _pack_chi_dB(chi_dB, bad, has_stokes):
    """(n_param, n_pix, S) -> one ([S,] n_pix) map per parameter, UNSEEN at bad pixels."""
    if chi_dB is None:
        return None
    chi_dB = _writable(chi_dB)
    if not has_stokes:
        chi_dB = chi_dB[..., 0]
    chi_dB[:, bad] = UNSEEN
    return [c.T for c in chi_dB]


def _safe_inverse(F: np.ndarray) -> np.ndarray:
    """Inverse of each matrix; NaN where singular (reported as UNSEEN by the caller)."""
    out = np.full_like(F, np.nan)
    for_inv = np.isfinite(F).all(axis=(-2, -1))
    with np.errstate(all="ignore"):
        try:
            out[for_inv] = np.linalg.inv(F[for_inv])
        except np.linalg.LinAlgError:
            for idx in zip(*np.nonzero(for_inv), strict=False):
                try:
                    out[idx] = np.linalg.inv(F[idx])
                except np.linalg.LinAlgError:
                    pass
    return out


def _defaults(mm: MixingMatrix, dtype) -> np.ndarray:
    return np.asarray(mm.defaults, dtype=dtype)


def _warn_x64(dtype) -> None:
    if dtype != np.float64:
        logger.warning("fitting in %s: enable x64 for fgbuster's float64 accuracy.", dtype)


# -- basic / weighted -------------------------------------------------------------------------
def _patch_groups(nside: int, setup: _Setup, name: str = "nside"):
    """``(group, n_group, layout)`` of the patches of an nside map (0: the whole sky)."""
    if nside != 0:
        if setup.nside is None:
            hpx.check_nside_of_npix(setup.n_pix)
        nside = hpx.check_nside(nside, setup.nside, name)
        return _nside_groups(nside, setup.nside, jnp.asarray(0).dtype)
    return _nside_groups(0, setup.n_pix, jnp.asarray(0).dtype)


@functools.lru_cache(maxsize=16)
def _nside_groups(nside: int, size: int, int_dtype):
    """Patches of nside ``nside`` on an nside ``size`` map, or for ``nside=0`` one group
    of ``size`` pixels; cached (read-only ids), as repeated fits on one geometry are the
    rule (simulations). ``int_dtype`` (JAX's default integer) keys the cache on the
    precision mode the layout's arrays were made in."""
    if nside == 0:
        group, n_group = np.zeros(size, dtype=np.int64), 1
    else:
        group, n_group = hpx.cluster_ids_from_nside(nside, size), 12 * nside**2
    group.flags.writeable = False
    return group, n_group, _grouping(group, n_group)


def _finish_patches(setup, X, done, nit, F, group, n_group, nside, s, chi, chi_dB, inv):
    """Pack a patch fit in fgbuster's layout (UNSEEN for empty patches)."""
    mm = setup.mm
    common = dict(
        s=_pack_maps(s, setup.bad, setup.has_stokes),
        chi=_pack_maps(chi, setup.bad, setup.has_stokes),
        chi_dB=_pack_chi_dB(chi_dB, setup.bad, setup.has_stokes),
        invAtNA=inv,
        mask_good=~setup.bad,
    )
    if mm.n_param == 0:
        return SeparationResult(params=[], x=None, Sigma=None, Sigma_inv=None, **common)
    empty = hpx.empty_patches(group, setup.bad, n_group)
    X = np.array(X, dtype=float)
    F = np.array(F, dtype=float)
    Sigma = _safe_inverse(F)
    bad_fit = empty | ~np.isfinite(Sigma).all(axis=(-2, -1))
    X[empty] = UNSEEN
    Sigma[bad_fit] = UNSEEN
    F[empty] = UNSEEN
    if nside == 0:
        x, Sigma, F = X[0], Sigma[0], F[0]
        nit, done = int(np.asarray(nit)[0]), bool(np.asarray(done)[0])
    else:
        x, Sigma, F = X.T, Sigma.T, F.T
        nit, done = np.asarray(nit), np.asarray(done)
    message = "converged" if np.all(done) else "maximum number of iterations reached"
    return SeparationResult(
        params=mm.params, x=x, Sigma=Sigma, Sigma_inv=F, nit=nit, success=done, message=message,
        **common,
    )  # fmt: skip


def _prewhitening(setup: _Setup) -> np.ndarray:
    """(S, n_freq) prewhitening factors (ones without depths)."""
    n_pix, S, n_freq = setup.shape
    data_shape = (n_freq, S, n_pix) if setup.has_stokes else (n_freq, n_pix)
    nside = setup.nside
    if nside is None and (setup.inst.depth_i is not None or setup.inst.depth_p is not None):
        nside = hpx.check_nside_of_npix(n_pix)  # depths need the pixel size: raises
    pw = hpx.prewhiten_factors(setup.inst, data_shape, nside or 0)
    if pw is None:
        return np.ones((S, n_freq), dtype=setup.maps.dtype)
    return np.broadcast_to(np.asarray(pw, dtype=setup.maps.dtype), (S, n_freq))


def basic_comp_sep(
    components, instrument, data, nside: int = 0, **minimize_kwargs
) -> SeparationResult:
    """Parametric separation with noise from the instrument depths (prewhitening).

    Args:
        components: Components (or a :class:`MixingMatrix`); the fit starts from their
            ``defaults``.
        instrument: Anything with ``frequency`` and optionally ``depth_i`` / ``depth_p``
            (uK_CMB arcmin) as keys or attributes. Each channel is weighted by
            ``(resol / depth)**2`` (resol: pixel size in arcmin); without depths, uniformly.
        data: Maps ``(n_freq, [n_stokes,] n_pix)`` (T, QU or IQU: the same parameters for
            all Stokes parameters); ``UNSEEN`` or masked entries mark bad pixels.
        nside: 0 for one set of parameters; otherwise one per pixel of a HEALPix map of this
            nside (``<=`` that of the data), fitted independently and all at once.
        **minimize_kwargs: SciPy-style ``options={'maxiter': ...}`` and ``bounds``
            (one ``(min, max)`` per parameter); ``x0`` (``(n_param,)`` or per patch
            ``(n_param, n_patch)``) instead of the defaults. ``method=None`` (or
            ``"newton"``): the batched Newton fit; any other ``method`` (SciPy's names,
            ``"optax.lbfgs"``, ...) fits with :func:`fgjax._optimize.multi_comp_sep` /
            ``comp_sep`` with ``tol`` and ``options``, and the outputs are computed here.

    Returns:
        A :class:`SeparationResult`; ``invAtNA`` is ``([n_stokes,] n_comp, n_comp)`` for
        ``nside=0`` and per pixel ``(n_pix, [n_stokes,] n_comp, n_comp)`` otherwise (not
        masked), as fgbuster.
    """
    setup = _setup(components, instrument, data, need_nside=bool(nside))
    mm = setup.mm
    pw = _prewhitening(setup)
    group, n_group, layout = _patch_groups(nside, setup)
    dtype = setup.maps.dtype
    _warn_x64(jnp.asarray(setup.maps[:1, :1, :1]).dtype)
    pw_j = jnp.asarray(pw)
    theta = jnp.zeros((n_group, 0), dtype)
    done, nit = np.ones(n_group, bool), np.zeros(n_group, int)
    newton = minimize_method(minimize_kwargs) in _NEWTON
    if mm.n_param:
        maxiter, lo, hi, x0 = _parse_minimize_kwargs(minimize_kwargs, mm.n_param)
        X0 = _patch_x0(x0, mm, n_group, dtype)
        if newton:
            pw_f, classes = _stokes_classes(pw)
            C = _fit_covariance(setup.maps, setup.bad, pw_j, layout, classes)
            theta, done, nit = _fit_patches_in_rounds(
                mm, setup.freqs, pw_f, C, X0, jnp.asarray(lo), jnp.asarray(hi), maxiter
            )
        else:
            invN = DiagonalInvN(pw_j**2)  # (S, n_freq), the prewhitening as a noise
            theta, done, nit = _delegate_patches(
                setup, invN, group, n_group, X0, lo, hi, minimize_kwargs
            )
    s, chi, chi_dB, inv, F = _fast_outputs(
        mm, setup.freqs, pw_j, theta, setup.maps, setup.bad, group, n_group
    )
    inv = np.asarray(inv)
    if not setup.has_stokes:
        inv = inv[:, 0]
    inv = inv[0] if nside == 0 else inv[group]
    return _finish_patches(setup, theta, done, nit, F, group, n_group, nside, s, chi, chi_dB, inv)


def weighted_comp_sep(
    components, instrument, data, cov, nside: int = 0, **minimize_kwargs
) -> SeparationResult:
    """Parametric separation with per-pixel noise variances.

    Args:
        components: Components (or a :class:`MixingMatrix`).
        instrument: Anything with ``frequency`` as a key or an attribute.
        data: Maps ``(n_freq, [n_stokes,] n_pix)``; ``UNSEEN`` or masked entries are bad.
        cov: Noise variance maps broadcastable to ``data`` (per frequency, Stokes and
            pixel); ``UNSEEN`` or masked entries are bad.
        nside: 0 for one set of parameters, else one per pixel of a map of this nside.
        **minimize_kwargs: As :func:`basic_comp_sep`.

    Returns:
        A :class:`SeparationResult`; ``invAtNA`` per pixel ``(n_comp, n_comp, [n_stokes,]
        n_pix)`` with ``UNSEEN`` at bad pixels, as fgbuster.
    """
    setup = _setup(components, instrument, data, need_nside=bool(nside))
    mm = setup.mm
    maps_shape = np.shape(data)
    try:
        cov_b = np.broadcast_to(cov, maps_shape) if not np.ma.isMaskedArray(cov) else cov
        if np.ma.isMaskedArray(cov_b):
            cov_b = np.ma.array(
                np.broadcast_to(cov_b.data, maps_shape),
                mask=np.broadcast_to(np.ma.getmaskarray(cov_b), maps_shape),
            )
    except ValueError:
        raise ValueError(
            f"`cov` must be broadcastable to `data` {maps_shape}; got shape {np.shape(cov)}."
        ) from None
    cov_arr, cov_bad = hpx.as_maps(cov_b, name="cov")
    bad = setup.bad | cov_bad
    cov_t = hpx.to_pixel_major(cov_arr)
    if not setup.has_stokes:
        cov_t = cov_t[:, None, :]
    good_cov = cov_t[~bad]
    if not np.all(np.isfinite(good_cov) & (good_cov > 0)):
        raise ValueError("`cov` must be positive and finite at the pixels used.")
    setup = dataclasses.replace(setup, bad=bad)  # its d is zero at these bad pixels too
    n_inv = np.where(bad[:, None, None], 0.0, 1.0 / np.where(bad[:, None, None], 1.0, cov_t))
    group, n_group, _ = _patch_groups(nside, setup)
    dtype = setup.d.dtype
    group_j, d_j, n_inv_j = jnp.asarray(group), jnp.asarray(setup.d), jnp.asarray(n_inv)
    theta = jnp.zeros((n_group, 0), dtype)
    done, nit = np.ones(n_group, bool), np.zeros(n_group, int)
    if mm.n_param:
        maxiter, lo, hi, x0 = _parse_minimize_kwargs(minimize_kwargs, mm.n_param)
        X0 = _patch_x0(x0, mm, n_group, dtype)
        if minimize_method(minimize_kwargs) in _NEWTON:
            theta, done, nit = _fit_patches_pixel(
                mm, setup.freqs, group_j, d_j, n_inv_j, jnp.asarray(X0), jnp.asarray(lo),
                jnp.asarray(hi), jnp.asarray(maxiter), reciprocal_mask(mm.reciprocal, X0, lo, hi),
            )  # fmt: skip
        else:
            theta, done, nit = _delegate_patches(
                setup, DiagonalInvN(n_inv_j), group, n_group, X0, lo, hi, minimize_kwargs
            )
    s, chi, chi_dB, inv, F = _post_pixel(mm, setup.freqs, theta, group_j, d_j, n_inv_j, n_group)
    inv = np.asarray(inv)  # (n_pix, S, n_comp, n_comp)
    n_comp = mm.n_comp
    inv = _pack_maps(inv.reshape(inv.shape[:2] + (-1,)), bad, setup.has_stokes)
    inv = inv.reshape((n_comp, n_comp) + inv.shape[1:])
    return _finish_patches(setup, theta, done, nit, F, group, n_group, nside, s, chi, chi_dB, inv)


# -- adaptive / multi-resolution --------------------------------------------------------------
def _checkpoint_start(checkpoint: dict, n_x: int):
    """x0 and the iteration number from fgbuster-style checkpoint files, if any."""
    odir = checkpoint.get("odir", "./")
    os.makedirs(odir, exist_ok=True)
    start = checkpoint.get("start")
    if start is not None:
        path = os.path.join(odir, f"iter_{int(start)}.npy")
        if os.path.exists(path):
            logger.warning("checkpoint: iteration %d loaded", int(start))
            return np.load(path), int(start)
    found = {}
    for f in glob.glob(os.path.join(odir, "iter_*.npy")):
        try:
            found[int(os.path.splitext(os.path.basename(f))[0].split("_", 1)[1])] = f
        except ValueError:
            continue
    if not found:
        return None, 0
    last = max(found)
    logger.warning("checkpoint: highest iteration found is %d", last)
    x0 = np.load(found[last])
    if x0.shape != (n_x,):
        raise ValueError(
            f"checkpoint file {found[last]} holds shape {x0.shape}, expected ({n_x},)."
        )
    return x0, last


def _joint_sigma(F: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The inverse of the joint Fisher matrix ``F`` over the ``keep`` values; ``UNSEEN``
    in the rows and columns of the others and wherever the inverse is not finite
    (singular). The inverse is computed in place in one copy of ``F`` (LAPACK's LU
    factorisation and inverse, ``getrf`` and ``getri``): ``numpy.linalg.inv`` would hold
    two more matrices of that size. The C-ordered copy is passed transposed (a Fortran
    array, which LAPACK works on in place), and the inverse of the transpose is transposed
    back."""
    all_kept = bool(keep.all())
    sub = F.copy() if all_kept else F[np.ix_(keep, keep)]
    getrf, getri = scipy.linalg.lapack.get_lapack_funcs(("getrf", "getri"), (sub,))
    lu, piv, info = getrf(sub.T, overwrite_a=True)
    if info == 0:
        lu, info = getri(lu, piv, overwrite_lu=True)
    inv = lu.T if info == 0 else np.full_like(sub, UNSEEN)
    inv[~np.isfinite(inv)] = UNSEEN
    if all_kept:
        return inv
    Sigma = np.full(F.shape, UNSEEN)
    Sigma[np.ix_(keep, keep)] = inv
    return Sigma


def _cells(ids, n_clusters):
    """The groups of pixels sharing a cluster for every parameter: ``(cells, group)``, the
    clusters of each group ``(n_group, n_param)`` (in lexicographic order) and the group of
    each pixel ``(n_pix,)``.

    Each pixel's combination is one integer (mixed radix over the cluster counts), so this
    works on one ``(n_pix,)`` array: by a table of the possible combinations when there are
    few, else by sorting the integers.
    """
    dims = tuple(int(n) for n in n_clusters)
    n_pix = ids[0].shape[0]
    if float(np.prod(np.asarray(dims, dtype=float))) >= 2.0**62:  # does not fit in int64
        cells, group = np.unique(np.stack(ids, axis=1), axis=0, return_inverse=True)
        return cells, group.reshape(-1)
    key = np.ravel_multi_index(tuple(ids), dims)
    n_keys = int(np.prod(dims, dtype=np.int64))
    if n_keys <= 4 * n_pix:
        present = np.zeros(n_keys, bool)
        present[key] = True
        rank = np.cumsum(present) - 1
        group = rank[key]
        keys = np.flatnonzero(present)
    else:
        keys, group = np.unique(key, return_inverse=True)
    return np.stack(np.unravel_index(keys, dims), axis=1), group.reshape(-1)


def _delegate_joint(setup, pw_j, combos, x0, lo, hi, kwargs):
    """Joint fit of the cluster values with :func:`fgjax._optimize.comp_sep`."""
    from ._optimize import comp_sep

    mm, freqs = setup.mm, setup.freqs
    combos_j = jnp.asarray(combos)

    def mixing(x):
        return mm(freqs, x[combos_j])[:, None]  # (n_pix, 1, n_freq, n_comp)

    bounds = None
    if np.isfinite(lo).any() or np.isfinite(hi).any():
        bounds = [
            (None if np.isinf(a) else a, None if np.isinf(b) else b)
            for a, b in zip(lo, hi, strict=False)
        ]
    res = comp_sep(
        mixing, jnp.asarray(setup.d), DiagonalInvN(pw_j**2), jnp.asarray(x0), bounds=bounds,
        **_delegated(kwargs),
    )  # fmt: skip
    return jnp.asarray(res.x), bool(res.success), int(res.nit)


def adaptive_comp_sep(
    components, instrument, data, patch_ids, **minimize_kwargs
) -> SeparationResult:
    """Joint fit with one cluster map per parameter.

    Args:
        components: Components (or a :class:`MixingMatrix`) with ``n_param`` free parameters.
        instrument: As :func:`basic_comp_sep` (prewhitening by the depths).
        data: Maps ``(n_freq, [n_stokes,] n_pix)``.
        patch_ids: ``n_param`` integer maps ``(n_pix,)``: the cluster of each pixel for each
            parameter (ids ``>= 0``; cluster ``k`` of parameter ``i`` has one value).
        **minimize_kwargs: ``options={'maxiter': ...}``, ``bounds`` (one pair per
            parameter, applied to all its clusters), ``x0`` (the concatenated cluster
            values, or one array per parameter), and fgbuster's ``checkpoint`` dict
            (``odir``, ``start``, ``delta``): the fit saves ``odir/iter_<k>.npy`` every
            ``delta`` iterations and restarts from iteration ``start`` (or the last saved).

    Returns:
        A :class:`SeparationResult` with ``x`` and ``x_map`` lists (one per parameter),
        ``Sigma`` over the concatenated cluster values (``UNSEEN`` rows and columns for
        clusters without a good pixel) and ``invAtNA`` per pixel
        ``(n_pix, [n_stokes,] n_comp, n_comp)``.
    """
    setup = _setup(components, instrument, data, need_nside=True)
    mm = setup.mm
    n_pix = setup.n_pix
    if isinstance(patch_ids, np.ndarray) and patch_ids.ndim == 1:
        patch_ids = [patch_ids]
    patch_ids = list(patch_ids)
    if len(patch_ids) != mm.n_param:
        raise ValueError(
            f"`patch_ids` must hold one cluster map per free parameter ({mm.n_param}: "
            f"{mm.params}); got {len(patch_ids)}."
        )
    ids = [hpx.check_patch_ids(p, n_pix, f"patch_ids[{i}]") for i, p in enumerate(patch_ids)]
    n_clusters = [int(i.max()) + 1 for i in ids]
    offsets = np.concatenate(([0], np.cumsum(n_clusters)[:-1])).astype(np.int64)
    n_x = int(np.sum(n_clusters))
    gidx, group = _cells(ids, n_clusters)
    gidx = gidx + offsets[None, :]  # (n_group, n_param) into x
    n_group = gidx.shape[0]
    dtype = setup.maps.dtype
    pw = _prewhitening(setup)
    pw_j = jnp.asarray(pw)
    layout = _grouping(group, n_group)
    pw_f, classes = _stokes_classes(pw)
    C = _fit_covariance(setup.maps, setup.bad, pw_j, layout, classes)

    kwargs = dict(minimize_kwargs)
    checkpoint = kwargs.pop("checkpoint", None)
    maxiter, lo_p, hi_p, x0_user = _parse_minimize_kwargs(kwargs, mm.n_param)
    lo = np.repeat(lo_p, n_clusters)
    hi = np.repeat(hi_p, n_clusters)
    x0 = np.repeat(_defaults(mm, dtype), n_clusters)
    if x0_user is not None:
        if isinstance(x0_user, (list, tuple)):
            x0_user = np.concatenate([np.atleast_1d(np.asarray(v, dtype)) for v in x0_user])
        x0_user = np.asarray(x0_user, dtype=dtype)
        if x0_user.shape != (n_x,):
            raise ValueError(
                f"`x0` must hold the {n_x} cluster values (concatenated per parameter); got "
                f"shape {x0_user.shape}."
            )
        x0 = x0_user
    start = 0
    if checkpoint is not None:
        loaded, start = _checkpoint_start(checkpoint, n_x)
        if loaded is not None:
            x0 = np.asarray(loaded, dtype=dtype)
            maxiter = max(maxiter - start, 0)
    # 1/x per parameter: for all its clusters (each cluster value is one coordinate)
    recip_x = reciprocal_mask(np.repeat(mm.reciprocal, n_clusters), x0, lo, hi)
    recip = tuple(bool(all(recip_x[o : o + n])) for o, n in zip(offsets, n_clusters, strict=True))
    recip_x = tuple(np.repeat(recip, n_clusters).tolist())
    lo_u, hi_u = (jnp.asarray(b) for b in reciprocal_bounds(lo, hi, recip_x))

    @functools.cache  # built by the first joint fit only, then shared by the checkpoints
    def joint_args():
        algebra = JointAlgebra.build(gidx, n_clusters)
        return mm, setup.freqs, pw_f, C, algebra, jnp.asarray(gidx)

    def fit_joint(x, n_iter):  # in x, whatever the fit's coordinates
        x_u = to_reciprocal(jnp.asarray(x, dtype), recip_x)
        x_u, done, k = _fit_joint_fast(*joint_args(), x_u, lo_u, hi_u, jnp.asarray(n_iter), recip)
        return to_reciprocal(x_u, recip_x), done, k

    if minimize_method(kwargs) not in _NEWTON:
        if checkpoint is not None:
            raise ValueError("`checkpoint` is supported with the default (Newton) fit only.")
        x, done, nit = _delegate_joint(setup, pw_j, gidx[group], x0, lo, hi, kwargs)
    elif checkpoint is None and np.all(np.bincount(gidx.ravel(), minlength=n_x) <= 1):
        # Every cluster value belongs to a single group (e.g. equal nsides for all the
        # parameters): independent problems, fitted per group with their own step control.
        X, done_g, nit_g = _fit_patches_in_rounds(
            mm,
            setup.freqs,
            pw_f,
            C,
            jnp.asarray(x0)[jnp.asarray(gidx)],
            jnp.asarray(lo_p),
            jnp.asarray(hi_p),
            maxiter,
        )
        x = np.asarray(x0, dtype=dtype).copy()
        x[gidx] = np.asarray(X)
        done, nit = bool(np.all(np.asarray(done_g))), int(np.max(np.asarray(nit_g)))
    elif checkpoint is None:
        x, done, nit = fit_joint(x0, maxiter)
        nit = int(nit)
    else:
        delta = max(int(checkpoint.get("delta", 1)), 1)
        odir = checkpoint.get("odir", "./")
        x, done, nit = jnp.asarray(x0), False, 0
        while nit < maxiter and not done:  # host loop over checkpoints, not over pixels
            step = min(delta, maxiter - nit)
            x, done, k = fit_joint(x, step)
            nit += int(k) if bool(done) else step
            done = bool(done)
            np.save(os.path.join(odir, f"iter_{start + nit}.npy"), np.asarray(x))
    x = np.asarray(x, dtype=float)
    theta = jnp.asarray(x)[jnp.asarray(gidx)]
    s, chi, _, inv, H = _fast_outputs(
        mm, setup.freqs, pw_j, theta, setup.maps, setup.bad, group, n_group, want_chi_dB=False
    )
    inv = np.asarray(inv)
    inv = inv[group] if setup.has_stokes else inv[group, 0]
    # Fisher of all the cluster values, assembled from the per-group blocks
    H = np.asarray(H)
    F = np.zeros((n_x, n_x))
    np.add.at(F, (gidx[:, :, None], gidx[:, None, :]), H)
    empty = np.concatenate(
        [
            np.bincount(i[~setup.bad], minlength=n)[:n] == 0
            for i, n in zip(ids, n_clusters, strict=False)
        ]
    )
    Sigma = _joint_sigma(F, ~empty)
    F[empty, :] = UNSEEN
    F[:, empty] = UNSEEN
    x_out = x.copy()
    x_out[empty] = UNSEEN
    xs = [x_out[o : o + n] for o, n in zip(offsets, n_clusters, strict=False)]
    x_map = []
    for xi, i in zip(xs, ids, strict=False):
        m = xi[i]  # a new array (fancy indexing)
        m[setup.bad] = UNSEEN
        x_map.append(m)
    return SeparationResult(
        params=mm.params,
        x=xs,
        Sigma=Sigma,
        Sigma_inv=F,
        s=_pack_maps(s, setup.bad, setup.has_stokes),
        chi=_pack_maps(chi, setup.bad, setup.has_stokes),
        chi_dB=None,
        invAtNA=inv,
        mask_good=~setup.bad,
        x_map=x_map,
        nit=nit,
        success=bool(done),
        message="converged" if bool(done) else "maximum number of iterations reached",
    )


def multi_res_comp_sep(components, instrument, data, nsides, **minimize_kwargs) -> SeparationResult:
    """Joint fit where parameter ``i`` takes one value per pixel of an ``nsides[i]`` map.

    Args:
        components: Components (or a :class:`MixingMatrix`).
        instrument: As :func:`basic_comp_sep`.
        data: Maps ``(n_freq, [n_stokes,] n_pix)``.
        nsides: One nside per free parameter (0: a single value), each ``<=`` the maps'.
        **minimize_kwargs: As :func:`adaptive_comp_sep`.

    Returns:
        As :func:`adaptive_comp_sep` (``x[i]`` has ``12 * nsides[i]**2`` entries, 1 for 0).
    """
    maps_shape = np.shape(data)
    if len(maps_shape) not in (2, 3):
        raise ValueError(
            f"`data` must have shape (n_freq, [n_stokes,] n_pix); got shape {maps_shape}."
        )
    nside_map = hpx.check_nside_of_npix(maps_shape[-1])
    nsides = list(np.atleast_1d(nsides))
    ids = [
        hpx.cluster_ids_from_nside(hpx.check_nside(n, nside_map, f"nsides[{i}]"), nside_map)
        for i, n in enumerate(nsides)
    ]
    return adaptive_comp_sep(components, instrument, data, ids, **minimize_kwargs)
