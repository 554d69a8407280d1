"""Frequencies and bandpasses as one linear operator.

An SED is evaluated either at delta frequencies (``nu``: an array in GHz) or integrated over
bandpasses (``nu``: a list of ``(frequencies, weights)`` pairs). fgbuster integrates each band
with the trapezoid rule over ``frequencies * 1e9`` (no normalisation, no unit conversion).
The trapezoid rule is linear in the integrand, so all bands together are

    integral_b = sum_k T[b, k] f(nu_k),

over the concatenation ``nu_k`` of every band's samples. We build ``T`` once on the host; an
evaluation is then one vectorised SED call plus one small matrix product, the same for
bands of different lengths (ragged), and derivatives pass through it unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Frequencies(NamedTuple):
    """Where to evaluate an SED.

    Attributes:
        nu: Sample frequencies in GHz, shape ``(n_sample,)``.
        integration: ``None`` for delta frequencies (``n_freq == n_sample``), else the
            trapezoid operator of shape ``(n_band, n_sample)``.
        scalar: ``True`` when the caller passed a single frequency (the last axis is dropped).
    """

    nu: jax.Array | np.ndarray
    integration: np.ndarray | None = None
    scalar: bool = False

    @property
    def n_freq(self) -> int:
        """Number of output channels (bands or delta frequencies)."""
        return len(self.nu) if self.integration is None else self.integration.shape[0]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _is_bandpass_list(nu) -> bool:
    """A list/tuple whose every element is a band: 1-d frequencies (unit weights), a
    ``(frequencies, weights)`` pair, or a ``(2, n)`` array stacking the two."""
    if not isinstance(nu, (list, tuple)) or len(nu) == 0:
        return False
    return all(_is_band(b) for b in nu)


def _is_band(b) -> bool:
    if isinstance(b, (list, tuple)) and len(b) == 2 and all(np.ndim(a) == 1 for a in b):
        return True
    return np.ndim(b) == 1 and np.size(b) > 1 or (np.ndim(b) == 2 and np.shape(b)[0] == 2)


def _band_arrays(band) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(band, (list, tuple)) and len(band) == 2 and np.ndim(band[0]) == 1:
        return np.asarray(band[0], dtype=np.float64), np.asarray(band[1], dtype=np.float64)
    band = np.asarray(band, dtype=np.float64)
    if band.ndim == 1:  # frequencies only: unit transmission
        return band, np.ones_like(band)
    return band[0], band[1]


def trapezoid_operator(bands) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated samples and the ``(n_band, n_sample)`` trapezoid-rule operator.

    Args:
        bands: Sequence of bands, each ``(frequencies, weights)``, a ``(2, n)`` array, or bare
            frequencies (unit weights); frequencies in GHz, integrated in the given order, as
            ``numpy.trapezoid`` does.

    Raises:
        ValueError: a band has fewer than two samples, weights whose length differs from
            its frequencies, or non-finite / non-positive frequencies.
    """
    nus, rows = [], []
    sizes = []
    for k, band in enumerate(bands):
        f, w = _band_arrays(band)
        if f.ndim != 1 or w.ndim != 1:
            raise ValueError(f"bandpass {k}: frequencies and weights must be 1-d arrays.")
        if f.shape != w.shape:
            raise ValueError(
                f"bandpass {k}: {w.size} weights for {f.size} frequencies; "
                "each band needs one weight per frequency."
            )
        if f.size < 2:
            raise ValueError(f"bandpass {k}: needs at least two frequency samples, got {f.size}.")
        if not (np.all(np.isfinite(f)) and np.all(f > 0)):
            raise ValueError(f"bandpass {k}: frequencies must be finite and positive (GHz).")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"bandpass {k}: weights must be finite.")
        x = f * 1e9
        dx = np.diff(x)
        coef = np.zeros_like(x)
        coef[:-1] += dx / 2
        coef[1:] += dx / 2
        nus.append(f)
        rows.append(coef * w)
        sizes.append(f.size)
    nu_all = np.concatenate(nus)
    op = np.zeros((len(rows), nu_all.size))
    start = 0
    for b, (row, size) in enumerate(zip(rows, sizes, strict=True)):
        op[b, start : start + size] = row
        start += size
    return nu_all, op


def as_frequencies(nu) -> Frequencies:
    """Normalise ``nu`` (delta frequencies or a bandpass list) to :class:`Frequencies`.

    Raises:
        ValueError: frequencies that are not positive and finite, or a malformed bandpass.
    """
    if isinstance(nu, Frequencies):
        return nu
    if _is_bandpass_list(nu):
        nu_all, op = trapezoid_operator(nu)
        return Frequencies(nu_all, op)
    if isinstance(nu, (list, tuple)) and any(np.ndim(b) > 0 for b in nu):
        raise ValueError(
            "`nu` must be an array of frequencies (GHz) or a list of (frequencies, weights) "
            "pairs, one per band."
        )
    scalar = np.ndim(nu) == 0
    if isinstance(nu, jax.Array):
        arr = jnp.atleast_1d(nu)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            arr = arr.astype(jnp.result_type(float))  # integers -> the default float
    else:  # host data stays NumPy (float64 unless given as float32); JAX casts where used
        arr = np.atleast_1d(np.asarray(nu))
        if arr.dtype != np.float32:
            arr = arr.astype(np.float64)
    if arr.ndim != 1:
        raise ValueError(f"`nu` must have shape (n_freq,), got {arr.shape}.")
    if _is_concrete(arr):
        a = np.asarray(arr)
        if not (np.all(np.isfinite(a)) and np.all(a > 0)):
            raise ValueError(f"`nu` must be finite and positive (GHz), got {a}.")
    return Frequencies(arr, None, scalar)


def integrate(values, freqs: Frequencies):
    """Apply the bandpass operator to SED samples ``values`` (last axis = samples)."""
    if freqs.integration is None:
        out = values
    else:
        op = jnp.asarray(freqs.integration, dtype=values.dtype)
        out = jnp.einsum("...k,bk->...b", values, op, precision=jax.lax.Precision.HIGHEST)
    if freqs.scalar:
        out = out[..., 0]
    return out
