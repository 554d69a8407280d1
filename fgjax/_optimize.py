r"""Fits of the spectral likelihood: SciPy (host loop) and optax (one compiled device loop).

Native API (pure JAX callables in, :class:`~fgjax._results.CompSepResult` out)::

    comp_sep(mixing, d, invN, x0, *, method=None, tol=None, bounds=None, options=None,
             callback=None)
    multi_comp_sep(mixing, d, invN, x0, patch_ids, *, n_patch=None, method=None, tol=None,
                   bounds=None, options=None, callback=None)
    minimize(fun, x0, args=(), *, method=None, tol=None, bounds=None, options=None,
             callback=None)

* ``mixing``: a pure JAX callable ``x (n_param,) -> A (..., n_freq, n_comp)``, e.g.
  ``functools.partial(mm, nu)`` for an ``fgjax.MixingMatrix`` ``mm``; or a fixed array ``A``
  (then the components are separated directly and ``x0`` is not used). ``A`` may be shared
  ``(n_freq, n_comp)`` or carry leading block dimensions broadcasting against ``d``.
  In :func:`multi_comp_sep` it is called once per patch (``vmap``) with that patch's
  parameters and must return a shared ``(n_freq, n_comp)``.
* ``d``: data ``(..., n_freq)``; ``invN``: ``None``, ``(..., n_freq, n_freq)`` or
  :class:`~fgjax._likelihood.DiagonalInvN`; all-zero blocks are masked pixels.
* ``method``: any ``scipy.optimize.minimize`` method (default: SciPy's, i.e. BFGS, or
  L-BFGS-B with ``bounds``); the objective is a jitted value-and-gradient, ``Newton-CG`` and
  the ``trust-*`` methods get exact Hessian-vector products, ``dogleg``/``trust-exact`` the
  exact Hessian. ``"optax.adam"`` and ``"optax.lbfgs"`` (L-BFGS with zoom line search) run
  the whole fit on device in one ``lax.while_loop``; their ``options``: ``maxiter``
  (default 1000), ``learning_rate`` (Adam, default 1e-2), ``gtol`` (gradient infinity norm,
  default 0), ``ftol`` (relative change of the objective, default ``tol`` or 1e-14).
* Fast path (exact): when ``A`` is shared by the pixels (per patch) and ``invN`` by all
  pixels (``None``, 2-D, or a 1-D :class:`DiagonalInvN`), the data are reduced once to
  ``sum N^-1 d d^T N^-1`` (per patch, a JAX segment sum) and each iteration costs nothing
  per pixel. Otherwise the likelihood is evaluated pixel by pixel (vectorised).
* Patches: :func:`multi_comp_sep` fits every patch in one compiled objective (the sum of
  independent patch likelihoods, parameters stacked ``(n_patch, n_param)``), never a Python
  loop over patches; SciPy sees one problem of ``n_patch * n_param`` parameters (its
  minimum is each patch's minimum). ``patch_ids`` has shape ``d.shape[:k]``.
* One trace per fit: the value-and-gradient is traced and compiled once (and reused across
  fits with the same objective and shapes); Newton-type methods trace a second function for
  Hessian-vector products.
* Degenerate mixing matrices during a fit give ``+inf`` (the optimiser backs off); at the
  best fit they give ``result = RESULTS.singular``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

from ._likelihood import (
    _T,
    DiagonalInvN,
    _apply_invN,
    _as_invN,
    _bcast_lead,
    _cholesky_pivot,
    _invN_lead,
    _logL_core,
    _mm,
    _mv,
    _solve_parts,
    _unrolled_spd_inverse,
    data_covariance,
    logL_from_covariance,
    whiten,
)
from ._results import RESULTS, CompSepResult, MinimizeResult

__all__ = [
    "JointAlgebra",
    "batched_newton",
    "comp_sep",
    "minimize",
    "multi_comp_sep",
    "newton_iterate",
    "newton_result",
    "newton_start",
    "reciprocal_bounds",
    "reciprocal_mask",
    "reciprocal_vgh",
    "to_reciprocal",
]

logger = logging.getLogger(__name__)

_OPTAX_METHODS = ("optax.adam", "optax.lbfgs")
_HESSP_METHODS = ("newton-cg", "trust-ncg", "trust-krylov", "trust-constr")
_HESS_METHODS = ("dogleg", "trust-exact")
_NO_GRAD_METHODS = ("nelder-mead", "powell", "cobyla", "cobyqa")


# -- jitted entry points (the objective is static: one trace per objective and shapes) ----
@eqx.filter_jit
def _value_and_grad(fun, x, args):
    return jax.value_and_grad(fun)(x, args)


@eqx.filter_jit
def _hvp(fun, x, v, args):
    return jax.jvp(lambda y: jax.grad(fun)(y, args), (x,), (v,))[1]


@eqx.filter_jit
def _hessian(fun, x, args):
    return jax.hessian(fun)(x, args)


def minimize(
    fun: Callable,
    x0,
    args: Any = (),
    *,
    method: str | None = None,
    tol: float | None = None,
    bounds=None,
    options: dict | None = None,
    callback: Callable | None = None,
) -> MinimizeResult:
    """Minimise ``fun(x, args)`` (pure JAX, scalar) from ``x0`` with SciPy or optax.

    Args:
        fun: Objective ``(x, args) -> scalar``; hashable (a function or an equinox Module).
        x0: Starting point, 1-D.
        args: Pytree of arrays passed to ``fun``.
        method: A ``scipy.optimize.minimize`` method, or ``"optax.adam"``/``"optax.lbfgs"``.
        tol: Passed to SciPy; for optax the relative ``ftol``.
        bounds: SciPy bounds (sequence of ``(low, high)`` or ``scipy.optimize.Bounds``).
        options: Passed to SciPy (``maxiter``, ``gtol``, ...) or optax (see module doc).
        callback: SciPy callback.

    Returns:
        A :class:`~fgjax._results.MinimizeResult`.
    """
    x0 = jnp.asarray(x0)
    if x0.ndim != 1:
        raise ValueError(f"`x0` must be 1-D, got shape {x0.shape}.")
    if not jnp.issubdtype(x0.dtype, jnp.floating):
        x0 = x0.astype(jnp.result_type(float))
    options = dict(options or {})
    if method is not None and method.lower() in _OPTAX_METHODS:
        if bounds is not None:
            raise ValueError("`bounds` are not supported by the optax methods; use a SciPy one.")
        return _minimize_optax(fun, x0, args, method.lower(), tol, options)
    return _minimize_scipy(fun, x0, args, method, tol, bounds, options, callback)


def _minimize_scipy(fun, x0, args, method, tol, bounds, options, callback):
    dtype = x0.dtype
    counts = {"nfev": 0}

    def value_and_grad(x):
        counts["nfev"] += 1
        v, g = _value_and_grad(fun, jnp.asarray(x, dtype=dtype), args)
        v = float(v)
        g = np.asarray(g, dtype=np.float64)
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return np.inf, np.zeros_like(g)
        return v, g

    kwargs: dict[str, Any] = {"tol": tol, "bounds": bounds, "options": options}
    if callback is not None:
        kwargs["callback"] = callback
    name = (method or ("L-BFGS-B" if bounds is not None else "BFGS")).lower()
    kwargs["method"] = method
    if name in _NO_GRAD_METHODS:
        res = scipy.optimize.minimize(
            lambda x: value_and_grad(x)[0], np.asarray(x0, float), **kwargs
        )
    else:
        if name in _HESSP_METHODS:
            kwargs["hessp"] = lambda x, p: np.asarray(
                _hvp(fun, jnp.asarray(x, dtype), jnp.asarray(p, dtype), args), dtype=np.float64
            )
        elif name in _HESS_METHODS:
            kwargs["hess"] = lambda x: np.asarray(
                _hessian(fun, jnp.asarray(x, dtype), args), dtype=np.float64
            )
        res = scipy.optimize.minimize(
            value_and_grad, np.asarray(x0, np.float64), jac=True, **kwargs
        )
    x = jnp.asarray(res.x, dtype=dtype)
    f, g = _value_and_grad(fun, x, args)
    success = bool(res.success)
    if not np.isfinite(float(f)):
        result = RESULTS.nonfinite
    elif success:
        result = RESULTS.successful
    elif res.get("nit", 0) >= options.get("maxiter", np.inf):
        result = RESULTS.max_steps_reached
    else:
        result = RESULTS.failed
    return MinimizeResult(
        x=x,
        fun=f,
        grad=g,
        nit=int(res.get("nit", 0)),
        nfev=int(res.get("nfev", counts["nfev"])),
        success=success,
        status=int(res.get("status", 0)),
        message=str(res.get("message", "")),
        result=result,
        raw=res,
    )


@eqx.filter_jit
def _optax_loop(fun, x0, args, method, maxiter, learning_rate, gtol, ftol):
    value_fn = lambda x: fun(x, args)  # noqa: E731
    if method == "optax.lbfgs":
        solver = optax.lbfgs()
        vg = optax.value_and_grad_from_state(value_fn)
    else:
        solver = optax.adam(learning_rate)
        vg = lambda x, state: jax.value_and_grad(value_fn)(x)  # noqa: E731
    state0 = solver.init(x0)
    f0, g0 = jax.value_and_grad(value_fn)(x0)
    inf = jnp.asarray(jnp.inf, f0.dtype)

    def cond(carry):
        x, state, k, f_old, f, g = carry
        gnorm = jnp.max(jnp.abs(g))
        small_step = jnp.abs(f - f_old) <= ftol * jnp.maximum(jnp.abs(f), 1)
        finite = jnp.isfinite(f) & jnp.all(jnp.isfinite(g))
        return (k < maxiter) & (gnorm > gtol) & ~small_step & finite

    def body(carry):
        x, state, k, _, f, g = carry
        if method == "optax.lbfgs":
            updates, state = solver.update(g, state, x, value=f, grad=g, value_fn=value_fn)
        else:
            updates, state = solver.update(g, state, x)
        x_new = optax.apply_updates(x, updates)
        f_new, g_new = vg(x_new, state=state)
        return x_new, state, k + 1, f, f_new, g_new

    carry = (x0, state0, jnp.asarray(0), inf, f0, g0)
    x, _, k, f_old, f, g = jax.lax.while_loop(cond, body, carry)
    return x, f, g, k, f_old


def _minimize_optax(fun, x0, args, method, tol, options):
    maxiter = int(options.pop("maxiter", 1000))
    lr = float(options.pop("learning_rate", 1e-2))
    gtol = float(options.pop("gtol", 0.0))
    ftol = float(options.pop("ftol", tol if tol is not None else 1e-14))
    if options:
        raise ValueError(f"`options` not understood by {method}: {sorted(options)}.")
    # optax's L-BFGS mixes int32/int64 counters: give it standard promotion, locally.
    with jax.numpy_dtype_promotion("standard"):
        x, f, g, k, f_old = _optax_loop(fun, x0, args, method, maxiter, lr, gtol, ftol)
    k = int(k)
    finite = bool(jnp.isfinite(f)) and bool(jnp.all(jnp.isfinite(g)))
    if not finite:
        result, msg = RESULTS.nonfinite, "non-finite objective"
    elif k >= maxiter:
        result, msg = RESULTS.max_steps_reached, "maximum number of iterations reached"
    else:
        result, msg = RESULTS.successful, "converged"
    success = result == RESULTS.successful
    return MinimizeResult(
        x=x,
        fun=f,
        grad=g,
        nit=k,
        nfev=k + 1,
        success=success,
        status=0 if success else 1,
        message=msg,
        result=result,
    )


# -- objectives ------------------------------------------------------------------------
class _FastObjective(eqx.Module):
    """-logL from the per-patch data covariance (A shared by the pixels of each patch)."""

    mixing: Callable = eqx.field(static=True)
    n_param: int = eqx.field(static=True)
    patches: bool = eqx.field(static=True)

    def __call__(self, x, args):
        C, invN = args
        if self.patches:
            X = x.reshape(-1, self.n_param)
            A = jax.vmap(self.mixing)(X)
            val, singular = jax.vmap(logL_from_covariance, in_axes=(0, 0, None))(A, C, invN)
            val = jnp.sum(val)
        else:
            val, singular = logL_from_covariance(self.mixing(x), C, invN)
        return jnp.where(jnp.any(singular), jnp.inf, -val)


class _PixelObjective(eqx.Module):
    """-logL pixel by pixel (pixel-dependent noise or mixing matrix)."""

    mixing: Callable = eqx.field(static=True)
    n_param: int = eqx.field(static=True)
    patches: bool = eqx.field(static=True)

    def __call__(self, x, args):
        d, invN, ids = args
        A = (
            _pixel_mixing(self.mixing, x, ids, self.n_param, d.ndim)
            if self.patches
            else self.mixing(x)
        )
        val, singular = _logL_core(A, d, invN)
        return jnp.where(jnp.any(singular), jnp.inf, -val)


def _gather(per_patch, ids, d_ndim):
    """Per-patch arrays (n_patch, *rest) -> per pixel (*ids.shape, 1..., *rest)."""
    out = per_patch[ids]
    rest = per_patch.ndim - 1
    pad = d_ndim - 1 - ids.ndim
    return out.reshape(ids.shape + (1,) * pad + out.shape[ids.ndim :][:rest])


def _pixel_mixing(mixing, x, ids, n_param, d_ndim):
    A = jax.vmap(mixing)(x.reshape(-1, n_param))
    return _gather(A, ids, d_ndim)


# -- input checks ----------------------------------------------------------------------
@jax.jit
def _input_flags(d, invN):
    flags = {"d_finite": jnp.all(jnp.isfinite(d))}
    if isinstance(invN, DiagonalInvN):
        flags["diag_ok"] = jnp.all(jnp.isfinite(invN.diag)) & jnp.all(invN.diag >= 0)
    elif invN is not None:
        scale = jnp.max(jnp.abs(invN))
        flags["finite"] = jnp.all(jnp.isfinite(invN))
        flags["symmetric"] = jnp.all(jnp.abs(invN - _T(invN)) <= 1e-10 * scale)
        flags["diag_ok"] = jnp.all(jnp.diagonal(invN, axis1=-2, axis2=-1) >= 0)
    return flags


def _check_inputs(d, invN):
    d = jnp.asarray(d)
    if not jnp.issubdtype(d.dtype, jnp.floating):
        d = d.astype(jnp.result_type(float))
    if d.ndim < 1:
        raise ValueError(f"`d` must have shape (..., n_freq), got {d.shape}.")
    invN = _as_invN(invN)
    if isinstance(invN, DiagonalInvN):
        if invN.diag.ndim < 1 or invN.diag.shape[-1] != d.shape[-1]:
            raise ValueError(
                f"`invN` (diagonal) must have shape (..., {d.shape[-1]}), got {invN.diag.shape}."
            )
        invN = DiagonalInvN(invN.diag.astype(d.dtype))
    elif invN is not None:
        if invN.ndim < 2 or invN.shape[-1] != invN.shape[-2] or invN.shape[-1] != d.shape[-1]:
            raise ValueError(
                f"`invN` must have shape (..., {d.shape[-1]}, {d.shape[-1]}), got {invN.shape}."
            )
        invN = invN.astype(d.dtype)
    flags = {k: bool(v) for k, v in _input_flags(d, invN).items()}
    if not flags["d_finite"]:
        raise ValueError("`d` contains NaN or inf (mask pixels with zero `invN` blocks instead).")
    if not flags.get("finite", True):
        raise ValueError("`invN` contains NaN or inf.")
    if not flags.get("symmetric", True):
        raise ValueError("`invN` must be symmetric (each (n_freq, n_freq) block).")
    if not flags.get("diag_ok", True):
        raise ValueError("`invN` must be positive semi-definite (finite, non-negative diagonal).")
    return d, invN


def _check_mixing(mixing, x0, d, invN, per_patch):
    try:
        A = jax.eval_shape(mixing, x0)
    except Exception as err:  # noqa: BLE001 - re-raised with the argument named
        raise ValueError(
            f"`x0` of shape {x0.shape} does not fit `mixing`: {type(err).__name__}: {err}"
        ) from err
    if len(A.shape) < 2 or A.shape[-2] != d.shape[-1]:
        raise ValueError(
            f"`mixing(x0)` must have shape (..., {d.shape[-1]}, n_comp) to match `d` "
            f"{d.shape}, got {A.shape}."
        )
    if per_patch and len(A.shape) != 2:
        raise ValueError(
            f"In multi_comp_sep `mixing(x)` must return a shared (n_freq, n_comp) matrix, "
            f"got {A.shape}."
        )
    try:
        _bcast_lead(A.shape[:-2], d.shape[:-1], _invN_lead(invN))
    except ValueError:
        raise ValueError(
            f"Leading dimensions of `mixing(x0)` {A.shape}, `d` {d.shape} and `invN` "
            f"{_invN_lead(invN)} do not broadcast together."
        ) from None
    return A


def _shared_invN(invN):
    return _invN_lead(invN) == ()


# -- post-fit separation (deterministic functions of x) ------------------------------
def _separate(A, J, d, invN):
    """s, invAtNA, chi, chi_dB at a given A (and its Jacobian J (..., nf, nc, n_param)).

    ``chi_dB[i] = r^T N^-1 J_i s / sqrt(s^T J_i^T N^-1 J_i s)`` with ``r = d - A s``: the
    prewhitened residual projected on the prewhitened ``J_i s``, without forming it.
    """
    AtN, Minv, singular = _solve_parts(A, invN)
    s = _mv(Minv, _mv(AtN, d))
    r = d - _mv(A, s)
    chi = whiten(invN, r)
    n_comp, n_param = J.shape[-2], J.shape[-1]
    Jr = J.reshape(J.shape[:-2] + (n_comp * n_param,))  # (..., nf, nc * n_param)
    q = _apply_invN(invN, r[..., None])[..., 0]  # N^-1 r
    t = _mv(_T(Jr), q).reshape(q.shape[:-1] + (n_comp, n_param))  # J_i^T N^-1 r
    proj = jnp.sum(t * s[..., :, None], axis=-2)  # (..., n_param)
    G = _mm(_T(Jr), _apply_invN(invN, Jr))  # (..., nc * n_param, nc * n_param)
    G = G.reshape(G.shape[:-2] + (n_comp, n_param, n_comp, n_param))
    Gii = jnp.moveaxis(jnp.diagonal(G, axis1=-3, axis2=-1), -1, 0)  # (n_param, ..., nc, nc)
    norm2 = jax.vmap(lambda g: jnp.sum(_mv(g, s) * s, axis=-1))(Gii)  # (n_param, ...)
    norm2 = jnp.broadcast_to(norm2, (n_param,) + proj.shape[:-1])
    proj = jnp.moveaxis(proj, -1, 0)
    ok = norm2 > 0
    chi_dB = jnp.where(ok, proj / jnp.sqrt(jnp.where(ok, norm2, 1)), 0)
    return s, Minv, chi, chi_dB, jnp.any(singular)


@eqx.filter_jit
def _post_fit(mixing, x, d, invN, fast=False):
    """Everything fgbuster returns besides the optimiser's fields, at parameters x."""
    A = mixing(x)
    J = jax.jacfwd(mixing)(x)
    s, Minv, chi, chi_dB, singular = _separate(A, J, d, invN)
    lead = _bcast_lead(A.shape[:-2], _invN_lead(invN))
    Minv = jnp.broadcast_to(Minv, lead + Minv.shape[-2:])
    d_model = jax.lax.stop_gradient(_mv(A, s))
    # -logL at the noise-free data A(x) s: its Hessian is the Fisher matrix.
    if fast:
        # sum N^-1 (A s)(A s)^T N^-1 = (A^T N^-1)^T (sum s s^T) (A^T N^-1): no pixel pass.
        s_flat = jax.lax.stop_gradient(s).reshape(-1, s.shape[-1])
        AtN = jax.lax.stop_gradient(_T(_apply_invN(invN, A)))
        C_model = _T(AtN) @ (s_flat.T @ s_flat) @ AtN
        fun = _FastObjective(mixing, x.shape[0], False)
        F = jax.hessian(fun)(x, (C_model, invN))
    else:
        fun = _PixelObjective(mixing, x.shape[0], False)
        F = jax.hessian(fun)(x, (d_model, invN, None))
    return s, Minv, chi, chi_dB, singular, F


@eqx.filter_jit
def _post_fit_patches(mixing, x, d, invN, ids, n_param):
    X = x.reshape(-1, n_param)
    A = _pixel_mixing(mixing, X, ids, n_param, d.ndim)
    J = _gather(jax.vmap(jax.jacfwd(mixing))(X), ids, d.ndim)
    s, Minv, chi, chi_dB, singular = _separate(A, J, d, invN)
    Minv = jnp.broadcast_to(Minv, d.shape[:-1] + Minv.shape[-2:])
    d_model = jax.lax.stop_gradient(_mv(A, s))
    F = _patch_fisher(_PixelObjective(mixing, n_param, True), x, (d_model, invN, ids), n_param)
    return s, Minv, chi, chi_dB, singular, F


def _fixed(A, d, invN):
    A = jnp.asarray(A, dtype=d.dtype)
    if A.ndim < 2 or A.shape[-2] != d.shape[-1]:
        raise ValueError(
            f"`mixing` (fixed A) must have shape (..., {d.shape[-1]}, n_comp), got {A.shape}."
        )
    J = jnp.zeros(A.shape + (0,), A.dtype)
    s, Minv, chi, _, singular = eqx.filter_jit(_separate)(A, J, d, invN)
    if bool(singular):
        raise ValueError(
            "`mixing`: A^T N^-1 A is singular (two proportional columns of the fixed A)."
        )
    lead = _bcast_lead(A.shape[:-2], _invN_lead(invN))
    Minv = jnp.broadcast_to(Minv, lead + Minv.shape[-2:])
    return CompSepResult(s=s, chi=chi, invAtNA=Minv)


def _result_status(res: MinimizeResult, singular: bool):
    return RESULTS.singular if singular else res.result


def comp_sep(
    mixing,
    d,
    invN=None,
    x0=None,
    *,
    method: str | None = None,
    tol: float | None = None,
    bounds=None,
    options: dict | None = None,
    callback: Callable | None = None,
) -> CompSepResult:
    """Fit the spectral parameters of ``mixing`` to ``d`` and separate the components.

    Args:
        mixing: Pure JAX ``x (n_param,) -> A (..., n_freq, n_comp)``, or a fixed ``A``.
        d: Data ``(..., n_freq)``.
        invN: ``None``, ``(..., n_freq, n_freq)`` or :class:`DiagonalInvN`.
        x0: Starting parameters ``(n_param,)`` (not used for a fixed ``A``).
        method: See :func:`minimize`.
        tol: See :func:`minimize`.
        bounds: See :func:`minimize`.
        options: See :func:`minimize`.
        callback: See :func:`minimize`.

    Returns:
        A :class:`~fgjax._results.CompSepResult` (fgbuster's fields).
    """
    d, invN = _check_inputs(d, invN)
    if not callable(mixing):
        return _fixed(mixing, d, invN)
    if x0 is None:
        raise ValueError("`x0` is required when `mixing` is a function of parameters.")
    x0 = jnp.asarray(x0, dtype=d.dtype)
    if x0.ndim != 1 or x0.shape[0] == 0:
        raise ValueError(f"`x0` must be a non-empty 1-D array, got shape {x0.shape}.")
    A0 = _check_mixing(mixing, x0, d, invN, per_patch=False)
    n_param = x0.shape[0]
    fast = len(A0.shape) == 2 and _shared_invN(invN)
    if fast:
        fun = _FastObjective(mixing, n_param, False)
        args = (jax.jit(data_covariance)(d, invN), invN)
    else:
        fun = _PixelObjective(mixing, n_param, False)
        args = (d, invN, None)
    logger.info("comp_sep: %s path, %d parameters", "fast" if fast else "per-pixel", n_param)
    res = minimize(
        fun, x0, args, method=method, tol=tol, bounds=bounds, options=options, callback=callback
    )
    x = res.x
    s, Minv, chi, chi_dB, singular, F = _post_fit(mixing, x, d, invN, fast)
    return _pack(res, x, jnp.linalg.inv(F), F, s, Minv, chi, chi_dB, singular)


def _pack(res, x, Sigma, F, s, Minv, chi, chi_dB, singular) -> CompSepResult:
    """A fit's result: the optimiser's fields and the by-products at its ``x``."""
    return CompSepResult(
        s=s,
        chi=chi,
        invAtNA=Minv,
        x=x,
        Sigma=Sigma,
        Sigma_inv=F,
        chi_dB=tuple(chi_dB),
        fun=res.fun,
        nit=res.nit,
        nfev=res.nfev,
        success=res.success,
        status=res.status,
        message=res.message,
        result=_result_status(res, bool(singular)),
        minimize=res,
    )


def _patch_ids(patch_ids, d, n_patch):
    ids_np = np.asarray(patch_ids)
    if not np.issubdtype(ids_np.dtype, np.integer):
        raise TypeError(f"`patch_ids` must be integers, got {ids_np.dtype}.")
    if ids_np.ndim < 1 or ids_np.shape != d.shape[: ids_np.ndim] or ids_np.ndim > d.ndim - 1:
        raise ValueError(
            f"`patch_ids` must have shape d.shape[:k] (k < d.ndim), got {ids_np.shape} for "
            f"`d` {d.shape}."
        )
    if np.any(ids_np < 0):
        raise ValueError("`patch_ids` must be non-negative.")
    if n_patch is None:
        n_patch = int(ids_np.max()) + 1
    present = np.bincount(ids_np.ravel(), minlength=n_patch)[:n_patch] > 0
    return jnp.asarray(ids_np), n_patch, present


def _patch_fisher(fun, x, args, n_param):
    """Per-patch blocks of minus the Hessian of a patch-separable objective: n_param HVPs."""
    n_patch = x.shape[0] // n_param

    def column(k):
        v = jnp.zeros((n_patch, n_param), x.dtype).at[:, k].set(1).reshape(-1)
        return jax.jvp(lambda y: jax.grad(fun)(y, args), (x,), (v,))[1].reshape(n_patch, n_param)

    cols = jax.vmap(column)(jnp.arange(n_param))  # (k, patch, i) = H_p[i, k]
    return jnp.transpose(cols, (1, 2, 0))  # fun is -logL: its Hessian is the Fisher matrix


def multi_comp_sep(
    mixing,
    d,
    invN,
    x0,
    patch_ids,
    *,
    n_patch: int | None = None,
    method: str | None = None,
    tol: float | None = None,
    bounds=None,
    options: dict | None = None,
    callback: Callable | None = None,
) -> CompSepResult:
    """Independent fits in the patches ``patch_ids``, all in one compiled objective.

    Args:
        mixing: Pure JAX ``x (n_param,) -> A (n_freq, n_comp)`` (called per patch), or a
            fixed ``A`` (separated directly).
        d: Data ``(..., n_freq)``.
        invN: ``None``, ``(..., n_freq, n_freq)`` or :class:`DiagonalInvN`.
        x0: Starting parameters ``(n_param,)`` (all patches) or ``(n_patch, n_param)``.
        patch_ids: Non-negative integer ids, shape ``d.shape[:k]``.
        n_patch: Number of patches (default ``max(patch_ids) + 1``).
        method: See :func:`minimize`.
        tol: See :func:`minimize`.
        bounds: See :func:`minimize`; per parameter, repeated over the patches.
        options: See :func:`minimize`.
        callback: See :func:`minimize`.

    Returns:
        A :class:`~fgjax._results.CompSepResult` with ``x`` ``(n_patch, n_param)``, ``Sigma``
        ``(n_patch, n_param, n_param)``, ``s``/``chi``/``chi_dB``/``invAtNA`` per pixel
        (``invAtNA`` of shape ``d.shape[:-1] + (n_comp, n_comp)``); patches without pixels
        get ``nan`` parameters.
    """
    d, invN = _check_inputs(d, invN)
    ids, n_patch, present = _patch_ids(patch_ids, d, n_patch)
    if not callable(mixing):
        res = _fixed(mixing, d, invN)
        lead = d.shape[:-1]
        return eqx.tree_at(
            lambda r: r.invAtNA, res, jnp.broadcast_to(res.invAtNA, lead + res.invAtNA.shape[-2:])
        )
    x0 = jnp.asarray(x0, dtype=d.dtype)
    if x0.ndim == 1:
        x0 = jnp.broadcast_to(x0, (n_patch,) + x0.shape)
    if x0.ndim != 2 or x0.shape[0] != n_patch or x0.shape[1] == 0:
        raise ValueError(
            f"`x0` must have shape (n_param,) or ({n_patch}, n_param), got {x0.shape}."
        )
    n_param = x0.shape[1]
    _check_mixing(mixing, x0[0], d, invN, per_patch=True)
    fast = _shared_invN(invN)
    if fast:
        fun = _FastObjective(mixing, n_param, True)
        C = jax.jit(data_covariance, static_argnums=3)(d, invN, ids, n_patch)
        args = (C, invN)
    else:
        fun = _PixelObjective(mixing, n_param, True)
        args = (d, invN, ids)
    if bounds is not None and not isinstance(bounds, scipy.optimize.Bounds):
        bounds = list(bounds) * n_patch
    res = minimize(
        fun,
        x0.reshape(-1),
        args,
        method=method,
        tol=tol,
        bounds=bounds,
        options=options,
        callback=callback,
    )
    X = res.x.reshape(n_patch, n_param)
    s, Minv, chi, chi_dB, singular, F = _post_fit_patches(mixing, res.x, d, invN, ids, n_param)
    Sigma = jnp.linalg.inv(F)
    nan = jnp.asarray(jnp.nan, X.dtype)
    mask = jnp.asarray(present)
    X = jnp.where(mask[:, None], X, nan)
    Sigma = jnp.where(mask[:, None, None], Sigma, nan)
    F = jnp.where(mask[:, None, None], F, nan)
    return _pack(res, X, Sigma, F, s, Minv, chi, chi_dB, singular)


# -- batched damped Newton: many small independent problems in one compiled loop ------------
NEWTON_TOL = 1e-4  # Newton decrement g^T H^-1 g: the minimum is within 1e-2 sigma


_SMALL = 4  # up to this many parameters, Newton's linear algebra is unrolled over entries


def _factor(H):
    """A factorisation of positive definite ``H`` for :func:`_solve`: the inverse, unrolled
    over the entries for a few parameters (elementwise across the problems), else the
    Cholesky factor (NaN where ``H`` is not positive definite)."""
    if H.shape[-1] <= _SMALL:
        return _unrolled_spd_inverse(H)
    return jnp.linalg.cholesky(H)


def _solve(F, g):
    """``H^-1 g`` from ``F = _factor(H)``."""
    if F.shape[-1] <= _SMALL:
        return jnp.sum(F * g[..., None, :], axis=-1)
    y = jax.scipy.linalg.solve_triangular(F, g[..., None], lower=True)
    return jax.scipy.linalg.solve_triangular(F, y, lower=True, trans=1)[..., 0]


def _floored_abs(e):
    """Magnitudes of eigenvalues ``e`` (last axis) floored at 1e-12 of the largest: the
    spectrum of a positive definite (saddle-free) metric."""
    scale = jnp.max(jnp.abs(e), axis=-1, keepdims=True, initial=0.0)
    return jnp.maximum(jnp.abs(e), 1e-12 * scale + jnp.finfo(e.dtype).tiny)


def _metric_and_decrement(g, H):
    """Per problem: the positive definite Newton metric (``H`` where it is positive
    definite, else its saddle-free form ``V |e| V^T``, eigenvalue magnitudes floored at
    1e-12 of the largest), its factorisation and the decrement ``g^T H^-1 g``."""
    n = H.shape[-1]
    if n <= _SMALL:
        positive = jnp.all(jnp.stack([_cholesky_pivot(H, j) for j in range(n)], -1) > 0, -1)
        F = None
    else:
        F = _factor(H)
        positive = jnp.all(jnp.isfinite(F), axis=(-2, -1))

    def saddle_free(_):
        e, V = jnp.linalg.eigh(H)
        fixed = jnp.einsum("bij,bj,bkj->bik", V, _floored_abs(e), V)
        Hp = jnp.where(positive[:, None, None], H, fixed)
        return Hp, _factor(Hp)

    def as_is(_):
        return H, (_factor(H) if F is None else F)

    Hp, F = jax.lax.cond(jnp.all(positive), as_is, saddle_free, None)
    return Hp, F, jnp.sum(g * _solve(F, g), axis=-1)


class _DenseAlgebra:
    """Newton's linear algebra on dense Hessians ``(n_b, n_p, n_p)``, one per problem."""

    @staticmethod
    def metric(g, H):
        return _metric_and_decrement(g, H)

    @staticmethod
    def solve(F, g):
        return _solve(F, g)

    @staticmethod
    def damped_solve(Hp, lam, g):
        """``(H + lam diag H)^-1 g`` per problem."""
        diag = jnp.diagonal(Hp, axis1=-2, axis2=-1)
        return _solve(_factor(Hp + lam[:, None, None] * jax.vmap(jnp.diag)(diag)), g)

    @staticmethod
    def quad(Hp, step):
        return jnp.einsum("bi,bij,bj->b", step, Hp, step)


_DENSE = _DenseAlgebra()


class JointAlgebra(eqx.Module):
    r"""Newton's linear algebra for one problem whose objective is a sum over groups,
    ``f(x) = sum_g f_g(x[gidx[g]])``, where ``x`` concatenates the cluster values of
    ``n_p`` parameters (``sizes[i]`` values for parameter ``i``, in this order) and each
    group uses one cluster of each parameter (a joint multi-resolution or adaptive fit).

    The Hessian is never dense in ``x``. Its block for the parameter with the most clusters
    (``e``) is diagonal, ``D``: no group holds two of its clusters. That block is eliminated,
    and only the Schur complement ``S = R - B^T D^{-1} B`` of the others (``m`` values) is
    dense and factorised: ``m^2`` memory and ``m^3 / 3`` operations instead of
    ``n_x^2`` and ``n_x^3 / 3``. For nsides (8, 4, 0), ``n_x = 961`` and ``m = 193``.

    The ``vgh`` of such a problem returns, as its Hessian, the groups' blocks
    ``(n_b, n_group, n_p, n_p)``; the metric kept in the Newton state is ``(D, B, R)`` and
    the factorisation ``(D, B, L)`` with ``L`` the Cholesky factor of ``S``. Where the
    Hessian is not positive definite the metric is made so block-wise: ``|D|`` (floored)
    and the saddle-free form of the Schur complement.
    """

    eidx: jax.Array  # (n_group,) cluster of parameter e of each group
    ridx: jax.Array  # (n_group, n_p - 1) positions of the other parameters in the rest
    e: int = eqx.field(static=True)
    others: tuple = eqx.field(static=True)
    off: int = eqx.field(static=True)  # where parameter e's values start in x
    n_e: int = eqx.field(static=True)
    m: int = eqx.field(static=True)

    @classmethod
    def build(cls, gidx, sizes):
        """From ``gidx`` (n_group, n_p) indices into ``x`` and the cluster counts."""
        gidx = np.asarray(gidx)
        sizes = [int(n) for n in sizes]
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(int)
        e = int(np.argmax(sizes))
        others = tuple(j for j in range(len(sizes)) if j != e)
        ridx = np.zeros((gidx.shape[0], len(others)), dtype=gidx.dtype)
        for k, j in enumerate(others):  # positions in x without parameter e's block
            ridx[:, k] = gidx[:, j] - (sizes[e] if j > e else 0)
        return cls(
            eidx=jnp.asarray(gidx[:, e] - offsets[e]),
            ridx=jnp.asarray(ridx),
            e=e,
            others=others,
            off=int(offsets[e]),
            n_e=sizes[e],
            m=int(sum(sizes)) - sizes[e],
        )

    # -- one problem (the methods below map over the first axis) ------------------------
    def _split(self, v):
        a, b = self.off, self.off + self.n_e
        return v[a:b], jnp.concatenate((v[:a], v[b:]))

    def _join(self, v_e, v_r):
        return jnp.concatenate((v_r[: self.off], v_e, v_r[self.off :]))

    def _assemble(self, Hg):
        e, o = self.e, jnp.asarray(self.others, dtype=int)
        D = jnp.zeros((self.n_e,), Hg.dtype).at[self.eidx].add(Hg[:, e, e])
        B = jnp.zeros((self.n_e, self.m), Hg.dtype)
        B = B.at[self.eidx[:, None], self.ridx].add(Hg[:, e][:, o])
        R = jnp.zeros((self.m, self.m), Hg.dtype)
        R = R.at[self.ridx[:, :, None], self.ridx[:, None, :]].add(Hg[:, o][:, :, o])
        return D, B, R

    @staticmethod
    def _schur(D, B, R):
        return R - B.T @ (B / D[:, None])

    def _solve1(self, F, g):
        D, B, L = F
        g_e, g_r = self._split(g)
        y = g_r - B.T @ (g_e / D)
        if self.m:
            z = jax.scipy.linalg.solve_triangular(L, y, lower=True)
            y = jax.scipy.linalg.solve_triangular(L, z, lower=True, trans=1)
        return self._join((g_e - B @ y) / D, y)

    def _metric1(self, g, Hg):
        D, B, R = self._assemble(Hg)
        S = self._schur(D, B, R)
        L = jnp.linalg.cholesky(S)
        positive = jnp.all(D > 0) & jnp.all(jnp.isfinite(L))

        def fixed(_):
            D_abs = _floored_abs(D)
            S_abs = self._schur(D_abs, B, R)
            e, V = jnp.linalg.eigh(S_abs)
            S_fix = (V * _floored_abs(e)[None, :]) @ V.T
            return (D_abs, B, S_fix + (R - S_abs)), (D_abs, B, jnp.linalg.cholesky(S_fix))

        Hp, F = jax.lax.cond(positive, lambda _: ((D, B, R), (D, B, L)), fixed, None)
        return Hp, F, jnp.sum(g * self._solve1(F, g))

    def _damped1(self, Hp, lam, g):
        D, B, R = Hp
        D = D * (1.0 + lam)
        R = R + lam * jnp.diag(jnp.diag(R))
        return self._solve1((D, B, jnp.linalg.cholesky(self._schur(D, B, R))), g)

    def _quad1(self, Hp, step):
        D, B, R = Hp
        s_e, s_r = self._split(step)
        return s_e @ (D * s_e) + 2.0 * s_e @ (B @ s_r) + s_r @ (R @ s_r)

    # -- the interface of newton_iterate -------------------------------------------------
    def metric(self, g, H):
        return jax.vmap(self._metric1)(g, H)

    def solve(self, F, g):
        return jax.vmap(self._solve1)(F, g)

    def damped_solve(self, Hp, lam, g):
        return jax.vmap(self._damped1)(Hp, lam, g)

    def quad(self, Hp, step):
        return jax.vmap(self._quad1)(Hp, step)


def newton_start(vgh, X0, lo, hi, algebra=None):
    """The state of :func:`newton_iterate` at the starting points ``X0`` (clipped to the
    bounds): a dict of arrays (or, for a structured ``algebra``, pytrees of arrays) with
    the problems on their first axis."""
    algebra = _DENSE if algebra is None else algebra
    X0 = jnp.clip(X0, lo[None], hi[None])
    f0, g0, H0 = vgh(X0)
    H0, F0, dec0 = algebra.metric(g0, H0)
    n_b, dtype = X0.shape[0], X0.dtype
    return dict(
        X=X0, f=f0, g=g0, H=H0, F=F0, dec=dec0, lam=jnp.zeros((n_b,), dtype),
        nit=jnp.zeros((n_b,), jnp.int32), done=~jnp.isfinite(f0),
    )  # fmt: skip


def _pick(mask, new, old):
    """Per problem (first axis), the leaves of ``new`` where ``mask`` else ``old``."""

    def one(a, b):
        return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)

    return jax.tree_util.tree_map(one, new, old)


def newton_iterate(vgh, state, lo, hi, n_iter, tol=NEWTON_TOL, algebra=None):
    r"""Up to ``n_iter`` more damped Newton iterations of the problems in ``state``.

    Levenberg-Marquardt with exact Hessians: each iteration solves
    $(H + \lambda\,\mathrm{diag}\,H) p = -g$ per problem (the saddle-free $|H|$ where $H$
    is not positive definite), evaluates ``vgh`` once at all the trial points
    ``clip(X + p, lo, hi)`` and accepts a trial where the objective decreases by at least
    1e-4 of the quadratic model's prediction; otherwise that problem keeps its point and
    raises its damping $\lambda$, which decays again after good steps (close to the
    minimum the steps are plain Newton steps). No line search: one evaluation per
    iteration whatever the problems do.

    A problem stops after the step taken from a point whose Newton decrement
    $g^T H^{-1} g$ (the squared distance to the minimum in units of the parameters' errors)
    is below ``tol`` (that last step, in the quadratic regime, lands at about the square
    of it: exact to rounding for noiseless data as for noisy; it is taken with no further
    evaluation when it stays inside the bounds, so the problem leaves at once); when the
    decrement reaches the rounding level of the objective and stops decreasing (there,
    steps are judged by the decrease of the decrement instead of the objective's); when an
    accepted plain step no longer changes the objective (a flat direction, e.g. an
    unconstrained dust temperature); or when the damping needed exceeds 1e12.

    ``algebra`` does the linear algebra on the Hessians (metric, factorisation, solves):
    dense ``(n_b, n_p, n_p)`` matrices by default, or :class:`JointAlgebra` for one large
    problem made of many small groups.
    """
    algebra = _DENSE if algebra is None else algebra
    eps = jnp.finfo(state["X"].dtype).eps

    def cond(carry):
        st, it = carry
        return (it < n_iter) & ~jnp.all(st["done"])

    def body(carry):
        st, it = carry
        X, f, g, Hp, dec, lam, done = (st[k] for k in ("X", "f", "g", "H", "dec", "lam", "done"))
        # below the rounding of f a decrease cannot be judged: plain Newton steps (gradient
        # and Hessian are still accurate), kept while the decrement decreases
        noisy = dec <= 1e3 * eps * (jnp.abs(f) + 1.0)
        converged = ~(dec > tol)
        lam = jnp.where(noisy | converged, 0.0, lam)

        # plain Newton steps (no damping anywhere) reuse the factorisation of the metric
        p = -jax.lax.cond(
            jnp.all(lam == 0),
            lambda _: algebra.solve(st["F"], g),
            lambda _: algebra.damped_solve(Hp, lam, g),
            None,
        )
        trial = jnp.clip(X + p, lo[None], hi[None])
        step = trial - X
        pred = -(jnp.sum(g * step, -1) + 0.5 * algebra.quad(Hp, step))
        ft, gt, Ht = vgh(trial)
        Ht, Ft, dect = algebra.metric(gt, Ht)
        gain = f - ft
        better = jnp.where(noisy, dect < dec, gain >= 1e-4 * pred)
        good = jnp.isfinite(ft) & jnp.isfinite(dect) & better
        accept = good & ~done
        floor = noisy & ~good
        very_good = good & (gain >= 0.75 * pred)
        lam_new = jnp.where(good, jnp.where(very_good, 0.25 * lam, lam), jnp.maximum(4 * lam, 1e-3))
        lam_new = jnp.where(lam_new < 1e-8, 0.0, lam_new)
        stalled = accept & ~noisy & (lam == 0) & (gain <= 1e-12 * (jnp.abs(f) + 1.0))
        failed = lam_new > 1e12
        pick = accept[:, None]
        # converged (below tol the minimum is within 1e-2 sigma): one last plain Newton
        # step lands at the rounding level, as the convergence is quadratic there; where
        # the accepted trial is already below tol, that step is taken now, from the
        # factorisation just computed, with no evaluation (the problem leaves the batch
        # one iteration earlier)
        landed = trial - algebra.solve(Ft, gt)
        inside = jnp.all((landed > lo[None]) & (landed < hi[None]), axis=-1)
        last = accept & (dect <= tol) & inside  # a step onto a bound is evaluated first
        new = dict(
            X=jnp.where(last[:, None], landed, jnp.where(pick, trial, X)),
            f=jnp.where(accept, ft, f),
            g=jnp.where(pick, gt, g),
            H=_pick(accept, Ht, Hp),
            F=_pick(accept, Ft, st["F"]),
            dec=jnp.where(accept, dect, dec),
            lam=jnp.where(done, lam, lam_new),
            nit=st["nit"] + (~done).astype(jnp.int32),
            done=done | converged | floor | stalled | failed | last,
        )
        return new, it + 1

    state, _ = jax.lax.while_loop(cond, body, (state, jnp.asarray(0)))
    return state


def batched_newton(vgh, X0, lo, hi, maxiter, tol=NEWTON_TOL, reciprocal=()):
    """Minimise ``n_b`` independent smooth problems of ``n_p`` parameters at once
    (:func:`newton_start` then :func:`newton_iterate`), in one compiled loop.

    Args:
        vgh: ``X (n_b, n_p) -> (f (n_b,), g (n_b, n_p), H (n_b, n_p, n_p))``; ``f`` is
            ``inf`` where the problem is undefined (e.g. a singular mixing matrix).
        X0: Starting points ``(n_b, n_p)``; lo, hi: bounds ``(n_p,)`` (``-inf``/``inf``).
        maxiter: Maximum number of iterations (may be traced).
        tol: Newton decrement below which a problem has converged.
        reciprocal: Static flags ``(n_p,)`` (a tuple of bools, from
            :func:`reciprocal_mask`): those parameters are fitted in ``u = 1/x``
            (:func:`reciprocal_vgh`); the minimum is the same, the path shorter where the
            objective is closer to quadratic in ``u``. Empty: none.

    Returns:
        ``(X, done, nit)``: solutions, converged flags and iterations per problem.
    """
    vgh = reciprocal_vgh(vgh, reciprocal)
    lo, hi = reciprocal_bounds(lo, hi, reciprocal)
    state = newton_start(vgh, to_reciprocal(X0, reciprocal), lo, hi)
    X, done, nit = newton_result(newton_iterate(vgh, state, lo, hi, maxiter, tol))
    return to_reciprocal(X, reciprocal), done, nit


def newton_result(state):
    """``(X, done, nit)`` of a :func:`newton_iterate` state (done: converged with a finite
    objective)."""
    return state["X"], state["done"] & jnp.isfinite(state["f"]), state["nit"]


# -- reciprocal coordinates: parameters that the model sees only as 1/x ---------------------
def reciprocal_mask(reciprocal, X0, lo, hi) -> tuple[bool, ...]:
    """Which parameters a Newton fit may run in reciprocal coordinates ``u = 1/x`` (host):
    those flagged in ``reciprocal`` whose starting values ``X0 (..., n_p)`` and upper
    bound ``hi`` are positive (``u`` then lives in ``[1/hi, 1/lo]``, ``x > 0``)."""
    n_p = np.shape(X0)[-1]
    flags = np.zeros(n_p, bool) if reciprocal is None else np.asarray(reciprocal, bool)
    if flags.shape != (n_p,):
        flags = np.broadcast_to(flags, (n_p,))
    positive = np.all(np.asarray(X0).reshape(-1, n_p) > 0, axis=0) & (np.asarray(hi) > 0)
    return tuple(bool(b) for b in flags & positive)


def to_reciprocal(X, mask):
    """``X`` with the flagged parameters (last axis) replaced by their reciprocal; its own
    inverse, so it also maps back."""
    if not any(mask):
        return X
    xp = np if isinstance(X, np.ndarray) else jnp
    return xp.where(xp.asarray(mask), 1.0 / X, X)


def reciprocal_bounds(lo, hi, mask):
    """Bounds in reciprocal coordinates: ``[1/hi, 1/lo]`` for the flagged parameters
    (``1/inf = 0``; a non-positive ``lo`` gives no upper bound)."""
    if not any(mask):
        return lo, hi
    xp = np if isinstance(lo, np.ndarray) else jnp
    m = xp.asarray(mask)
    with np.errstate(divide="ignore"):
        u_lo = xp.where(m, 1.0 / hi, lo)
        u_hi = xp.where(m, xp.where(lo > 0, 1.0 / xp.where(lo > 0, lo, 1.0), xp.inf), hi)
    return u_lo, u_hi


def reciprocal_vgh(vgh, mask):
    """``vgh`` (value, gradient, Hessian in ``X (n_b, n_p)``) in coordinates where the
    flagged parameters are replaced by ``u = 1/x``: by the chain rule, with
    ``dx/du = -x^2`` and ``d2x/du2 = 2 x^3``."""
    if not any(mask):
        return vgh
    m = jnp.asarray(mask)

    def vgh_u(U):
        X = jnp.where(m, 1.0 / U, U)
        f, g, H = vgh(X)
        d1 = jnp.where(m, -(X**2), 1.0)
        d2 = jnp.where(m, 2.0 * X**3, 0.0)
        eye = jnp.eye(m.size, dtype=H.dtype).reshape((1,) * (g.ndim - 1) + (m.size, m.size))
        H_u = d1[..., :, None] * H * d1[..., None, :] + (g * d2)[..., None] * eye
        return f, g * d1, H_u

    return vgh_u
