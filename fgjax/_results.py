"""Result types of the fits: the ``RESULTS`` status enumeration and frozen result Modules."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

__all__ = ["RESULTS", "CompSepResult", "MinimizeResult"]


class RESULTS(eqx.Enumeration):
    """Outcome of a fit. Numerical failure is a value, not an exception."""

    successful = ""
    max_steps_reached = "The maximum number of steps was reached before convergence."
    singular = (
        "A^T N^-1 A is singular at the best fit: two SEDs are (nearly) proportional at "
        "these frequencies."
    )
    nonfinite = "The objective or its gradient became non-finite."
    failed = "The optimiser stopped without meeting its convergence criterion (see `message`)."


class MinimizeResult(eqx.Module):
    """Outcome of :func:`fgjax.minimize` (SciPy or optax).

    Attributes:
        x: Best-fit parameters, same shape and dtype as ``x0``.
        fun: Objective at ``x``.
        grad: Gradient at ``x``.
        nit: Iterations.
        nfev: Objective (value-and-gradient) evaluations.
        success: Whether the optimiser reports convergence.
        status: The optimiser's own integer status (SciPy's; 0 for optax success).
        message: The optimiser's message.
        result: The :class:`RESULTS` item.
        raw: SciPy's ``OptimizeResult`` (``None`` for optax).
    """

    x: jax.Array
    fun: jax.Array
    grad: jax.Array
    nit: int
    nfev: int
    success: bool
    status: int
    message: str
    result: Any
    raw: Any = None


class CompSepResult(eqx.Module):
    """Outcome of :func:`fgjax.comp_sep` / :func:`fgjax.multi_comp_sep` (fgbuster's fields).

    Attributes:
        x: Best-fit spectral parameters ``(n_param,)``, or ``(n_patch, n_param)``; ``None``
            for a fixed mixing matrix. Patches without pixels are ``nan``.
        Sigma: Covariance of ``x``: the inverse of ``Sigma_inv``.
        Sigma_inv: Fisher matrix: minus the Hessian (autodiff) of the log-likelihood at
            ``x`` for the noise-free data ``A(x) s`` (fgbuster's semi-analytic formula).
        s: Separated components ``(..., n_comp)``.
        chi: Prewhitened residuals ``L^T (d - A s)`` with ``invN = L L^T``, ``(..., n_freq)``.
        chi_dB: Tuple, per parameter, of the residuals projected on the prewhitened
            ``A_dB s`` direction (normalised), shape ``d.shape[:-1]``; 0 where undefined.
        invAtNA: Covariance of ``s``, ``(..., n_comp, n_comp)``.
        fun: Minus the log-likelihood at ``x`` (summed over patches).
        nit, nfev, success, status, message: From the optimiser.
        result: :class:`RESULTS` item (``singular`` when ``A^T N^-1 A`` is singular at ``x``);
            ``None`` for a fixed mixing matrix.
        minimize: The :class:`MinimizeResult` of the fit (``None`` for a fixed mixing matrix).
    """

    s: jax.Array
    chi: jax.Array
    invAtNA: jax.Array
    x: Any = None
    Sigma: Any = None
    Sigma_inv: Any = None
    chi_dB: Any = None
    fun: Any = None
    nit: int = 0
    nfev: int = 0
    success: bool = True
    status: int = 0
    message: str = ""
    result: Any = None
    minimize: Any = None
