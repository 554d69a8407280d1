"""Tests of the harmonic-domain recipe :func:`fgjax._harmonic.harmonic_comp_sep`."""

import healpy as hp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import fgjax
from fgjax._harmonic import harmonic_comp_sep, real_coefficients
from fgjax._likelihood import DiagonalInvN, fisher_logL_dB_dB, logL
from fgjax._mixing import MixingMatrix

NSIDE = 32
LMAX = 3 * NSIDE - 1
LMIN = 2
FREQS = np.array([30.0, 40.0, 70.0, 100.0, 150.0, 220.0, 280.0, 353.0])
DEPTH_P = np.array([20.0, 15.0, 8.0, 5.0, 4.0, 8.0, 12.0, 30.0])  # uK_CMB arcmin
TRUTH = np.array([1.54, 20.0, -3.0])  # Dust.beta_d, Dust.temp, Synchrotron.beta_pl
X0 = np.array([1.7, 17.0, -2.8])  # start away from the truth
MM = MixingMatrix(fgjax.CMB(), fgjax.Dust(nu0=353.0), fgjax.Synchrotron(nu0=30.0))
INSTRUMENT = {"frequency": FREQS, "depth_p": DEPTH_P}


def _amplitude_alms(seed, nside=NSIDE, pol=True):
    """Gaussian alms of a power-law spectrum for CMB, dust, synchrotron: (3, [2,] n_alm)."""
    rng = np.random.default_rng(seed)
    lmax = 3 * nside - 1
    ell = np.arange(lmax + 1)
    cl = np.where(ell >= 2, (ell + 1.0) ** -2.0, 0.0)
    np.random.seed(int(rng.integers(2**31)))  # hp.synalm draws from numpy's global state
    alms = []
    for scale in (1.0, 30.0, 10.0):
        if pol:  # (TT, EE, BB, TE): E and B only
            a = hp.synalm([0 * cl, cl, 0.5 * cl, 0 * cl], lmax=lmax, new=True)[1:]
        else:
            a = hp.synalm(cl, lmax=lmax)
        alms.append(scale * np.asarray(a))
    return np.stack(alms)


def _qu_maps(alms, nside=NSIDE):
    """(3, 2, n_pix) Q, U maps of E, B alms (3, 2, n_alm)."""
    return np.stack(
        [hp.alm2map(np.stack([0 * a[0], a[0], a[1]]), nside, pol=True)[1:] for a in alms]
    )


@pytest.fixture(scope="module")
def sky():
    alms = _amplitude_alms(0)
    amps = _qu_maps(alms)  # (n_comp, 2, n_pix)
    A = np.asarray(MM.eval(FREQS, *TRUTH))
    d = np.einsum("fc,csp->fsp", A, amps)
    return alms, d


@pytest.fixture(scope="module")
def noisy(sky):
    _, d = sky
    rng = np.random.default_rng(1)
    sigma_pix = DEPTH_P / hp.nside2resol(NSIDE, arcmin=True)  # white noise per pixel (uK)
    noise = rng.standard_normal(d.shape) * sigma_pix[:, None, None]
    data = d + noise
    return data, harmonic_comp_sep(MM, INSTRUMENT, data, x0=X0)


def _real(alm, lmax=LMAX, lmin=LMIN):
    """Independent real coefficients: Re a_l0, sqrt2 Re a_lm, sqrt2 Im a_lm (m > 0)."""
    ell, m = hp.Alm.getlm(lmax)
    zero, pos = (ell >= lmin) & (m == 0), (ell >= lmin) & (m > 0)
    coef = np.concatenate(
        [alm[..., zero].real, np.sqrt(2) * alm[..., pos].real, np.sqrt(2) * alm[..., pos].imag],
        axis=-1,
    )
    return coef, np.concatenate([ell[zero], ell[pos], ell[pos]])


def _coefficient_problem(data, lmax=LMAX, lmin=LMIN):
    """Data (n_coef * 2, n_freq) and per-coefficient white inverse noise, from scratch."""
    alm = np.stack(
        [hp.map2alm(np.stack([0 * m[0], m[0], m[1]]), lmax=lmax, iter=3)[1:] for m in data]
    )  # (n_freq, 2, n_alm)
    coef, _ = _real(alm, lmax, lmin)  # (n_freq, 2, n_coef)
    d = coef.reshape(coef.shape[0], -1).T
    depth_rad = DEPTH_P * np.pi / (180 * 60)
    n_inv = np.broadcast_to(1.0 / depth_rad**2, d.shape)
    return jnp.asarray(d), jnp.asarray(n_inv)


def _neg_logL(x, d, n_inv):
    return -logL(MM(FREQS, x), d, DiagonalInvN(n_inv))


# Compiled once for both tests using them (same shapes): differentiating logL is the slow part.
_VALUE_AND_GRAD = jax.jit(jax.value_and_grad(_neg_logL))
_HESSIAN = jax.jit(jax.hessian(_neg_logL))


def test_real_coefficients_preserve_power():
    alm = _amplitude_alms(3, nside=8, pol=False)[0]
    coef, ell = real_coefficients(alm, 23, lmin=2)
    power = np.bincount(ell, coef**2, minlength=24)[2:]
    # alm2cl is the mean over m = -l..l of |a_lm|^2: same sum, rounding only.
    np.testing.assert_allclose(power, (2 * np.arange(2, 24) + 1) * hp.alm2cl(alm)[2:], rtol=1e-12)


def test_noiseless_recovery(sky):
    alms, d = sky
    res = harmonic_comp_sep(MM, INSTRUMENT, d, x0=X0)
    assert res.success
    assert res.params == ["Dust.beta_d", "Dust.temp", "Synchrotron.beta_pl"]
    # Noise-free data A(x*) s: the likelihood peaks exactly at the truth (Newton tolerance).
    np.testing.assert_allclose(res.x, TRUTH, rtol=1e-6)
    # map2alm is the same linear map for every frequency, so W d recovers its amplitudes.
    ell = hp.Alm.getlm(LMAX)[0]
    ref = np.stack(
        [
            np.asarray(hp.map2alm(np.stack([0 * m[0], m[0], m[1]]), lmax=LMAX, iter=3))[1:]
            for m in _qu_maps(alms)
        ]
    )
    assert res.s.shape == (3, 2, hp.Alm.getsize(LMAX))
    np.testing.assert_allclose(
        res.s[..., ell >= LMIN], ref[..., ell >= LMIN], atol=1e-8 * np.abs(ref).max()
    )
    assert np.all(res.s[..., ell < LMIN] == 0)
    assert res.cl_in.shape == (8, 2, LMAX + 1) and res.cl_out.shape == (3, 2, LMAX + 1)
    assert res.fsky == 1.0 and (res.lmin, res.lmax) == (LMIN, LMAX)


def test_noiseless_sigma_is_inverse_hessian(sky):
    _, d = sky
    res = harmonic_comp_sep(MM, INSTRUMENT, d, x0=X0)
    dc, invN = _coefficient_problem(d)
    H = _HESSIAN(jnp.asarray(TRUTH), dc, invN)
    # At the truth on noise-free data the Hessian of -logL is fgbuster's Fisher matrix.
    np.testing.assert_allclose(res.Sigma, np.linalg.inv(np.asarray(H)), rtol=1e-6)


def test_noisy_fit_within_errors(noisy):
    _, res = noisy
    assert res.success
    assert np.all(np.linalg.eigvalsh(res.Sigma) > 0)
    sigma = np.sqrt(np.diag(res.Sigma))
    assert np.all(np.abs(res.x - TRUTH) < 4 * sigma), (res.x, sigma)
    np.testing.assert_allclose(res.Sigma @ res.Sigma_inv, np.eye(3), atol=1e-8)


def test_noisy_fit_matches_independent_minimisation(noisy):
    data, res = noisy
    dc, invN = _coefficient_problem(data)

    def fun(x):
        value, grad = _VALUE_AND_GRAD(jnp.asarray(x), dc, invN)
        return float(value), np.asarray(grad)

    def hess(x):
        return np.asarray(_HESSIAN(jnp.asarray(x), dc, invN))

    opt = scipy.optimize.minimize(
        fun, X0, jac=True, hess=hess, method="trust-exact", options={"gtol": 1e-3}
    )
    assert opt.success, opt.message
    sigma = np.sqrt(np.diag(res.Sigma))
    # Same likelihood written on the real coefficients, two optimisers: far below sigma
    # (gtol 1e-3 on a gradient of scale sqrt(F) ~ 1e3 per sigma: ~1e-6 sigma).
    assert np.all(np.abs(res.x - opt.x) < 1e-3 * sigma), (res.x, opt.x, sigma)
    # fgbuster's Fisher from the amplitudes s = W d, computed coefficient by coefficient.
    s_coef, ell = _real(res.s)  # (n_comp, 2, n_coef)
    s_coef = s_coef.reshape(3, -1).T
    A, A_dB, _ = MM.taylor(FREQS, jnp.asarray(res.x), second=False)
    F = fisher_logL_dB_dB(
        A, jnp.asarray(s_coef), [a[:, None] for a in A_dB], MM.comp_of_param, DiagonalInvN(invN)
    )
    np.testing.assert_allclose(res.Sigma_inv, np.asarray(F), rtol=1e-6)


def test_temperature_with_beams_and_user_invN():
    nside, lmax = 16, 23  # band-limited at 1.5 nside: map2alm nearly exact
    freqs = FREQS[:6]
    fwhm = np.array([120.0, 100.0, 80.0, 60.0, 60.0, 60.0])  # arcmin
    depth = np.array([10.0, 8.0, 5.0, 4.0, 6.0, 20.0])
    np.random.seed(5)
    cl = np.where(np.arange(lmax + 1) >= 2, (np.arange(lmax + 1) + 1.0) ** -2.0, 0.0)
    alms = np.stack([scale * hp.synalm(cl, lmax=lmax) for scale in (1.0, 30.0, 10.0)])
    d_alm = np.einsum("fc,ca->fa", np.asarray(MM.eval(freqs, *TRUTH)), alms)
    maps = np.stack(
        [
            hp.alm2map(hp.almxfl(a, hp.gauss_beam(np.radians(b / 60), lmax)), nside, lmax=lmax)
            for a, b in zip(d_alm, fwhm, strict=True)
        ]
    )
    inst = {"frequency": freqs, "depth_i": depth, "fwhm": fwhm}
    res = harmonic_comp_sep(MM, inst, maps, lmax=lmax, x0=X0)
    assert res.success
    # map2alm's quadrature error (~1e-7), amplified by the beam deconvolution, differs
    # between frequencies: the truth to a few 1e-6 only (far below any noise error).
    np.testing.assert_allclose(res.x, TRUTH, rtol=2e-5)
    assert res.s.shape == (3, hp.Alm.getsize(lmax)) and res.cl_in.shape == (6, lmax + 1)
    # A user inverse noise equal to the default white one gives the same fit.
    bl = np.stack([hp.gauss_beam(np.radians(b / 60), lmax) for b in fwhm], axis=-1)
    invN = bl**2 / (depth * np.pi / (180 * 60)) ** 2  # (lmax + 1, n_freq) diagonal
    res_user = harmonic_comp_sep(MM, inst, maps, invN=invN, lmax=lmax, x0=X0)
    np.testing.assert_allclose(res_user.x, res.x, rtol=1e-10)
    # Sigma is evaluated at each fit's own end point (equal to ~1e-10): a few 1e-10 apart
    np.testing.assert_allclose(res_user.Sigma, res.Sigma, rtol=1e-9)
    full = np.einsum("lf,fg->lfg", invN[LMIN:], np.eye(6))  # (lmax - lmin + 1, f, f)
    res_full = harmonic_comp_sep(MM, inst, maps, invN=full, lmax=lmax, x0=X0)
    np.testing.assert_allclose(res_full.x, res.x, rtol=1e-8)
    np.testing.assert_allclose(res_full.Sigma, res.Sigma, rtol=1e-8)
    per_field = harmonic_comp_sep(MM, inst, maps, invN=full[:, None], lmax=lmax, x0=X0)
    np.testing.assert_allclose(per_field.x, res_full.x, rtol=1e-12)


@pytest.mark.slow
def test_float32_fit(sky, caplog):
    _, d = sky
    with jax.enable_x64(False), caplog.at_level("WARNING", logger="fgjax._harmonic"):
        res = harmonic_comp_sep(MM, INSTRUMENT, d, x0=X0)
    assert "float32" in caplog.text
    assert res.success
    # float32 rounding of the covariances only: far below the statistical errors.
    sigma = np.sqrt(np.diag(res.Sigma))
    assert np.all(np.abs(res.x - TRUTH) < 0.05 * sigma), (res.x, sigma)


def test_mask_and_unseen_are_equivalent(sky):
    _, d = sky
    mask = np.ones(d.shape[-1])
    mask[: d.shape[-1] // 4] = 0
    res_mask = harmonic_comp_sep(MM, INSTRUMENT, d, mask=mask, x0=X0)
    unseen = np.where(mask > 0, d, hp.UNSEEN)
    res_unseen = harmonic_comp_sep(MM, INSTRUMENT, unseen, x0=X0)
    np.testing.assert_allclose(res_unseen.x, res_mask.x, rtol=1e-12)
    assert res_mask.fsky == pytest.approx(0.75)
    # Noise-free: the masked sky is still A(x*) times the (masked) amplitudes.
    np.testing.assert_allclose(res_mask.x, TRUTH, rtol=1e-6)


def test_iqu_input_fits_e_and_b_only(sky):
    _, d = sky
    res_qu = harmonic_comp_sep(MM, INSTRUMENT, d, x0=X0)
    intensity = np.random.default_rng(7).standard_normal((d.shape[0], 1, d.shape[-1]))
    res_iqu = harmonic_comp_sep(MM, INSTRUMENT, np.concatenate([intensity, d], axis=1), x0=X0)
    # map2alm's spin-2 transform does not see I: same E, B alms up to rounding.
    np.testing.assert_allclose(res_iqu.x, res_qu.x, rtol=1e-10)
    np.testing.assert_allclose(res_iqu.Sigma, res_qu.Sigma, rtol=1e-8)


def _bad_calls():
    npix = hp.nside2npix(8)
    d = np.ones((8, 2, npix))
    inst = {"frequency": FREQS, "depth_p": DEPTH_P}
    return [
        ((MM, inst, np.ones((8, 4, npix))), {}, "`data`"),
        ((MM, inst, np.ones(npix)), {}, "`data`"),
        ((MM, inst, np.ones((8, 2, 100))), {}, "`data`"),
        ((MM, {"frequency": FREQS[:5], "depth_p": DEPTH_P[:5]}, d), {}, "`instrument`"),
        ((MM, inst, d), {"lmin": 10, "lmax": 10}, "`lmin`"),
        ((MM, inst, d), {"lmax": 24}, "`lmax`"),
        ((MM, inst, d), {"invN": np.ones((24, 7))}, "`invN`"),
        ((MM, inst, d), {"invN": np.full((24, 8), np.nan)}, "`invN`"),
        ((MM, inst, d), {"invN": -np.ones((24, 8))}, "`invN`"),
        ((MM, inst, d), {"invN": np.ones((24, 8, 8))}, "`invN`"),  # singular
        ((MM, {"frequency": FREQS}, d), {}, "`invN`.*`instrument`"),
        ((MM, inst, d), {"mask": np.ones(10)}, "`mask`"),
        ((MM, inst, d), {"x0": np.ones(2)}, "`x0`"),
        ((MM, inst, d), {"bounds": [(0, 1)]}, "`bounds`"),
    ]


@pytest.mark.parametrize("args, kwargs, match", _bad_calls())
def test_bad_input_raises(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        harmonic_comp_sep(*args, **kwargs)
