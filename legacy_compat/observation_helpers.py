"""Drop-in for ``fgbuster.observation_helpers``: instruments, skies, noise and observations.

Same names and signatures as fgbuster 2.0 (plus a `seed` keyword for reproducible noise),
NumPy out. Differences, on purpose:

* ``get_instrument`` returns an :class:`InstrumentTable` (a dict with attribute access:
  ``instr.frequency`` and ``instr['frequency']`` both work, as with fgbuster's pandas
  DataFrame) read from fgjax's own database, not cmbdb; pandas is not needed.
* ``get_sky`` builds fgjax's offline sky from seeded templates (no download); with pysm3
  installed it is a genuine ``pysm3.Sky``.
* ``standardize_instrument`` accepts bandpasses of different lengths (fgbuster raises).
"""

from __future__ import annotations

import types

import numpy as np
from scipy import constants as _sc

from fgjax._instruments import INSTRUMENT_KEYS
from fgjax._instruments import get_instrument as _get_instrument
from fgjax._instruments import standardize_instrument as _standardize_instrument
from fgjax._observation import get_noise_realization as _get_noise_realization
from fgjax._observation import get_observation as _get_observation
from fgjax._sky import get_sky as _get_sky
from fgjax._sky import rj_to_cmb

from ._convert import x64

__all__ = [
    "get_sky",
    "get_instrument",
    "get_observation",
    "get_noise_realization",
    "standardize_instrument",
]

INSTRUMENT_STD_ATTR = list(INSTRUMENT_KEYS)


class InstrumentTable(dict):
    """Instrument columns as a dict whose keys are also attributes (mutable, NumPy arrays)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        self[name] = value

    def __delattr__(self, name):
        try:
            del self[name]
        except KeyError:
            raise AttributeError(name) from None


def get_sky(nside, tag="c1d0s0"):
    """Drop-in for ``fgbuster.get_sky``: an offline PySM-like sky; see ``fgjax.get_sky``."""
    return _get_sky(nside, tag)


def get_instrument(tag=""):
    """Drop-in for ``fgbuster.get_instrument``: an :class:`InstrumentTable` of float64 arrays.

    Unknown tags raise ``ValueError`` listing the available ones.
    """
    instr = _get_instrument(tag)
    return InstrumentTable({k: np.array(v) for k, v in instr.to_dict().items()})


@x64
def get_observation(instrument="", sky=None, noise=False, nside=None, unit="uK_CMB", seed=None):
    """Drop-in for ``fgbuster.get_observation``, shape ``(n_freq, 3, n_pix)``.

    `seed` makes the noise reproducible. See ``fgjax.get_observation``.
    """
    return _get_observation(instrument, sky, noise=noise, nside=nside, unit=unit, seed=seed)


@x64
def get_noise_realization(nside, instrument, unit="uK_CMB", seed=None):
    """Drop-in for ``fgbuster.get_noise_realization``, shape ``(n_freq, 3, n_pix)``."""
    return _get_noise_realization(nside, instrument, unit=unit, seed=seed)


def standardize_instrument(instrument):
    """Drop-in for ``fgbuster.standardize_instrument``: a ``SimpleNamespace``.

    It holds the instrument's ``frequency``, ``depth_i``, ``depth_p``, ``fwhm`` that are
    present (float arrays; bandpasses as a list of ``(frequencies, weights)`` pairs).
    """
    std = _standardize_instrument(instrument)
    out = types.SimpleNamespace()
    for key in std.keys():
        value = getattr(std, key)
        if key == "frequency" and std.has_bandpasses:
            value = [(np.array(f), np.array(w)) for f, w in value]
        else:
            value = np.array(value)
        setattr(out, key, value)
    return out


def _rj2cmb(freqs):
    """K_RJ -> K_CMB factor at `freqs` (GHz)."""
    return rj_to_cmb(freqs)


def _cmb2rj(freqs):
    """K_CMB -> K_RJ factor at `freqs` (GHz)."""
    return 1.0 / rj_to_cmb(freqs)


def _rj2jysr(freqs):
    r"""K_RJ -> Jy/sr factor at `freqs` (GHz): $2 k \nu^2 / c^2$, times 1e26."""
    nu = np.asarray(freqs, dtype=np.float64) * 1e9
    return 2.0 * _sc.k * nu**2 / _sc.c**2 * 1e26


def _jysr2rj(freqs):
    """Jy/sr -> K_RJ factor at `freqs` (GHz)."""
    return 1.0 / _rj2jysr(freqs)


def _cmb2jysr(freqs):
    """K_CMB -> Jy/sr factor at `freqs` (GHz)."""
    return _cmb2rj(freqs) * _rj2jysr(freqs)


def _jysr2cmb(freqs):
    """Jy/sr -> K_CMB factor at `freqs` (GHz)."""
    return 1.0 / _cmb2jysr(freqs)
