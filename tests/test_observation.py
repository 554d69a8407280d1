"""Instruments, white noise and observations (fgjax._instruments, fgjax._observation)."""

import re
import types
from pathlib import Path

import numpy as np
import pytest

from fgjax._instruments import (
    available_instruments,
    get_instrument,
    standardize_instrument,
)
from fgjax._observation import (
    get_noise_realization,
    get_observation,
    pixel_size_arcmin,
    unit_factor,
)
from fgjax._sky import get_sky, rj_to_cmb

GOLDEN = Path(__file__).parent / "golden"
REQUIRED = (
    "LiteBIRD",
    "Planck",
    "Planck_LFI",
    "Planck_HFI",
    "SO_SAT",
    "CMB-S4_SAT",
    "PICO",
    "test",
)


# ----------------------------------------------------------------------------- instruments


@pytest.mark.parametrize("tag", available_instruments())
def test_every_instrument_loads_and_cites_its_source(tag):
    instr = get_instrument(tag)
    assert instr.name == tag
    # A public source: an arXiv identifier, or for `test` the fgbuster repository.
    assert re.search(r"arXiv:\d{4}\.\d{4,5}", instr.reference) or "fgbuster" in instr.reference
    n = instr.n_freq
    assert n >= 3 and len(instr) == n
    for key in ("frequency", "depth_i", "depth_p", "fwhm"):
        values = instr[key]
        assert values.shape == (n,) and values.dtype == np.float64
        assert np.all(np.isfinite(values)) and np.all(values > 0)
    assert np.all(np.diff(instr.frequency) > 0)  # channels sorted by frequency


def test_required_instruments_present():
    assert set(REQUIRED) <= set(available_instruments())


def test_litebird_matches_the_golden_fixture_instrument():
    # The recipe fixtures (real fgbuster runs) used the LiteBIRD PTEP table: same numbers.
    with np.load(GOLDEN / "harmonic_ilc_IQU_fwhm.npz") as z:
        ref = {k: z[f"in__instrument__{k}"] for k in ("frequency", "depth_i", "depth_p", "fwhm")}
    lb = get_instrument("LiteBIRD")
    for key, expected in ref.items():
        np.testing.assert_array_equal(lb[key], expected, err_msg=key)


def test_planck_and_known_numbers():
    planck = get_instrument("Planck")
    np.testing.assert_array_equal(planck.frequency, [28.4, 44.1, 70.4, 100, 143, 217, 353])
    # Planck 2018 I Table 4: 143 GHz, 0.55 uK deg in T and 1.17 uK deg in P.
    assert planck.depth_i[4] == pytest.approx(0.55 * 60)
    assert planck.depth_p[4] == pytest.approx(1.17 * 60)
    lfi, hfi = get_instrument("Planck_LFI"), get_instrument("Planck_HFI")
    np.testing.assert_array_equal(np.r_[lfi.frequency, hfi.frequency], planck.frequency)
    np.testing.assert_array_equal(np.r_[lfi.depth_p, hfi.depth_p], planck.depth_p)
    test = get_instrument("test")  # fgbuster's synthetic instrument
    np.testing.assert_array_equal(test.frequency, np.arange(10.0, 300, 30.0))
    np.testing.assert_allclose(test.depth_p, (np.linspace(20, 40, 10) - 30) ** 2, rtol=1e-15)


def test_tags_aliases_and_concatenation():
    assert get_instrument("litebird").name == "LiteBIRD"
    assert get_instrument("so_sat").name == "SO_SAT"
    both = get_instrument("Planck_LFI SO_SAT")
    assert both.n_freq == 3 + 6
    np.testing.assert_array_equal(both.fwhm[3:], get_instrument("SO_SAT").fwhm)


@pytest.mark.parametrize("tag", ["NotAnExperiment", "", "  ", 3])
def test_unknown_tag_lists_the_available_ones(tag):
    with pytest.raises(ValueError, match="`tag`") as info:
        get_instrument(tag)
    for name in REQUIRED:
        assert name in str(info.value)


def test_instrument_is_immutable():
    lb = get_instrument("LiteBIRD")
    with pytest.raises(AttributeError):
        lb.depth_p = np.ones(15)
    with pytest.raises(ValueError):
        lb.depth_p[0] = 1.0  # read-only array
    with pytest.raises(KeyError):
        lb["beam"]
    assert "fwhm" in lb and lb.keys() == ("frequency", "depth_i", "depth_p", "fwhm")


# ----------------------------------------------------------------------------- standardize


class _FakeSeries:
    """What a pandas column looks like to standardize_instrument."""

    def __init__(self, values):
        self._values = np.asarray(values)
        self.index = np.arange(len(values))

    def to_numpy(self):
        return self._values

    def __len__(self):
        return len(self._values)


def test_standardize_dict_object_and_dataframe_like():
    d = {"frequency": [30, 150], "depth_i": [1.0, 2.0], "depth_p": 3.0}
    a = standardize_instrument(d)
    np.testing.assert_array_equal(a.frequency, [30.0, 150.0])
    np.testing.assert_array_equal(a.depth_p, [3.0, 3.0])  # scalar broadcast
    assert a.fwhm is None and a.keys() == ("frequency", "depth_i", "depth_p")
    b = standardize_instrument(types.SimpleNamespace(**d))
    np.testing.assert_array_equal(b.depth_i, a.depth_i)
    frame = types.SimpleNamespace(frequency=_FakeSeries([30.0, 150.0]), depth_p=_FakeSeries([3, 3]))
    c = standardize_instrument(frame)
    np.testing.assert_array_equal(c.depth_p, [3.0, 3.0])
    assert standardize_instrument(c) is not None
    assert standardize_instrument("test").n_freq == 10
    # The input is copied: later edits of the user's arrays do not leak in.
    freq = np.array([30.0, 150.0])
    e = standardize_instrument({"frequency": freq})
    freq[0] = 1.0
    assert e.frequency[0] == 30.0


def test_standardize_bandpasses_ragged_and_regular():
    ragged = [
        (np.array([20.0, 30.0, 40.0]), np.array([0.5, 1.0, 0.5])),
        ([140.0, 150.0, 155.0, 160.0], [1.0, 1.0, 1.0, 1.0]),
    ]
    a = standardize_instrument({"frequency": ragged, "depth_p": [1.0, 2.0]})
    assert a.has_bandpasses and a.n_freq == 2
    np.testing.assert_array_equal(a.frequency[1][0], [140.0, 150.0, 155.0, 160.0])
    regular = np.stack([np.stack([np.linspace(20, 40, 5) + 100 * k, np.ones(5)]) for k in range(3)])
    b = standardize_instrument({"frequency": regular})  # (n_freq, 2, n_sample)
    assert b.n_freq == 3
    np.testing.assert_array_equal(b.frequency[2][0], np.linspace(220, 240, 5))


@pytest.mark.parametrize(
    ("instrument", "match"),
    [
        ({"depth_p": [1.0]}, "`instrument` must provide `frequency`"),
        ({"frequency": [30.0, -1.0]}, "instrument.frequency"),
        ({"frequency": [30.0, 40.0], "depth_p": [1.0]}, "instrument.depth_p"),
        ({"frequency": [30.0, 40.0], "depth_p": [1.0, 0.0]}, "positive and finite"),
        ({"frequency": [30.0, 40.0], "depth_i": [1.0, np.nan]}, "instrument.depth_i"),
        ({"frequency": [30.0, 40.0], "fwhm": [1.0, np.inf]}, "instrument.fwhm"),
        ({"frequency": [([1.0, 2.0], [1.0])]}, r"instrument.frequency\[0\]"),
        ({"frequency": []}, "instrument.frequency"),
        (5.0, "`instrument` must provide `frequency`"),
    ],
)
def test_standardize_rejects_bad_input(instrument, match):
    with pytest.raises(ValueError, match=match):
        standardize_instrument(instrument)


# ----------------------------------------------------------------------------- noise


def test_pixel_size_matches_healpy():
    import healpy as hp

    for nside in (1, 8, 64, 2048):
        assert pixel_size_arcmin(nside) == pytest.approx(
            hp.nside2resol(nside, arcmin=True), rel=1e-14
        )


def test_noise_rms_matches_depth_over_pixel_size():
    nside = 32
    instr = get_instrument("SO_SAT")
    noise = get_noise_realization(nside, instr, seed=1234)
    n_pix = 12 * nside**2
    assert noise.shape == (6, 3, n_pix) and noise.dtype == np.float64
    expected = np.stack([instr.depth_i, instr.depth_p, instr.depth_p], -1) / pixel_size_arcmin(
        nside
    )
    rms = noise.std(axis=-1)
    # The sample std of N Gaussian numbers has relative error 1/sqrt(2N) (0.6% here): 5 sigma.
    np.testing.assert_allclose(rms, expected, rtol=5 / np.sqrt(2 * n_pix))
    # Means: |mean| < 5 sigma / sqrt(N).
    assert np.all(np.abs(noise.mean(-1)) < 5 * expected / np.sqrt(n_pix))
    # Channels and Stokes parameters are uncorrelated.
    flat = noise.reshape(18, n_pix) / expected.reshape(18, 1)
    corr = np.corrcoef(flat)
    assert np.max(np.abs(corr - np.eye(18))) < 5 / np.sqrt(n_pix)


def test_noise_is_reproducible_with_a_seed():
    a = get_noise_realization(4, "test", seed=7)
    b = get_noise_realization(4, "test", seed=7)
    c = get_noise_realization(4, "test", seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    d = get_noise_realization(4, "test", seed=np.random.default_rng(7))
    np.testing.assert_array_equal(a, d)


def test_noise_units_are_exact_rescalings():
    instr = get_instrument("LiteBIRD")
    uk_cmb = get_noise_realization(4, instr, "uK_CMB", seed=3)
    k_cmb = get_noise_realization(4, instr, "K_CMB", seed=3)
    uk_rj = get_noise_realization(4, instr, "uK_RJ", seed=3)
    np.testing.assert_allclose(k_cmb, uk_cmb * 1e-6, rtol=1e-15)
    expected = uk_cmb / rj_to_cmb(instr.frequency)[:, None, None]
    np.testing.assert_allclose(uk_rj, expected, rtol=1e-14)


def test_missing_depth_is_inferred_with_sqrt2():
    only_p = {"frequency": [30.0, 90.0], "depth_p": [2.0, 4.0]}
    only_i = {"frequency": [30.0, 90.0], "depth_i": [2.0 / np.sqrt(2), 4.0 / np.sqrt(2)]}
    np.testing.assert_allclose(
        get_noise_realization(2, only_p, seed=0),
        get_noise_realization(2, only_i, seed=0),
        rtol=1e-14,
    )
    with pytest.raises(ValueError, match="depth_i"):
        get_noise_realization(2, {"frequency": [30.0]}, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"nside": 3}, ValueError, "`nside`"),
        ({"nside": 0}, ValueError, "`nside`"),
        ({"nside": 4.0}, ValueError, "`nside`"),
        ({"unit": "Jy"}, ValueError, "`unit`"),
        ({"instrument": {"frequency": [30.0], "depth_p": [-1.0]}}, ValueError, "depth_p"),
    ],
)
def test_noise_bad_input(kwargs, error, match):
    args = {"nside": 4, "instrument": "test", "unit": "uK_CMB", **kwargs}
    with pytest.raises(error, match=match):
        get_noise_realization(args["nside"], args["instrument"], args["unit"])


# ----------------------------------------------------------------------------- observation


@pytest.fixture(scope="module")
def offline_sky():
    return get_sky(8, "c1d0s0", backend="offline")


def test_observation_is_sky_plus_seeded_noise(offline_sky):
    instr = get_instrument("LiteBIRD")
    clean = get_observation(instr, offline_sky)
    noisy = get_observation(instr, offline_sky, noise=True, seed=5)
    assert clean.shape == (15, 3, 768) and clean.dtype == np.float64
    np.testing.assert_allclose(noisy - clean, get_noise_realization(8, instr, seed=5), atol=1e-9)
    only_noise = get_observation(instr, None, noise=True, nside=8, seed=5)
    np.testing.assert_array_equal(only_noise, get_noise_realization(8, instr, seed=5))
    np.testing.assert_array_equal(get_observation(instr, None, nside=8), np.zeros((15, 3, 768)))


def test_observation_from_a_tag_equals_the_sky_object(offline_sky):
    by_tag = get_observation("LiteBIRD", "c1d0s0", nside=8)
    np.testing.assert_allclose(by_tag, get_observation("LiteBIRD", offline_sky), rtol=1e-12)


def test_observation_units(offline_sky):
    instr = get_instrument("PICO")
    uk_cmb = get_observation(instr, offline_sky, unit="uK_CMB")
    mk_rj = get_observation(instr, offline_sky, unit="mK_RJ")
    factor = 1e-3 / rj_to_cmb(instr.frequency)
    np.testing.assert_allclose(mk_rj, uk_cmb * factor[:, None, None], rtol=1e-13)
    np.testing.assert_allclose(
        unit_factor(instr.frequency, "uK_CMB", "mK_RJ"), 1 / factor, rtol=1e-14
    )


def test_observation_of_cmb_only_is_flat_in_k_cmb():
    sky = get_sky(4, "c1", backend="offline")
    obs = get_observation("PICO", sky, unit="K_CMB")
    # The CMB is frequency independent in K_CMB: every channel equals the map, in K.
    np.testing.assert_allclose(
        obs, np.broadcast_to(sky.components[0].map * 1e-6, obs.shape), rtol=1e-12
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"sky": "c1d0s0"}, ValueError, "`nside` is required"),
        ({"sky": None}, ValueError, "`nside` is required"),
        ({"sky": "c1d0s0", "nside": 6}, ValueError, "`nside`"),
        ({"sky": "OFFLINE", "nside": 16}, ValueError, "`nside`"),
        ({"sky": "c1x0", "nside": 4}, ValueError, "Unknown sky preset 'x0'"),
        ({"sky": "c1", "nside": 4, "unit": "K"}, ValueError, "`unit`"),
        ({"sky": 3.0, "nside": 4}, TypeError, "`sky`"),
        (
            {"instrument": {"frequency": [([1.0, 2.0], [1.0, 1.0])]}, "sky": "c1", "nside": 4},
            ValueError,
            "bandpasses",
        ),
    ],
)
def test_observation_bad_input(offline_sky, kwargs, error, match):
    args = {"instrument": "test", "sky": None, "nside": None, "unit": "uK_CMB", **kwargs}
    if args["sky"] == "OFFLINE":
        args["sky"] = offline_sky
    with pytest.raises(error, match=match):
        get_observation(args["instrument"], args["sky"], nside=args["nside"], unit=args["unit"])


# ----------------------------------------------------------------------------- legacy


def test_legacy_observation_helpers_match_native(offline_sky):
    from legacy_compat import observation_helpers as oh

    assert set(oh.__all__) >= {
        "get_sky", "get_instrument", "get_observation", "get_noise_realization",
        "standardize_instrument",
    }  # fmt: skip
    instr = oh.get_instrument("LiteBIRD")
    assert isinstance(instr, dict)
    np.testing.assert_array_equal(instr.frequency, instr["frequency"])
    instr.depth_p = instr.depth_p * 2  # mutable, like fgbuster's DataFrame
    np.testing.assert_array_equal(instr["depth_p"], 2 * get_instrument("LiteBIRD").depth_p)
    with pytest.raises(ValueError, match="available"):
        oh.get_instrument("nope")
    obs = oh.get_observation(instr, offline_sky, noise=True, seed=2)
    assert isinstance(obs, np.ndarray) and obs.dtype == np.float64
    np.testing.assert_array_equal(obs, get_observation(instr, offline_sky, noise=True, seed=2))
    noise = oh.get_noise_realization(8, instr, "uK_RJ", seed=1)
    np.testing.assert_array_equal(noise, get_noise_realization(8, instr, "uK_RJ", seed=1))
    std = oh.standardize_instrument(instr)
    assert isinstance(std, types.SimpleNamespace)
    np.testing.assert_array_equal(std.depth_p, instr.depth_p)
    bands = oh.standardize_instrument(
        {"frequency": [([1.0, 2.0], [1.0, 1.0]), ([3.0, 4, 5], [1.0, 1, 1])]}
    )
    assert len(bands.frequency) == 2 and len(bands.frequency[1][0]) == 3


def test_legacy_unit_helpers_against_closed_forms():
    from scipy import constants as sc

    from legacy_compat import observation_helpers as oh

    nu = np.array([30.0, 150.0, 353.0])
    x = sc.h * nu * 1e9 / (sc.k * 2.7255)
    np.testing.assert_allclose(
        oh._rj2cmb(nu), (np.exp(x) - 1) ** 2 / (np.exp(x) * x**2), rtol=1e-12
    )
    np.testing.assert_allclose(oh._cmb2rj(nu) * oh._rj2cmb(nu), 1.0, rtol=1e-15)
    np.testing.assert_allclose(
        oh._rj2jysr(nu), 2 * sc.k * (nu * 1e9) ** 2 / sc.c**2 * 1e26, rtol=1e-14
    )
    np.testing.assert_allclose(oh._cmb2jysr(nu) * oh._jysr2cmb(nu), 1.0, rtol=1e-14)
