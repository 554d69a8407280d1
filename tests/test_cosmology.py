"""Cosmology: statistical information, multi-resolution noise, xForecast and the r likelihood.

Golden fixtures (fgbuster 2.0.0): ``cosmo_statistical_information`` and
``xForecast_QU_varying`` at the manifest's tolerances. The default tests evaluate xForecast's
deterministic chain at the golden best fit (``x``, ``Sigma`` of the fixture, given through the
separation hook), so they test this module's algebra independently of the optimiser; the
end-to-end runs (our own spectral fit at nside 16) are ``slow``.
"""

from __future__ import annotations

import os

# healpy's OpenMP threads spin against each other on a loaded shared machine (40x slower
# transforms); one thread is plenty at nside <= 16. Only effective before healpy loads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import healpy as hp  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402

from fgjax import CMB, Dust, MixingMatrix, Synchrotron  # noqa: E402
from fgjax import _cosmology as cz  # noqa: E402
from fgjax._bandpass import as_frequencies  # noqa: E402

from ._golden import check, load_case  # noqa: E402

XF = "xForecast_QU_varying"
# One set of component objects: jitted kernels are cached per mixing matrix (same objects).
COMPONENTS = [CMB(), Dust(150.0), Synchrotron(150.0)]
INFO = "cosmo_statistical_information"


def _instrument(inputs, depth_i=True):
    inst = {"frequency": inputs["instrument__frequency"], "depth_p": inputs["instrument__depth_p"]}
    if depth_i:
        inst["depth_i"] = inputs["instrument__depth_i"]
    return inst


def _golden_separation(out):
    """Separation hook returning fgbuster's best fit: the chain after it is deterministic."""

    def separate(mm, freqs, d_pix, n_inv, x0, minimize_kwargs):
        assert d_pix.shape == (3072, 2, 15) and not minimize_kwargs
        return cz._Separation(out["x"], out["Sigma"], out["Sigma_inv"], out["s"], "golden")

    return separate


@pytest.fixture(scope="module")
def xf_case():
    return load_case(XF)


@pytest.fixture(scope="module")
def xf_golden_chain(xf_case):
    """Native xForecast at the golden best fit with the fixture's CMB templates."""
    entry, inp, out, _ = xf_case
    res = cz.xForecast(
        COMPONENTS,
        _instrument(inp),
        inp["d_fgs"],
        2,
        31,
        Alens=1.0,
        r=0.001,
        BlBl=out["BlBl"],
        BuBu=out["BuBu"],
        _separate=_golden_separation(out),
    )
    return entry, inp, out, res


# -- golden: statistical information and multi-resolution power ----------------------------
@pytest.mark.parametrize("api", ["native", "legacy"])
def test_statistical_information_matches_legacy(api):
    entry, inp, out, _ = load_case(INFO)
    if api == "native":
        fn, comps = cz.get_statistical_information, [CMB(), Dust(353.0), Synchrotron(30.0)]
    else:
        from legacy_compat import component_model as lcm
        from legacy_compat.cosmology import get_statistical_information as fn

        comps = [lcm.CMB(), lcm.Dust(353.0), lcm.Synchrotron(30.0)]
    # Closed-form algebra: the manifest's exact tolerance (rtol 1e-10).
    check(entry, "info_T", fn(comps, inp["freqs"], var_t=inp["var_t"]), out["info_T"])
    check(entry, "info_P", fn(comps, inp["freqs"], var_p=inp["var_p"]), out["info_P"])
    check(
        entry,
        "info_TP",
        fn(comps, inp["freqs"], var_t=inp["var_t"], var_p=inp["var_p"]),
        out["info_TP"],
    )


@pytest.mark.parametrize("api", ["native", "legacy"])
def test_post_comp_sep_power_matches_legacy(api):
    entry, inp, out, _ = load_case(INFO)
    nside, nsides = entry["meta"]["nside"], entry["meta"]["nsides"]
    if api == "native":
        fn, comps = cz.get_post_comp_sep_power, [CMB(), Dust(353.0), Synchrotron(30.0)]
    else:
        from legacy_compat import component_model as lcm
        from legacy_compat.cosmology import get_post_comp_sep_power as fn

        comps = [lcm.CMB(), lcm.Dust(353.0), lcm.Synchrotron(30.0)]
    terms, levels = fn(
        comps, _instrument(inp), nside, nsides, nosum_and_white_noise=True, temp=True, pol=True
    )
    check(entry, "post_power_terms", terms, out["post_power_terms"])
    check(entry, "post_power_wn_levels", levels, out["post_power_wn_levels"])
    total = fn(comps, _instrument(inp), nside, nsides, temp=False, pol=True)
    check(entry, "post_power_sum", total, out["post_power_sum"])


def test_white_noise_shape_is_the_expectation_of_the_simulations():
    nside, nside_wn = 8, 2
    np.testing.assert_array_equal(cz.white_noise_shape(nside, nside), np.ones(24))
    np.testing.assert_array_equal(cz.white_noise_shape(nside, 16), np.ones(24))
    np.testing.assert_array_equal(cz.white_noise_shape(nside, 0), np.eye(24)[0])
    shape = cz.white_noise_shape(nside, nside_wn)
    # fgbuster's estimator (random white noise, averaged at nside_wn) on a few simulations:
    # agreement within 5 standard errors of the mean, multipole by multipole.
    rng = np.random.default_rng(0)
    sims = np.array(
        [
            hp.anafast(hp.ud_grade(hp.ud_grade(rng.normal(size=768), nside_wn), nside))
            for _ in range(300)
        ]
    ) / hp.nside2pixarea(nside)
    err = sims.std(0) / np.sqrt(len(sims))
    assert np.all(np.abs(sims.mean(0) - shape) < 5 * err + 1e-12)
    # Averaging keeps the mean: the monopole is that of the white noise itself.
    np.testing.assert_allclose(shape[0], 1.0, rtol=1e-3)


# -- golden: xForecast --------------------------------------------------------------------
def test_xforecast_chain_matches_legacy_at_golden_fit(xf_golden_chain):
    entry, _, out, res = xf_golden_chain
    # Deterministic functions of x (given): the manifest tolerances hold with a wide margin.
    for key in ("noise", "bias", "stat", "var", "BB", "BuBu", "BlBl", "ell"):
        check(entry, key, getattr(res, key), out[key])
    # fgbuster refines r and sigma(r) with L-BFGS-B; ours are exact roots (rtol 1e-3 / 1e-2).
    check(entry, "r_fit", [res.r_fit], out["r_fit"])
    check(entry, "sigma_r", [res.sigma_r], out["sigma_r"])
    np.testing.assert_allclose(res.r_fit, out["r_fit"][0], rtol=1e-5)
    np.testing.assert_allclose(res.sigma_r, out["sigma_r"][0], rtol=1e-4)
    assert res.sigma_r_found and res.fsky == 1.0
    assert res.cosmo_params["r"] == (res.r_fit, res.sigma_r)
    assert res.params == ["Dust.beta_d", "Dust.temp", "Synchrotron.beta_pl"]


def test_xforecast_with_fgjax_camb_spectra_within_two_percent(xf_golden_chain):
    _, inp, out, _ = xf_golden_chain
    res = cz.xForecast(
        COMPONENTS,
        _instrument(inp),
        inp["d_fgs"],
        2,
        31,
        _separate=_golden_separation(out),
    )
    np.testing.assert_allclose(res.sigma_r, out["sigma_r"][0], rtol=0.02)
    np.testing.assert_allclose(res.r_fit, out["r_fit"][0], rtol=0.02)


def test_xforecast_options_figure_68cl_gridding(xf_golden_chain, tmp_path):
    import matplotlib.pyplot as plt

    _, inp, out, ref = xf_golden_chain
    path = tmp_path / "xforecast.png"
    res = cz.xForecast(
        COMPONENTS,
        _instrument(inp),
        inp["d_fgs"],
        2,
        31,
        BlBl=out["BlBl"],
        BuBu=out["BuBu"],
        make_figure=str(path),
        gridding=True,
        sigma_r_68CL=True,
        _separate=_golden_separation(out),
    )
    assert path.stat().st_size > 10_000 and plt.get_fignums() == []  # saved, never shown
    assert len(res.figure.axes) == 2
    assert res.r_fit == ref.r_fit
    # A mildly skewed likelihood: the 68% integral above r_fit is close to Delta = 1.
    assert 1.0 < res.sigma_r / ref.sigma_r < 1.1
    neg5, neg, pos, pos5 = res.bounds
    assert 0 < neg < neg5 and 0 < pos < pos5
    np.testing.assert_allclose(pos, res.sigma_r, rtol=0.05)  # same integral, coarser grid


def check_xforecast_case(name=XF):
    """xForecast end to end through legacy_compat (run by test_golden_equality.py)."""
    from legacy_compat import component_model as lcm
    from legacy_compat.cosmology import xForecast

    entry, inp, out, _ = load_case(name)
    res = xForecast(
        [lcm.CMB(), lcm.Dust(nu0=150.0), lcm.Synchrotron(nu0=150.0)],
        _instrument(inp),
        inp["d_fgs"],
        lmin=2,
        lmax=31,
        Alens=1.0,
        r=0.001,
        make_figure=False,
        BlBl=out["BlBl"],
        BuBu=out["BuBu"],
    )
    for key in (
        "x",
        "Sigma",
        "Sigma_inv",
        "s",
        "noise",
        "bias",
        "stat",
        "var",
        "BB",
        "BuBu",
        "BlBl",
        "ell",
    ):
        check(entry, key, getattr(res, key), out[key])
    r_fit, sigma_r = res.cosmo_params["r"]
    assert r_fit.shape == sigma_r.shape == (1,)
    check(entry, "r_fit", r_fit, out["r_fit"])
    check(entry, "sigma_r", sigma_r, out["sigma_r"])
    assert res.params == ["Dust.beta_d", "Dust.temp", "Synchrotron.beta_pl"]


@pytest.mark.slow
def test_native_xforecast_end_to_end(xf_case):
    entry, inp, out, _ = xf_case
    res = cz.xForecast(
        COMPONENTS, _instrument(inp), inp["d_fgs"], 2, 31, BlBl=out["BlBl"], BuBu=out["BuBu"]
    )
    for key in ("x", "Sigma", "s", "noise", "bias", "stat", "var"):
        check(entry, key, getattr(res, key), out[key])
    check(entry, "r_fit", [res.r_fit], out["r_fit"])
    check(entry, "sigma_r", [res.sigma_r], out["sigma_r"])


@pytest.mark.slow
def test_harmonic_xforecast_approaches_pixel_forecast(xf_case):
    entry, inp, out, _ = xf_case
    inst = {"frequency": inp["instrument__frequency"], "depth_p": inp["instrument__depth_p"]}
    # All multipoles of the maps, no beam: the harmonic likelihood is the pixel one
    # (Parseval), up to the power above 3 nside - 1 that the transforms do not see.
    res = cz.harmonic_xForecast([CMB(), Dust(150.0), Synchrotron(150.0)], inst, inp["d_fgs"], 2, 47)
    np.testing.assert_allclose(res.Sigma, out["Sigma"], rtol=0.01)
    sigma_x = np.sqrt(np.diag(out["Sigma"]))
    assert np.all(np.abs(res.x - out["x"]) < 0.05 * sigma_x)
    # The forecast proper, on the golden case's multipoles (legacy_compat's extension).
    from legacy_compat import component_model as lcm
    from legacy_compat.cosmology import harmonic_xForecast

    res = harmonic_xForecast(
        [lcm.CMB(), lcm.Dust(150.0), lcm.Synchrotron(150.0)],
        inst,
        inp["d_fgs"],
        2,
        31,
        BlBl=out["BlBl"],
        BuBu=out["BuBu"],
    )
    r_fit, sigma_r = res.cosmo_params["r"]
    np.testing.assert_allclose(r_fit, out["r_fit"], rtol=0.02)
    np.testing.assert_allclose(sigma_r, out["sigma_r"], rtol=0.02)
    assert res.s is None and res.ell.tolist() == list(range(2, 32))


# -- the r likelihood: analytic oracles, gradients ----------------------------------------
def _one_multipole(fixed, tensor, data, dof):
    f64 = jnp.float64
    return cz.RLikelihood(
        jnp.array([dof], f64),
        jnp.array([data], f64),
        jnp.array([fixed], f64),
        jnp.array([tensor], f64),
    )


_fit = jax.jit(cz.fit_r, static_argnums=1)


def test_fit_r_one_multipole_analytic():
    # -2 ln L = nu (ln m + D / m), m = a + b r: minimum at m = D, Delta = 1 at a root of
    # nu (ln(m / D) + D / m - 1) = 1 above it.
    a, b, D, nu = 2.0, 3.0, 2.9, 40.0
    r_fit, sigma_r, found = _fit(_one_multipole(a, b, D, nu), False)
    np.testing.assert_allclose(r_fit, (D - a) / b, rtol=1e-12)

    def delta(r):
        m = a + b * r
        return nu * (np.log(m / D) + D / m - 1) - 1

    r1 = scipy.optimize.brentq(delta, (D - a) / b, 10.0, xtol=1e-15)
    np.testing.assert_allclose(sigma_r, r1 - (D - a) / b, rtol=1e-10)
    assert bool(found)
    # Data below the model at r = 0: the best fit sits on the bound r = 0.
    r_fit, sigma_r, _ = _fit(_one_multipole(a, b, 1.5, nu), False)
    assert float(r_fit) == 0.0 and float(sigma_r) > 0


def test_fit_r_gradients_follow_the_implicit_function_theorem():
    a, b, D, nu = 2.0, 3.0, 2.9, 40.0
    lik = _one_multipole(a, b, D, nu)
    grads = jax.grad(lambda lk: _fit(lk, False)[0])(lik)
    # r* = (D - a) / b: d/dD = 1/b, d/da = -1/b, d/db = -(D - a)/b^2, d/dnu = 0.
    np.testing.assert_allclose(grads.data[0], 1 / b, rtol=1e-10)
    np.testing.assert_allclose(grads.fixed[0], -1 / b, rtol=1e-10)
    np.testing.assert_allclose(grads.tensor[0], -(D - a) / b**2, rtol=1e-10)
    np.testing.assert_allclose(grads.dof[0], 0.0, atol=1e-12)

    def sigma(lk):
        return _fit(lk, False)[1]

    g = jax.grad(sigma)(lik)
    eps = 1e-6
    for field in ("data", "fixed", "tensor", "dof"):
        value = getattr(lik, field)
        up = sigma(lik._replace(**{field: value * (1 + eps)}))
        dn = sigma(lik._replace(**{field: value * (1 - eps)}))
        fd = (up - dn) / (2 * eps * value[0])
        np.testing.assert_allclose(getattr(g, field)[0], fd, rtol=1e-5, atol=1e-12)


def test_sigma_r_68cl_gaussian_limit():
    # Many well-measured multipoles: a Gaussian likelihood far from r = 0, where the 68%
    # integral above the peak ends at 0.994 sigma (the Delta = 1 crossing).
    n = 200
    f64 = jnp.float64
    lik = cz.RLikelihood(
        jnp.full(n, 500.0, f64), jnp.full(n, 1.5, f64), jnp.ones(n, f64), jnp.ones(n, f64)
    )
    r_fit, s_delta, _ = _fit(lik, False)
    r_68, s_68, found = _fit(lik, True)
    np.testing.assert_allclose(r_fit, 0.5, rtol=1e-12)
    assert float(r_68) == float(r_fit) and bool(found)
    from scipy.special import erfinv

    q = np.sqrt(2) * erfinv(0.68)  # 0.9945: one-sided 68% of a half Gaussian
    np.testing.assert_allclose(s_68 / s_delta, q, rtol=3e-3)


def test_r_fit_and_sigma_r_are_differentiable_in_the_spectral_parameters(xf_golden_chain):
    """d(r_fit, sigma_r)/dx (Sigma and spectra held fixed) by forward-mode autodiff through W,
    its derivatives, the residuals and the root finding, vs central finite differences."""
    _, inp, out, res = xf_golden_chain
    mm = MixingMatrix(*COMPONENTS)
    freqs = as_frequencies(inp["instrument__frequency"])
    n_inv = jnp.asarray((hp.nside2resol(16, arcmin=True) / inp["instrument__depth_p"]) ** 2)
    _, cl_bb, _ = cz.foreground_cross_spectra(inp["d_fgs"], 31)
    cl = jnp.asarray(cl_bb[..., 2:])
    Sigma = jnp.asarray(out["Sigma"])
    fixed = res.likelihood

    def target(x):
        w, w_dB, w_dBdB = cz.cmb_weights(mm, freqs, x, n_inv, 0)
        sp = cz.foreground_residual_spectra(w, w_dB, w_dBdB, Sigma, cl)
        lik = fixed._replace(data=fixed.data - res.bias + sp.bias)
        r_fit, sigma_r, _ = cz.fit_r(lik)
        return jnp.stack([r_fit, sigma_r])

    value_and_jac = jax.jit(lambda x: (target(x), jax.jacfwd(target)(x)))
    x0 = jnp.asarray(out["x"])
    value, jac = value_and_jac(x0)
    np.testing.assert_allclose(value, [res.r_fit, res.sigma_r], rtol=1e-12)
    step = 1e-5 * np.sqrt(np.diag(out["Sigma"]))
    for i in range(3):
        e = jnp.zeros(3).at[i].set(step[i])
        fd = (value_and_jac(x0 + e)[0] - value_and_jac(x0 - e)[0]) / (2 * step[i])
        np.testing.assert_allclose(jac[:, i], fd, rtol=2e-4)


# -- bad input -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_case(xf_case):
    """The golden maps at nside 8 (cheap transforms) and the golden best fit."""
    _, inp, out, _ = xf_case
    d = np.stack([hp.ud_grade(m, 8) for m in inp["d_fgs"].reshape(-1, 3072)]).reshape(15, 2, -1)
    return inp, out, d


def _small_separation(out):
    def separate(mm, freqs, d_pix, n_inv, x0, minimize_kwargs):
        return cz._Separation(out["x"], out["Sigma"], out["Sigma_inv"], None, None)

    return separate


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(lmin=10, lmax=10), "`lmin` must be smaller than `lmax`"),
        (dict(lmin=12, lmax=5), "`lmin` must be smaller than `lmax`"),
        (dict(lmin=2, lmax=24), r"`lmax` must be at most 3 \* nside - 1 = 23"),
        (dict(lmin=-1, lmax=10), "`lmin` must be >= 0"),
        (dict(r=-0.01), "`r` must be finite and >= 0"),
        (dict(Alens=-1.0), "`Alens` must be finite and >= 0"),
        (dict(BuBu=np.ones(7)), "`BuBu` must hold C_ell"),
    ],
)
def test_xforecast_rejects_bad_arguments(small_case, kwargs, match):
    inp, out, d = small_case
    call = dict(lmin=2, lmax=20) | kwargs
    with pytest.raises(ValueError, match=match):
        cz.xForecast(COMPONENTS, _instrument(inp), d, _separate=_small_separation(out), **call)


def test_xforecast_l_knee_and_multires(small_case):
    inp, out, d = small_case
    sep = _small_separation(out)
    base = cz.xForecast(COMPONENTS, _instrument(inp), d, 2, 20, _separate=sep)
    knee = cz.xForecast(
        COMPONENTS, _instrument(inp), d, 2, 20, l_knee=10, alpha_knee=1.5, _separate=sep
    )
    boost = 1 + (10 / base.ell) ** 1.5
    # fgbuster boosts the noise (and reports it boosted) and the trace of Sigma YY in the
    # likelihood, not the reported statistical residuals.
    np.testing.assert_allclose(knee.noise, base.noise * boost, rtol=1e-14)
    np.testing.assert_array_equal(knee.stat, base.stat)
    np.testing.assert_allclose(
        knee.likelihood.fixed - base.likelihood.fixed,
        (boost - 1) * (base.noise + base.stat),
        rtol=1e-10,
    )
    assert knee.sigma_r > base.sigma_r
    multi = cz.xForecast(COMPONENTS, _instrument(inp), d, 2, 20, multires=True, _separate=sep)
    terms = [
        cz.get_post_comp_sep_power(
            COMPONENTS, _instrument(inp), 8, ns, pol=True, pol_angle=(0, 0, 0)
        )[0, 0:19]
        for ns in ((64, 8, 4), (64, 4, 2), (64, 0, 2))
    ]
    np.testing.assert_allclose(multi.stat, sum(terms) / 6, rtol=1e-12)
    np.testing.assert_array_equal(multi.bias, base.bias)


def test_xforecast_rejects_bad_maps_and_components(small_case):
    inp, out, d = small_case
    comps = COMPONENTS
    sep = _small_separation(out)
    with pytest.raises(ValueError, match=r"`d_fgs` must have shape \(n_freq, n_stokes, n_pix\)"):
        cz.xForecast(comps, _instrument(inp), d[:, 0], 2, 20, _separate=sep)
    with pytest.raises(ValueError, match="`d_fgs` has 14 frequency maps"):
        cz.xForecast(comps, _instrument(inp), d[:-1], 2, 20, _separate=sep)
    with pytest.raises(ValueError, match="not a HEALPix map size"):
        cz.xForecast(comps, _instrument(inp), d[..., :-1], 2, 20, _separate=sep)
    with pytest.raises(ValueError, match="`components` 'CMB' is not one of"):
        cz.xForecast(comps[1:], _instrument(inp), d, 2, 20, _separate=sep)
    with pytest.raises(ValueError, match="`depth_p`"):
        cz.xForecast(comps, {"frequency": inp["instrument__frequency"]}, d, 2, 20, _separate=sep)


def test_xforecast_rejects_maps_with_cmb(small_case):
    inp, out, d = small_case
    from fgjax._spectra import cmb_spectra

    s = cmb_spectra(3 * 8 - 1)
    np.random.seed(3)  # synfast draws from NumPy's global generator
    cmb = hp.synfast(s.lensed_scalar, 8, new=True, pol=True)[1:]  # rows TT, EE, BB, TE
    with pytest.raises(ValueError, match="must hold foregrounds only"):
        cz.xForecast(
            COMPONENTS, _instrument(inp), d + cmb[None], 2, 20, _separate=_small_separation(out)
        )


def test_statistical_information_and_power_reject_bad_input():
    comps = [CMB(), Dust(353.0), Synchrotron(30.0)]
    nu = np.array([30.0, 100.0, 353.0, 400.0])
    with pytest.raises(ValueError, match="At least one of `var_t` and `var_p`"):
        cz.get_statistical_information(comps, nu)
    with pytest.raises(ValueError, match=r"`var_p` must have shape \(4,\)"):
        cz.get_statistical_information(comps, nu, var_p=np.ones(3))
    inst = {"frequency": nu, "depth_p": np.ones(4)}
    with pytest.raises(ValueError, match="At least one of `temp` and `pol`"):
        cz.get_post_comp_sep_power(comps, inst, 4, [4, 0, 4])
    with pytest.raises(ValueError, match="`nsides` must give one resolution per"):
        cz.get_post_comp_sep_power(comps, inst, 4, [4, 0], pol=True)
    with pytest.raises(ValueError, match="`temp=True` needs `instrument.depth_i`"):
        cz.get_post_comp_sep_power(comps, inst, 4, [4, 0, 4], temp=True)
