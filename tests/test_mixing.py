"""MixingMatrix: the pure JAX form, its derivatives and shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fgjax

NU = np.array([27.0, 39.0, 93.0, 145.0, 225.0, 280.0])
MM = fgjax.MixingMatrix(fgjax.CMB(), fgjax.Dust(353.0), fgjax.Synchrotron(23.0))
X0 = jnp.array(MM.defaults)


def test_pure_form_matches_eval_and_batches():
    A = MM(NU, X0)
    assert A.shape == (NU.size, 3)
    np.testing.assert_allclose(A, MM.eval(NU, *X0), rtol=1e-15)
    xs = X0[None, :] + jnp.linspace(-0.1, 0.1, 5)[:, None]
    batched = jax.vmap(lambda x: MM(NU, x))(xs)
    np.testing.assert_allclose(batched, MM(NU, xs), rtol=1e-14)
    np.testing.assert_allclose(jax.jit(lambda x: MM(NU, x))(xs), batched, rtol=1e-14)


def test_autodiff_jacobian_equals_compressed_columns():
    jac = jax.jacfwd(lambda x: MM(NU, x))(X0)  # (n_freq, n_comp, n_param)
    diff = MM.diff(NU, *X0)
    for i, (col, c) in enumerate(zip(diff, MM.comp_of_param)):
        assert col.shape == (NU.size, 1)
        np.testing.assert_allclose(jac[:, c, i], col[:, 0], rtol=1e-13)
        others = np.delete(np.asarray(jac[:, :, i]), c, axis=1)
        np.testing.assert_array_equal(others, 0.0)
    hess = jax.jacfwd(jax.jacfwd(lambda x: MM(NU, x)))(X0)
    dd = MM.diff_diff(NU, *X0)
    for i, ci in enumerate(MM.comp_of_param):
        for j, cj in enumerate(MM.comp_of_param):
            if ci == cj:
                np.testing.assert_allclose(hess[:, ci, i, j], dd[i][j][:, 0], rtol=1e-12)
            else:
                assert dd[i][j].shape == (1, 1)


def test_evaluators_follow_fgbuster_shapes():
    xpix = np.tile(np.asarray(X0)[:, None], (1, 4))  # (n_param, n_pix)
    A = MM.evaluator(NU, shape=(3, 4))(xpix.ravel())
    assert A.shape == (4, NU.size, 3)
    assert [d.shape for d in MM.diff_evaluator(NU)(X0)] == [(NU.size, 1)] * 3


def test_bad_input():
    with pytest.raises(TypeError, match="argument 1 must be a component"):
        fgjax.MixingMatrix(fgjax.CMB(), "dust")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 3\)"):
        MM(NU, jnp.ones(2))
    with pytest.raises(TypeError, match="takes 3 parameters"):
        MM.eval(NU, 1.0)


def test_taylor_gives_the_compressed_derivatives_batched():
    xs = X0[None, None, :] + jnp.linspace(-0.1, 0.1, 6).reshape(2, 3, 1)
    A, A_dB, A_dBdB = MM.taylor(NU, xs)
    assert A.shape == (2, 3, NU.size, 3)
    assert A_dB.shape == (2, 3, MM.n_param, NU.size)
    assert A_dBdB.shape == (2, 3, MM.n_param, MM.n_param, NU.size)
    x = xs[1, 2]
    np.testing.assert_allclose(A[1, 2], MM(NU, x), rtol=1e-15)
    diff, dd = MM.diff(NU, *x), MM.diff_diff(NU, *x)
    cols = MM.comp_of_param
    for i, ci in enumerate(cols):
        np.testing.assert_allclose(A_dB[1, 2, i], diff[i][:, 0], rtol=1e-12)
        for j, cj in enumerate(cols):
            want = dd[i][j][:, 0] if ci == cj else np.zeros(NU.size)
            np.testing.assert_allclose(A_dBdB[1, 2, i, j], want, rtol=1e-11, atol=0)
    _, _, none = MM.taylor(NU, xs, second=False)
    assert none is None
    fixed = fgjax.MixingMatrix(fgjax.CMB(), fgjax.Dust(353.0, beta_d=1.5, temp=20.0))
    A, A_dB, A_dBdB = fixed.taylor(NU, jnp.zeros((4, 0)))
    assert A.shape == (4, NU.size, 2) and A_dB.shape == (4, 0, NU.size)
    assert A_dBdB.shape == (4, 0, 0, NU.size)


def test_taylor_integrates_bandpasses():
    rng = np.random.default_rng(1)
    bands = [
        (np.linspace(0.8 * c, 1.2 * c, n), rng.uniform(0.5, 1.0, n))
        for c, n in ((30.0, 7), (150.0, 23), (353.0, 40))
    ]
    x = X0 + 0.05
    A, A_dB, A_dBdB = MM.taylor(bands, x)
    np.testing.assert_allclose(A, MM(bands, x), rtol=1e-13)
    diff, dd = MM.diff(bands, *x), MM.diff_diff(bands, *x)
    for i, ci in enumerate(MM.comp_of_param):
        np.testing.assert_allclose(A_dB[i], diff[i][:, 0], rtol=1e-12)
        for j, cj in enumerate(MM.comp_of_param):
            if ci == cj:
                np.testing.assert_allclose(A_dBdB[i, j], dd[i][j][:, 0], rtol=1e-11)
