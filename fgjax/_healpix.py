"""HEALPix plumbing for the recipes: masks, patch ids, layouts, prewhitening. Host only.

Everything here runs on NumPy and healpy, before or after a compiled program, and is never
traced. Conventions shared by the recipes:

* fgbuster's map layout is ``(n_freq, [n_stokes,] n_pix)`` (pixel axis last); the algebra
  works on the transposed layout ``(n_pix, [n_stokes,] n_freq)`` (``data.T``).
* A pixel is *bad* when any of its entries (any frequency, any Stokes parameter) equals
  ``healpy.UNSEEN`` or is masked in a ``numpy.ma.MaskedArray``.
* Patch (cluster) ids are non-negative integers, one per pixel; a patch with no good pixel
  is *empty* and its outputs are ``UNSEEN``.
"""

from __future__ import annotations

import logging
import types
from collections.abc import Sequence

import healpy as hp
import numpy as np

from ._bandpass import as_frequencies
from ._constants import UNSEEN
from ._instruments import standardize_instrument

__all__ = [
    "bad_pixels",
    "check_nside_of_npix",
    "check_patch_ids",
    "cluster_ids_from_nside",
    "fill_unseen",
    "from_pixel_major",
    "instrument_frequency_count",
    "prewhiten_factors",
    "to_pixel_major",
]

logger = logging.getLogger(__name__)


# -- instrument -------------------------------------------------------------------------------
def standardize(instrument) -> types.SimpleNamespace:
    """Read an instrument through :func:`fgjax._instruments.standardize_instrument` (dicts,
    DataFrame-likes, objects with attributes, database tags; ragged bandpasses allowed).

    Returns:
        A namespace with attributes ``frequency``, ``depth_i``, ``depth_p`` and ``fwhm``;
        the optional ones are ``None`` when absent.

    Raises:
        ValueError: `instrument` has no ``frequency``, or a depth is not positive and finite.
    """
    std = standardize_instrument(instrument)
    return types.SimpleNamespace(
        frequency=std.frequency, depth_i=std.depth_i, depth_p=std.depth_p, fwhm=std.fwhm
    )


def instrument_frequency_count(instrument: types.SimpleNamespace) -> int:
    """Number of channels of a standardized instrument (bands or delta frequencies)."""
    return as_frequencies(instrument.frequency).n_freq


# -- maps and masks ---------------------------------------------------------------------------
def as_maps(data, name: str = "data", min_ndim: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Split maps into a plain float array and the bad-pixel mask.

    Args:
        data: Array or MaskedArray of shape ``(n_freq, [n_stokes,] n_pix)``.
        name: Argument name used in error messages.
        min_ndim: Smallest accepted number of dimensions.

    Returns:
        ``(array, bad)``: ``array`` a float ndarray with the same shape (masked entries left
        as they are in the data buffer), ``bad`` of shape ``(n_pix,)``.

    Raises:
        ValueError: the number of dimensions is not in ``[min_ndim, 3]``.
    """
    if not min_ndim <= np.ndim(data) <= 3:
        raise ValueError(
            f"`{name}` must have shape (n_freq, [n_stokes,] n_pix); got shape {np.shape(data)}."
        )
    bad = bad_pixels(data)
    array = np.asarray(hp.pixelfunc.ma_to_array(data) if np.ma.isMaskedArray(data) else data)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(float)
    return array, bad


def bad_pixels(maps) -> np.ndarray:
    """Pixels where any entry is ``UNSEEN`` or masked; shape ``(n_pix,)``, True = bad."""
    if np.ma.isMaskedArray(maps):
        return np.any(np.ma.getmaskarray(maps), axis=tuple(range(np.ndim(maps) - 1)))
    maps = np.asarray(maps)
    bad = np.zeros(maps.shape[-1:], dtype=bool)
    for index in np.ndindex(maps.shape[:-1]):  # one map at a time: no mask of the data's size
        bad |= maps[index] == UNSEEN
    return bad


def check_nside_of_npix(n_pix: int, name: str = "data") -> int:
    """The nside of a HEALPix map with ``n_pix`` pixels (a power of two).

    Raises:
        ValueError: ``n_pix`` is not ``12 * nside**2`` with nside a power of two.
    """
    nside = int(round(np.sqrt(n_pix / 12.0))) if n_pix > 0 else 0
    if nside < 1 or 12 * nside**2 != n_pix or nside & (nside - 1):
        raise ValueError(
            f"`{name}` must be HEALPix maps: the pixel axis (last) must have 12 * nside**2 "
            f"entries with nside a power of 2; got {n_pix}."
        )
    return nside


def check_nside(nside, nside_map: int, name: str = "nside") -> int:
    """Validate a patch nside: 0 (one patch) or a power of two not above ``nside_map``."""
    if isinstance(nside, (bool, np.bool_)) or not np.issubdtype(type(nside), np.integer):
        if not (isinstance(nside, float) and nside.is_integer()):
            raise TypeError(f"`{name}` must be an integer; got {nside!r}.")
    nside = int(nside)
    if nside < 0 or (nside and nside & (nside - 1)):
        raise ValueError(f"`{name}` must be 0 or a power of 2; got {nside}.")
    if nside > nside_map:
        raise ValueError(
            f"`{name}` ({nside}) must not be larger than the nside of the maps ({nside_map})."
        )
    return nside


def cluster_ids_from_nside(nside: int, nside_map: int) -> np.ndarray:
    """Index of the nside-``nside`` pixel containing each pixel of an nside-``nside_map`` map.

    RING ordering in and out, identical to ``healpy.ud_grade(np.arange(12 * nside**2),
    nside_map)``; ``nside = 0`` means a single patch (all zeros).
    """
    n_pix = 12 * nside_map**2
    if nside == 0:
        return np.zeros(n_pix, dtype=np.int64)
    ratio2 = (nside_map // nside) ** 2
    nest = hp.ring2nest(nside_map, np.arange(n_pix))
    return np.asarray(hp.nest2ring(nside, nest // ratio2), dtype=np.int64)


def check_patch_ids(patch_ids, n_pix: int, name: str = "patch_ids") -> np.ndarray:
    """Validate a map of patch ids: integers, shape ``(n_pix,)``, non-negative.

    Raises:
        ValueError / TypeError: naming `name` and what was expected.
    """
    ids = np.asarray(patch_ids)
    if ids.shape != (n_pix,):
        raise ValueError(
            f"`{name}` must have shape (n_pix,) = ({n_pix},), one id per pixel; got {ids.shape}."
        )
    if ids.dtype.kind not in "ui":
        if ids.dtype.kind == "f" and np.all(ids == np.round(ids)):
            ids = ids.astype(np.int64)
        else:
            raise TypeError(f"`{name}` must hold integers; got dtype {ids.dtype}.")
    if ids.size and ids.min() < 0:
        raise ValueError(f"`{name}` must be non-negative; got minimum {ids.min()}.")
    return ids.astype(np.int64, copy=False)  # read only: the caller's array when int64


def relabel(ids: np.ndarray, n_patch: int | None = None) -> tuple[np.ndarray, int]:
    """``(ids, n_patch)`` with ``n_patch = max(ids) + 1`` unless given."""
    n = int(ids.max()) + 1 if ids.size else 0
    return ids, n if n_patch is None else max(n, n_patch)


def empty_patches(ids: np.ndarray, bad: np.ndarray, n_patch: int) -> np.ndarray:
    """True for the patches with no good pixel; shape ``(n_patch,)``."""
    return np.bincount(ids[~bad], minlength=n_patch)[:n_patch] == 0


# -- layouts ----------------------------------------------------------------------------------
def to_pixel_major(maps: np.ndarray) -> np.ndarray:
    """``(n_freq, [n_stokes,] n_pix)`` -> ``(n_pix, [n_stokes,] n_freq)`` (``maps.T``)."""
    return np.ascontiguousarray(np.asarray(maps).T)


def from_pixel_major(values) -> np.ndarray:
    """``(n_pix, [n_stokes,] n_x)`` -> ``(n_x, [n_stokes,] n_pix)``: fgbuster's ``.T``."""
    return np.asarray(values).T


def fill_unseen(values: np.ndarray, bad: np.ndarray, axis: int = -1) -> np.ndarray:
    """A float copy of ``values`` with ``UNSEEN`` where ``bad`` along ``axis``."""
    out = np.array(values, dtype=float)
    index = [slice(None)] * out.ndim
    index[axis] = bad
    out[tuple(index)] = UNSEEN
    return out


# -- prewhitening -----------------------------------------------------------------------------
def prewhiten_factors(instrument, data_shape: Sequence[int], nside: int) -> np.ndarray | None:
    """Per-channel factors that make white noise of unit variance per pixel, as fgbuster.

    The noise rms of a pixel of a map at ``nside`` is ``depth / resol`` (depth in
    uK_CMB arcmin, resol the pixel side in arcmin), so the factor is ``resol / depth``;
    ``nside = 0`` uses the nside-1 resolution times ``sqrt(12)``. Temperature uses
    ``depth_i``, polarization ``depth_p``.

    Args:
        instrument: Standardized instrument (see :func:`standardize`).
        data_shape: ``(n_freq, n_pix)``, ``(n_freq, n_stokes, n_pix)`` with ``n_stokes`` in
            1, 2, 3.
        nside: nside of the maps.

    Returns:
        ``None`` when the instrument has no depth for these maps (no prewhitening);
        otherwise shape ``(n_freq,)`` for T maps, ``(n_stokes, n_freq)`` for QU or IQU.
    """
    depth_i, depth_p = instrument.depth_i, instrument.depth_p
    if len(data_shape) < 3 or data_shape[1] == 1:
        depth = depth_i
    elif data_shape[1] == 2:
        depth = None if depth_p is None else np.stack((depth_p, depth_p))
    elif data_shape[1] == 3:
        depth = (
            None if depth_i is None or depth_p is None else np.stack((depth_i, depth_p, depth_p))
        )
    else:
        raise ValueError(f"`data` must have 1, 2 or 3 Stokes parameters; got shape {data_shape}.")
    if depth is None:
        return None
    if depth.shape[-1] != data_shape[0]:
        raise ValueError(
            f"`instrument` depths have {depth.shape[-1]} channels but `data` has "
            f"{data_shape[0]} frequency maps."
        )
    if nside:
        return hp.nside2resol(nside, arcmin=True) / depth
    return 12**0.5 * hp.nside2resol(1, arcmin=True) / depth
