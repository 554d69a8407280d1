"""CMB spectra (fgjax._spectra) and the offline sky (fgjax._sky), with and without pysm3."""

import healpy as hp
import numpy as np
import pytest

from fgjax._observation import get_observation
from fgjax._sed import CMB, Dust, PowerLaw, Synchrotron
from fgjax._sky import (
    NO_PYSM3_ENV,
    SKY_PRESETS,
    OfflineSky,
    get_sky,
    parse_sky_tag,
    rj_to_cmb,
    sky_emission,
    sky_templates,
)
from fgjax._spectra import SPECTRA_ROWS, TENSOR_LMAX, cmb_spectra, cmb_spectra_metadata

pysm3 = pytest.importorskip("pysm3")
NU = np.array([23.0, 40.0, 100.0, 143.0, 353.0, 545.0])


# ----------------------------------------------------------------------------- spectra


def test_spectra_layout_and_range():
    s = cmb_spectra()
    np.testing.assert_array_equal(s.ell, np.arange(4001))
    assert s.lensed_scalar.shape == s.tensor.shape == (4, 4001)
    assert s.lensed_scalar.dtype == np.float64
    assert SPECTRA_ROWS == {"TT": 0, "EE": 1, "BB": 2, "TE": 3}
    short = cmb_spectra(lmax=100)
    np.testing.assert_array_equal(short.lensed_scalar, s.lensed_scalar[:, :101])
    np.testing.assert_array_equal(
        short.total(r=0.1), s.lensed_scalar[:, :101] + 0.1 * s.tensor[:, :101]
    )
    meta = cmb_spectra_metadata()
    assert meta["units"] == "C_ell in uK_CMB^2" and meta["rows"] == ["TT", "EE", "BB", "TE"]


@pytest.mark.parametrize("kind", ["lensed_scalar", "tensor"])
def test_spectra_positive_and_cauchy_schwarz(kind):
    cl = getattr(cmb_spectra(), kind)
    if kind == "tensor":
        assert np.all(cl[:, TENSOR_LMAX + 1 :] == 0)  # documented cut
        cl = cl[:, : TENSOR_LMAX + 1]
    tt, ee, bb, te = cl[:, 2:]
    assert np.all(cl[:, :2] == 0)  # monopole and dipole
    assert np.all(tt > 0) and np.all(ee > 0) and np.all(bb > 0)
    assert np.all(te**2 <= tt * ee * (1 + 1e-5))  # float32 storage


def test_spectra_physical_landmarks():
    s = cmb_spectra(lmax=3000)
    ell = s.ell.astype(float)
    dl = ell * (ell + 1) / (2 * np.pi)
    # Lensed TT: first acoustic peak near ell 220 with D_ell about 5700-5800 uK^2.
    tt = s.lensed_scalar[0] * dl
    peak = 100 + np.argmax(tt[100:400])
    assert 200 <= peak <= 235 and 5500 < tt[peak] < 6000
    # r = 1 tensor BB: recombination bump near ell 80 (D_ell of order 0.08 uK^2).
    bb_t = s.tensor[2] * dl
    peak_t = 30 + np.argmax(bb_t[30:300])
    assert 60 <= peak_t <= 110 and 0.05 < bb_t[peak_t] < 0.12
    # Lensing BB: D_ell about 0.1 uK^2 near ell 1000; r = 1 tensors dominate at ell < 100.
    assert 0.07 < s.lensed_scalar[2, 1000] * dl[1000] < 0.13
    assert np.all(s.tensor[2, 2:100] > s.lensed_scalar[2, 2:100])


@pytest.mark.parametrize("lmax", [-1, 4001, 10.5, True, "100"])
def test_spectra_bad_lmax(lmax):
    with pytest.raises(ValueError, match="`lmax`"):
        cmb_spectra(lmax)


# ----------------------------------------------------------------------------- tags


def test_parse_tags():
    assert parse_sky_tag("c1d0s0f1") == ("c1", "d0", "s0", "f1")
    assert SKY_PRESETS == ("c1", "d0", "d1", "s0", "s1", "f1")
    for bad, match in [("c1d9", "Unknown sky preset 'd9'"), ("c1d", "two-character"),
                       ("d0d1", "twice"), ("", "two-character"), (None, "`tag`")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            parse_sky_tag(bad)


@pytest.mark.parametrize("nside, tag", [(8, "c1d0s0"), (32, "c1d0s0"), (64, "c1d0s0"),
                                        (64, "c1d1s1"), (64, "d0s0"), (8, "c1d0s0f1")])  # fmt: skip
def test_required_tags_build_offline(nside, tag):
    sky = get_sky(nside, tag, backend="offline")
    assert isinstance(sky, OfflineSky) and sky.nside == nside
    assert len(sky.components) == len(tag) // 2
    em = sky.get_emission(150.0)
    assert em.shape == (3, 12 * nside**2) and np.all(np.isfinite(em))


def test_templates_are_reproducible_and_seeded():
    a = sky_templates(8, "d1s1")
    b = sky_templates(8, "d1s1")
    c = sky_templates(8, "d1s1", seed=3)
    for key in ("I_ref", "Q_ref", "mbb_index", "mbb_temperature"):
        np.testing.assert_array_equal(a[0][key], b[0][key])
        assert not np.allclose(a[0][key], c[0][key])
    np.testing.assert_array_equal(a[1]["pl_index"], b[1]["pl_index"])


def test_templates_share_large_scales_across_nside():
    lo = get_sky(16, "c1", backend="offline").components[0].map
    hi = get_sky(32, "c1", backend="offline").components[0].map
    alm_lo = hp.map2alm(lo, lmax=10, iter=3)
    alm_hi = hp.map2alm(hi, lmax=10, iter=3)
    # Same harmonic coefficients up to ell 10 (pixelisation error only).
    np.testing.assert_allclose(alm_hi[0], alm_lo[0], atol=0.02 * np.abs(alm_lo[0]).max())


def test_template_amplitudes_are_pysm_like():
    dust, sync, ff = sky_templates(32, "d0s0f1")
    p_dust = np.hypot(dust["Q_ref"], dust["U_ref"])  # uK_RJ at 353 GHz
    p_sync = np.hypot(sync["Q_ref"], sync["U_ref"])  # uK_RJ at 23 GHz
    assert 0.3 < np.median(p_dust) < 10 and 0.3 < np.median(p_sync) < 50
    assert np.all(dust["I_ref"] > 0) and np.all(sync["I_ref"] > 0) and np.all(ff["I_ref"] > 0)
    frac = p_dust / (
        dust["I_ref"]
        * (353 / 545) ** 2.54
        * np.expm1(0.0479924 * 545 / 20)
        / np.expm1(0.0479924 * 353 / 20)
    )
    assert 0.01 < np.median(frac) < 0.2 and np.max(frac) <= 0.31
    # Dust is brighter towards the Galactic plane.
    b = np.abs(hp.pix2vec(32, np.arange(12 * 32**2))[2])
    assert np.median(dust["I_ref"][b < 0.1]) > 5 * np.median(dust["I_ref"][b > 0.8])


# ----------------------------------------------------------------------------- SEDs


@pytest.fixture(scope="module")
def fg_sky():
    return get_sky(8, "d0s0f1", backend="offline")


def test_dust_scales_as_mbb_in_rj_and_cmb(fg_sky):
    dust = fg_sky.components[0]
    # Polarisation: reference 353 GHz, fgjax's own Dust SED (SymPy -> JAX) as the oracle.
    sed_rj = np.asarray(Dust(353.0, temp=20.0, beta_d=1.54, units="K_RJ").eval(NU))
    for k, nu in enumerate(NU):
        np.testing.assert_allclose(
            dust.get_emission(nu)[1:], dust.get_emission(353.0)[1:] * sed_rj[k], rtol=1e-12
        )
    # Intensity: reference 545 GHz.
    sed_i = np.asarray(Dust(545.0, temp=20.0, beta_d=1.54, units="K_RJ").eval(NU))
    np.testing.assert_allclose(dust.get_emission(100.0)[0], dust.I_ref * sed_i[2], rtol=1e-12)
    # With unit conversion: an observation of dust alone in uK_CMB follows Dust(units=K_CMB).
    only_dust = OfflineSky(8, [dust])
    obs = get_observation({"frequency": NU}, only_dust, unit="uK_CMB")
    sed_cmb = np.asarray(Dust(353.0, temp=20.0, beta_d=1.54, units="K_CMB").eval(NU))
    expected = dust.Q_ref * rj_to_cmb(353.0) * sed_cmb[:, None]
    np.testing.assert_allclose(obs[:, 1], expected, rtol=1e-12)


def test_synchrotron_and_freefree_scale_as_power_laws(fg_sky):
    sync, ff = fg_sky.components[1], fg_sky.components[2]
    sed = np.asarray(Synchrotron(23.0, beta_pl=-3.0, units="K_RJ").eval(NU))
    for k, nu in enumerate(NU):
        np.testing.assert_allclose(sync.get_emission(nu)[2], sync.U_ref * sed[k], rtol=1e-12)
    np.testing.assert_allclose(sync.get_emission(4.08)[0], sync.I_ref * 10.0**-3, rtol=1e-12)
    ff_sed = np.asarray(PowerLaw(30.0, beta_pl=-2.14, units="K_CMB").eval(NU))
    obs = get_observation({"frequency": NU}, OfflineSky(8, [ff]), unit="K_CMB")
    np.testing.assert_allclose(
        obs[:, 0], 1e-6 * ff.I_ref * rj_to_cmb(30.0) * ff_sed[:, None], rtol=1e-12
    )
    assert np.all(obs[:, 1:] == 0)  # free-free is unpolarised


def test_d1_s1_scale_pixel_by_pixel():
    sky = get_sky(8, "d1s1", backend="offline")
    dust, sync = sky.components
    assert dust.mbb_index.shape == dust.mbb_temperature.shape == sync.pl_index.shape == (768,)
    assert abs(np.mean(dust.mbb_index) - 1.54) < 0.05 and np.std(dust.mbb_index) > 0.005
    assert abs(np.mean(dust.mbb_temperature) - 20) < 2 and abs(np.mean(sync.pl_index) + 3) < 0.1
    ratio = dust.get_emission(150.0)[1] / dust.Q_ref
    pix = [0, 100, 700]
    for p in pix:
        sed = Dust(
            353.0,
            temp=float(dust.mbb_temperature[p]),
            beta_d=float(dust.mbb_index[p]),
            units="K_RJ",
        )
        np.testing.assert_allclose(ratio[p], np.asarray(sed.eval(np.array([150.0])))[0], rtol=1e-12)
    np.testing.assert_allclose(
        sync.get_emission(46.0)[1] / sync.Q_ref, 2.0**sync.pl_index, rtol=1e-12
    )


def test_cmb_is_flat_in_k_cmb_and_matches_the_cmb_sed():
    cmb = get_sky(4, "c1", backend="offline").components[0]
    sed_rj = np.asarray(CMB(units="K_RJ").eval(NU))  # K_CMB -> K_RJ factor
    for k, nu in enumerate(NU):
        np.testing.assert_allclose(cmb.get_emission(nu), cmb.map * sed_rj[k], rtol=1e-12)


def test_cmb_power_spectrum_matches_the_input_within_cosmic_variance():
    nside = 64
    m = get_sky(nside, "c1", backend="offline").components[0].map
    cl = hp.anafast(m, lmax=2 * nside, iter=3)  # TT, EE, BB, TE, EB, TB
    theory = cmb_spectra(2 * nside).lensed_scalar
    ell = np.arange(2 * nside + 1)
    for name, row in (("TT", 0), ("EE", 1)):
        for lo in range(10, 2 * nside - 9, 20):  # bins of 20 multipoles
            sl = slice(lo, lo + 20)
            n_modes = np.sum(2 * ell[sl] + 1)
            measured = np.sum((2 * ell[sl] + 1) * cl[row][sl]) / n_modes
            expected = np.sum((2 * ell[sl] + 1) * theory[row][sl]) / n_modes
            # Cosmic variance of a binned C_ell: sqrt(2 / n_modes); 5 sigma.
            assert abs(measured / expected - 1) < 5 * np.sqrt(2 / n_modes), (name, lo)
    # TE correlation has the input sign pattern at the first peaks.
    assert np.corrcoef(cl[3][2:100], theory[3][2:100])[0, 1] > 0.8


# ----------------------------------------------------------------------------- pysm3 path


@pytest.fixture(scope="module")
def pysm_sky():
    return get_sky(8, "c1d1s1f1")


def test_get_sky_returns_a_genuine_pysm3_sky(pysm_sky):
    u = pysm3.units

    assert isinstance(pysm_sky, pysm3.Sky) and pysm_sky.nside == 8
    cmb, dust, sync, ff = pysm_sky.components
    assert isinstance(cmb, pysm3.CMBMap) and isinstance(dust, pysm3.ModifiedBlackBody)
    assert isinstance(sync, pysm3.PowerLaw) and isinstance(ff, pysm3.PowerLaw)
    assert cmb.map.unit == u.uK_CMB and cmb.map.shape == (3, 768)
    assert dust.freq_ref_P == 353 * u.GHz and dust.freq_ref_I == 545 * u.GHz
    assert sync.freq_ref_P == 23 * u.GHz and dust.mbb_temperature.unit == u.K
    assert dust.Q_ref.unit == u.uK_RJ and dust.mbb_index.shape == (768,)
    assert not ff.has_polarization
    d0 = get_sky(8, "d0s0").components
    assert d0[0].mbb_index == 1.54 and d0[0].mbb_temperature == 20 * u.K and d0[1].pl_index == -3


def test_pysm3_and_offline_skies_are_the_same(pysm_sky):
    offline = get_sky(8, "c1d1s1f1", backend="offline")
    np.testing.assert_array_equal(pysm_sky.components[0].map.value, offline.components[0].map)
    np.testing.assert_array_equal(
        pysm_sky.components[1].mbb_temperature.value, offline.components[1].mbb_temperature
    )
    instr = {"frequency": NU}
    np.testing.assert_allclose(
        get_observation(instr, pysm_sky), get_observation(instr, offline), rtol=1e-13, atol=1e-12
    )


@pytest.mark.slow  # pysm3 compiles its numba kernels on first use: about 25 s on 2 cores
def test_native_evaluation_equals_pysm3_own_get_emission(pysm_sky):
    # pysm3's numba kernels (compiled here once: the slow part) against our NumPy laws.
    for nu in (40.0, 353.0):
        ours = sky_emission(pysm_sky, nu, native=True)
        theirs = sky_emission(pysm_sky, nu, native=False)
        np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-10 * np.abs(theirs).max())


def test_in_place_index_edits_change_the_observation(pysm_sky):
    instr = {"frequency": np.array([40.0, 150.0])}
    for sky in (get_sky(8, "d1s1"), get_sky(8, "d1s1", backend="offline")):
        before = get_observation(instr, sky)
        dust, sync = sky.components
        dust.mbb_index[:] = 1.8  # fgbuster's notebooks overwrite the maps in place
        sync.pl_index[:] = -2.5
        after = get_observation(instr, sky)
        assert not np.allclose(before, after)
        q353 = dust.Q_ref.value if hasattr(dust.Q_ref, "unit") else dust.Q_ref
        t = (
            dust.mbb_temperature.value
            if hasattr(dust.mbb_temperature, "unit")
            else dust.mbb_temperature
        )
        sed = (150 / 353) ** 2.8 * np.expm1(0.0479924 * 353 / t) / np.expm1(0.0479924 * 150 / t)
        q23 = sync.Q_ref.value if hasattr(sync.Q_ref, "unit") else sync.Q_ref
        expected = (q353 * sed + q23 * (150 / 23) ** -2.5) * rj_to_cmb(150.0)
        np.testing.assert_allclose(after[1, 1], expected, rtol=1e-5)  # rounded h/k above


def test_scalar_index_reassignment_on_d0():
    u = pysm3.units

    sky = get_sky(4, "d0")
    before = get_observation({"frequency": [100.0]}, sky)
    sky.components[0].mbb_index = 2.0 * u.dimensionless_unscaled
    after = get_observation({"frequency": [100.0]}, sky)
    ratio = after[0] / before[0]  # (3, n_pix); I scales from 545 GHz, Q and U from 353 GHz
    np.testing.assert_allclose(ratio[0], (100 / 545) ** 0.46, rtol=1e-12)
    np.testing.assert_allclose(ratio[1:], (100 / 353) ** 0.46, rtol=1e-12)


def test_a_users_own_pysm3_sky_is_observed():
    u = pysm3.units

    npix = 12 * 4**2
    cmb = pysm3.CMBMap(4, map_IQU=u.Quantity(np.ones((3, npix)), "uK_CMB"))
    user = pysm3.Sky(nside=4, component_objects=[cmb], output_unit="mK_CMB")
    obs = get_observation({"frequency": [30.0, 300.0]}, user, unit="uK_CMB")
    np.testing.assert_allclose(obs, 1.0, rtol=1e-12)


def test_without_pysm3_get_sky_is_offline(monkeypatch):
    monkeypatch.setenv(NO_PYSM3_ENV, "1")
    assert isinstance(get_sky(4, "c1d0s0"), OfflineSky)
    monkeypatch.delenv(NO_PYSM3_ENV)
    monkeypatch.setitem(__import__("sys").modules, "pysm3", None)  # import pysm3 -> ImportError
    sky = get_sky(4, "c1d1s1")
    assert isinstance(sky, OfflineSky)
    assert get_observation("test", sky).shape == (10, 3, 192)
    with pytest.raises(ImportError, match="pysm3"):
        get_sky(4, "c1", backend="pysm3")


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((6, "c1"), {}, "`nside`"),
        ((8, "c2"), {}, "Unknown sky preset 'c2'"),
        ((8, "c1"), {"backend": "healpy"}, "`backend`"),
        ((8, "c1"), {"seed": 1.5}, "`seed`"),
    ],
)
def test_get_sky_bad_input(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_sky(*args, **kwargs)


def test_offline_sky_checks_its_maps():
    from fgjax._sky import CMBMapComponent, nside_from_npix

    assert nside_from_npix(12 * 64**2) == 64
    for bad in (100, 12 * 3**2, 0, 768.0):
        with pytest.raises(ValueError, match="HEALPix"):
            nside_from_npix(bad, "data")
    with pytest.raises(ValueError, match=r"components\[0\].map"):
        OfflineSky(4, [CMBMapComponent(4, np.zeros((3, 100)))])
    with pytest.raises(ValueError, match="nside 4"):
        OfflineSky(4, [CMBMapComponent(8, np.zeros((3, 768)))])
    with pytest.raises(TypeError, match="get_emission"):
        OfflineSky(4, [object()])


def test_sky_emission_bad_input():
    with pytest.raises(TypeError, match="`sky`"):
        sky_emission(object(), 100.0)
    with pytest.raises(ValueError, match="`freq`"):
        sky_emission(get_sky(1, "d0", backend="offline"), -5.0)


def test_observation_is_the_mixing_matrix_times_the_templates():
    # What the separation recipes assume: d = A(beta_d, T, beta_s) s, with fgjax's own SEDs.
    from fgjax._mixing import MixingMatrix

    sky = get_sky(8, "c1d0s0", backend="offline")
    cmb, dust, sync = sky.components
    nu = np.array([40.0, 90.0, 150.0, 220.0, 353.0])
    obs = get_observation({"frequency": nu}, sky, unit="uK_CMB")
    mm = MixingMatrix(CMB(), Dust(353.0), Synchrotron(23.0))
    A = np.asarray(mm(nu, np.array([1.54, 20.0, -3.0])))  # (n_freq, 3), K_CMB, 1 at nu0
    s = np.stack(
        [
            cmb.map[1:],
            np.stack([dust.Q_ref, dust.U_ref]) * rj_to_cmb(353.0),
            np.stack([sync.Q_ref, sync.U_ref]) * rj_to_cmb(23.0),
        ]
    )  # (n_comp, 2, n_pix), uK_CMB at each reference frequency
    np.testing.assert_allclose(obs[:, 1:], np.einsum("fc,csp->fsp", A, s), rtol=1e-11, atol=1e-11)
