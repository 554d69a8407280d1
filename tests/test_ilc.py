"""Pixel and harmonic ILC: golden fixtures from fgbuster 2.0, properties, bad input."""

import healpy as hp
import jax.numpy as jnp
import numpy as np
import pytest

import fgjax
from fgjax._healpix import check_nside_of_npix, cluster_ids_from_nside, prewhiten_factors
from fgjax._healpix import standardize as standardize_instrument
from fgjax._ilc import harmonic_ilc, harmonic_ilc_alm, ilc
from legacy_compat import component_model as cm
from legacy_compat import separation_recipes as sr

from ._golden import check, load_case

UNSEEN = hp.UNSEEN


def _instrument(inputs):
    return {k.split("__", 1)[1]: v for k, v in inputs.items() if k.startswith("instrument__")}


ILC_CASES = {
    "ilc_T_global": (lambda: [cm.CMB()], False),
    "ilc_QU_patches_masked": (
        lambda: [cm.CMB(), cm.Dust(nu0=353.0, temp=20.0, beta_d=1.54)],
        True,
    ),
    "ilc_IQU_patches": (lambda: [cm.CMB()], True),
}


def check_ilc_case(name):
    """A pixel-ILC golden case (run by test_golden_equality.py)."""
    entry, inp, out, _ = load_case(name)
    make, with_ids = ILC_CASES[name]
    args = (inp["patch_ids"],) if with_ids else ()
    res = sr.ilc(make(), _instrument(inp), inp["data"], *args)
    # closed-form algebra: manifest "exact" tolerances (widened where legacy is ill-conditioned)
    for key in ("s", "W", "freq_cov"):
        assert res[key].shape == out[key].shape
        check(entry, key, res[key], out[key])
    assert res.components == ["CMB"] + (["Dust"] if name == "ilc_QU_patches_masked" else [])


def check_harmonic_ilc_case(name):
    """A harmonic-ILC golden case (run by test_golden_equality.py)."""
    entry, inp, out, _ = load_case(name)
    res = sr.harmonic_ilc([cm.CMB()], _instrument(inp), inp["data"], lbins=inp["lbins"], iter=3)
    # healpy transforms on both sides: manifest "sht" tolerance (rtol 1e-7)
    for key in ("W", "s", "cl_in", "cl_out", "fsky"):
        assert np.shape(res[key]) == out[key].shape
        check(entry, key, res[key], out[key])


def test_ilc_masked_pixels_and_empty_patch():
    entry, inp, out, _ = load_case("ilc_QU_patches_masked")
    data = inp["data"].copy()
    ids = inp["patch_ids"]
    data[3, 1, ids == 5] = UNSEEN  # one entry is enough to drop a pixel
    comps = [fgjax.CMB(), fgjax.Dust(nu0=353.0, temp=20.0, beta_d=1.54)]
    res = ilc(comps, _instrument(inp), data, ids)
    assert np.all(res.W[5] == UNSEEN) and np.all(res.freq_cov[5] == UNSEEN)
    assert np.all(res.s[..., ids == 5] == UNSEEN)
    assert not res.mask_good[ids == 5].any()
    # the other patches are untouched by the new mask
    others = np.arange(res.W.shape[0]) != 5
    np.testing.assert_allclose(res.W[others], out["W"][others], rtol=1e-10, atol=1e-12)
    # MaskedArray input: the same mask
    masked = np.ma.masked_equal(data, UNSEEN)
    res_ma = ilc(comps, _instrument(inp), masked, ids)
    np.testing.assert_array_equal(res_ma.W, res.W)


def test_ilc_weights_are_unbiased_on_the_sed():
    entry, inp, _, _ = load_case("ilc_IQU_patches")
    comps = [fgjax.CMB(), fgjax.Synchrotron(nu0=30.0, beta_pl=-3.0)]
    res = ilc(comps, _instrument(inp), inp["data"], inp["patch_ids"])
    A = np.asarray(fgjax.MixingMatrix(*comps).eval(inp["instrument__frequency"]))
    # W A = 1 in every patch (the ILC constraint); float64 round-off of an inverse
    np.testing.assert_allclose(res.W @ A, np.broadcast_to(np.eye(2), (4, 2, 2)), atol=1e-8)


def test_harmonic_ilc_alm_matches_maps_route():
    entry, inp, out, _ = load_case("harmonic_ilc_T")
    lmax = 23
    alms = np.array([hp.map2alm(m, lmax=lmax, iter=3) for m in inp["data"]])
    res = harmonic_ilc_alm([fgjax.CMB()], _instrument(inp), alms, lbins=inp["lbins"])
    np.testing.assert_allclose(res.W, out["W"], rtol=1e-7, atol=1e-8 * np.abs(out["W"]).max())
    np.testing.assert_allclose(
        hp.alm2map(res.s[0], 8), out["s"][0], rtol=1e-7, atol=1e-7 * np.abs(out["s"]).max()
    )
    # constraint W A = 1 at every multipole
    A = np.asarray(fgjax.MixingMatrix(fgjax.CMB()).eval(inp["instrument__frequency"]))
    np.testing.assert_allclose(res.W @ A, np.ones((lmax + 1, 1, 1)), atol=1e-8)


def test_harmonic_ilc_native_fsky_is_good_fraction():
    entry, inp, out, _ = load_case("harmonic_ilc_T")
    data = inp["data"].copy()
    data[:, :96] = UNSEEN
    res = harmonic_ilc([fgjax.CMB()], _instrument(inp), data, lbins=inp["lbins"])
    assert res.fsky == pytest.approx(1 - 96 / 768)
    legacy = sr.harmonic_ilc([cm.CMB()], _instrument(inp), data, lbins=inp["lbins"])
    assert legacy.fsky == pytest.approx(96 / 768)  # fgbuster's (masked) fraction
    np.testing.assert_allclose(legacy.cl_in * legacy.fsky, res.cl_in * res.fsky, rtol=1e-12)


# -- host helpers -----------------------------------------------------------------------------
def test_cluster_ids_match_ud_grade():
    for nside, nside_map in [(0, 4), (1, 8), (2, 8), (4, 8), (8, 8)]:
        expected = (
            np.zeros(12 * nside_map**2)
            if nside == 0
            else hp.ud_grade(np.arange(12 * nside**2, dtype=float), nside_map)
        )
        np.testing.assert_array_equal(cluster_ids_from_nside(nside, nside_map), expected)


def test_prewhiten_factors_as_fgbuster():
    inst = standardize_instrument(
        {"frequency": [30.0, 40.0], "depth_i": [10.0, 20.0], "depth_p": [14.0, 28.0]}
    )
    resol = hp.nside2resol(8, arcmin=True)
    np.testing.assert_allclose(prewhiten_factors(inst, (2, 768), 8), resol / np.array([10, 20]))
    qu = prewhiten_factors(inst, (2, 2, 768), 8)
    np.testing.assert_allclose(qu, resol / np.array([[14, 28], [14, 28]]))
    iqu = prewhiten_factors(inst, (2, 3, 768), 8)
    np.testing.assert_allclose(iqu[0], resol / np.array([10, 20]))
    glob = prewhiten_factors(inst, (2, 768), 0)
    np.testing.assert_allclose(glob, 12**0.5 * hp.nside2resol(1, arcmin=True) / [10, 20])
    assert prewhiten_factors(standardize_instrument({"frequency": [1.0]}), (1, 12), 1) is None


# -- bad input --------------------------------------------------------------------------------
NU = {"frequency": np.array([30.0, 100.0, 200.0])}


def test_bad_input_messages():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3, 48))
    with pytest.raises(ValueError, match="`data` has 4 frequency maps"):
        ilc([fgjax.CMB()], NU, rng.normal(size=(4, 48)))
    with pytest.raises(ValueError, match="`patch_ids` must be non-negative"):
        ilc([fgjax.CMB()], NU, data, -np.ones(48, dtype=int))
    with pytest.raises(ValueError, match="`patch_ids` must be broadcastable"):
        ilc([fgjax.CMB()], NU, data, np.zeros(47, dtype=int))
    with pytest.raises(TypeError, match="`patch_ids` must hold integers"):
        ilc([fgjax.CMB()], NU, data, np.zeros(48))
    with pytest.raises(ValueError, match="no free parameter"):
        ilc([fgjax.CMB(), fgjax.Dust(353.0)], NU, data)
    with pytest.raises(ValueError, match="must be HEALPix maps"):
        harmonic_ilc([fgjax.CMB()], NU, rng.normal(size=(3, 50)), lbins=np.array([0, 4]))
    with pytest.raises(ValueError, match="depth_p"):
        standardize_instrument({"frequency": [1.0], "depth_p": [0.0]})
    with pytest.raises(ValueError, match="frequency"):
        standardize_instrument({"depth_p": [1.0]})
    with pytest.raises(ValueError, match="pixel axis"):
        check_nside_of_npix(13)
    with pytest.raises(ValueError, match="`weights` must be zero where `data` is masked"):
        masked = data.copy()
        masked[:, 0] = UNSEEN
        harmonic_ilc([fgjax.CMB()], NU, masked, lbins=np.array([0, 4]), weights=np.ones(48))


def test_ilc_runs_in_float32():
    # fgjax never enables x64 itself; ILC must work in float32 too
    import jax

    rng = np.random.default_rng(2)
    data = rng.normal(size=(3, 2, 48)) + rng.normal(size=(2, 48))
    with jax.enable_x64(False):
        res = ilc([fgjax.CMB()], NU, data.astype(np.float32), np.arange(48) % 2)
    assert res.W.dtype == np.float32
    assert np.all(np.isfinite(res.s))
    np.testing.assert_allclose(res.W.sum(-1), 1.0, rtol=1e-4)  # CMB SED is 1 in K_CMB
    assert jnp.asarray(res.s).shape == (1, 2, 48)
