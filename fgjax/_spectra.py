r"""CMB angular power spectra shipped with fgjax (Planck 2018 best fit, computed with CAMB).

The data file ``fgjax/data/cmb_spectra_planck2018.npz`` is written by
``tools/make_cmb_spectra.py`` (CAMB is a development tool, not a runtime dependency). It holds
float32 values (about 100 kB); :func:`cmb_spectra` returns them as float64 NumPy arrays.

Layout returned by :func:`cmb_spectra` (a :class:`CMBSpectra` named tuple):

* ``ell``: ``int64`` array ``(n_ell,)`` equal to ``0, 1, ..., lmax`` (``lmax <= 4000``).
* ``lensed_scalar``: ``float64`` array ``(4, n_ell)``, rows ``TT, EE, BB, TE``: lensed scalar
  spectra ($r = 0$), $C_\ell$ in $\mu K_{CMB}^2$ (not $D_\ell$). Monopole and dipole
  (``ell = 0, 1``) are zero.
* ``tensor``: same layout, unlensed tensor spectra for $r = 1$ ($n_t = -r/8$, pivot
  0.05 Mpc$^{-1}$); scale linearly by $r$. Zero above ``ell = 2000`` (:data:`TENSOR_LMAX`),
  where r = 1 tensor BB is below 0.2 % of its peak and CAMB's tensor TT is unreliable.

Rows are in CAMB's (and healpy's ``synfast(new=True)``) order ``TT, EE, BB, TE``; index them
with :data:`SPECTRA_ROWS`. The BB input of an r-forecast is, e.g.,
``r * s.tensor[2] + A_lens * s.lensed_scalar[2]``.

Cosmology: Planck 2018 TT,TE,EE+lowE+lensing (arXiv:1807.06209): $H_0 = 67.36$,
$\Omega_b h^2 = 0.02237$, $\Omega_c h^2 = 0.1200$, $\tau = 0.0544$,
$\ln(10^{10} A_s) = 3.044$, $n_s = 0.9649$, $\sum m_\nu = 0.06$ eV.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import NamedTuple

import numpy as np

SPECTRA_FILE = "cmb_spectra_planck2018.npz"
"""Name of the data file in ``fgjax/data``."""

SPECTRA_ROWS: dict[str, int] = {"TT": 0, "EE": 1, "BB": 2, "TE": 3}
"""Row index of each spectrum in ``lensed_scalar`` and ``tensor``."""

LMAX_AVAILABLE = 4000
"""Largest multipole stored in the data file."""

TENSOR_LMAX = 2000
"""Largest multipole with non-zero tensor spectra (computed by CAMB up to there)."""


class CMBSpectra(NamedTuple):
    r"""CMB power spectra in $\mu K_{CMB}^2$ (see the module docstring for the layout).

    Attributes:
        ell: Multipoles ``0 .. lmax``, shape ``(n_ell,)``.
        lensed_scalar: Lensed scalar $C_\ell$, shape ``(4, n_ell)``, rows TT, EE, BB, TE.
        tensor: Unlensed tensor $C_\ell$ for $r = 1$, shape ``(4, n_ell)``, same rows.
    """

    ell: np.ndarray
    lensed_scalar: np.ndarray
    tensor: np.ndarray

    def total(self, r: float = 0.0) -> np.ndarray:
        """Lensed scalar plus ``r`` times the tensor spectra, shape ``(4, n_ell)``."""
        return self.lensed_scalar + float(r) * self.tensor


def _load() -> dict[str, np.ndarray]:
    ref = resources.files("fgjax").joinpath("data", SPECTRA_FILE)
    with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def cmb_spectra(lmax: int | None = None) -> CMBSpectra:
    r"""Planck 2018 best-fit CMB spectra: lensed scalar and $r = 1$ tensor, $C_\ell$ in uK_CMB^2.

    Args:
        lmax: Largest multipole returned (``0 <= lmax <= 4000``); ``None`` for all (4000).

    Returns:
        A :class:`CMBSpectra` ``(ell, lensed_scalar, tensor)``; ``ell = arange(lmax + 1)``,
        spectra of shape ``(4, lmax + 1)`` with rows TT, EE, BB, TE, float64 NumPy arrays
        (fresh copies: editing them does not change later calls).

    Raises:
        ValueError: `lmax` is not an integer in ``[0, 4000]``.

    Examples:
        >>> s = cmb_spectra(lmax=100)
        >>> s.ell.shape, s.lensed_scalar.shape, s.tensor.shape
        ((101,), (4, 101), (4, 101))
    """
    if lmax is None:
        lmax = LMAX_AVAILABLE
    if isinstance(lmax, bool) or not isinstance(lmax, (int, np.integer)):
        raise ValueError(f"`lmax` must be an integer in [0, {LMAX_AVAILABLE}], got {lmax!r}.")
    if not 0 <= lmax <= LMAX_AVAILABLE:
        raise ValueError(f"`lmax` must be in [0, {LMAX_AVAILABLE}], got {lmax}.")
    data = _load()
    n = int(lmax) + 1
    return CMBSpectra(
        ell=np.arange(n, dtype=np.int64),
        lensed_scalar=np.array(data["lensed_scalar"][:, :n], dtype=np.float64),
        tensor=np.array(data["tensor"][:, :n], dtype=np.float64),
    )


def cmb_spectra_metadata() -> dict:
    """Provenance of the data file: CAMB version, cosmological parameters, units, rows."""
    return json.loads(str(_load()["meta_json"]))
