"""Native spectral likelihood and fits: oracles, fast path, transformations, bad input."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgjax
from fgjax._likelihood import (
    DiagonalInvN,
    P,
    W,
    Wd,
    data_covariance,
    fisher_logL_dB_dB,
    invAtNA,
    logL,
    logL_dB,
    logL_from_covariance,
    logL_noise_mismatch,
)
from fgjax._optimize import comp_sep, minimize, multi_comp_sep
from fgjax._results import RESULTS

NU = jnp.array([30.0, 44.0, 70.0, 100.0, 143.0, 217.0, 353.0])
MM = fgjax.MixingMatrix(fgjax.CMB(), fgjax.Dust(nu0=353.0, temp=20.0), fgjax.Synchrotron(nu0=30.0))
MIXING = functools.partial(MM, NU)
X_TRUE = jnp.array([1.54, -3.0])
N_PARAM = 2
N_FREQ, N_COMP, N_PIX = 7, 3, 40


def _sky(seed=0, n_pix=N_PIX, sigma=None):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_pix, 2, N_COMP)) * np.array([50.0, 30.0, 20.0])
    sigma = np.linspace(0.5, 2.0, N_FREQ) if sigma is None else sigma
    d = np.asarray(MIXING(X_TRUE)) @ s[..., None]
    d = d[..., 0] + rng.normal(size=(n_pix, 2, N_FREQ)) * sigma
    return jnp.asarray(d), jnp.asarray(1.0 / sigma**2)


D_DATA, N_INV = _sky()
INVN_FULL = jnp.diag(N_INV)


def _analytic_logL_dB_and_fisher(A, A_dB_full, d, invN):
    """fgbuster's closed forms (prewhitened SVD), NumPy: the oracle."""
    L = np.linalg.cholesky(invN)
    Ap = L.T @ A
    u, e, vt = np.linalg.svd(Ap, full_matrices=False)
    dp = d @ L  # (..., n_freq): L^T d per block
    s = (dp @ u / e) @ vt  # Wd
    Dd = dp - (dp @ u) @ u.T
    grads, DAs = [], []
    for Ai in A_dB_full:
        Ais = s @ (L.T @ Ai).T  # (..., n_freq)
        grads.append(np.sum(Ais * Dd))
        DAs.append(Ais - (Ais @ u) @ u.T)
    fisher = np.array([[np.sum(a * b) for b in DAs] for a in DAs])
    return np.array(grads), fisher, s


def test_autodiff_gradient_and_fisher_match_analytic_formulas():
    A = np.asarray(MIXING(X_TRUE + 0.01))
    J = np.asarray(jax.jacfwd(MIXING)(X_TRUE + 0.01))  # (n_freq, n_comp, n_param)
    A_dB_full = [J[..., i] for i in range(N_PARAM)]
    grad_ref, fisher_ref, s = _analytic_logL_dB_and_fisher(
        A, A_dB_full, np.asarray(D_DATA), np.asarray(INVN_FULL)
    )
    cols = MM.comp_of_param
    A_dB = [J[:, c : c + 1, i] for i, c in enumerate(cols)]
    got = logL_dB(A, D_DATA, INVN_FULL, A_dB, cols)
    np.testing.assert_allclose(got, grad_ref, rtol=1e-9)
    # gradient in x through the mixing matrix: chain rule of the same quantity
    gx = jax.grad(lambda x: logL(MIXING(x), D_DATA, INVN_FULL))(X_TRUE + 0.01)
    np.testing.assert_allclose(gx, grad_ref, rtol=1e-9)
    F = fisher_logL_dB_dB(A, s, A_dB, cols, INVN_FULL)
    np.testing.assert_allclose(F, fisher_ref, rtol=1e-9)
    # Hessian of -logL in x at the noise-free data A s equals the Fisher matrix
    d_model = jnp.asarray(s @ A.T)
    H = jax.hessian(lambda x: -logL(MIXING(x), d_model, INVN_FULL))(X_TRUE + 0.01)
    np.testing.assert_allclose(H, fisher_ref, rtol=1e-7)


@pytest.mark.parametrize("kind", [pytest.param("none", marks=pytest.mark.slow), "diag", "full"])
def test_fast_path_equals_general_path(kind):
    invN = {"none": None, "diag": DiagonalInvN(N_INV), "full": INVN_FULL}[kind]
    C = data_covariance(D_DATA, invN)

    def general(x):
        return logL(MIXING(x), D_DATA, invN)

    def fast(x):
        return logL_from_covariance(MIXING(x), C, invN)[0]

    x = X_TRUE + 0.02
    np.testing.assert_allclose(fast(x), general(x), rtol=1e-12)
    np.testing.assert_allclose(jax.grad(fast)(x), jax.grad(general)(x), rtol=1e-9)


def test_patch_covariances_are_per_patch_sums():
    ids = jnp.arange(N_PIX) % 3
    C = data_covariance(D_DATA, INVN_FULL, ids)
    for p in range(3):
        np.testing.assert_allclose(C[p], data_covariance(D_DATA[ids == p], INVN_FULL), rtol=1e-12)


def test_masked_pixels_change_nothing():
    invN_pix = jnp.broadcast_to(INVN_FULL, (N_PIX, 1, N_FREQ, N_FREQ))
    extra = jnp.concatenate([D_DATA, 1e3 * jnp.ones((5, 2, N_FREQ))])
    invN_extra = jnp.concatenate([invN_pix, jnp.zeros((5, 1, N_FREQ, N_FREQ))])
    A = MIXING(X_TRUE)
    np.testing.assert_allclose(logL(A, extra, invN_extra), logL(A, D_DATA, invN_pix), rtol=1e-12)
    g = jax.grad(lambda x: logL(MIXING(x), extra, invN_extra))(X_TRUE)
    g0 = jax.grad(lambda x: logL(MIXING(x), D_DATA, invN_pix))(X_TRUE)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, g0, rtol=1e-10)
    s = Wd(A, extra, invN_extra)
    assert np.all(s[N_PIX:] == 0) and np.all(np.isfinite(s))
    # diagonal masking too
    diag = jnp.concatenate([jnp.broadcast_to(N_INV, (N_PIX, 1, N_FREQ)), jnp.zeros((5, 1, N_FREQ))])
    np.testing.assert_allclose(
        logL(A, extra, DiagonalInvN(diag)), logL(A, D_DATA, INVN_FULL), rtol=1e-12
    )


def test_jit_and_vmap_match_plain_calls():
    A = MIXING(X_TRUE)
    plain = jnp.stack([logL(A, D_DATA[i], INVN_FULL) for i in range(3)])
    batched = jax.vmap(lambda d: logL(A, d, INVN_FULL))(D_DATA[:3])
    np.testing.assert_allclose(batched, plain, rtol=1e-13)
    np.testing.assert_allclose(
        jax.jit(logL)(A, D_DATA, INVN_FULL), logL(A, D_DATA, INVN_FULL), rtol=1e-13
    )


def test_operator_identities():
    A = MIXING(X_TRUE)
    W_ = W(A, INVN_FULL)
    np.testing.assert_allclose(W_ @ A, np.eye(N_COMP), atol=1e-10)
    P_ = P(A, INVN_FULL)
    np.testing.assert_allclose(P_ @ P_, P_, atol=1e-10)
    np.testing.assert_allclose(
        invAtNA(A, INVN_FULL), np.linalg.inv(A.T @ INVN_FULL @ A), rtol=1e-10
    )
    # noise bias: n_comp / 2 per block when the true noise is the assumed one
    N_true = jnp.broadcast_to(jnp.linalg.inv(INVN_FULL), (5, N_FREQ, N_FREQ))
    np.testing.assert_allclose(
        logL_noise_mismatch(A, INVN_FULL, N_true), 5 * N_COMP / 2, rtol=1e-10
    )


def test_minimize_traces_objective_once():
    traces = []

    def counted(x, args):
        traces.append(1)  # runs only while tracing
        C, invN = args
        return -logL_from_covariance(MIXING(x), C, invN)[0]

    C = data_covariance(D_DATA, INVN_FULL)
    res = minimize(counted, X_TRUE + 0.1, (C, INVN_FULL), method="L-BFGS-B")
    assert res.nfev > 3
    assert len(traces) == 1  # one trace of value_and_grad, reused by every step


_FIT_KW = {"method": "L-BFGS-B", "options": {"ftol": 0.0, "gtol": 1e-10, "maxiter": 500}}


def test_comp_sep_fast_and_pixel_paths_agree():
    fast = comp_sep(MIXING, D_DATA, INVN_FULL, X_TRUE + 0.05, **_FIT_KW)
    invN_pix = jnp.broadcast_to(INVN_FULL, (N_PIX, 1, N_FREQ, N_FREQ))
    pix = comp_sep(MIXING, D_DATA, invN_pix, X_TRUE + 0.05, **_FIT_KW)
    sigma = np.sqrt(np.diag(fast.Sigma))
    assert np.all(np.abs(fast.x - pix.x) < 1e-3 * sigma)
    np.testing.assert_allclose(fast.Sigma, pix.Sigma, rtol=1e-5)
    assert fast.result == RESULTS.successful
    assert np.all(np.abs(fast.x - X_TRUE) < 5 * sigma)  # statistically sound fit


@pytest.mark.slow
def test_optax_optimisers_reach_the_scipy_minimum():
    ref = comp_sep(MIXING, D_DATA, INVN_FULL, X_TRUE + 0.05, **_FIT_KW)
    sigma = np.sqrt(np.diag(ref.Sigma))
    lb = comp_sep(
        MIXING,
        D_DATA,
        INVN_FULL,
        X_TRUE + 0.05,
        method="optax.lbfgs",
        options={"maxiter": 200, "ftol": 0.0, "gtol": 1e-6},
    )
    assert np.all(np.abs(lb.x - ref.x) < 1e-3 * sigma)
    adam = comp_sep(
        MIXING,
        D_DATA,
        INVN_FULL,
        X_TRUE + 0.05,
        method="optax.adam",
        options={"maxiter": 3000, "learning_rate": 1e-3, "ftol": 0.0},
    )
    assert np.all(np.abs(adam.x - ref.x) < 0.1 * sigma)


@pytest.mark.slow
def test_multi_comp_sep_batched_equals_separate_fits():
    ids = jnp.arange(N_PIX) % 2
    res = multi_comp_sep(MIXING, D_DATA, INVN_FULL, X_TRUE + 0.05, ids, **_FIT_KW)
    assert res.x.shape == (2, N_PARAM) and res.Sigma.shape == (2, N_PARAM, N_PARAM)
    for p in range(2):
        one = comp_sep(MIXING, D_DATA[ids == p], INVN_FULL, X_TRUE + 0.05, **_FIT_KW)
        sigma = np.sqrt(np.diag(one.Sigma))
        assert np.all(np.abs(res.x[p] - one.x) < 1e-3 * sigma)
        np.testing.assert_allclose(res.Sigma[p], one.Sigma, rtol=1e-4)
        # s moves with x (here by < 1e-3 sigma): compare at that level
        np.testing.assert_allclose(res.s[ids == p], one.s, rtol=0, atol=1e-3 * np.abs(one.s).max())
    # an empty patch gets nan parameters
    res3 = multi_comp_sep(MIXING, D_DATA, INVN_FULL, X_TRUE + 0.05, ids, n_patch=3, **_FIT_KW)
    assert np.all(np.isnan(res3.x[2])) and np.all(np.isfinite(res3.x[:2]))


def _degenerate(x):
    """Dust and twice dust: two proportional columns whatever the parameters."""
    A = MIXING(x)
    return jnp.stack([A[:, 0], A[:, 1], 2.0 * A[:, 1]], axis=-1)


def test_degenerate_mixing_matrix_raises_on_direct_call():
    A = _degenerate(X_TRUE)
    with pytest.raises(Exception, match="singular"):
        logL(A, D_DATA, INVN_FULL)
    assert np.isnan(logL(A, D_DATA, INVN_FULL, throw=False))


@pytest.mark.slow
def test_degenerate_mixing_matrix_is_a_status_in_a_fit():
    res = comp_sep(_degenerate, D_DATA, INVN_FULL, X_TRUE, method="L-BFGS-B")
    assert res.result == RESULTS.singular  # a status, not a crash


def test_bad_input_names_the_argument():
    A = MIXING(X_TRUE)
    with pytest.raises(ValueError, match="`d`"):
        logL(A, D_DATA[..., :-1], INVN_FULL)
    with pytest.raises(ValueError, match="`invN`"):
        logL(A, D_DATA, INVN_FULL[:-1])
    with pytest.raises(ValueError, match="leading"):
        logL(jnp.broadcast_to(A, (3, N_FREQ, N_COMP)), D_DATA, INVN_FULL)
    with pytest.raises(ValueError, match="`x0`"):
        comp_sep(MIXING, D_DATA, INVN_FULL, X_TRUE[:1])
    with pytest.raises(ValueError, match="`d`.*NaN"):
        comp_sep(MIXING, D_DATA.at[0, 0, 0].set(jnp.nan), INVN_FULL, X_TRUE)
    with pytest.raises(ValueError, match="symmetric"):
        comp_sep(MIXING, D_DATA, INVN_FULL.at[0, 1].set(1.0), X_TRUE)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["BFGS", "TNC", "Newton-CG", "trust-constr", "trust-exact"])
def test_scipy_methods_reach_the_same_minimum(method):
    ref = comp_sep(MIXING, D_DATA, INVN_FULL, X_TRUE + 0.05, **_FIT_KW)
    sigma = np.sqrt(np.diag(ref.Sigma))
    kw = {"bounds": [(0.5, 3.0), (-5.0, -1.0)]} if method in ("TNC", "trust-constr") else {}
    res = comp_sep(MIXING, D_DATA, INVN_FULL, X_TRUE + 0.05, method=method, tol=1e-12, **kw)
    assert np.all(np.abs(res.x - ref.x) < 1e-2 * sigma)


@pytest.mark.slow
def test_multi_comp_sep_per_pixel_diagonal_noise_and_mask():
    ids = jnp.arange(N_PIX) % 2
    diag = jnp.broadcast_to(N_INV, (N_PIX, 1, N_FREQ)).at[:3].set(0.0)  # 3 masked pixels
    res = multi_comp_sep(MIXING, D_DATA, DiagonalInvN(diag), X_TRUE + 0.05, ids, **_FIT_KW)
    full = jnp.broadcast_to(INVN_FULL, (N_PIX, 1, N_FREQ, N_FREQ)).at[:3].set(0.0)
    ref = multi_comp_sep(MIXING, D_DATA, full, X_TRUE + 0.05, ids, **_FIT_KW)
    sigma = np.sqrt(np.diagonal(ref.Sigma, axis1=-2, axis2=-1))
    assert np.all(np.abs(res.x - ref.x) < 1e-3 * sigma)
    assert np.all(res.s[:3] == 0) and np.all(np.isfinite(res.chi_dB[0]))


@pytest.mark.parametrize("kind", ["none", "diag", "full"])
def test_closed_form_hessian_equals_autodiff(kind):
    """logL_hessian_from_covariance against autodiff of logL_from_covariance in x."""
    from fgjax._likelihood import logL_hessian_from_covariance

    mm = fgjax.MixingMatrix(fgjax.CMB(), fgjax.Dust(nu0=353.0), fgjax.Synchrotron(nu0=30.0))
    invN = {"none": None, "diag": DiagonalInvN(N_INV), "full": INVN_FULL}[kind]
    C = data_covariance(D_DATA, invN)
    x = jnp.array([1.6, 18.0, -2.9])

    def value(x):
        return logL_from_covariance(mm(NU, x), C, invN)[0]

    A, A_dB, A_dBdB = mm.taylor(NU, x)
    v, g, H, singular = logL_hessian_from_covariance(A, A_dB, A_dBdB, mm.comp_of_param, C, invN)
    assert not singular
    np.testing.assert_allclose(v, value(x), rtol=1e-12)
    np.testing.assert_allclose(g, jax.grad(value)(x), rtol=1e-9, atol=1e-9 * abs(float(v)))
    np.testing.assert_allclose(H, jax.hessian(value)(x), rtol=1e-8, atol=1e-9 * abs(float(v)))
    v2, g2, H2, _ = logL_hessian_from_covariance(A, A_dB, None, mm.comp_of_param, C, invN)
    assert H2 is None
    np.testing.assert_allclose(g2, g, rtol=1e-14, atol=1e-14 * abs(float(v)))
    # Stokes blocks are summed, as every scalar of the module
    C2 = jnp.stack([C, 2 * C])
    v3, g3, H3, _ = logL_hessian_from_covariance(A, A_dB, A_dBdB, mm.comp_of_param, C2, invN)
    # gradients cancel from terms of the size of logL: compare at that scale
    np.testing.assert_allclose((v3, *g3), (3 * v, *(3 * g)), rtol=1e-12, atol=1e-13 * abs(v3))


def test_closed_form_hessian_flags_degenerate_columns():
    from fgjax._likelihood import logL_hessian_from_covariance

    mm = fgjax.MixingMatrix(fgjax.Synchrotron(nu0=30.0), fgjax.Synchrotron(nu0=70.0))
    A, A_dB, A_dBdB = mm.taylor(NU, jnp.array([-3.0, -3.0]))  # proportional columns
    C = data_covariance(D_DATA[..., :1, :])
    assert logL_hessian_from_covariance(A, A_dB, A_dBdB, mm.comp_of_param, C)[3]


def test_fisher_from_amplitude_covariance_equals_fgbuster_fisher():
    from fgjax._likelihood import fisher_from_amplitude_covariance

    x = X_TRUE + 0.01
    A = MIXING(x)
    J = jax.jacfwd(MIXING)(x)
    cols = MM.comp_of_param
    A_dB = [J[:, c : c + 1, i] for i, c in enumerate(cols)]
    s = Wd(A, D_DATA, INVN_FULL)  # (n_pix, 2, n_comp)
    F_ref = fisher_logL_dB_dB(A, s, A_dB, cols, INVN_FULL)
    _, A_dB_vec, _ = MM.taylor(NU, x, second=False)
    S = jnp.einsum("psc,psk->ck", s, s)
    F = fisher_from_amplitude_covariance(A, A_dB_vec, cols, S, INVN_FULL)
    np.testing.assert_allclose(F, F_ref, rtol=1e-10)
    F_diag = fisher_from_amplitude_covariance(A, A_dB_vec, cols, S, DiagonalInvN(N_INV))
    np.testing.assert_allclose(F_diag, F_ref, rtol=1e-10)


def test_batched_newton_solves_independent_problems():
    """Rosenbrock-like problems with different minima, bounds and one undefined start."""
    from fgjax._optimize import batched_newton

    centres = jnp.array([[1.0, 1.0], [2.0, 4.0], [-1.0, 1.0], [0.5, 0.25]])

    def one(x, c):
        return 100 * (x[1] - x[0] ** 2 - (c[1] - c[0] ** 2)) ** 2 + (x[0] - c[0]) ** 2

    def vgh(X):
        f = jax.vmap(one)(X, centres)
        g = jax.vmap(jax.grad(one))(X, centres)
        H = jax.vmap(jax.hessian(one))(X, centres)
        return f, g, H

    X0 = jnp.array([[-1.2, 1.0], [0.0, 0.0], [1.0, 1.0], [3.0, -2.0]])
    lo, hi = jnp.array([-jnp.inf, -jnp.inf]), jnp.array([jnp.inf, jnp.inf])
    X, done, nit = batched_newton(vgh, X0, lo, hi, 200, tol=1e-20)
    np.testing.assert_allclose(X, centres, atol=1e-8)
    assert bool(jnp.all(done)) and int(nit.max()) < 200
    # the default tol (decrement 1e-4): the last plain Newton step is taken without another
    # evaluation, and it leaves a decrement far below tol (quadratic convergence)
    X_tol, done_tol, nit_tol = batched_newton(vgh, X0, lo, hi, 200)
    _, g, H = vgh(X_tol)
    decrement = jnp.einsum("bi,bi->b", g, jnp.linalg.solve(H, g[..., None])[..., 0])
    assert bool(jnp.all(decrement < 1e-7)), decrement
    assert bool(jnp.all(done_tol)) and bool(jnp.all(nit_tol < nit))
    # a bound that excludes the minimum: the solution sits on it
    X, done, _ = batched_newton(vgh, X0, jnp.array([-jnp.inf, 1.5]), hi, 200, tol=1e-20)
    assert bool(jnp.all(X[:, 1] >= 1.5))
    np.testing.assert_allclose(X[1], centres[1], atol=1e-8)


def test_reciprocal_coordinates_chain_rule_and_bounds():
    """The value, gradient and Hessian in u = 1/x equal autodiff of f(1/u); bounds map to
    [1/hi, 1/lo]; starts or upper bounds that are not positive keep x."""
    from fgjax._optimize import reciprocal_bounds, reciprocal_mask, reciprocal_vgh, to_reciprocal

    def f(x):
        return jnp.sin(x[0]) * jnp.exp(0.1 * x[1]) + x[0] ** 2 / x[1]

    def vgh(X):
        return jax.vmap(f)(X), jax.vmap(jax.grad(f))(X), jax.vmap(jax.hessian(f))(X)

    mask = (False, True)
    U = jnp.array([[0.3, 0.05], [1.2, 0.2]])
    fu, gu, Hu = reciprocal_vgh(vgh, mask)(U)

    def f_u(u):
        return f(jnp.array([u[0], 1.0 / u[1]]))

    np.testing.assert_allclose(fu, jax.vmap(f_u)(U), rtol=1e-12)
    np.testing.assert_allclose(gu, jax.vmap(jax.grad(f_u))(U), rtol=1e-11)
    np.testing.assert_allclose(Hu, jax.vmap(jax.hessian(f_u))(U), rtol=1e-10)
    np.testing.assert_allclose(to_reciprocal(to_reciprocal(U, mask), mask), U, rtol=1e-15)

    lo, hi = np.array([-np.inf, 10.0]), np.array([np.inf, 40.0])
    np.testing.assert_allclose(reciprocal_bounds(lo, hi, mask), [[-np.inf, 1 / 40], [np.inf, 0.1]])
    lo, hi = np.array([-np.inf, -np.inf]), np.array([np.inf, np.inf])
    np.testing.assert_allclose(reciprocal_bounds(lo, hi, mask), [[-np.inf, 0.0], [np.inf, np.inf]])
    assert reciprocal_mask(mask, np.array([[1.0, 20.0]]), lo, hi) == (False, True)
    assert reciprocal_mask(mask, np.array([[1.0, -20.0]]), lo, hi) == (False, False)
    assert reciprocal_mask(mask, np.array([[1.0, 20.0]]), lo, np.array([1.0, -5.0])) == (
        False,
        False,
    )


def test_batched_newton_in_reciprocal_coordinates():
    """A model linear in 1/x (as a black body's SED is nearly linear in 1/T) is fitted in
    one Newton step in u = 1/x, in several in x; same minimum, and bounds on x hold."""
    from fgjax._optimize import batched_newton

    targets = jnp.array([[0.05, 1.0], [0.02, -2.0], [0.1, 3.0]])  # (1/T, beta)
    weights = jnp.array([3.0, 1.0])

    def one(x, t):
        r = jnp.array([1.0 / x[0] - t[0], x[1] - t[1]]) * jnp.array([100.0, 1.0])
        return jnp.sum(weights * r**2)

    def vgh(X):
        return (jax.vmap(one)(X, targets), jax.vmap(jax.grad(one))(X, targets),
                jax.vmap(jax.hessian(one))(X, targets))  # fmt: skip

    X0 = jnp.array([[20.0, 0.0]] * 3)
    lo, hi = jnp.array([-jnp.inf, -jnp.inf]), jnp.array([jnp.inf, jnp.inf])
    X_x, done_x, nit_x = batched_newton(vgh, X0, lo, hi, 200)
    X_u, done_u, nit_u = batched_newton(vgh, X0, lo, hi, 200, reciprocal=(True, False))
    expected = jnp.stack([1.0 / targets[:, 0], targets[:, 1]], -1)
    np.testing.assert_allclose(X_u, expected, rtol=1e-10)
    np.testing.assert_allclose(X_x, expected, rtol=1e-6)
    assert bool(jnp.all(done_u)) and bool(jnp.all(done_x))
    assert int(nit_u.max()) <= 2 < int(nit_x.max())
    # bounds on x become bounds on 1/x: the fit stops on them
    lo_b, hi_b = jnp.array([15.0, -jnp.inf]), jnp.array([30.0, jnp.inf])
    X_b, _, _ = batched_newton(vgh, X0, lo_b, hi_b, 200, reciprocal=(True, False))
    np.testing.assert_allclose(X_b[:, 0], [20.0, 30.0, 15.0], rtol=1e-12)


def _joint_structure(sizes, n_group, seed):
    """Group indices into x for clusters of ``sizes`` values per parameter: every cluster
    value is used by at least one group, and each group holds one cluster per parameter."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    cols = [np.concatenate((np.arange(n), rng.integers(0, n, n_group - n))) for n in sizes]
    gidx = np.stack([rng.permutation(c) + o for c, o in zip(cols, offsets, strict=True)], 1)
    return np.unique(gidx, axis=0)


def _dense_joint(gidx, n_x, Hg):
    return jnp.zeros((n_x, n_x)).at[gidx[:, :, None], gidx[:, None, :]].add(Hg)


@pytest.mark.parametrize("sizes", [(12, 3, 1), (3, 12, 2), (5, 7), (9,)])
def test_joint_algebra_matches_the_dense_hessian(sizes):
    """The Schur-complement algebra of a joint fit (eliminating the parameter with the
    most clusters) gives the dense Hessian's solves, damped solves, quadratic form and
    decrement where it is positive definite, and a positive definite metric (the dense
    matrix of its blocks, solved consistently) where it is not."""
    from fgjax._optimize import JointAlgebra

    gidx = _joint_structure(sizes, 20, seed=len(sizes))
    n_x, n_p = int(sum(sizes)), len(sizes)
    rng = np.random.default_rng(1)
    M = rng.normal(size=(gidx.shape[0], n_p, n_p))
    Hg = jnp.asarray(M @ np.swapaxes(M, 1, 2) + 0.5 * np.eye(n_p))
    g = jnp.asarray(rng.normal(size=(1, n_x)))
    step = jnp.asarray(rng.normal(size=(1, n_x)))
    alg = JointAlgebra.build(gidx, sizes)
    H = _dense_joint(gidx, n_x, Hg)
    Hp, F, dec = alg.metric(g, Hg[None])
    p = jnp.linalg.solve(H, g[0])
    np.testing.assert_allclose(alg.solve(F, g)[0], p, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dec[0], g[0] @ p, rtol=1e-10)
    np.testing.assert_allclose(alg.quad(Hp, step)[0], step[0] @ H @ step[0], rtol=1e-10)
    lam = jnp.array([0.3])
    H_damped = H + 0.3 * jnp.diag(jnp.diag(H))
    np.testing.assert_allclose(
        alg.damped_solve(Hp, lam, g)[0], jnp.linalg.solve(H_damped, g[0]), rtol=1e-9, atol=1e-12
    )

    # an indefinite joint Hessian: the metric is positive definite and consistent
    Hg_bad = Hg.at[0].set(-10.0 * Hg[0])
    assert np.linalg.eigvalsh(_dense_joint(gidx, n_x, Hg_bad)).min() < 0
    Hp, F, dec = alg.metric(g, Hg_bad[None])
    eye = jnp.eye(n_x)
    cols = jnp.stack([alg.solve(F, eye[i][None])[0] for i in range(n_x)], 1)  # metric^-1
    metric = jnp.linalg.inv(cols)
    np.testing.assert_allclose(metric, metric.T, atol=1e-8 * float(jnp.abs(metric).max()))
    assert float(jnp.linalg.eigvalsh(metric).min()) > 0
    # the quadratic form of the metric kept in the state is that metric
    quad_diag = jnp.stack([alg.quad(Hp, eye[i][None])[0] for i in range(n_x)])
    np.testing.assert_allclose(quad_diag, jnp.diag(metric), rtol=1e-8)
    assert float(dec[0]) > 0


def test_joint_newton_fit_equals_the_dense_fit():
    """A joint problem (a sum of smooth non-quadratic group terms sharing parameters, with
    a bound and one parameter fitted in 1/x) reaches the same minimum with the structured
    algebra as with the dense joint Hessian."""
    from fgjax._optimize import (
        JointAlgebra,
        batched_newton,
        newton_iterate,
        newton_result,
        newton_start,
        reciprocal_vgh,
    )

    sizes = (16, 4, 1)
    gidx = _joint_structure(sizes, 24, seed=3)
    n_x, n_group = int(sum(sizes)), gidx.shape[0]
    rng = np.random.default_rng(4)
    spread = np.array([0.2, 0.005, 0.2])
    centre = jnp.asarray(rng.normal(size=(n_group, 3)) * spread + np.array([1.5, 0.05, -3.0]))

    def one(t, c):
        r = (t - c) * jnp.array([3.0, 40.0, 1.0])
        return jnp.sum(r**2) + 0.1 * jnp.sum(r**4) + r[0] * r[2] + jnp.exp(0.3 * r[1])

    def group_vgh(T):
        return (jax.vmap(one)(T, centre), jax.vmap(jax.grad(one))(T, centre),
                jax.vmap(jax.hessian(one))(T, centre))  # fmt: skip

    lo = jnp.full(n_x, -jnp.inf).at[sizes[0] + sizes[1]].set(-3.9)  # inactive bound
    hi = jnp.full(n_x, jnp.inf)
    x0 = jnp.concatenate([jnp.full(16, 1.0), jnp.full(4, 0.04), jnp.full(1, -2.0)])

    def dense_vgh(X):
        f, g, H = group_vgh(X[0][gidx])
        g_x = jnp.zeros(n_x).at[gidx].add(g)
        return jnp.sum(f)[None], g_x[None], _dense_joint(gidx, n_x, H)[None]

    X_d, done_d, _ = batched_newton(dense_vgh, x0[None], lo, hi, 100, tol=1e-20)

    # the structured fit, the second parameter in 1/x (applied per group)
    recip_x = jnp.asarray(np.repeat([False, True, False], sizes))
    vgh_u = reciprocal_vgh(group_vgh, (False, True, False))

    def joint_vgh(U):
        f, g, H = vgh_u(U[0][gidx])
        return jnp.sum(f)[None], jnp.zeros(n_x).at[gidx].add(g)[None], H[None]

    alg = JointAlgebra.build(gidx, sizes)
    u0 = jnp.where(recip_x, 1.0 / x0, x0)
    state = newton_start(joint_vgh, u0[None], lo, hi, alg)
    U, done, nit = newton_result(newton_iterate(joint_vgh, state, lo, hi, 100, 1e-20, alg))
    X_s = jnp.where(recip_x, 1.0 / U[0], U[0])
    assert bool(done_d[0]) and bool(done[0]) and int(nit[0]) < 100
    np.testing.assert_allclose(X_s, X_d[0], rtol=1e-9, atol=1e-12)
