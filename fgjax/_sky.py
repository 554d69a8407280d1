r"""An offline sky: PySM-like CMB, dust, synchrotron and free-free from seeded templates.

pysm3's preset skies read template files downloaded at run time. :func:`get_sky` builds
instead, from a seed and in memory, smooth synthetic templates with realistic angular power,
amplitudes and polarisation fractions, and scales them with the same laws and conventions as
PySM's presets:

========  ===================================================================================
``c1``    CMB: a Gaussian realisation of our lensed Planck 2018 spectra (uK_CMB, no lensing
          operation on the map, no pixel window), seed 1111 by default.
``d0``    Dust: modified black body, ``mbb_index`` 1.54, ``mbb_temperature`` 20 K; templates in
          uK_RJ at ``freq_ref_I`` = 545 GHz (I) and ``freq_ref_P`` = 353 GHz (Q, U).
``d1``    As ``d0`` with spatially varying ``mbb_index`` (about 1.54 +- 0.05) and
          ``mbb_temperature`` (about 20 +- 1.5 K) maps.
``s0``    Synchrotron: power law, ``pl_index`` -3; templates in uK_RJ at 0.408 GHz (I) and
          23 GHz (Q, U).
``s1``    As ``s0`` with a varying ``pl_index`` map (about -3 +- 0.08).
``f1``    Free-free: power law, ``pl_index`` -2.14, intensity only, template at 30 GHz.
========  ===================================================================================

Emission laws in uK_RJ (as PySM): dust $I(\nu) = I_{ref} (\nu/\nu_0)^{\beta + 1}
(e^{x_0} - 1)/(e^x - 1)$ with $x = h\nu/kT$; power laws $I(\nu) = I_{ref}
(\nu/\nu_0)^{\beta}$; CMB $K_{CMB} \to K_{RJ}$. Maps are in Galactic coordinates, RING
ordering. Templates use one seed per component and draw their spherical harmonics in order of
increasing multipole, so skies at different nside share their large scales.

When pysm3 is importable, :func:`get_sky` returns a genuine ``pysm3.Sky`` made of pysm3's own
``CMBMap``, ``ModifiedBlackBody`` and ``PowerLaw`` built from these in-memory templates (no
download), so code that reads or edits ``sky.components[i].mbb_index`` and friends works.
Otherwise it returns an :class:`OfflineSky` whose components carry the same attribute names
(plain NumPy arrays and floats in place of astropy Quantities).

Host-side code (NumPy and healpy); nothing here is traced by JAX. No state, no caches, no files.
"""

from __future__ import annotations

import os
from typing import Any

import healpy as hp
import numpy as np

from ._constants import H_OVER_K, TCMB
from ._spectra import cmb_spectra

SKY_PRESETS: tuple[str, ...] = ("c1", "d0", "d1", "s0", "s1", "f1")
"""Two-character component codes accepted in a :func:`get_sky` tag."""

DEFAULT_SEEDS: dict[str, int] = {"c": 1111, "d": 20190, "s": 20191, "f": 20192}
"""Default seed of each component family (CMB, dust, synchrotron, free-free)."""

NO_PYSM3_ENV = "FGJAX_NO_PYSM3"
"""Environment variable: when set to a non-empty value other than ``0``, act as if pysm3
were not installed (:func:`get_sky` returns an :class:`OfflineSky`)."""

# Reference frequencies (GHz) of the PySM presets.
DUST_FREQ_REF_I, DUST_FREQ_REF_P = 545.0, 353.0
SYNC_FREQ_REF_I, SYNC_FREQ_REF_P = 0.408, 23.0
FF_FREQ_REF_I = 30.0
D0_MBB_INDEX, D0_MBB_TEMPERATURE = 1.54, 20.0
S0_PL_INDEX = -3.0
F1_PL_INDEX = -2.14


# ----------------------------------------------------------------------------- unit helpers


def rj_to_cmb(nu) -> np.ndarray:
    """K_RJ -> K_CMB factor at `nu` (GHz), float64 NumPy (same formula as ``K_RJ_to_K_CMB``)."""
    x = H_OVER_K * np.asarray(nu, dtype=np.float64) / TCMB
    return np.expm1(x) ** 2 / (np.exp(x) * x**2)


def mbb_scaling(nu, nu_ref, mbb_index, mbb_temperature) -> np.ndarray:
    r"""Modified-black-body ratio $I(\nu)/I(\nu_{ref})$ in K_RJ; broadcasts its arguments."""
    nu, nu_ref = float(nu), float(nu_ref)
    beta = np.asarray(mbb_index, dtype=np.float64)
    temp = np.asarray(mbb_temperature, dtype=np.float64)
    return (nu / nu_ref) ** (beta + 1.0) * (
        np.expm1(H_OVER_K * nu_ref / temp) / np.expm1(H_OVER_K * nu / temp)
    )


def power_law_scaling(nu, nu_ref, pl_index) -> np.ndarray:
    r"""Power-law ratio $(\nu/\nu_{ref})^{\beta}$ in K_RJ; broadcasts `pl_index`."""
    return (float(nu) / float(nu_ref)) ** np.asarray(pl_index, dtype=np.float64)


# ----------------------------------------------------------------------------- validation


def check_nside(nside: Any, name: str = "nside") -> int:
    """Return `nside` as an int; raise ``ValueError`` unless it is a power of 2 (HEALPix)."""
    if isinstance(nside, bool) or not isinstance(nside, (int, np.integer)):
        raise ValueError(f"`{name}` must be a positive power of 2 (HEALPix nside); got {nside!r}.")
    nside = int(nside)
    if nside < 1 or nside & (nside - 1) or nside > 2**29:
        raise ValueError(f"`{name}` must be a positive power of 2 (HEALPix nside); got {nside}.")
    return nside


def nside_from_npix(n_pix: Any, name: str = "map") -> int:
    """HEALPix nside of a map with `n_pix` pixels; ``ValueError`` unless ``n_pix = 12 nside^2``.

    Examples:
        >>> nside_from_npix(768)
        8
    """
    n = int(n_pix) if isinstance(n_pix, (int, np.integer)) and not isinstance(n_pix, bool) else -1
    nside = int(round(np.sqrt(max(n, 0) / 12)))
    if n < 12 or 12 * nside**2 != n or nside & (nside - 1):
        raise ValueError(
            f"`{name}` must have 12 * nside**2 pixels with nside a power of 2 (HEALPix); "
            f"got {n_pix} pixels."
        )
    return nside


def parse_sky_tag(tag: Any) -> tuple[str, ...]:
    """Split a sky tag such as ``'c1d0s0'`` into its two-character codes.

    Raises:
        ValueError: `tag` is not a string of concatenated codes from :data:`SKY_PRESETS`, or
            names one component family twice (e.g. ``'d0d1'``).
    """
    choices = ", ".join(SKY_PRESETS)
    if not isinstance(tag, str) or not tag or len(tag) % 2:
        raise ValueError(
            f"`tag` must concatenate two-character presets among {choices} "
            f"(e.g. 'c1d0s0'); got {tag!r}."
        )
    codes = tuple(tag[i : i + 2] for i in range(0, len(tag), 2))
    for code in codes:
        if code not in SKY_PRESETS:
            raise ValueError(f"Unknown sky preset {code!r} in `tag` {tag!r}; available: {choices}.")
    families = [c[0] for c in codes]
    if len(set(families)) != len(families):
        raise ValueError(f"`tag` {tag!r} names a component family twice.")
    return codes


# ----------------------------------------------------------------------------- random fields


def _ell_major_indices(lmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ell, m, healpy index) of every alm, in order of increasing ell then m."""
    n = (lmax + 1) * (lmax + 2) // 2
    ell = np.repeat(np.arange(lmax + 1), np.arange(1, lmax + 2))
    m = np.arange(n) - ell * (ell + 1) // 2
    return ell, m, hp.Alm.getidx(lmax, ell, m)


def _unit_alms(rng: np.random.Generator, lmax: int, n_field: int) -> np.ndarray:
    """Unit-variance complex Gaussian alms, shape ``(n_field, n_alm)`` in healpy order.

    Numbers are drawn in order of increasing ell, so the alms up to some ell do not depend
    on `lmax` (maps at different nside share their large scales). ``m = 0`` alms are real.
    """
    ell, m, idx = _ell_major_indices(lmax)
    z = rng.standard_normal((ell.size, n_field, 2))
    real = np.where(m[:, None] == 0, z[..., 0], z[..., 0] / np.sqrt(2.0))
    imag = np.where(m[:, None] == 0, 0.0, z[..., 1] / np.sqrt(2.0))
    out = np.zeros((n_field, ell.size), dtype=np.complex128)
    out[:, idx] = (real + 1j * imag).T
    return out


def _power_law_cl(lmax: int, slope: float, ell_min: int = 2) -> np.ndarray:
    ell = np.arange(lmax + 1, dtype=np.float64)
    cl = np.zeros(lmax + 1)
    cl[ell_min:] = (ell[ell_min:] / 10.0) ** slope
    return cl


def gaussian_field(nside: int, seed: int, field_id: int, slope: float) -> np.ndarray:
    r"""Zero-mean, unit-variance (in expectation) Gaussian map with $C_\ell \propto \ell^{slope}$.

    Multipoles 2 to ``3 nside - 1``; the variance is normalised with the spectrum summed to
    ``lmax = 3 * 512 - 1`` so the normalisation does not depend on `nside`.
    """
    lmax = 3 * nside - 1
    cl = _power_law_cl(lmax, slope)
    ref = _power_law_cl(3 * 512 - 1, slope)
    ell = np.arange(ref.size)
    cl = cl / (np.sum((2 * ell + 1) * ref) / (4 * np.pi))
    alm = _unit_alms(np.random.default_rng([seed, field_id]), lmax, 1)[0]
    alm = hp.almxfl(alm, np.sqrt(cl))
    return hp.alm2map(alm, nside, lmax=lmax)


def cmb_map(nside: int, seed: int = DEFAULT_SEEDS["c"]) -> np.ndarray:
    """IQU map of the CMB, uK_CMB, shape ``(3, n_pix)``: a realisation of the lensed spectra.

    T and E are correlated through TE; multipoles 2 to ``3 nside - 1``; no pixel window.
    """
    lmax = 3 * nside - 1
    spectra = cmb_spectra(lmax).lensed_scalar  # (4, lmax + 1): TT, EE, BB, TE
    tt, ee, bb, te = spectra
    z = _unit_alms(np.random.default_rng([seed, 0]), lmax, 3)
    safe_tt = np.where(tt > 0, tt, 1.0)
    a_tt = np.sqrt(np.clip(tt, 0.0, None))
    a_te = np.where(tt > 0, te / np.sqrt(safe_tt), 0.0)
    a_ee = np.sqrt(np.clip(ee - np.where(tt > 0, te**2 / safe_tt, 0.0), 0.0, None))
    alm_t = hp.almxfl(z[0], a_tt)
    alm_e = hp.almxfl(z[0], a_te) + hp.almxfl(z[1], a_ee)
    alm_b = hp.almxfl(z[2], np.sqrt(np.clip(bb, 0.0, None)))
    return np.asarray(hp.alm2map([alm_t, alm_e, alm_b], nside, lmax=lmax, pol=True))


def _galactic_profile(nside: int, width: float, power: float) -> np.ndarray:
    r"""$(|\sin b| + w)^{-p}$ normalised to 1 at the poles: brighter towards the plane."""
    z = hp.pix2vec(nside, np.arange(hp.nside2npix(nside)))[2]  # sin(b), Galactic
    return ((1.0 + width) / (np.abs(z) + width)) ** power


def _polarised(nside, seed, intensity, frac, frac_spread, angle_spread):
    """Q, U from an intensity map, a log-normal polarisation fraction and a smooth angle."""
    p = np.clip(frac * np.exp(frac_spread * gaussian_field(nside, seed, 10, -2.4)), 0.0, 0.3)
    psi = angle_spread * gaussian_field(nside, seed, 11, -2.2)  # radians
    amplitude = p * intensity
    return amplitude * np.cos(2 * psi), amplitude * np.sin(2 * psi)


def dust_templates(nside: int, seed: int = DEFAULT_SEEDS["d"], varying: bool = False) -> dict:
    r"""Dust templates (uK_RJ): I at 545 GHz, Q and U at 353 GHz, and the MBB parameters.

    Intensity about 20 uK_RJ at 545 GHz (0.2 MJy/sr) at the Galactic poles rising to about
    1000 uK_RJ in the plane, $C_\ell \propto \ell^{-2.6}$ fluctuations; polarisation
    fraction about 8 % with a smooth angle field. ``varying=True`` adds d1-like
    ``mbb_index`` and ``mbb_temperature`` maps.
    """
    i545 = (
        20.0
        * np.exp(0.5 * gaussian_field(nside, seed, 1, -2.6))
        * _galactic_profile(nside, 0.03, 1.0)
    )
    i353 = i545 * mbb_scaling(DUST_FREQ_REF_P, DUST_FREQ_REF_I, D0_MBB_INDEX, D0_MBB_TEMPERATURE)
    q353, u353 = _polarised(nside, seed, i353, 0.08, 0.4, 0.8)
    out = {
        "I_ref": i545, "Q_ref": q353, "U_ref": u353,
        "freq_ref_I": DUST_FREQ_REF_I, "freq_ref_P": DUST_FREQ_REF_P,
        "mbb_index": D0_MBB_INDEX, "mbb_temperature": D0_MBB_TEMPERATURE,
    }  # fmt: skip
    if varying:
        out["mbb_index"] = D0_MBB_INDEX + 0.05 * gaussian_field(nside, seed, 20, -3.0)
        out["mbb_temperature"] = D0_MBB_TEMPERATURE + 1.5 * gaussian_field(nside, seed, 21, -3.0)
    return out


def synchrotron_templates(
    nside: int, seed: int = DEFAULT_SEEDS["s"], varying: bool = False
) -> dict:
    r"""Synchrotron templates (uK_RJ): I at 0.408 GHz, Q and U at 23 GHz, and the index.

    Intensity about 15 K_RJ at 408 MHz at the poles rising to about 80 K in the plane
    ($C_\ell \propto \ell^{-2.8}$ fluctuations); polarisation fraction about 12 %, so
    that $|P|$ is of order 10 uK_RJ at 23 GHz at high latitude. ``varying=True`` adds an
    s1-like ``pl_index`` map.
    """
    i408 = (
        1.5e7
        * np.exp(0.4 * gaussian_field(nside, seed, 1, -2.8))
        * _galactic_profile(nside, 0.1, 0.75)
    )
    i23 = i408 * power_law_scaling(SYNC_FREQ_REF_P, SYNC_FREQ_REF_I, S0_PL_INDEX)
    q23, u23 = _polarised(nside, seed, i23, 0.12, 0.4, 0.8)
    out = {
        "I_ref": i408, "Q_ref": q23, "U_ref": u23,
        "freq_ref_I": SYNC_FREQ_REF_I, "freq_ref_P": SYNC_FREQ_REF_P, "pl_index": S0_PL_INDEX,
    }  # fmt: skip
    if varying:
        out["pl_index"] = S0_PL_INDEX + 0.08 * gaussian_field(nside, seed, 20, -3.0)
    return out


def freefree_templates(nside: int, seed: int = DEFAULT_SEEDS["f"]) -> dict:
    """Free-free template (uK_RJ): I at 30 GHz, a few uK at the poles; intensity only."""
    i30 = (
        3.0
        * np.exp(0.8 * gaussian_field(nside, seed, 1, -2.8))
        * _galactic_profile(nside, 0.02, 1.2)
    )
    return {"I_ref": i30, "freq_ref_I": FF_FREQ_REF_I, "pl_index": F1_PL_INDEX}


# ----------------------------------------------------------------------------- light sky


class CMBMapComponent:
    """CMB component of an :class:`OfflineSky`; ``map`` is IQU in uK_CMB, ``(3, n_pix)``."""

    def __init__(self, nside: int, map: np.ndarray):  # noqa: A002 (pysm3's attribute name)
        self.nside = nside
        self.map = map

    def get_emission(self, freq) -> np.ndarray:
        """IQU emission in uK_RJ at `freq` (GHz), ``(3, n_pix)``."""
        return np.asarray(self.map) / rj_to_cmb(_ghz(freq))


class ModifiedBlackBodyComponent:
    """Dust component of an :class:`OfflineSky`, with pysm3's attribute names.

    Attributes: ``I_ref``, ``Q_ref``, ``U_ref`` (uK_RJ maps), ``freq_ref_I``, ``freq_ref_P``
    (GHz), ``mbb_index`` (float or map), ``mbb_temperature`` (K, float or map), ``nside``,
    ``has_polarization``. They are read at each evaluation: edits in place take effect.
    """

    def __init__(self, nside, I_ref, Q_ref, U_ref, freq_ref_I, freq_ref_P, mbb_index,
                 mbb_temperature):  # fmt: skip
        self.nside = nside
        self.I_ref, self.Q_ref, self.U_ref = I_ref, Q_ref, U_ref
        self.freq_ref_I, self.freq_ref_P = freq_ref_I, freq_ref_P
        self.mbb_index, self.mbb_temperature = mbb_index, mbb_temperature
        self.has_polarization = True

    def get_emission(self, freq) -> np.ndarray:
        """IQU emission in uK_RJ at `freq` (GHz), ``(3, n_pix)``."""
        nu = _ghz(freq)
        s_i = mbb_scaling(nu, self.freq_ref_I, self.mbb_index, self.mbb_temperature)
        s_p = mbb_scaling(nu, self.freq_ref_P, self.mbb_index, self.mbb_temperature)
        return np.stack([self.I_ref * s_i, self.Q_ref * s_p, self.U_ref * s_p])


class PowerLawComponent:
    """Synchrotron or free-free component of an :class:`OfflineSky` (pysm3's names).

    Attributes: ``I_ref``, ``Q_ref``, ``U_ref`` (uK_RJ maps; ``None`` without polarisation),
    ``freq_ref_I``, ``freq_ref_P`` (GHz; ``None`` without polarisation), ``pl_index``
    (float or map), ``nside``, ``has_polarization``.
    """

    def __init__(self, nside, I_ref, freq_ref_I, pl_index, Q_ref=None, U_ref=None,
                 freq_ref_P=None):  # fmt: skip
        self.nside = nside
        self.I_ref, self.Q_ref, self.U_ref = I_ref, Q_ref, U_ref
        self.freq_ref_I, self.freq_ref_P = freq_ref_I, freq_ref_P
        self.pl_index = pl_index
        self.has_polarization = Q_ref is not None

    def get_emission(self, freq) -> np.ndarray:
        """IQU emission in uK_RJ at `freq` (GHz), ``(3, n_pix)``."""
        nu = _ghz(freq)
        i = self.I_ref * power_law_scaling(nu, self.freq_ref_I, self.pl_index)
        if not self.has_polarization:
            zero = np.zeros_like(i)
            return np.stack([i, zero, zero])
        s_p = power_law_scaling(nu, self.freq_ref_P, self.pl_index)
        return np.stack([i, self.Q_ref * s_p, self.U_ref * s_p])


class OfflineSky:
    """A sky made of the components above; the pysm3-free counterpart of ``pysm3.Sky``.

    Attributes:
        nside: HEALPix resolution.
        components: List of components (``CMBMapComponent``, ``ModifiedBlackBodyComponent``,
            ``PowerLawComponent``), in the order of the tag.
        output_unit: Always ``'uK_RJ'``, the unit of :meth:`get_emission`.
    """

    output_unit = "uK_RJ"

    def __init__(self, nside: int, components: list):
        self.nside = check_nside(nside)
        self.components = list(components)
        for k, comp in enumerate(self.components):
            if not hasattr(comp, "get_emission"):
                raise TypeError(f"`components[{k}]` must have a get_emission method.")
            for attr in ("map", "I_ref", "Q_ref", "U_ref"):
                m = getattr(comp, attr, None)
                if m is None:
                    continue
                if nside_from_npix(np.shape(m)[-1], f"components[{k}].{attr}") != self.nside:
                    raise ValueError(
                        f"`components[{k}].{attr}` has {np.shape(m)[-1]} pixels, not "
                        f"{12 * self.nside**2} (nside {self.nside})."
                    )

    def get_emission(self, freq) -> np.ndarray:
        """Total IQU emission in uK_RJ at one frequency `freq` (GHz), ``(3, n_pix)``."""
        return sum(c.get_emission(freq) for c in self.components)

    def __repr__(self) -> str:
        names = ", ".join(type(c).__name__ for c in self.components)
        return f"OfflineSky(nside={self.nside}, components=[{names}])"


def _ghz(freq) -> float:
    if hasattr(freq, "unit"):  # an astropy Quantity, as pysm3 users pass
        freq = freq.to_value("GHz")
    if np.ndim(freq) != 0:
        raise ValueError(f"`freq` must be one frequency in GHz; got shape {np.shape(freq)}.")
    freq = float(freq)
    if not (np.isfinite(freq) and freq > 0):
        raise ValueError(f"`freq` must be positive and finite (GHz); got {freq}.")
    return freq


# ----------------------------------------------------------------------------- get_sky


def _import_pysm3():
    """pysm3, or ``None`` when it is missing or disabled by ``FGJAX_NO_PYSM3``."""
    if os.environ.get(NO_PYSM3_ENV, "") not in ("", "0"):
        return None
    try:
        import pysm3
    except ImportError:
        return None
    return pysm3


def sky_templates(nside: int, tag: str = "c1d0s0", seed: int | None = None) -> list[dict]:
    """The templates and parameters of each component of `tag`, as plain dicts.

    Each dict has ``kind`` (``'cmb'``, ``'mbb'`` or ``'power_law'``), ``code`` (e.g.
    ``'d1'``) and the attributes of the corresponding component. `seed` ``None`` uses
    :data:`DEFAULT_SEEDS`; an integer derives every component's seed from it.
    """
    nside = check_nside(nside)
    codes = parse_sky_tag(tag)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise ValueError(f"`seed` must be an integer or None; got {seed!r}.")

    def seed_of(family):
        return DEFAULT_SEEDS[family] if seed is None else int(seed) * 10 + "cdsf".index(family)

    out = []
    for code in codes:
        family, varying = code[0], code[1] == "1"
        if family == "c":
            out.append({"kind": "cmb", "code": code, "map": cmb_map(nside, seed_of("c"))})
        elif family == "d":
            out.append(
                {"kind": "mbb", "code": code, **dust_templates(nside, seed_of("d"), varying)}
            )
        elif family == "s":
            t = synchrotron_templates(nside, seed_of("s"), varying)
            out.append({"kind": "power_law", "code": code, **t})
        else:
            out.append(
                {"kind": "power_law", "code": code, **freefree_templates(nside, seed_of("f"))}
            )
    return out


def _light_component(nside: int, t: dict):
    t = {k: v for k, v in t.items() if k not in ("kind", "code")}
    if "map" in t:
        return CMBMapComponent(nside, t["map"])
    if "mbb_index" in t:
        return ModifiedBlackBodyComponent(nside, **t)
    return PowerLawComponent(nside, **t)


def _pysm3_component(pysm3, nside: int, t: dict):
    u = pysm3.units

    def quantity(a, unit):
        return u.Quantity(np.array(a, dtype=np.float64), unit)

    if t["kind"] == "cmb":
        return pysm3.CMBMap(nside, map_IQU=quantity(t["map"], "uK_CMB"))
    maps = {k: quantity(t[k], "uK_RJ") for k in ("I_ref", "Q_ref", "U_ref") if k in t}
    if t["kind"] == "mbb":
        return pysm3.ModifiedBlackBody(
            map_I=maps["I_ref"], map_Q=maps["Q_ref"], map_U=maps["U_ref"],
            freq_ref_I=f"{t['freq_ref_I']} GHz", freq_ref_P=f"{t['freq_ref_P']} GHz",
            map_mbb_index=np.array(t["mbb_index"], dtype=np.float64),
            map_mbb_temperature=np.array(t["mbb_temperature"], dtype=np.float64),
            unit_mbb_temperature="K", nside=nside,
        )  # fmt: skip
    polarised = "Q_ref" in t
    return pysm3.PowerLaw(
        map_I=maps["I_ref"], freq_ref_I=f"{t['freq_ref_I']} GHz",
        map_pl_index=np.array(t["pl_index"], dtype=np.float64), nside=nside,
        has_polarization=polarised,
        map_Q=maps.get("Q_ref"), map_U=maps.get("U_ref"),
        freq_ref_P=f"{t['freq_ref_P']} GHz" if polarised else None,
    )  # fmt: skip


def get_sky(nside: int, tag: str = "c1d0s0", *, seed: int | None = None, backend: str = "auto"):
    """An offline PySM-like sky: CMB, dust, synchrotron, free-free from seeded templates.

    Args:
        nside: HEALPix resolution (a power of 2).
        tag: Concatenated presets among ``c1, d0, d1, s0, s1, f1`` (see the module
            docstring), e.g. ``'c1d0s0'``, ``'c1d1s1'``, ``'d0s0'``, ``'c1d0s0f1'``.
        seed: ``None`` for the default sky (the same every call); an integer for another
            realisation of every template.
        backend: ``'auto'`` (a ``pysm3.Sky`` when pysm3 is importable, else an
            :class:`OfflineSky`), ``'pysm3'`` or ``'offline'``.

    Returns:
        A ``pysm3.Sky`` (output unit uK_RJ) built from pysm3's ``CMBMap``,
        ``ModifiedBlackBody`` and ``PowerLaw`` with in-memory templates, or an
        :class:`OfflineSky` with the same component attributes.

    Raises:
        ValueError: `nside` not a power of 2; unknown preset in `tag`; bad `seed` or `backend`.
        ImportError: ``backend='pysm3'`` and pysm3 is not available.

    Examples:
        >>> sky = get_sky(8, "c1d0s0", backend="offline")
        >>> [type(c).__name__ for c in sky.components]
        ['CMBMapComponent', 'ModifiedBlackBodyComponent', 'PowerLawComponent']
        >>> float(sky.components[1].mbb_index)
        1.54
    """
    if backend not in ("auto", "pysm3", "offline"):
        raise ValueError(f"`backend` must be 'auto', 'pysm3' or 'offline'; got {backend!r}.")
    templates = sky_templates(nside, tag, seed)
    nside = int(nside)
    pysm3 = None if backend == "offline" else _import_pysm3()
    if backend == "pysm3" and pysm3 is None:
        raise ImportError("`backend='pysm3'` needs pysm3 (pip install pysm3).")
    if pysm3 is None:
        return OfflineSky(nside, [_light_component(nside, t) for t in templates])
    components = [_pysm3_component(pysm3, nside, t) for t in templates]
    return pysm3.Sky(nside=nside, component_objects=components, output_unit="uK_RJ")


# ----------------------------------------------------------------------------- evaluation


def _quantity_value(x, unit: str):
    return x.to_value(unit) if hasattr(x, "unit") else x


def _pysm3_native_emission(comp, nu: float) -> np.ndarray | None:
    """Emission (uK_RJ) of pysm3's plain CMBMap, ModifiedBlackBody and PowerLaw, or ``None``.

    Computed here with NumPy from the component's current attributes (same laws as pysm3,
    without its numba compilation); ``None`` for any other class (evaluated by pysm3 itself).
    """
    name = type(comp).__module__ + "." + type(comp).__qualname__
    if name == "pysm3.models.cmb.CMBMap":
        m = _quantity_value(comp.map, "uK_CMB")
        return np.asarray(m) / rj_to_cmb(nu)
    if name == "pysm3.models.dust.ModifiedBlackBody":
        maps = (_quantity_value(getattr(comp, k), "uK_RJ") for k in ("I_ref", "Q_ref", "U_ref"))
        light = ModifiedBlackBodyComponent(
            comp.nside, *maps,
            _quantity_value(comp.freq_ref_I, "GHz"), _quantity_value(comp.freq_ref_P, "GHz"),
            _quantity_value(comp.mbb_index, ""), _quantity_value(comp.mbb_temperature, "K"),
        )  # fmt: skip
        return light.get_emission(nu)
    if name == "pysm3.models.power_law.PowerLaw":
        polarised = bool(getattr(comp, "has_polarization", True))
        light = PowerLawComponent(
            comp.nside, _quantity_value(comp.I_ref, "uK_RJ"),
            _quantity_value(comp.freq_ref_I, "GHz"), _quantity_value(comp.pl_index, ""),
            Q_ref=_quantity_value(comp.Q_ref, "uK_RJ") if polarised else None,
            U_ref=_quantity_value(comp.U_ref, "uK_RJ") if polarised else None,
            freq_ref_P=_quantity_value(comp.freq_ref_P, "GHz") if polarised else None,
        )  # fmt: skip
        return light.get_emission(nu)
    return None


def sky_emission(sky, nu: float, *, native: bool = True) -> np.ndarray:
    """Total IQU emission of `sky` at one frequency `nu` (GHz), in uK_RJ, ``(3, n_pix)``.

    Args:
        sky: An :class:`OfflineSky`, or any ``pysm3.Sky`` (the user's own included).
        nu: Frequency in GHz (delta bandpass).
        native: For a ``pysm3.Sky``, evaluate pysm3's plain ``CMBMap``,
            ``ModifiedBlackBody`` and ``PowerLaw`` components with this module's NumPy
            formulas (identical laws, no numba compilation); other components always go
            through their own ``get_emission``. ``False`` uses pysm3 for everything.

    Raises:
        TypeError: `sky` is neither an :class:`OfflineSky` nor a pysm3 sky.
    """
    nu = _ghz(nu)
    if isinstance(sky, OfflineSky):
        return np.asarray(sky.get_emission(nu), dtype=np.float64)
    pysm3 = _import_pysm3_unchecked()  # a user's own pysm3.Sky works even if disabled
    if pysm3 is None or not isinstance(sky, pysm3.Sky):
        raise TypeError(
            f"`sky` must be a tag, an fgjax OfflineSky or a pysm3.Sky; got {type(sky).__name__}."
        )
    u = pysm3.units

    total = np.zeros((3, hp.nside2npix(sky.nside)))
    for comp in sky.components:
        em = _pysm3_native_emission(comp, nu) if native else None
        if em is None:
            q = comp.get_emission(nu * u.GHz)
            em = q.to_value(u.uK_RJ, equivalencies=u.cmb_equivalencies(nu * u.GHz))
        em = np.atleast_2d(np.asarray(em, dtype=np.float64))  # (3, n_pix) or (1, n_pix)
        if em.shape[0] == 3:
            total += em
        else:  # an intensity-only component
            total[0] += em[0]
    return total


def _import_pysm3_unchecked():
    """pysm3 regardless of ``FGJAX_NO_PYSM3``: a user's own pysm3.Sky is still evaluated."""
    try:
        import pysm3
    except ImportError:
        return None
    return pysm3
