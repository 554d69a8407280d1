"""Drop-in for ``fgbuster.algebra``: same names, signatures and result fields, on fgjax.

NumPy in, NumPy out, float64 (every public call runs inside ``jax.enable_x64(True)``).

Mixing-matrix evaluators given to :func:`comp_sep` / :func:`multi_comp_sep`:

* an evaluator with a ``.jax`` attribute (``legacy_compat.MixingMatrix.evaluator``) is
  traced through: the fit runs on the pure JAX function, with autodiff derivatives
  (``A_dB_ev`` is then not needed and not called);
* a plain NumPy callable is evaluated on the host through ``jax.pure_callback``; its
  derivative comes from ``A_dB_ev``/``comp_of_dB`` when given (also a host callback),
  otherwise from central finite differences on the host. Second derivatives of such an
  ``A`` are taken as zero: exact for ``Sigma`` (the Fisher matrix only needs first
  derivatives), approximate for Newton-type Hessian products.

``return_svd=True`` is not supported (there is no SVD here): it raises
``NotImplementedError``.
"""

from __future__ import annotations

import logging
import numbers

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from fgjax import _likelihood as lk
from fgjax import _optimize as opt

from ._convert import to_numpy, x64

logger = logging.getLogger(__name__)

__all__ = [
    "D",
    "P",
    "P_dBdB",
    "W",
    "W_dB",
    "W_dBdB",
    "Wd",
    "comp_sep",
    "fisher_logL_dB_dB",
    "invAtNA",
    "logL",
    "logL_dB",
    "multi_comp_sep",
]


def _no_svd(return_svd):
    if return_svd:
        raise NotImplementedError(
            "`return_svd=True` is not supported by legacy_compat (no SVD is computed)."
        )


def _arr(x, name):
    if x is None:
        return None
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"`{name}` must be a numeric array, got {type(x).__name__}.") from None
    if not np.all(np.isfinite(a)):
        raise ValueError(f"`{name}` contains NaN or inf.")
    return jnp.asarray(a)


def _invN(invN):
    if invN is None:
        return None
    a = np.asarray(invN, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError("`invN` contains NaN or inf.")
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"`invN` must have shape (..., n_freq, n_freq), got {a.shape}.")
    scale = np.max(np.abs(a)) if a.size else 1.0
    if not np.allclose(a, np.swapaxes(a, -1, -2), rtol=1e-10, atol=1e-12 * scale):
        raise ValueError("`invN` must be symmetric (each (n_freq, n_freq) block).")
    if np.any(np.diagonal(a, axis1=-2, axis2=-1) < 0):
        raise ValueError("`invN` must be positive semi-definite (negative diagonal entry).")
    # Cheap PSD test: smallest eigenvalue of the distinct blocks.
    blocks = a.reshape(-1, a.shape[-2], a.shape[-1])
    if blocks.shape[0] <= 4096:
        w = np.linalg.eigvalsh(blocks)
        tol = 1e-10 * np.maximum(np.max(np.abs(w), axis=-1), np.finfo(float).tiny)
        if np.any(w[:, 0] < -tol):
            raise ValueError("`invN` must be positive semi-definite (negative eigenvalue).")
    return jnp.asarray(a)


def _as_list(x):
    return x if isinstance(x, list) else [x]


def _parse_comp_of_dB(comp_of_dB, n_param):
    """fgbuster's ``comp_of_dB`` -> [(column int or slice, ids or None)] per parameter."""
    entries = comp_of_dB if isinstance(comp_of_dB, list) else [comp_of_dB] * n_param
    if len(entries) != n_param:
        raise ValueError(
            f"`comp_of_dB` has {len(entries)} entries but there are {n_param} derivatives."
        )
    out = []
    for e in entries:
        if isinstance(e, tuple):
            e = tuple(x for x in e if x is not Ellipsis)
            if not e:
                out.append((slice(None), None))
                continue
            comp = e[0]
            ids = np.asarray(e[1]) if len(e) > 1 else None
            if len(e) > 2:
                raise ValueError(f"`comp_of_dB` entries have at most 2 items, got {e!r}.")
        elif e is Ellipsis:
            comp, ids = slice(None), None
        else:
            comp, ids = e, None
        if isinstance(comp, numbers.Integral):
            comp = int(comp)
        elif not isinstance(comp, slice):
            raise TypeError(f"`comp_of_dB`: a column index or slice was expected, got {comp!r}.")
        out.append((comp, ids))
    return out


def _region_sums(per_block, ids):
    """Sum over blocks sharing an id (ids broadcast from the left, as fgbuster)."""
    lead = per_block.shape
    ids = np.asarray(ids)
    ids = np.broadcast_to(ids.reshape(ids.shape + (1,) * (len(lead) - ids.ndim)), lead)
    return np.bincount(ids.ravel(), per_block.ravel())


@x64
def logL(A, d, invN=None, return_svd=False):
    _no_svd(return_svd)
    return lk.logL(_arr(A, "A"), _arr(d, "d"), _invN(invN))


@x64
def invAtNA(A, invN=None, return_svd=False):
    _no_svd(return_svd)
    return lk.invAtNA(_arr(A, "A"), _invN(invN))


@x64
def Wd(A, d, invN=None, return_svd=False):
    _no_svd(return_svd)
    return lk.Wd(_arr(A, "A"), _arr(d, "d"), _invN(invN))


@x64
def W(A, invN=None, return_svd=False):
    _no_svd(return_svd)
    return lk.W(_arr(A, "A"), _invN(invN))


@x64
def P(A, invN=None, return_svd=False):
    _no_svd(return_svd)
    return lk.P(_arr(A, "A"), _invN(invN))


@x64
def D(A, invN=None, return_svd=False):
    _no_svd(return_svd)
    return lk.D(_arr(A, "A"), _invN(invN))


def _simple(A_dB, comp_of_dB, fn_name):
    A_dB = _as_list(A_dB)
    parsed = _parse_comp_of_dB(comp_of_dB, len(A_dB))
    if any(ids is not None for _, ids in parsed):
        raise NotImplementedError(
            f"{fn_name} supports only simple `comp_of_dB` (column indices, no region ids)."
        )
    return [_arr(a, "A_dB") for a in A_dB], [c for c, _ in parsed]


@x64
def logL_dB(A, d, invN, A_dB, comp_of_dB=np.s_[:], return_svd=False):
    _no_svd(return_svd)
    A_dB = _as_list(A_dB)
    parsed = _parse_comp_of_dB(comp_of_dB, len(A_dB))
    per_block = np.asarray(
        lk.logL_dB(
            _arr(A, "A"),
            _arr(d, "d"),
            _invN(invN),
            [_arr(a, "A_dB") for a in A_dB],
            [c for c, _ in parsed],
            reduce=False,
        )
    )
    out = []
    for i, (_, ids) in enumerate(parsed):
        if ids is None:
            out.append(np.array([per_block[i].sum()]))
        else:
            out.append(_region_sums(per_block[i], ids))
    return np.concatenate(out)


@x64
def fisher_logL_dB_dB(A, s, A_dB, comp_of_dB, invN=None, return_svd=False):
    _no_svd(return_svd)
    A_dB, cols = _simple(A_dB, comp_of_dB, "fisher_logL_dB_dB")
    return lk.fisher_logL_dB_dB(_arr(A, "A"), _arr(s, "s"), A_dB, cols, _invN(invN))


@x64
def W_dB(A, A_dB, comp_of_dB, invN=None, return_svd=False):
    _no_svd(return_svd)
    A_dB, cols = _simple(A_dB, comp_of_dB, "W_dB")
    return lk.W_dB(_arr(A, "A"), A_dB, cols, _invN(invN))


def _dBdB_list(A_dBdB, n):
    if not isinstance(A_dBdB, list):
        A_dBdB = [[A_dBdB]]
    if len(A_dBdB) != n or any(len(r) != n for r in A_dBdB):
        raise ValueError(f"`A_dBdB` must be a {n} x {n} list of lists.")
    return [[_arr(a, "A_dBdB") for a in row] for row in A_dBdB]


@x64
def W_dBdB(A, A_dB, A_dBdB, comp_of_dB, invN=None, return_svd=False):
    _no_svd(return_svd)
    A_dB, cols = _simple(A_dB, comp_of_dB, "W_dBdB")
    return lk.W_dBdB(_arr(A, "A"), A_dB, _dBdB_list(A_dBdB, len(A_dB)), cols, _invN(invN))


@x64
def P_dBdB(A, A_dB, A_dBdB, comp_of_dB, invN=None, return_svd=False):
    _no_svd(return_svd)
    A_dB, cols = _simple(A_dB, comp_of_dB, "P_dBdB")
    return lk.P_dBdB(_arr(A, "A"), A_dB, _dBdB_list(A_dBdB, len(A_dB)), cols, _invN(invN))


# -- comp_sep ----------------------------------------------------------------------------
def _host_mixing(A_ev, A_dB_ev, comp_of_dB, x0):
    """A JAX function of x that evaluates a NumPy ``A_ev`` on the host (pure_callback).

    Its derivative is ``A_dB_ev`` (host) when given, else central finite differences; the
    derivative itself has a zero derivative (second derivatives of A are dropped).
    """
    x0 = np.asarray(x0, dtype=np.float64)
    n = x0.size
    try:
        A_shape = np.shape(np.asarray(A_ev(x0)))
    except Exception as err:  # noqa: BLE001 - re-raised naming the argument
        raise ValueError(f"`x0` of shape {x0.shape} does not fit `A_ev`: {err}") from err
    parsed = None if A_dB_ev is None else _parse_comp_of_dB(comp_of_dB, n)
    if parsed is not None and any(ids is not None for _, ids in parsed):
        # (component, region ids) derivatives of a plain NumPy evaluator: rather than
        # rebuild fgbuster's region bookkeeping on the host, differentiate A_ev numerically.
        logger.info(
            "comp_sep: `comp_of_dB` with region ids and a NumPy `A_ev`: derivatives of A "
            "by central finite differences (pass a legacy_compat MixingMatrix evaluator "
            "for exact autodiff)."
        )
        parsed = None

    def host_A(x):
        return np.asarray(A_ev(np.asarray(x, dtype=np.float64)), dtype=np.float64).reshape(A_shape)

    def host_J(x):
        x = np.asarray(x, dtype=np.float64)
        J = np.zeros(A_shape + (n,))
        if parsed is not None:
            A_dB = _as_list(A_dB_ev(x))
            for i, (comp, _) in enumerate(parsed):
                sl = slice(comp, comp + 1) if isinstance(comp, int) else comp
                target = J[..., sl, i]
                J[..., sl, i] = np.broadcast_to(np.asarray(A_dB[i], dtype=np.float64), target.shape)
        else:
            for i in range(n):
                h = 1e-6 * max(1.0, abs(x[i]))
                xp, xm = x.copy(), x.copy()
                xp[i] += h
                xm[i] -= h
                J[..., i] = (host_A(xp) - host_A(xm)) / (2 * h)
        return J

    out_A = jax.ShapeDtypeStruct(A_shape, jnp.float64)
    out_J = jax.ShapeDtypeStruct(A_shape + (n,), jnp.float64)

    @jax.custom_jvp
    def jac(x):
        return jax.pure_callback(host_J, out_J, x, vmap_method="sequential")

    @jac.defjvp
    def _jac_jvp(primals, tangents):
        (x,) = primals
        return jac(x), jnp.zeros(out_J.shape, out_J.dtype)

    @jax.custom_jvp
    def mixing(x):
        return jax.pure_callback(host_A, out_A, x, vmap_method="sequential")

    @mixing.defjvp
    def _mixing_jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        return mixing(x), jnp.tensordot(jac(x), dx, axes=1)

    return mixing


def _mixing(A_ev, A_dB_ev, comp_of_dB, x0):
    jax_fn = getattr(A_ev, "jax", None)
    if jax_fn is not None:
        try:  # trace through the pure JAX twin when it is traceable
            jax.eval_shape(jax_fn, jnp.asarray(x0))
        except jax.errors.JAXTypeError:
            logger.warning("A_ev.jax is not traceable; evaluating A_ev on the host instead.")
        except Exception as err:  # noqa: BLE001 - re-raised naming the argument
            raise ValueError(f"`x0` of shape {x0.shape} does not fit `A_ev`: {err}") from err
        else:
            return jax_fn
    if not callable(A_ev):
        raise TypeError(f"`A_ev` must be an array or a callable, got {type(A_ev).__name__}.")
    return _host_mixing(A_ev, A_dB_ev, comp_of_dB, x0)


def _minimize_kwargs(minimize_args, minimize_kwargs):
    if not minimize_args:
        raise TypeError("comp_sep: `x0` (the first of `minimize_args`) is required.")
    if len(minimize_args) > 1:
        raise TypeError("comp_sep: only `x0` is accepted as positional minimize argument.")
    x0 = np.asarray(minimize_args[0], dtype=np.float64)
    if x0.ndim != 1 or x0.size == 0:
        raise ValueError(f"`x0` must be a non-empty 1-D array, got shape {x0.shape}.")
    kw = dict(minimize_kwargs)
    kw.pop("jac", None)  # the gradient is autodiff
    out = {k: kw.pop(k) for k in ("method", "tol", "bounds", "options", "callback") if k in kw}
    if kw:
        raise TypeError(f"comp_sep: unsupported minimize arguments {sorted(kw)}.")
    return x0, out


def _masked_blocks(invN, lead):
    if invN is None:
        return np.zeros(lead, bool)
    m = np.all(np.asarray(invN) == 0, axis=(-2, -1))
    m = m.reshape((1,) * (len(lead) - m.ndim) + m.shape)
    return np.broadcast_to(m, lead)


def _fill_result(res, r, invN, d_shape):
    res.s = to_numpy(r.s)
    res.invAtNA = to_numpy(r.invAtNA)
    res.chi = to_numpy(r.chi)
    if r.x is None:
        return res
    masked = _masked_blocks(invN, d_shape[:-1])
    chi_dB = []
    for c in r.chi_dB:
        c = np.array(c)
        c[np.broadcast_to(masked, c.shape)] = np.nan  # fgbuster: 0/0 at masked pixels
        chi_dB.append(c)
    res.chi_dB = chi_dB
    res.Sigma = to_numpy(r.Sigma)
    res.Sigma_inv = to_numpy(r.Sigma_inv)
    return res


def _optimize_result(r):
    m = r.minimize
    res = scipy.optimize.OptimizeResult(dict(m.raw) if m.raw is not None else {})
    res.x = to_numpy(r.x)
    res.fun = float(m.fun)
    res.jac = to_numpy(m.grad)
    res.nit, res.nfev = m.nit, m.nfev
    res.success, res.status, res.message = m.success, m.status, m.message
    return res


@x64
def comp_sep(A_ev, d, invN, A_dB_ev, comp_of_dB, *minimize_args, **minimize_kwargs):
    """Drop-in for ``fgbuster.algebra.comp_sep``; see :func:`fgjax._optimize.comp_sep`."""
    d = _arr(d, "d")
    invN_j = _invN(invN)
    if isinstance(A_ev, (np.ndarray, jax.Array)):
        r = opt.comp_sep(_arr(A_ev, "A_ev"), d, invN_j)
        return _fill_result(scipy.optimize.OptimizeResult(), r, invN, d.shape)
    x0, kw = _minimize_kwargs(minimize_args, minimize_kwargs)
    mixing = _mixing(A_ev, A_dB_ev, comp_of_dB, x0)
    r = opt.comp_sep(mixing, d, invN_j, jnp.asarray(x0), **kw)
    return _fill_result(_optimize_result(r), r, invN, d.shape)


@x64
def multi_comp_sep(A_ev, d, invN, A_dB_ev, comp_of_dB, patch_ids, *minimize_args, **minimize_kargs):
    """Drop-in for ``fgbuster.algebra.multi_comp_sep`` (all patches in one compiled fit).

    Differences: a shared 2-D ``invN`` is accepted (fgbuster raises ``IndexError``); a list
    of per-patch evaluators is not supported; ``patch_res[i]`` holds ``Sigma_inv`` of the
    patch and the (joint) optimiser's fields.
    """
    d = _arr(d, "d")
    invN_j = _invN(invN)
    if isinstance(A_ev, list):
        raise NotImplementedError(
            "multi_comp_sep: per-patch lists of evaluators are not supported."
        )
    if isinstance(A_ev, (np.ndarray, jax.Array)):
        r = opt.multi_comp_sep(_arr(A_ev, "A_ev"), d, invN_j, None, np.asarray(patch_ids))
        return _fill_result(scipy.optimize.OptimizeResult(), r, invN, d.shape)
    x0, kw = _minimize_kwargs(minimize_args, minimize_kargs)
    mixing = _mixing(A_ev, A_dB_ev, comp_of_dB, x0)
    r = opt.multi_comp_sep(mixing, d, invN_j, jnp.asarray(x0), np.asarray(patch_ids), **kw)
    res = _optimize_result(r)
    _fill_result(res, r, invN, d.shape)
    res.patch_res = [
        None
        if not np.all(np.isfinite(f))
        else scipy.optimize.OptimizeResult(
            Sigma_inv=f,
            fun=res.fun,
            nit=res.nit,
            nfev=res.nfev,
            success=res.success,
            message=res.message,
        )
        for f in res.Sigma_inv
    ]
    del res.Sigma_inv
    return res


# -- fgbuster's private matrix helpers -----------------------------------------------------
# Not public API, but fgbuster's own tests and some scripts import them from
# fgbuster.algebra: NumPy, batched over leading axes.
def _T(m):
    return np.swapaxes(m, -1, -2)


def _mv(m, v):
    return np.einsum("...ij,...j->...i", m, v)


def _mtv(m, v):
    return np.einsum("...ji,...j->...i", m, v)


def _mm(a, b):
    return np.asarray(a) @ np.asarray(b)


def _mtm(a, b):
    return _T(np.asarray(a)) @ np.asarray(b)


def _mmm(a, b, c):
    return np.asarray(a) @ np.asarray(b) @ np.asarray(c)


def _mtmm(a, b, c):
    return _T(np.asarray(a)) @ np.asarray(b) @ np.asarray(c)


def _utmv(u, m, v):
    return np.einsum("...i,...ij,...j->...", u, m, v)


def _mmv(a, b, v):
    return np.einsum("...ij,...jk,...k->...i", a, b, v)
