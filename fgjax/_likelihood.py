r"""The spectral likelihood and its by-products (fgbuster's ``algebra``), pure JAX on Lineax.

Notation (Stompor et al. 2009). For each block of leading dimensions (a pixel, a Stokes
parameter, ...): data $d$ (``n_freq``), mixing matrix $A$ (``n_freq x n_comp``), inverse
noise $N^{-1}$ (``n_freq x n_freq``). With $M = A^T N^{-1} A$:

* profile log-likelihood $\log L = \tfrac12 \sum_{\rm blocks} (A^T N^{-1} d)^T M^{-1}
  A^T N^{-1} d$ (up to a constant);
* $W = M^{-1} A^T N^{-1}$ (the generalised least-squares separation operator), $s = W d$;
* $P = A W$ (the projector on the columns of $A$) and $D = 1 - P$.

Conventions are fgbuster's: arrays carry leading block dimensions that broadcast against
each other (``A`` shared ``(n_freq, n_comp)`` or per block ``(..., n_freq, n_comp)``,
``d`` of shape ``(..., n_freq)``), and every scalar is summed over all the blocks.

``invN`` may be ``None`` (identity), a full matrix ``(..., n_freq, n_freq)`` (symmetric
positive semi-definite), or :class:`DiagonalInvN` holding the diagonal ``(..., n_freq)``
(cheaper for per-pixel white noise). A block whose ``invN`` is all zero is *masked*: it
contributes nothing to the likelihood and gives zero ``s``, ``invAtNA``, ``W``.

Linear algebra: $M$ is a ``lineax.MatrixLinearOperator`` tagged positive semi-definite and
solved by ``lineax.Cholesky`` (batched with ``vmap`` over the blocks of $M$ only, so a
shared $A$ and $N^{-1}$ factorise once). For per-block (pixel-dependent) $M$ with
``n_comp <= 4`` the same Cholesky factorisation is unrolled over the matrix entries
(elementwise across blocks): benchmarks/bench_likelihood.py measures it 1.5x to 2.5x faster
than batched lineax solves on CPU. Shared $M$ (the fast path) always uses lineax. A
singular $M$ (two proportional SEDs at these frequencies) raises with ``throw=True`` and
is reported as a flag otherwise.

Derivatives with respect to the mixing matrix (``logL_dB``, ``W_dB``, ``W_dBdB``,
``P_dBdB``, ``fisher_logL_dB_dB``) are JAX autodiff of the functions above along the
directions given by ``A_dB`` / ``A_dBdB`` (fgbuster's compressed columns); fgbuster's
closed forms are only used as oracles in the tests.

Fast path: with ``A`` and ``invN`` shared by all the pixels of a patch,
$\log L = \tfrac12 \mathrm{tr}(M^{-1} A^T C A)$ with
$C = \sum_{\rm pixels} N^{-1} d d^T N^{-1}$ (``n_freq x n_freq``): see
:func:`data_covariance` and :func:`logL_from_covariance`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np

__all__ = [
    "DiagonalInvN",
    "D",
    "P",
    "P_dBdB",
    "W",
    "W_dB",
    "W_dBdB",
    "Wd",
    "data_covariance",
    "fisher_from_amplitude_covariance",
    "fisher_logL_dB_dB",
    "invAtNA",
    "logL",
    "logL_dB",
    "logL_from_covariance",
    "logL_hessian_from_covariance",
    "logL_noise_mismatch",
    "mixing_normal_matrix",
    "whiten",
]

_SINGULAR_MSG = (
    "A^T N^-1 A is singular: the mixing matrix `A` has (nearly) proportional columns "
    "(two SEDs proportional at these frequencies) or a zero column."
)


class DiagonalInvN(eqx.Module):
    """Diagonal inverse noise: ``diag`` of shape ``(..., n_freq)`` (inverse variances)."""

    diag: jax.Array

    def __init__(self, diag):
        self.diag = jnp.asarray(diag)


# -- small broadcasting helpers (explicit ranks: rank promotion may be set to 'raise') -------
def _lead(x, nd):
    return jnp.reshape(x, (1,) * (nd - x.ndim) + x.shape)


def _mm(a, b):
    """Matrix product over the last two axes, leading axes broadcast.

    A shared (2-D) factor becomes one large GEMM (pixels folded into its rows); two
    batched factors use a multiply-and-sum, which vectorises far better on CPU than
    batches of tiny matrix products.
    """
    if b.ndim == 2:
        return jnp.matmul(a, b) if a.ndim >= 2 else a @ b
    if a.ndim == 2:
        return _T(jnp.matmul(_T(b), _T(a)))
    nd = max(a.ndim, b.ndim)
    return jnp.sum(_lead(a, nd)[..., :, :, None] * _lead(b, nd)[..., None, :, :], axis=-2)


def _mv(m, v):
    """Matrix-vector product ``m @ v`` over the last axes, leading axes broadcast."""
    if m.ndim == 2:
        return jnp.matmul(v, _T(m))
    nd = max(m.ndim, v.ndim + 1)
    return jnp.sum(_lead(m, nd) * _lead(v[..., None, :], nd), axis=-1)


def _T(x):
    return jnp.swapaxes(x, -1, -2)


def _bcast_lead(*shapes):
    return np.broadcast_shapes(*shapes)


def _invN_lead(invN):
    if invN is None:
        return ()
    if isinstance(invN, DiagonalInvN):
        return invN.diag.shape[:-1]
    return invN.shape[:-2]


def _check_shapes(A, d=None, invN=None):
    """Eager shape checks with the argument named (shapes are static)."""
    if A.ndim < 2:
        raise ValueError(f"`A` must have shape (..., n_freq, n_comp), got {A.shape}.")
    n_freq, n_comp = A.shape[-2:]
    if n_comp > n_freq:
        raise ValueError(
            f"`A` has more components ({n_comp}) than frequencies ({n_freq}): the "
            "likelihood is degenerate."
        )
    if d is not None and (d.ndim < 1 or d.shape[-1] != n_freq):
        raise ValueError(
            f"`d` must have shape (..., {n_freq}) to match `A` {A.shape}, got {d.shape}."
        )
    if isinstance(invN, DiagonalInvN):
        if invN.diag.ndim < 1 or invN.diag.shape[-1] != n_freq:
            raise ValueError(
                f"`invN` (diagonal) must have shape (..., {n_freq}), got {invN.diag.shape}."
            )
    elif invN is not None:
        if invN.ndim < 2 or invN.shape[-2:] != (n_freq, n_freq):
            raise ValueError(
                f"`invN` must have shape (..., {n_freq}, {n_freq}) to match `A` {A.shape}, "
                f"got {invN.shape}."
            )
    leads = [A.shape[:-2], _invN_lead(invN)] + ([d.shape[:-1]] if d is not None else [])
    try:
        _bcast_lead(*leads)
    except ValueError:
        names = ["A", "invN"] + (["d"] if d is not None else [])
        detail = ", ".join(f"`{n}` {tuple(s)}" for n, s in zip(names, leads, strict=True))
        raise ValueError(
            f"leading (block) dimensions do not broadcast together: {detail}."
        ) from None


def _as_invN(invN):
    if invN is None or isinstance(invN, DiagonalInvN):
        return invN
    return jnp.asarray(invN)


def _apply_invN(invN, X):
    """``invN @ X`` for X of shape (..., n_freq, k)."""
    if invN is None:
        return X
    if isinstance(invN, DiagonalInvN):
        nd = max(invN.diag.ndim + 1, X.ndim)
        return _lead(invN.diag[..., None], nd) * _lead(X, nd)
    return _mm(invN, X)


def _masked(invN):
    """Blocks whose inverse noise is all zero (leading shape of invN), or None."""
    if invN is None:
        return None
    if isinstance(invN, DiagonalInvN):
        return jnp.all(invN.diag == 0, axis=-1)
    return jnp.all(invN == 0, axis=(-2, -1))


def whiten(invN, x):
    r"""Prewhiten vectors: $L^T x$ with $N^{-1} = L L^T$ (lower Cholesky factor).

    Masked blocks (all-zero ``invN``) give zero. ``x`` has shape ``(..., n_freq)``.
    """
    invN = _as_invN(invN)
    x = jnp.asarray(x)
    if invN is None:
        return x
    if isinstance(invN, DiagonalInvN):
        root = jnp.sqrt(jnp.maximum(invN.diag, 0))
        nd = max(root.ndim, x.ndim)
        return _lead(root, nd) * _lead(x, nd)
    masked = _masked(invN)
    eye = jnp.eye(invN.shape[-1], dtype=invN.dtype)
    safe = jnp.where(masked[..., None, None], eye, invN)
    L = jnp.where(masked[..., None, None], 0, jnp.linalg.cholesky(safe))
    return _mv(_T(L), x)


# -- the normal matrix and its inverse ----------------------------------------------------
def mixing_normal_matrix(A, invN=None):
    r"""$A^T N^{-1}$ ``(..., n_comp, n_freq)`` and $M = A^T N^{-1} A$ ``(..., n_comp, n_comp)``."""
    invN = _as_invN(invN)
    AtN = _T(_apply_invN(invN, A))  # invN symmetric
    return AtN, _mm(AtN, A)


def _cholesky_inverse(m):
    """Inverse of one SPD matrix through lineax's Cholesky (n_comp right-hand sides)."""
    op = lx.MatrixLinearOperator(m, lx.positive_semidefinite_tag)
    eye = jnp.eye(m.shape[-1], dtype=m.dtype)

    def solve(b):
        return lx.linear_solve(op, b, lx.Cholesky(), throw=False).value

    return jax.vmap(solve, out_axes=1)(eye)


def _unrolled_spd_inverse(M):
    """Inverse of SPD blocks by a Cholesky factorisation unrolled over the (static, tiny)
    matrix entries: elementwise arithmetic across the blocks, same numerics as Cholesky.

    Used for ``n_comp <= _CLOSED_FORM_MAX_N`` where benchmarks/bench_likelihood.py shows it
    faster than batched lineax solves (per-pixel blocks); lineax otherwise.
    """
    n = M.shape[-1]
    L = [[None] * n for _ in range(n)]
    for j in range(n):
        L[j][j] = jnp.sqrt(M[..., j, j] - sum(L[j][k] * L[j][k] for k in range(j)))
        for i in range(j + 1, n):
            L[i][j] = (M[..., i, j] - sum(L[i][k] * L[j][k] for k in range(j))) / L[j][j]
    Li = [[None] * n for _ in range(n)]  # inverse of the lower factor
    for i in range(n):
        Li[i][i] = 1 / L[i][i]
        for j in range(i):
            Li[i][j] = -sum(L[i][k] * Li[k][j] for k in range(j, i)) / L[i][i]
    rows = [
        jnp.stack([sum(Li[k][a] * Li[k][b] for k in range(max(a, b), n)) for b in range(n)], -1)
        for a in range(n)
    ]
    return jnp.stack(rows, -2)


def _cholesky_pivot(M, j):
    """Squared j-th Cholesky pivot of SPD blocks (Schur complement), unrolled."""
    n = j + 1
    L = [[None] * n for _ in range(n)]
    for c in range(n):
        piv = M[..., c, c] - sum(L[c][k] * L[c][k] for k in range(c))
        if c == j:
            return piv
        L[c][c] = jnp.sqrt(jnp.maximum(piv, jnp.finfo(M.dtype).tiny))
        for i in range(c + 1, n):
            L[i][c] = (M[..., i, c] - sum(L[i][k] * L[c][k] for k in range(c))) / L[c][c]
    raise AssertionError  # pragma: no cover


# Largest n_comp for the unrolled Cholesky (0 disables it: lineax everywhere).
_CLOSED_FORM_MAX_N = 4


def _safe_blocks(M, masked=None):
    """Masked blocks and singular blocks replaced by the identity, with the flags."""
    n = M.shape[-1]
    lead = M.shape[:-2]
    eye = jnp.eye(n, dtype=M.dtype)
    if masked is not None:
        masked = jnp.broadcast_to(_lead(masked, len(lead)), lead)
        M = jnp.where(masked[..., None, None], eye, M)
    # Singularity: determinant of the Jacobi-scaled matrix (1 for orthogonal columns).
    diag = jnp.diagonal(M, axis1=-2, axis2=-1)
    scale = jax.lax.rsqrt(jnp.where(diag > 0, diag, 1))
    corr = jax.lax.stop_gradient(M * scale[..., :, None] * scale[..., None, :])
    eps = jnp.finfo(M.dtype).eps
    closed_form = n <= _CLOSED_FORM_MAX_N and M.ndim > 2
    if closed_form:  # det(corr) = prod of the squared Cholesky pivots of corr
        pivots = jnp.stack([_cholesky_pivot(corr, j) for j in range(n)], -1)
        det_corr = jnp.prod(pivots, axis=-1)
    else:
        det_corr = jnp.linalg.det(corr)
    singular = ~(det_corr >= 10 * eps) | jnp.any(diag <= 0, axis=-1)
    singular = singular | ~jnp.all(jnp.isfinite(jax.lax.stop_gradient(M)), axis=(-2, -1))
    M_safe = jnp.where(singular[..., None, None], eye, M)
    if masked is not None:
        singular = singular & ~masked
    return M_safe, singular, masked, closed_form


def _spd_inverse(M, masked=None):
    """Inverse of each block of ``M`` and a flag per block for singular ones.

    Masked blocks get a zero inverse and are not singular. Singular ones get an identity
    (finite gradients) and the flag.
    """
    n = M.shape[-1]
    M_safe, singular, masked, closed_form = _safe_blocks(M, masked)
    if closed_form:
        inv = _unrolled_spd_inverse(M_safe)
    else:
        inv = jax.vmap(_cholesky_inverse)(M_safe.reshape((-1, n, n))).reshape(M.shape)
    if masked is not None:
        inv = jnp.where(masked[..., None, None], 0, inv)
    return inv, singular


def _spd_quadratic(M, b, masked=None):
    """``b^T M^-1 b`` per block (summed over all), and the singular flags.

    Tiny per-block systems: forward substitution with the unrolled Cholesky factor
    (no inverse formed). Otherwise through :func:`_spd_inverse` (lineax).
    """
    n = M.shape[-1]
    M_safe, singular, masked, closed_form = _safe_blocks(M, masked)
    if not closed_form:
        inv, _ = _spd_inverse(M, masked)
        return jnp.sum(b * _mv(inv, b)), singular
    nd = max(M.ndim - 1, b.ndim)
    M_safe, b = _lead(M_safe, nd + 1), _lead(b, nd)
    L = [[None] * n for _ in range(n)]
    y = []
    for j in range(n):
        L[j][j] = jnp.sqrt(M_safe[..., j, j] - sum(L[j][k] * L[j][k] for k in range(j)))
        for i in range(j + 1, n):
            L[i][j] = (M_safe[..., i, j] - sum(L[i][k] * L[j][k] for k in range(j))) / L[j][j]
        y.append((b[..., j] - sum(L[j][k] * y[k] for k in range(j))) / L[j][j])
    return sum(jnp.sum(yj * yj) for yj in y), singular


def _solve_parts(A, invN):
    invN = _as_invN(invN)
    AtN, M = mixing_normal_matrix(A, invN)
    Minv, singular = _spd_inverse(M, _masked(invN))
    return AtN, Minv, singular


def _maybe_throw(x, singular, throw):
    if throw:
        x = eqx.error_if(x, jnp.any(singular), _SINGULAR_MSG)
    return x


def _prep(A, d=None, invN=None):
    A = jnp.asarray(A)
    d = None if d is None else jnp.asarray(d)
    invN = _as_invN(invN)
    _check_shapes(A, d, invN)
    return A, d, invN


def _normal_and_projection(A, d, invN):
    """``M = A^T N^-1 A`` and ``b = A^T N^-1 d``.

    Shared ``A`` with per-pixel diagonal noise (the common large case) is two GEMMs over
    the pixels, ``n_inv @ (A_fi A_fj)`` and ``(n_inv d) @ A``, without per-pixel ``A^T N^-1``.
    """
    if A.ndim == 2 and isinstance(invN, DiagonalInvN) and invN.diag.ndim > 1:
        n_freq, n_comp = A.shape
        K = (A[:, :, None] * A[:, None, :]).reshape(n_freq, n_comp * n_comp)
        M = (invN.diag @ K).reshape(invN.diag.shape[:-1] + (n_comp, n_comp))
        nd = max(invN.diag.ndim, d.ndim)
        b = (_lead(invN.diag, nd) * _lead(d, nd)) @ A
        return M, b
    AtN, M = mixing_normal_matrix(A, invN)
    return M, _mv(AtN, d)


def _logL_core(A, d, invN):
    M, b = _normal_and_projection(A, d, invN)
    quad, singular = _spd_quadratic(M, b, _masked(invN))
    return 0.5 * quad, singular


def logL(A, d, invN=None, *, throw: bool = True):
    r"""Spectral log-likelihood $\tfrac12 \sum (A^TN^{-1}d)^T (A^TN^{-1}A)^{-1} A^TN^{-1}d$.

    Args:
        A: Mixing matrix, ``(..., n_freq, n_comp)``.
        d: Data, ``(..., n_freq)``.
        invN: ``None``, ``(..., n_freq, n_freq)`` or :class:`DiagonalInvN`.
        throw: Raise when ``A^T N^-1 A`` is singular (else the value is ``nan``).

    Returns:
        A scalar, summed over every block.
    """
    A, d, invN = _prep(A, d, invN)
    return _logL_jit(A, d, invN, throw)


@functools.partial(jax.jit, static_argnums=3)
def _logL_jit(A, d, invN, throw):
    val, singular = _logL_core(A, d, invN)
    val = jnp.where(jnp.any(singular), jnp.nan, val)
    return _maybe_throw(val, singular, throw)


def invAtNA(A, invN=None, *, throw: bool = True):
    r"""$(A^T N^{-1} A)^{-1}$, shape ``broadcast(A, invN blocks) + (n_comp, n_comp)``."""
    A, _, invN = _prep(A, None, invN)
    return _invAtNA_jit(A, invN, throw)


@functools.partial(jax.jit, static_argnums=2)
def _invAtNA_jit(A, invN, throw):
    lead = _bcast_lead(A.shape[:-2], _invN_lead(invN))
    _, Minv, singular = _solve_parts(A, invN)
    Minv = jnp.broadcast_to(Minv, lead + Minv.shape[-2:])
    return _maybe_throw(Minv, singular, throw)


def Wd(A, d, invN=None, *, throw: bool = True):
    r"""Separated components $s = (A^TN^{-1}A)^{-1} A^T N^{-1} d$, ``(..., n_comp)``."""
    A, d, invN = _prep(A, d, invN)
    return _Wd_jit(A, d, invN, throw)


@functools.partial(jax.jit, static_argnums=3)
def _Wd_jit(A, d, invN, throw):
    AtN, Minv, singular = _solve_parts(A, invN)
    return _maybe_throw(_mv(Minv, _mv(AtN, d)), singular, throw)


def _W(A, invN):
    AtN, Minv, singular = _solve_parts(A, invN)
    lead = _bcast_lead(A.shape[:-2], _invN_lead(invN))
    W_ = _mm(Minv, AtN)
    return jnp.broadcast_to(W_, lead + W_.shape[-2:]), singular


def _P(A, invN):
    W_, singular = _W(A, invN)
    return _mm(A, W_), singular


def _D(A, invN):
    P_, singular = _P(A, invN)
    return _lead(jnp.eye(A.shape[-2], dtype=P_.dtype), P_.ndim) - P_, singular


@functools.partial(jax.jit, static_argnums=(0, 3))
def _operator_jit(fn, A, invN, throw):
    out, singular = fn(A, invN)
    return _maybe_throw(out, singular, throw)


def W(A, invN=None, *, throw: bool = True):
    r"""$W = (A^TN^{-1}A)^{-1} A^T N^{-1}$, shape ``(..., n_comp, n_freq)``."""
    A, _, invN = _prep(A, None, invN)
    return _operator_jit(_W, A, invN, throw)


def P(A, invN=None, *, throw: bool = True):
    r"""$P = A W$, the ($N^{-1}$-orthogonal) projector on the columns of $A$."""
    A, _, invN = _prep(A, None, invN)
    return _operator_jit(_P, A, invN, throw)


def D(A, invN=None, *, throw: bool = True):
    r"""$D = 1 - A W$, the projector that removes the components."""
    A, _, invN = _prep(A, None, invN)
    return _operator_jit(_D, A, invN, throw)


# -- derivatives by autodiff -------------------------------------------------------------
def _columns(comp, n_comp):
    """Normalise a column index (int or slice) to a static (start, stop) pair."""
    if isinstance(comp, (int, np.integer)):
        c = int(comp)
        if not -n_comp <= c < n_comp:
            raise ValueError(f"`comp_of_dB`: column {c} out of range for {n_comp} components.")
        c %= n_comp
        return (c, c + 1)
    if isinstance(comp, slice):
        start, stop, step = comp.indices(n_comp)
        if step != 1:
            raise ValueError("`comp_of_dB`: slices with a step are not supported.")
        return (start, stop)
    if isinstance(comp, tuple) and len(comp) == 2:
        return (int(comp[0]), int(comp[1]))
    raise TypeError(f"`comp_of_dB` entries must be ints or slices of columns, got {comp!r}.")


def _expand_dB(A, A_dB, cols):
    """Full-size derivative of A from a compressed block of columns."""
    A_dB = jnp.asarray(A_dB, dtype=A.dtype)
    start, stop = cols
    if (
        A_dB.ndim < 2
        or A_dB.shape[-2] not in (1, A.shape[-2])
        or A_dB.shape[-1]
        not in (
            1,
            stop - start,
        )
    ):
        raise ValueError(
            f"`A_dB` blocks must have shape (..., n_freq, {stop - start}) to match `A` "
            f"{A.shape}, got {A_dB.shape}."
        )
    lead = _bcast_lead(A.shape[:-2], A_dB.shape[:-2])
    full = jnp.zeros(lead + A.shape[-2:], A.dtype)
    nd = len(lead) + 2
    block = jnp.broadcast_to(_lead(A_dB, nd), lead + (A.shape[-2], stop - start))
    return full.at[..., start:stop].set(block)


def _directions(A, A_dB, cols):
    dirs = [_expand_dB(A, a, c) for a, c in zip(A_dB, cols, strict=True)]
    lead = _bcast_lead(A.shape[:-2], *(x.shape[:-2] for x in dirs))
    dirs = jnp.stack([jnp.broadcast_to(_lead(x, len(lead) + 2), lead + A.shape[-2:]) for x in dirs])
    return dirs, cols


def _second_directions(A, A_dBdB, cols):
    n = len(cols)
    rows = []
    for i in range(n):
        rows.append([_expand_dB(A, jnp.asarray(A_dBdB[i][j]), cols[i]) for j in range(n)])
    lead = _bcast_lead(A.shape[:-2], *(x.shape[:-2] for row in rows for x in row))
    return jnp.stack(
        [
            jnp.stack([jnp.broadcast_to(_lead(x, len(lead) + 2), lead + A.shape[-2:]) for x in row])
            for row in rows
        ]
    )


def _along(A, dirs, t, dirs2=None):
    """A + sum_i t_i dirs_i (+ 1/2 sum_ij t_i t_j dirs2_ij): a curve through A."""
    nd = dirs.ndim - 1
    out = _lead(A, nd) + jnp.tensordot(t, dirs, 1)
    if dirs2 is not None:
        out = out + 0.5 * jnp.tensordot(t, jnp.tensordot(t, dirs2, 1), 1)
    return out


def _static_cols(A, A_dB, comp_of_dB):
    A_dB = [jnp.asarray(a, dtype=A.dtype) for a in A_dB]
    comp_of_dB = list(comp_of_dB)
    if len(A_dB) != len(comp_of_dB):
        raise ValueError(f"`A_dB` has {len(A_dB)} entries but `comp_of_dB` has {len(comp_of_dB)}.")
    return A_dB, tuple(_columns(c, A.shape[-1]) for c in comp_of_dB)


def logL_dB(A, d, invN, A_dB: Sequence, comp_of_dB: Sequence, *, reduce: bool = True):
    r"""Derivative of :func:`logL` along each ``A_dB[i]`` (autodiff, reverse mode).

    Args:
        A: Mixing matrix ``(..., n_freq, n_comp)``.
        d: Data ``(..., n_freq)``.
        invN: As in :func:`logL`.
        A_dB: Sequence of ``n_param`` arrays ``(..., n_freq, k_i)``: the derivative of the
            columns ``comp_of_dB[i]`` of ``A`` with respect to parameter ``i``.
        comp_of_dB: Sequence of column indices (int) or column slices, one per parameter.
        reduce: Sum over the blocks (fgbuster's ``logL_dB``). With ``False`` the result keeps
            the block axes, ``(n_param, *blocks)``, for per-region sums.

    Returns:
        ``(n_param,)`` or ``(n_param, *blocks)``.
    """
    A, d, invN = _prep(A, d, invN)
    A_dB, cols = _static_cols(A, A_dB, comp_of_dB)
    return _logL_dB_jit(A, d, invN, A_dB, cols, reduce)


@functools.partial(jax.jit, static_argnums=(4, 5))
def _logL_dB_jit(A, d, invN, A_dB, cols, reduce):
    dirs, _ = _directions(A, A_dB, cols)
    lead = _bcast_lead(A.shape[:-2], d.shape[:-1], _invN_lead(invN), dirs.shape[1:-2])
    A_full = jnp.broadcast_to(_lead(A, len(lead) + 2), lead + A.shape[-2:])
    G = jax.grad(lambda a: _logL_core(a, d, invN)[0])(A_full)
    n_dir, dlead = dirs.shape[0], dirs.shape[1:-2]
    dirs = dirs.reshape((n_dir,) + (1,) * (len(lead) - len(dlead)) + dirs.shape[1:])
    per_block = jnp.sum(G[None] * dirs, axis=(-2, -1))
    if reduce:
        return per_block.reshape(per_block.shape[0], -1).sum(axis=1)
    return per_block


def fisher_logL_dB_dB(A, s, A_dB: Sequence, comp_of_dB: Sequence, invN=None):
    r"""Fisher matrix of the spectral parameters at components ``s`` ``(..., n_comp)``.

    Computed as minus the Hessian (autodiff) of :func:`logL` along the ``A_dB`` directions
    for the noise-free data $d = A s$; equal to fgbuster's
    $\sum (D A_{,i} s)^T N^{-1} (D A_{,j} s)$ since the terms in $A_{,ij}$ vanish there.
    """
    A, _, invN = _prep(A, None, invN)
    s = jnp.asarray(s, dtype=A.dtype)
    if s.ndim < 1 or s.shape[-1] != A.shape[-1]:
        raise ValueError(f"`s` must have shape (..., {A.shape[-1]}), got {s.shape}.")
    A_dB, cols = _static_cols(A, A_dB, comp_of_dB)
    return _fisher_jit(A, s, A_dB, cols, invN)


@functools.partial(jax.jit, static_argnums=3)
def _fisher_jit(A, s, A_dB, cols, invN):
    dirs, _ = _directions(A, A_dB, cols)
    d_model = jax.lax.stop_gradient(_mv(A, s))
    t0 = jnp.zeros(dirs.shape[0], A.dtype)
    return -jax.hessian(lambda t: _logL_core(_along(A, dirs, t), d_model, invN)[0])(t0)


def _move_param_axes(x, n_axes):
    return jnp.moveaxis(x, tuple(range(x.ndim - n_axes, x.ndim)), tuple(range(n_axes)))


def W_dB(A, A_dB: Sequence, comp_of_dB: Sequence, invN=None):
    """Derivative of :func:`W` along each ``A_dB[i]``: ``(n_param, ..., n_comp, n_freq)``."""
    A, _, invN = _prep(A, None, invN)
    A_dB, cols = _static_cols(A, A_dB, comp_of_dB)
    return _W_dB_jit(A, A_dB, cols, invN)


@functools.partial(jax.jit, static_argnums=2)
def _W_dB_jit(A, A_dB, cols, invN):
    dirs, _ = _directions(A, A_dB, cols)
    t0 = jnp.zeros(dirs.shape[0], A.dtype)
    jac = jax.jacfwd(lambda t: _W(_along(A, dirs, t), invN)[0])(t0)
    return _move_param_axes(jac, 1)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _second_jit(fn, A, A_dB, A_dBdB, cols, invN):
    dirs, _ = _directions(A, A_dB, cols)
    dirs2 = _second_directions(A, A_dBdB, cols)
    t0 = jnp.zeros(dirs.shape[0], A.dtype)
    hess = jax.jacfwd(jax.jacfwd(lambda t: fn(_along(A, dirs, t, dirs2), invN)[0]))(t0)
    return _move_param_axes(hess, 2)


def _second(fn, A, A_dB, A_dBdB, comp_of_dB, invN):
    A_dB, cols = _static_cols(A, A_dB, comp_of_dB)
    n = len(cols)
    if len(A_dBdB) != n or any(len(row) != n for row in A_dBdB):
        raise ValueError(f"`A_dBdB` must be a {n} x {n} nested sequence (one per parameter pair).")
    A_dBdB = [[jnp.asarray(a, dtype=A.dtype) for a in row] for row in A_dBdB]
    return _second_jit(fn, A, A_dB, A_dBdB, cols, invN)


def W_dBdB(A, A_dB: Sequence, A_dBdB: Sequence, comp_of_dB: Sequence, invN=None):
    """Second derivative of :func:`W`: ``(n_param, n_param, ..., n_comp, n_freq)``.

    ``A_dBdB[i][j]`` is the derivative of ``A_dB[i]`` (same columns) by parameter ``j``.
    """
    A, _, invN = _prep(A, None, invN)
    return _second(_W, A, A_dB, A_dBdB, comp_of_dB, invN)


def P_dBdB(A, A_dB: Sequence, A_dBdB: Sequence, comp_of_dB: Sequence, invN=None):
    """Second derivative of :func:`P`: ``(n_param, n_param, ..., n_freq, n_freq)``."""
    A, _, invN = _prep(A, None, invN)
    return _second(_P, A, A_dB, A_dBdB, comp_of_dB, invN)


def logL_noise_mismatch(A, invN, N_true):
    r"""Expected noise contribution to :func:`logL` when the true noise is ``N_true``.

    $\tfrac12 \sum_{\rm blocks} \mathrm{tr}(N^{-1} A M^{-1} A^T N^{-1} N_{\rm true})$: the
    noise bias of the likelihood (``n_comp / 2`` per block when ``N_true = N``). A mismatch
    between the assumed ``invN`` and the true covariance changes it, which biases the
    spectral parameters.
    """
    A, _, invN = _prep(A, None, invN)
    N_true = jnp.asarray(N_true, dtype=A.dtype)
    if N_true.ndim < 2 or N_true.shape[-2:] != (A.shape[-2],) * 2:
        raise ValueError(
            f"`N_true` must have shape (..., {A.shape[-2]}, {A.shape[-2]}), got {N_true.shape}."
        )
    AtN, Minv, _ = _solve_parts(A, invN)
    X = _mm(_mm(AtN, N_true), _T(AtN))
    nd = max(X.ndim, Minv.ndim)
    return 0.5 * jnp.sum(_lead(X, nd) * _lead(Minv, nd))


# -- the fast path -----------------------------------------------------------------------
def data_covariance(d, invN=None, patch_ids=None, n_patch: int | None = None):
    r"""$C = \sum_{\rm pixels} (N^{-1} d)(N^{-1} d)^T$, once, for a shared (2-D) ``invN``.

    Args:
        d: Data ``(..., n_freq)``.
        invN: ``None``, ``(n_freq, n_freq)`` or :class:`DiagonalInvN` of shape ``(n_freq,)``.
        patch_ids: Optional integer ids of shape ``d.shape[:k]`` (broadcast from the left
            to ``d.shape[:-1]``): one covariance per patch.
        n_patch: Number of patches (static); default ``max(patch_ids) + 1`` (concrete ids).

    Returns:
        ``(n_freq, n_freq)``, or ``(n_patch, n_freq, n_freq)`` with ``patch_ids``.
    """
    d = jnp.asarray(d)
    invN = _as_invN(invN)
    if _invN_lead(invN) != ():
        raise ValueError("`invN` must be shared by all pixels (no leading dimensions) here.")
    dw = _apply_invN(invN, d[..., None])[..., 0] if invN is not None else d
    n_freq = d.shape[-1]
    if patch_ids is None:
        flat = dw.reshape(-1, n_freq)
        return flat.T @ flat
    ids = jnp.asarray(patch_ids)
    if ids.shape != d.shape[: ids.ndim]:
        raise ValueError(
            f"`patch_ids` must have shape d.shape[:k], got {ids.shape} for `d` {d.shape}."
        )
    if n_patch is None:
        n_patch = int(np.max(np.asarray(ids))) + 1
    ids = jnp.broadcast_to(ids.reshape(ids.shape + (1,) * (d.ndim - 1 - ids.ndim)), d.shape[:-1])
    flat = dw.reshape(-1, n_freq)
    outer = flat[:, :, None] * flat[:, None, :]
    return jax.ops.segment_sum(outer, ids.reshape(-1), num_segments=n_patch)


def logL_from_covariance(A, C, invN=None):
    r"""Fast-path log-likelihood $\tfrac12\mathrm{tr}(M^{-1}A^TCA)$ and a singular flag.

    ``A`` ``(n_freq, n_comp)``, ``C`` from :func:`data_covariance` (same ``invN``).
    Equal to :func:`logL` of the data ``C`` was made of, for any number of pixels.
    """
    AtN, Minv, singular = _solve_parts(A, invN)
    AtCA = _mm(_mm(_T(A), C), A)
    return 0.5 * jnp.sum(Minv * AtCA), singular


# -- closed-form parameter derivatives of the fast path -------------------------------------
def _column_basis(A, A_dB, A_dBdB, comp_of_dB):
    """The columns every parameter derivative of ``A`` is made of, and where they sit.

    With one column per parameter (``comp_of_dB``), ``dA/dx_i`` is the vector ``A_dB[i]``
    in column ``comp_of_dB[i]`` and ``d2A/dx_i dx_j`` is ``A_dBdB[i, j]`` in that column
    when both act on the same component (zero otherwise). Returns the stacked vectors
    ``V`` ``(..., n_freq, n_vec)`` (columns of ``A``, then ``A_dB``, then the non-zero
    ``A_dBdB``) and the index of each ``A_dBdB[i, j]`` in ``V`` (None where it is zero).
    """
    n_comp, n_param = A.shape[-1], len(comp_of_dB)
    cols = [A[..., :, c] for c in range(n_comp)] + [A_dB[..., i, :] for i in range(n_param)]
    second = [[None] * n_param for _ in range(n_param)]
    if A_dBdB is not None:
        for i in range(n_param):
            for j in range(i, n_param):
                if comp_of_dB[i] == comp_of_dB[j]:
                    second[i][j] = second[j][i] = len(cols)
                    cols.append(A_dBdB[..., i, j, :])
    shape = jnp.broadcast_shapes(*(c.shape for c in cols))
    return jnp.stack([jnp.broadcast_to(c, shape) for c in cols], -1), second


def logL_hessian_from_covariance(A, A_dB, A_dBdB, comp_of_dB, C, invN=None):
    r"""Fast-path $\log L$, its gradient and its Hessian in the parameters, in closed form.

    $\log L = \tfrac12 \mathrm{tr}(K B)$ with $K = M^{-1}$, $M = A^T N^{-1} A$ and
    $B = A^T C A$. With $M_i$, $B_i$, $M_{ij}$, $B_{ij}$ their parameter derivatives
    (from the SED derivatives, see :meth:`MixingMatrix.taylor`):

    * $\partial_i \log L = \tfrac12[\mathrm{tr}(K B_i) - \mathrm{tr}(K M_i K B)]$,
    * $\partial_i\partial_j \log L = \tfrac12[\mathrm{tr}(K B_{ij}) - \mathrm{tr}(K M_{ij} K B)
      - \mathrm{tr}(K M_i K B_j) - \mathrm{tr}(K M_j K B_i)
      + \mathrm{tr}(K M_i K M_j K B) + \mathrm{tr}(K M_j K M_i K B)]$.

    With one column per parameter (fgbuster's ``comp_of_dB``) the derivatives of $M$ and
    $B$ are rank-two updates built from the Gram matrices of the few columns involved,
    and every trace reduces to products of ``n_param x n_comp`` matrices: the cost per
    patch is that of a handful of ``n_freq``-long dot products, with no autodiff through
    the SEDs' expressions (which is what made the batched patch fits slow).

    Args:
        A: ``(..., n_freq, n_comp)``.
        A_dB: ``(..., n_param, n_freq)``: derivative of column ``comp_of_dB[i]``.
        A_dBdB: ``(..., n_param, n_param, n_freq)``, or None for the gradient only
            (the Hessian is then None).
        comp_of_dB: Column of each parameter (ints, static).
        C: ``(..., n_freq, n_freq)`` from :func:`data_covariance` with the same ``invN``.
        invN: As in :func:`logL`.

    Returns:
        ``(logL, grad (n_param,), hess (n_param, n_param) or None, singular)``, summed over
        the leading blocks.
    """
    comp_of_dB = tuple(int(c) for c in comp_of_dB)
    invN = _as_invN(invN)
    n_comp = A.shape[-1]
    V, second = _column_basis(A, A_dB, A_dBdB, comp_of_dB)
    # Gram matrices (n_freq-long contractions, where einsum's dot beats multiply-and-sum):
    # only the columns of A and of A_dB are needed on the right, V^T X [A, A_dB]
    U = V[..., : n_comp + len(comp_of_dB)]
    G = jnp.einsum("...fa,...fb->...ab", V, _apply_invN(invN, U))
    Bq = jnp.einsum("...fa,...fb->...ab", V, jnp.einsum("...fg,...gb->...fb", C, U))
    G, Bq = jnp.broadcast_arrays(G, Bq)
    K, singular = _spd_inverse(G[..., :n_comp, :n_comp], _masked(invN))
    B = Bq[..., :n_comp, :n_comp]
    KB = _mm(K, B)
    value = 0.5 * jnp.sum(_T(K) * B)
    if not comp_of_dB:
        return value, jnp.zeros((0,), A.dtype), jnp.zeros((0, 0), A.dtype), jnp.any(singular)
    # One column per parameter: dM/dx_i = e_i u_i^T + u_i e_i^T with e_i the unit vector of
    # column c_i and u_i = A^T N^-1 a_i (same for B with w_i = A^T C a_i), and the second
    # derivatives add the Gram entries of a_i, a_j and of the d2A columns. Every trace then
    # reduces to products of n_param x n_comp matrices (K = M^-1, Q = K B K):
    n_param = len(comp_of_dB)
    cols = np.asarray(comp_of_dB)
    par = slice(n_comp, n_comp + n_param)
    U, W = G[..., par, :n_comp], Bq[..., par, :n_comp]  # (..., p, c)
    Q = _mm(KB, K)
    KU, KW, QU = _mm(U, K), _mm(W, K), _mm(U, Q)  # rows: K u_i, K w_i, Q u_i
    grad = jnp.sum(_diag_cols(KW, cols) - _diag_cols(QU, cols), axis=tuple(range(U.ndim - 2)))
    if A_dBdB is None:
        return value, grad, None, jnp.any(singular)
    Kc, Qc = K[..., cols[:, None], cols[None, :]], Q[..., cols[:, None], cols[None, :]]
    Vc, Xc, Pc = KU[..., :, cols], KW[..., :, cols], QU[..., :, cols]  # [i, j]: (K u_i)[c_j]
    mu, nu, lam = _mm(KU, _T(U)), _mm(QU, _T(U)), _mm(KU, _T(W))
    gamma, beta = G[..., par, par], Bq[..., par, par]
    zeros = jnp.zeros(G.shape[:-2] + (n_comp,), G.dtype)
    Y = jnp.stack([jnp.stack([zeros if k is None else G[..., k, :n_comp] for k in row], -2)
                   for row in second], -3)  # fmt: skip
    Z = jnp.stack([jnp.stack([zeros if k is None else Bq[..., k, :n_comp] for k in row], -2)
                   for row in second], -3)  # fmt: skip
    Krows, Qrows = K[..., cols, :], Q[..., cols, :]  # (..., p, c): rows c_i
    KZ = jnp.sum(Krows[..., :, None, :] * Z, axis=-1)  # (K z_ij)[c_i]
    QY = jnp.sum(Qrows[..., :, None, :] * Y, axis=-1)
    hess = (
        KZ + beta * Kc - QY - gamma * Qc
        - Vc * _T(Xc) - _T(Vc) * Xc - Kc * (lam + _T(lam))
        + Vc * _T(Pc) + _T(Vc) * Pc + mu * Qc + Kc * nu
    )  # fmt: skip
    return value, grad, jnp.sum(hess, axis=tuple(range(hess.ndim - 2))), jnp.any(singular)


def _diag_cols(X, cols):
    """``X[..., i, cols[i]]`` for each row i."""
    return X[..., np.arange(len(cols)), cols]


def fisher_from_amplitude_covariance(A, A_dB, comp_of_dB, S, invN=None):
    r"""fgbuster's Fisher matrix of the spectral parameters from $\sum_p s_p s_p^T$.

    $F_{ij} = \sum_p (\partial_i A\, s_p)^T (N^{-1} - N^{-1} A M^{-1} A^T N^{-1})
    (\partial_j A\, s_p)$ (:func:`fisher_logL_dB_dB`); with one column per parameter it is
    $(a_i^T D a_j)\, S_{c_i c_j}$ where $S = \sum_p s_p s_p^T$ over the pixels sharing
    ``A`` and ``invN``: no per-pixel work.

    Args:
        A: ``(..., n_freq, n_comp)``; A_dB: ``(..., n_param, n_freq)``; comp_of_dB: ints.
        S: ``(..., n_comp, n_comp)``: sum of the outer products of the amplitudes.
        invN: As in :func:`logL`.

    Returns:
        ``(n_param, n_param)`` summed over the leading blocks.
    """
    comp_of_dB = tuple(int(c) for c in comp_of_dB)
    invN = _as_invN(invN)
    n_comp = A.shape[-1]
    V, _ = _column_basis(A, A_dB, None, comp_of_dB)
    G = jnp.einsum("...fa,...fb->...ab", V, _apply_invN(invN, V))
    K, _ = _spd_inverse(G[..., :n_comp, :n_comp], _masked(invN))
    Ga = G[..., n_comp:, :n_comp]  # a_i^T N^-1 A
    D = G[..., n_comp:, n_comp:] - _mm(_mm(Ga, K), _T(Ga))
    cols = jnp.asarray(comp_of_dB)
    Sij = S[..., cols[:, None], cols[None, :]]
    D, Sij = jnp.broadcast_arrays(D, Sij)
    return jnp.sum(D * Sij, axis=tuple(range(D.ndim - 2)))
