"""The behaviours fgbuster's own test suite checks, as our own tests of legacy_compat.

fgbuster's suite (``fgbuster/test``) was run against legacy_compat with only its imports
redirected (outside this repository; see the issue's "Proof" section). These tests cover the
same ground in our own cases: analytic SED shapes for every kind of parameter (Python float,
size-1 array, vector, broadcastable array) at band centres and through weighted bandpasses,
with fgbuster's derivative shapes; algebra identities and finite-difference derivatives;
the recipes on the offline sky with noiseless recovery; and an xForecast sanity run.
"""

from __future__ import annotations

import itertools

import healpy as hp
import numpy as np
import pytest

from legacy_compat import algebra as alg
from legacy_compat import component_model as cm
from legacy_compat.cosmology import xForecast
from legacy_compat.mixingmatrix import MixingMatrix
from legacy_compat.observation_helpers import get_instrument, get_observation, get_sky
from legacy_compat.separation_recipes import (
    basic_comp_sep,
    multi_res_comp_sep,
    weighted_comp_sep,
)

# ------------------------------------------------------------ analytic component shapes

EXPR = "g * nu**2 + (nu / 20)**q + base"  # free g, q; d/dg involves nu only
KINDS = {
    "float": (0.3, 1.2),
    "scal": (np.array([0.3]), np.array([1.2])),
    "vec": (np.linspace(0.1, 0.5, 4), np.linspace(1.0, 1.6, 4)),
    "vecbcast": (np.linspace(0.1, 0.5, 4)[:, None], np.linspace(1.0, 1.6, 4)[:, None, None]),
}
CENTRES = np.array([15.0, 40.0, 90.0])


def _bandpasses():
    rng = np.random.default_rng(7)
    out = []
    for c in CENTRES:
        nu = c * np.linspace(0.85, 1.15, 9)
        out.append((nu, rng.uniform(0.4, 1.6, nu.size)))
    return out


def _oracle(nu, g, q, bands):
    """Value and derivatives, NumPy by hand; bandpasses integrated over Hz (trapezoid)."""
    g = np.asarray(g)[..., None] if np.ndim(g) else g
    q = np.asarray(q)[..., None] if np.ndim(q) else q

    def at(x):
        return (g * x**2 + (x / 20) ** q + 4.0, x**2, (x / 20) ** q * np.log(x / 20))

    if bands is None:
        return at(nu)
    cols = [at(f) for f, _ in bands]
    integ = [
        np.stack(
            [
                np.trapezoid(np.broadcast_to(c[k], np.shape(c[k])) * w, f * 1e9, axis=-1)
                for c, (f, w) in zip(cols, bands, strict=True)
            ],
            axis=-1,
        )
        for k in range(3)
    ]
    return tuple(integ)


_FAST_PAIRS = [("float", "float"), ("scal", "vec"), ("vec", "vecbcast"), ("vecbcast", "scal")]
_PAIRS = [
    pair if pair in _FAST_PAIRS else pytest.param(*pair, marks=pytest.mark.slow)
    for pair in itertools.product(KINDS, KINDS)
]


@pytest.fixture(scope="module")
def analytic():
    return cm.AnalyticComponent(EXPR, base=4.0)


@pytest.mark.parametrize("band", ["centres", "bandpass"])
@pytest.mark.parametrize("kind_g, kind_q", _PAIRS)
def test_analytic_component_values_and_fgbuster_shapes(analytic, kind_g, kind_q, band):
    comp = analytic
    assert comp.params == ["g", "q"]
    g, q = KINDS[kind_g][0], KINDS[kind_q][1]
    bands = None if band == "centres" else _bandpasses()
    nu = CENTRES if bands is None else bands
    value, d_g, d_q = _oracle(CENTRES, g, q, bands)

    res = comp.eval(nu, g, q)
    np.testing.assert_allclose(res, value, rtol=1e-12)
    assert res.shape == np.broadcast_shapes(np.shape(g), np.shape(q)) + (3,)

    diff = comp.diff(nu, g, q)
    assert isinstance(diff, list) and len(diff) == 2
    # As fgbuster: each derivative only carries the axes of the parameters it involves.
    assert diff[0].shape == (3,)
    assert diff[1].shape == np.shape(q) + (3,)
    np.testing.assert_allclose(diff[0], d_g, rtol=1e-12)
    np.testing.assert_allclose(diff[1], d_q, rtol=1e-12)


def test_constant_second_derivative_is_zero_scalar(analytic):
    comp = analytic
    dd = comp.diff_diff(CENTRES, np.linspace(0.1, 0.5, 4), 1.3)
    assert np.shape(dd[0][0]) == () and dd[0][0] == 0.0  # d2/dg2: identically 0
    assert np.shape(dd[0][1]) == () and dd[0][1] == 0.0
    np.testing.assert_allclose(
        dd[1][1], (CENTRES / 20) ** 1.3 * np.log(CENTRES / 20) ** 2, rtol=1e-12
    )


def test_dust_fixed_parameters_match_free_evaluation():
    nu = np.array([30.0, 100.0, 353.0])
    free = cm.Dust(150.0).eval(nu, 1.6, 18.5)
    np.testing.assert_allclose(cm.Dust(150.0, temp=18.5).eval(nu, 1.6), free, rtol=1e-13)
    np.testing.assert_allclose(cm.Dust(150.0, beta_d=1.6).eval(nu, 18.5), free, rtol=1e-13)
    np.testing.assert_allclose(cm.Dust(150.0, 18.5, 1.6).eval(nu), free, rtol=1e-13)


# ------------------------------------------------------------------- algebra identities


@pytest.fixture(scope="module")
def random_system():
    rng = np.random.default_rng(11)
    n_freq, n_comp, n_pix, n_stokes = 5, 3, 7, 2
    A = rng.uniform(0.2, 1.0, (n_freq, n_comp))
    s = rng.normal(size=(n_pix, n_stokes, n_comp))
    M = rng.uniform(size=(n_pix, n_stokes, n_freq, n_freq))
    invN = M @ np.swapaxes(M, -1, -2) + 3 * np.eye(n_freq)
    return A, s, invN


def test_projectors_and_weights(random_system):
    A, s, invN = random_system
    n = invN[2, 1]
    K = np.linalg.inv(A.T @ n @ A)
    P = alg.P(A, n)
    np.testing.assert_allclose(P, A @ K @ A.T @ n, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(P @ P, P, atol=1e-12)
    np.testing.assert_allclose(alg.D(A, n), np.eye(A.shape[0]) - P, atol=1e-12)
    np.testing.assert_allclose(alg.W(A, n) @ A, np.eye(A.shape[1]), atol=1e-12)
    np.testing.assert_allclose(alg.invAtNA(A, n), K, rtol=1e-10)
    np.testing.assert_allclose(alg.invAtNA(A), np.linalg.inv(A.T @ A), rtol=1e-10)


def test_noiseless_data_give_back_the_components(random_system):
    A, s, invN = random_system
    d = np.einsum("fc,psc->psf", A, s)
    np.testing.assert_allclose(alg.Wd(A, d, invN), s, atol=1e-11)
    np.testing.assert_allclose(alg.comp_sep(A, d, None, None, None).s, s, atol=1e-11)
    ids = np.arange(d.shape[0]) % 3
    np.testing.assert_allclose(alg.multi_comp_sep(A, d, None, None, None, ids).s, s, atol=1e-11)


def _W_numpy(A):
    return np.linalg.solve(A.T @ A, A.T)


@pytest.mark.parametrize("order", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_W_derivatives_against_finite_differences(order):
    nu = np.geomspace(20.0, 400.0, 7)
    mm = MixingMatrix(cm.CMB(), cm.Dust(150.0), cm.Synchrotron(40.0))
    x = np.array([1.5, 19.0, -3.1])
    A, A_dB = mm.eval(nu, *x), mm.diff(nu, *x)
    h = 1e-4 * np.maximum(1.0, np.abs(x))
    shifted = [(mm.eval(nu, *(x + h * e)), mm.eval(nu, *(x - h * e))) for e in np.eye(3)]
    if order == 1:
        W_dB = alg.W_dB(A, A_dB, mm.comp_of_dB)
        for i, (Ap, Am) in enumerate(shifted):
            num = (_W_numpy(Ap) - _W_numpy(Am)) / (2 * h[i])
            np.testing.assert_allclose(W_dB[i], num, rtol=1e-5, atol=1e-9 * np.abs(num).max())
    else:
        W_dBdB = alg.W_dBdB(A, A_dB, mm.diff_diff(nu, *x), mm.comp_of_dB)
        for i, (Ap, Am) in enumerate(shifted):
            num = (_W_numpy(Ap) - 2 * _W_numpy(A) + _W_numpy(Am)) / h[i] ** 2
            np.testing.assert_allclose(W_dBdB[i][i], num, rtol=2e-3, atol=1e-5 * np.abs(num).max())


# ------------------------------------------------------ recipes on synthetic skies


def _toy_sky(stokes: str, nside: int, nsidepar: int, seed: int = 3):
    """Noiseless maps from a power law + curved power law with patchy parameters."""
    rng = np.random.default_rng(seed)
    comps = [cm.PowerLaw(nu0=30.0), cm.PowerLaw(nu0=30.0, nu_pivot=40.0, running=None)]
    truth = np.array([1.5, -1.5, 1.8])
    freqs = np.arange(10.0, 300.0, 30.0)
    n_pix = hp.nside2npix(nside)
    if nsidepar:
        patches = truth[:, None] * rng.uniform(0.9, 1.1, (3, hp.nside2npix(nsidepar)))
        xpix = [hp.ud_grade(p, nside) for p in patches]
    else:
        patches, xpix = truth, list(truth)
    A = MixingMatrix(*comps).eval(freqs, *xpix)  # ([n_pix,] n_freq, 2)
    n_stokes = 2 if stokes == "P" else 1
    s = rng.uniform(10.0, 20.0, (n_pix, n_stokes, 2))
    A_ = A[:, None] if np.ndim(A) == 3 else A
    d = np.einsum("...fc,...c->...f", A_, s)  # (n_pix, S, n_freq)
    if stokes == "N":
        d, s = d[:, 0], s[:, 0]
    for c, v in zip(comps, ([1.5], [-1.5, 1.8]), strict=True):
        c.defaults = [1.05 * a for a in v]  # start the fits 5 % off
    depth = np.linspace(5.0, 15.0, freqs.size)
    instrument = {"frequency": freqs, "depth_i": depth, "depth_p": 1.4 * depth}
    return comps, instrument, d.T, s.T, patches


@pytest.mark.parametrize(
    "stokes",
    [pytest.param(k, marks=pytest.mark.slow) for k in "NIP"],  # P masked: see below
)
def test_basic_comp_sep_noiseless_recovery(stokes):
    comps, instrument, d, s, truth = _toy_sky(stokes, nside=2, nsidepar=0)
    res = basic_comp_sep(comps, instrument, d)
    np.testing.assert_allclose(res.x, truth, rtol=1e-6)
    np.testing.assert_allclose(res.s, s, rtol=1e-6)
    np.testing.assert_allclose(res.chi, 0.0, atol=1e-6)
    assert res.Sigma.shape == (3, 3)


def test_basic_comp_sep_patches_and_mask():
    comps, instrument, d, s, truth = _toy_sky("P", nside=2, nsidepar=1)
    z = hp.pix2vec(2, np.arange(hp.nside2npix(2)))[2]
    bad = np.abs(z) < 0.3
    d = d.copy()
    d[..., bad] = hp.UNSEEN
    res = basic_comp_sep(comps, instrument, d, 1)
    np.testing.assert_allclose(res.x, truth, rtol=1e-6)
    np.testing.assert_allclose(res.s[..., ~bad], s[..., ~bad], rtol=1e-6)
    assert np.all(res.s[..., bad] == hp.UNSEEN) and np.all(res.chi[..., bad] == hp.UNSEEN)
    np.testing.assert_array_equal(res.mask_good, ~bad)


@pytest.mark.slow
def test_weighted_comp_sep_pixel_noise_noiseless_recovery():
    comps, instrument, d, s, truth = _toy_sky("I", nside=2, nsidepar=0)
    rng = np.random.default_rng(5)
    cov = rng.uniform(0.1, 10.0, d.shape)
    res = weighted_comp_sep(comps, instrument, d, cov)
    np.testing.assert_allclose(res.x, truth, rtol=1e-6)
    np.testing.assert_allclose(res.s, s, rtol=1e-6)


@pytest.mark.slow
def test_multi_res_equals_basic_at_equal_resolutions():
    comps, instrument, d, s, truth = _toy_sky("P", nside=2, nsidepar=1)
    basic = basic_comp_sep(comps, instrument, d, 1)
    multi = multi_res_comp_sep(comps, instrument, d, nsides=[1, 1, 1])
    np.testing.assert_allclose(multi.s, basic.s, rtol=1e-6)
    for xm, xt in zip(multi.x, truth, strict=True):
        np.testing.assert_allclose(xm, xt, rtol=1e-6)


@pytest.mark.slow
def test_offline_litebird_sky_noiseless_recovery():
    """The end-to-end case of fgbuster's suite: c1d0s0 through LiteBIRD, QU, 1 % off."""
    instrument = get_instrument("LiteBIRD")
    data = get_observation(instrument, get_sky(8, "c1d0s0"))[:, 1:]
    comps = [cm.CMB(), cm.Dust(200.0), cm.Synchrotron(100.0)]
    truth = np.array([c for comp in comps for c in comp.defaults])
    for comp in comps:
        comp.defaults = [0.99 * v for v in comp.defaults]
    res = basic_comp_sep(comps, instrument, data)
    np.testing.assert_allclose(res.x, truth, rtol=1e-6)
    np.testing.assert_allclose(res.chi, 0.0, atol=1e-6)


# --------------------------------------------------------------------- xForecast


@pytest.mark.slow
def test_xforecast_sanity_on_offline_sky():
    nside = 8
    instrument = get_instrument("LiteBIRD")
    maps = get_observation(instrument, get_sky(nside, "d0s0"))[:, 1:]
    comps = [cm.CMB(), cm.Dust(150.0), cm.Synchrotron(150.0)]
    res = xForecast(comps, instrument, maps, 2, 2 * nside - 1, 1.0, make_figure=False)
    np.testing.assert_allclose(res.x, [1.54, 20.0, -3.0], rtol=1e-4)
    np.testing.assert_allclose(res.Sigma, res.Sigma.T, rtol=1e-10)
    np.testing.assert_allclose(res.Sigma @ res.Sigma_inv, np.eye(3), atol=1e-6)
    assert np.all(np.linalg.eigvalsh(res.Sigma_inv) > 0)
    r_fit, sigma_r = res.cosmo_params["r"]
    assert np.all(np.isfinite(r_fit)) and sigma_r[0] > 0
    assert res.noise.shape == res.ell.shape and np.all(res.noise > 0)
