r"""Simulated observations: white noise from instrument depths, and a sky seen by an instrument.

Frequency maps are HEALPix (RING) NumPy arrays of shape ``(n_freq, 3, n_pix)`` (I, Q, U), as
fgbuster's ``get_observation``. Noise is white and isotropic: in each pixel the standard
deviation is the channel depth (``depth_i`` for I, ``depth_p`` for Q and U; uK_CMB arcmin)
divided by the pixel size $\sqrt{4\pi / n_{pix}}$ in arcmin, converted to the requested unit
at the channel frequency. Unlike fgbuster's, the noise is reproducible with `seed`.

Host-side code (NumPy, healpy); the maps are what the separation recipes take as data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._constants import parse_units
from ._instruments import Instrument, effective_frequency, standardize_instrument
from ._sky import check_nside, get_sky, rj_to_cmb, sky_emission

__all__ = ["get_noise_realization", "get_observation", "pixel_size_arcmin", "unit_factor"]


def pixel_size_arcmin(nside: int) -> float:
    r"""Side of a HEALPix pixel, $\sqrt{4\pi / n_{pix}}$, in arcmin (healpy's ``nside2resol``)."""
    nside = check_nside(nside)
    return float(np.degrees(np.sqrt(4.0 * np.pi / (12 * nside**2))) * 60.0)


def unit_factor(nu, unit: str, from_unit: str = "uK_RJ") -> np.ndarray:
    """Factor converting `from_unit` to `unit` at frequencies `nu` (GHz); float64 NumPy.

    Both units among ``K_CMB, mK_CMB, uK_CMB, K_RJ, mK_RJ, uK_RJ``; the RJ <-> CMB factor is
    the one of :func:`fgjax.K_RJ_to_K_CMB` (SciPy constants, T_CMB = 2.7255 K).

    Raises:
        ValueError: an unknown unit (naming the argument).
    """
    base_to, scale_to = _parse_unit(unit, "unit")
    base_from, scale_from = _parse_unit(from_unit, "from_unit")
    factor = np.full(np.shape(nu), scale_to / scale_from)
    if base_from == "K_RJ" and base_to == "K_CMB":
        factor = factor * rj_to_cmb(nu)
    elif base_from == "K_CMB" and base_to == "K_RJ":
        factor = factor / rj_to_cmb(nu)
    return factor


def _parse_unit(unit: Any, name: str) -> tuple[str, float]:
    try:
        return parse_units(unit)
    except ValueError as err:
        raise ValueError(str(err).replace("`units`", f"`{name}`", 1)) from None


def _depths(instrument: Instrument) -> tuple[np.ndarray, np.ndarray]:
    depth_i, depth_p = instrument.depth_i, instrument.depth_p
    if depth_i is None and depth_p is None:
        raise ValueError("`instrument` needs `depth_i` and/or `depth_p` (uK_CMB arcmin) for noise.")
    # One missing depth follows from the other with the usual sqrt(2) (fgbuster's convention).
    depth_i = depth_p / np.sqrt(2.0) if depth_i is None else depth_i
    depth_p = depth_i * np.sqrt(2.0) if depth_p is None else depth_p
    return depth_i, depth_p


def get_noise_realization(
    nside: int, instrument: Any, unit: str = "uK_CMB", seed: Any = None
) -> np.ndarray:
    r"""White-noise maps of an instrument, ``(n_freq, 3, n_pix)``, in `unit`.

    Args:
        nside: HEALPix resolution (a power of 2).
        instrument: A tag or anything :func:`standardize_instrument` accepts, with
            ``depth_i`` and/or ``depth_p`` in uK_CMB arcmin (one missing depth is taken as
            the other times or over $\sqrt 2$).
        unit: Output unit, one of ``K_CMB, mK_CMB, uK_CMB, K_RJ, mK_RJ, uK_RJ``. RJ units
            convert at the band centre (or a bandpass' weighted mean frequency).
        seed: ``None`` (fresh randomness), an integer, a ``numpy.random.SeedSequence`` or
            ``numpy.random.Generator``; the same integer gives the same maps.

    Returns:
        float64 array ``(n_freq, 3, 12 nside^2)``: I with standard deviation
        ``depth_i / pixel_size_arcmin(nside)``, Q and U with ``depth_p / ...``.

    Raises:
        ValueError: bad `nside` or `unit`; no depths; depths not positive and finite.

    Examples:
        >>> get_noise_realization(1, "test", seed=0).shape
        (10, 3, 12)
    """
    nside = check_nside(nside)
    instrument = standardize_instrument(instrument)
    _parse_unit(unit, "unit")
    depth_i, depth_p = _depths(instrument)
    nu = effective_frequency(instrument)
    sigma = np.stack([depth_i, depth_p, depth_p], axis=-1)  # (n_freq, 3), uK_CMB arcmin
    sigma = sigma * (unit_factor(nu, unit, "uK_CMB") / pixel_size_arcmin(nside))[:, None]
    rng = np.random.default_rng(seed)
    n_pix = 12 * nside**2
    return rng.standard_normal((instrument.n_freq, 3, n_pix)) * sigma[:, :, None]


def get_observation(
    instrument: Any,
    sky: Any = None,
    noise: bool = False,
    nside: int | None = None,
    unit: str = "uK_CMB",
    seed: Any = None,
) -> np.ndarray:
    """Frequency maps of a sky seen by an instrument, ``(n_freq, 3, n_pix)``, in `unit`.

    Delta frequencies (band centres), no beam: the sky's emission at each channel frequency,
    converted from uK_RJ to `unit`, plus white noise if asked for.

    Args:
        instrument: A tag of :func:`get_instrument` or anything :func:`standardize_instrument`
            accepts, with band centres (not bandpasses) in GHz; depths needed with `noise`.
        sky: A tag of :func:`fgjax._sky.get_sky` (e.g. ``'c1d0s0'``), an
            :class:`~fgjax._sky.OfflineSky`, any ``pysm3.Sky`` (the user's own included,
            evaluated at its current component attributes), or ``None`` for noise only.
        noise: Add a white-noise realisation (:func:`get_noise_realization`).
        nside: Output resolution; required when `sky` is a tag or ``None``, otherwise it
            must equal ``sky.nside`` if given.
        unit: Output unit, one of ``K_CMB, mK_CMB, uK_CMB, K_RJ, mK_RJ, uK_RJ``.
        seed: Seed of the noise (see :func:`get_noise_realization`); ignored without noise.

    Returns:
        float64 array ``(n_freq, 3, 12 nside^2)``.

    Raises:
        ValueError: bandpasses; a missing or inconsistent `nside`; bad `unit`; bad depths.
        TypeError: `sky` is not a tag, an OfflineSky or a pysm3.Sky.

    Examples:
        >>> get_observation("test", "d0s0", nside=2).shape
        (10, 3, 48)
    """
    instrument = standardize_instrument(instrument)
    if instrument.has_bandpasses:
        raise ValueError(
            "`instrument.frequency` must be band centres: get_observation evaluates the sky "
            "at delta frequencies, not over bandpasses."
        )
    _parse_unit(unit, "unit")
    if sky is not None and not isinstance(sky, str) and not hasattr(sky, "nside"):
        raise TypeError(
            f"`sky` must be a tag, an fgjax OfflineSky or a pysm3.Sky; got {type(sky).__name__}."
        )
    if sky is None or isinstance(sky, str):
        if nside is None:
            raise ValueError("`nside` is required when `sky` is a tag or None.")
        nside = check_nside(nside)
    else:
        if nside is not None and check_nside(nside) != sky.nside:
            raise ValueError(f"`nside` ({nside}) differs from the sky's nside ({sky.nside}).")
        nside = int(sky.nside)
    n_pix = 12 * nside**2
    nu = np.asarray(instrument.frequency)
    if noise:
        out = get_noise_realization(nside, instrument, unit, seed)
    else:
        out = np.zeros((instrument.n_freq, 3, n_pix))
    if sky is None or sky == "":
        return out
    if isinstance(sky, str):
        sky = get_sky(nside, sky)
    factors = unit_factor(nu, unit, "uK_RJ")
    for k in range(instrument.n_freq):  # one evaluation per channel (a handful)
        out[k] += sky_emission(sky, float(nu[k])) * factors[k]
    return out
