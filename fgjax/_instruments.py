"""Instrument descriptions: the shipped database and the standard instrument object.

An instrument is a set of channels with a frequency (GHz, or a bandpass), a white-noise map
depth in temperature (``depth_i``) and in polarisation (``depth_p``), both in uK_CMB arcmin,
and a beam FWHM in arcmin. :func:`get_instrument` reads the public configurations shipped in
``fgjax/data/instruments.yaml`` (each entry cites its source); :func:`standardize_instrument`
turns what users pass (dicts, pandas DataFrames, objects with attributes, tags) into one
:class:`Instrument`.

Host-side code: NumPy arrays, no JAX; nothing here is traced.
"""

from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Any

import numpy as np

INSTRUMENT_FILE = "instruments.yaml"
"""Name of the instrument database in ``fgjax/data``."""

INSTRUMENT_KEYS: tuple[str, ...] = ("frequency", "depth_i", "depth_p", "fwhm")
"""Channel properties an instrument may carry (``frequency`` is required)."""

Bandpass = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Instrument:
    """An instrument: per-channel frequency, noise depths and beam. Immutable.

    Read a property as an attribute (``instr.depth_p``) or an item (``instr["depth_p"]``), as
    with fgbuster's pandas DataFrame; ``len(instr)`` is the number of channels.

    Attributes:
        frequency: Band centres in GHz, float64 array ``(n_freq,)``; or, for bandpasses, a
            tuple of ``(frequencies_GHz, weights)`` pairs of 1-d arrays, one per channel
            (their lengths may differ).
        depth_i: Temperature white-noise depth in uK_CMB arcmin, ``(n_freq,)``, or ``None``.
        depth_p: Polarisation (Q and U) white-noise depth in uK_CMB arcmin, or ``None``.
        fwhm: Gaussian beam FWHM in arcmin, ``(n_freq,)``, or ``None``.
        name: Tag of a database entry, else ``None``.
        reference: Public source of the numbers (database entries), else ``None``.
    """

    frequency: np.ndarray | tuple[Bandpass, ...]
    depth_i: np.ndarray | None = None
    depth_p: np.ndarray | None = None
    fwhm: np.ndarray | None = None
    name: str | None = None
    reference: str | None = None

    @property
    def n_freq(self) -> int:
        """Number of channels."""
        return len(self.frequency)

    @property
    def has_bandpasses(self) -> bool:
        """``True`` when `frequency` holds ``(frequencies, weights)`` pairs."""
        return isinstance(self.frequency, tuple)

    def keys(self) -> tuple[str, ...]:
        """Channel properties present (not ``None``), in the order of :data:`INSTRUMENT_KEYS`."""
        return tuple(k for k in INSTRUMENT_KEYS if getattr(self, k) is not None)

    def __getitem__(self, key: str):
        if key not in INSTRUMENT_KEYS:
            raise KeyError(f"{key!r}: an Instrument has the keys {INSTRUMENT_KEYS}.")
        value = getattr(self, key)
        if value is None:
            raise KeyError(f"{key!r} is not set for this instrument.")
        return value

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return self.n_freq

    def to_dict(self) -> dict[str, Any]:
        """The channel properties present, as a dict (arrays are shared, read-only)."""
        return {k: getattr(self, k) for k in self.keys()}

    def __repr__(self) -> str:
        head = (
            f"Instrument({self.name!r}, n_freq={self.n_freq}"
            if self.name
            else (f"Instrument(n_freq={self.n_freq}")
        )
        if self.has_bandpasses:
            return head + ", bandpasses)"
        return (
            head
            + ", "
            + ", ".join(
                f"{k}={np.array2string(getattr(self, k), precision=4, separator=', ')}"
                for k in self.keys()
            )
            + ")"
        )


def _read_database() -> dict[str, dict[str, Any]]:
    import yaml  # runtime dependency; imported here to keep `import fgjax` light

    text = resources.files("fgjax").joinpath("data", INSTRUMENT_FILE).read_text()
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def available_instruments() -> tuple[str, ...]:
    """Tags of the instruments in the shipped database."""
    return tuple(_read_database())


def _resolve_tag(tag: str, database: dict[str, dict[str, Any]]) -> str | None:
    for name, entry in database.items():
        names = [name, *entry.get("aliases", [])]
        if tag in names or tag.lower() in (n.lower() for n in names):
            return name
    return None


def get_instrument(tag: str) -> Instrument:
    """Instrument from the shipped database (public band centres, depths and beams).

    Args:
        tag: Name of an entry (case-insensitive; aliases such as ``'litebird'`` or ``'SO'``
            work), e.g. ``'LiteBIRD'``, ``'Planck'``, ``'Planck_LFI'``, ``'Planck_HFI'``,
            ``'SO_SAT'``, ``'CMB-S4_SAT'``, ``'PICO'``, ``'test'``. Several tags separated
            by spaces concatenate their channels, as fgbuster does.

    Returns:
        An :class:`Instrument` with `frequency` (GHz), `depth_i`, `depth_p` (uK_CMB arcmin),
        `fwhm` (arcmin), `name` and `reference` (the public source).

    Raises:
        ValueError: `tag` is not a string or names no entry; the message lists the tags.

    Examples:
        >>> get_instrument("LiteBIRD").frequency[:3]
        array([40., 50., 60.])
    """
    database = _read_database()
    choices = ", ".join(database)
    if not isinstance(tag, str) or not tag.split():
        raise ValueError(f"`tag` must be an instrument name, one of: {choices}; got {tag!r}.")
    names = []
    for part in tag.split():
        name = _resolve_tag(part, database)
        if name is None:
            raise ValueError(f"Unknown instrument `tag` {part!r}; available: {choices}.")
        names.append(name)
    entries = [database[n] for n in names]
    columns = {
        k: np.concatenate([np.asarray(e[k], dtype=np.float64) for e in entries])
        for k in INSTRUMENT_KEYS
    }
    return standardize_instrument(
        Instrument(
            name=" ".join(names),
            reference="; ".join(e["reference"] for e in entries),
            **columns,
        )
    )


def _lookup(instrument: Any, key: str):
    """``instrument.key``, else ``instrument[key]``, else ``None`` (fgbuster's order)."""
    try:
        return getattr(instrument, key)
    except AttributeError:
        pass
    try:
        return instrument[key]
    except (TypeError, KeyError, IndexError):
        return None


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)  # a private copy
    a.setflags(write=False)
    return a


def _as_items(value: Any) -> list | None:
    """The channels of a sequence (list, tuple, array, pandas Series), else ``None``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        return None
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return None
    if hasattr(value, "to_numpy") and hasattr(value, "index"):  # pandas Series
        value = value.to_numpy()
    return list(value)


def _is_scalar(x: Any) -> bool:
    if isinstance(x, (str, bytes)):
        return False
    try:
        return np.ndim(x) == 0
    except ValueError:  # a ragged sequence
        return False


def _standard_frequency(value: Any) -> np.ndarray | tuple[Bandpass, ...]:
    items = _as_items(value)
    if items is None or len(items) == 0:
        raise ValueError(
            "`instrument.frequency` must be a non-empty sequence of frequencies (GHz) or of "
            f"(frequencies, weights) bandpasses; got {value!r}."
        )
    if all(_is_scalar(x) for x in items):
        nu = np.asarray([float(x) for x in items], dtype=np.float64)
        if not (np.all(np.isfinite(nu)) and np.all(nu > 0)):
            raise ValueError(f"`instrument.frequency` must be positive and finite (GHz); got {nu}.")
        return _readonly(nu)
    bands = []
    for k, band in enumerate(items):
        if isinstance(band, np.ndarray) and band.ndim == 2 and band.shape[0] == 2:
            band = (band[0], band[1])
        if _is_scalar(band) or not (
            len(band) == 2 and _as_items(band[0]) is not None and _as_items(band[1]) is not None
        ):
            raise ValueError(
                f"`instrument.frequency[{k}]` must be a (frequencies, weights) pair of 1-d "
                "arrays when the instrument has bandpasses."
            )
        try:
            f, w = (np.asarray(a, dtype=np.float64) for a in band)
        except (TypeError, ValueError) as err:
            raise ValueError(f"`instrument.frequency[{k}]` must hold numbers.") from err
        if f.ndim != 1 or f.shape != w.shape or f.size < 2:
            raise ValueError(
                f"`instrument.frequency[{k}]`: frequencies {f.shape} and weights {w.shape} "
                "must have the same length, at least 2."
            )
        if not (np.all(np.isfinite(f)) and np.all(f > 0) and np.all(np.isfinite(w))):
            raise ValueError(
                f"`instrument.frequency[{k}]`: frequencies must be positive and finite and "
                "weights finite."
            )
        bands.append((_readonly(f), _readonly(w)))
    return tuple(bands)


def _standard_channel_values(key: str, value: Any, n_freq: int) -> np.ndarray | None:
    if value is None:
        return None
    items = _as_items(value)
    try:
        a = np.asarray(value if items is None else items, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`instrument.{key}` must be numbers, one per channel.") from err
    if a.ndim == 0:
        a = np.full(n_freq, float(a))
    if a.shape != (n_freq,):
        raise ValueError(
            f"`instrument.{key}` must have one value per channel ({n_freq}); got shape {a.shape}."
        )
    if not (np.all(np.isfinite(a)) and np.all(a > 0)):
        unit = "arcmin" if key == "fwhm" else "uK_CMB arcmin"
        raise ValueError(f"`instrument.{key}` must be positive and finite ({unit}); got {a}.")
    return _readonly(a)


def standardize_instrument(instrument: Any) -> Instrument:
    """Turn any supported description of an instrument into an :class:`Instrument`.

    Args:
        instrument: A tag of :func:`get_instrument`; an :class:`Instrument`; a dict; a pandas
            DataFrame; or any object with ``frequency`` and optionally ``depth_i``,
            ``depth_p``, ``fwhm`` as attributes or keys (attributes first). ``frequency`` is
            either band centres (GHz) or one ``(frequencies, weights)`` bandpass per channel
            (ragged lengths allowed; also an array of shape ``(n_freq, 2, n_sample)``).
            Depths in uK_CMB arcmin and fwhm in arcmin, one per channel (a scalar is
            broadcast).

    Returns:
        An :class:`Instrument` with float64, read-only arrays; absent properties are ``None``.
        Unlike fgbuster, a missing depth is not inferred here (see
        :func:`fgjax._observation.get_noise_realization`).

    Raises:
        ValueError: no ``frequency``; frequencies not positive and finite; a property with a
            length other than the number of channels; depths or fwhm not positive and finite.

    Examples:
        >>> standardize_instrument({"frequency": [30.0, 150.0], "depth_p": 5.0}).depth_p
        array([5., 5.])
    """
    if isinstance(instrument, str):
        return get_instrument(instrument)
    frequency = _lookup(instrument, "frequency")
    if frequency is None:
        raise ValueError(
            "`instrument` must provide `frequency` (GHz) as an attribute or a key; got an "
            f"object of type {type(instrument).__name__}."
        )
    frequency = _standard_frequency(frequency)
    n_freq = len(frequency)
    values = {
        k: _standard_channel_values(k, _lookup(instrument, k), n_freq) for k in INSTRUMENT_KEYS[1:]
    }
    name = instrument.name if isinstance(instrument, Instrument) else None
    reference = instrument.reference if isinstance(instrument, Instrument) else None
    return Instrument(frequency=frequency, name=name, reference=reference, **values)


def effective_frequency(instrument: Instrument) -> np.ndarray:
    """One frequency per channel, GHz: the band centre, or a bandpass' weighted mean.

    Used only where a single frequency per channel is needed (unit conversion of noise
    depths for bandpass instruments).
    """
    if not instrument.has_bandpasses:
        return np.asarray(instrument.frequency)
    out = []
    for f, w in instrument.frequency:
        norm = np.trapezoid(w, f)
        out.append(np.trapezoid(w * f, f) / norm if norm != 0 else np.mean(f))
    return np.asarray(out, dtype=np.float64)
