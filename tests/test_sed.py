"""SEDs: autodiff vs SymPy derivatives, transformations, precision, bandpasses, bad input."""

import warnings

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import fgjax

NU = np.array([20.0, 40.0, 90.0, 150.0, 220.0, 353.0, 500.0])

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    SHIPPED = {
        "cmb": fgjax.CMB(),
        "cmb_rj": fgjax.CMB(units="K_RJ"),
        "tsz": fgjax.ThermalSZ(),
        "dust": fgjax.Dust(nu0=353.0),
        "mbb_rj": fgjax.ModifiedBlackBody(nu0=353.0, units="K_RJ"),
        "sync": fgjax.Synchrotron(nu0=30.0),
        "sync_running": fgjax.PowerLaw(nu0=30.0, nu_pivot=40.0, running=None),
        "sync_running_pivot": fgjax.PowerLaw(nu0=30.0, running=None),
        "freefree": fgjax.FreeFree(),
        "freefree_rj": fgjax.FreeFree(Te=6500.0, units="K_RJ"),
    }
PARAMETRISED = {k: v for k, v in SHIPPED.items() if v.n_param}


def _defaults(comp):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [jnp.asarray(d, dtype=jnp.float64) for d in comp.defaults]


@pytest.mark.parametrize("name", PARAMETRISED)
def test_check_grads_orders_1_and_2(name):
    comp = PARAMETRISED[name]
    params = [p + 0.05 for p in _defaults(comp)]
    check_grads(lambda *p: comp.eval(NU, *p), params, order=2, modes=("fwd", "rev"),
                atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", SHIPPED)
def test_autodiff_equals_sympy_derivatives(name):
    """SymPy's symbolic derivatives, lambdified into NumPy, are an independent oracle."""
    comp = SHIPPED[name]
    params = [float(p) + 0.05 for p in _defaults(comp)]
    symbols = sympy.symbols(["nu", *comp.params])
    for i, p in enumerate(comp.params):
        ref = sympy.lambdify(symbols, comp.expr.diff(p), "numpy")(NU, *params)
        np.testing.assert_allclose(comp.diff(NU, *params)[i], np.broadcast_to(ref, NU.shape),
                                   rtol=1e-11, atol=1e-13 * np.max(np.abs(ref)))
        for j, q in enumerate(comp.params):
            ref = sympy.lambdify(symbols, comp.expr.diff(p, q), "numpy")(NU, *params)
            np.testing.assert_allclose(comp.diff_diff(NU, *params)[i][j],
                                       np.broadcast_to(ref, NU.shape), rtol=1e-10,
                                       atol=1e-13 * np.max(np.abs(ref)))


@pytest.mark.parametrize("name", ["dust", "sync_running", "freefree"])
def test_jit_and_vmap_match_plain_call(name):
    comp = SHIPPED[name]
    base = jnp.stack(_defaults(comp))
    batch = base[None, :] + jnp.linspace(-0.1, 0.1, 4)[:, None]  # (4, n_param)
    plain = comp.eval(NU, *batch.T)
    jitted = jax.jit(lambda x: comp.eval(NU, *x))
    mapped = jax.vmap(jitted)(batch)
    np.testing.assert_allclose(mapped, plain, rtol=1e-14)
    np.testing.assert_allclose(jitted(batch[1]), plain[1], rtol=1e-14)
    hess = jax.hessian(lambda x: jnp.sum(comp.eval(NU, *x)))(base)
    assert hess.shape == (comp.n_param, comp.n_param)
    assert np.all(np.isfinite(hess))


@pytest.mark.parametrize("name", ["dust", "sync", "freefree", "tsz"])
def test_float32_follows_inputs(name):
    comp = SHIPPED[name]
    params64 = [float(p) for p in _defaults(comp)]
    ref = comp.eval(NU, *params64)
    out = comp.eval(NU.astype(np.float32), *(np.float32(p) for p in params64))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=2e-5)
    with jax.enable_x64(False):  # plain float32 mode, as on a GPU by default
        out = comp.eval(NU, *params64)
        assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, ref, rtol=2e-5)


def test_make_broadcastable_constant_and_nu_free_outputs():
    comp = fgjax.AnalyticComponent("a * b + 2")  # no nu at all
    out = comp.eval(NU, np.ones((2, 1)), np.arange(3.0))
    assert out.shape == (2, 3, NU.size)
    np.testing.assert_allclose(out[1, 2], np.full(NU.size, 4.0))
    d = comp.diff(NU, np.ones((2, 1)), np.arange(3.0))
    assert d[0].shape == d[1].shape == (2, 3, NU.size)
    dd = comp.diff_diff(NU, 1.0, 2.0)
    np.testing.assert_array_equal(dd[0][0], np.zeros(NU.size))
    np.testing.assert_array_equal(dd[0][1], np.ones(NU.size))
    assert fgjax.CMB().eval(NU).shape == NU.shape
    assert fgjax.CMB().eval(150.0).shape == ()


def test_shapes_follow_broadcast_of_parameters():
    dust = SHIPPED["dust"]
    out = dust.eval(NU, np.full((2, 5), 1.5), np.full(5, 20.0))
    assert out.shape == (2, 5, NU.size)
    assert [d.shape for d in dust.diff(NU, 1.5, np.full(5, 20.0))] == [(5, NU.size)] * 2


def test_ragged_bandpasses_integrate_with_the_trapezoid_rule():
    dust = SHIPPED["dust"]
    rng = np.random.default_rng(0)
    bands = []
    for centre, n in ((30.0, 7), (150.0, 23), (353.0, 40)):
        f = np.linspace(0.8 * centre, 1.2 * centre, n)
        bands.append((f, rng.uniform(0.5, 1.0, n)))
    out = dust.eval(bands, 1.6, 19.0)
    ref = [np.trapezoid(np.asarray(dust.eval(f, 1.6, 19.0)) * w, f * 1e9) for f, w in bands]
    np.testing.assert_allclose(out, ref, rtol=1e-13)
    # derivatives are integrated the same way
    d_ref = [np.trapezoid(np.asarray(dust.diff(f, 1.6, 19.0)[1]) * w, f * 1e9) for f, w in bands]
    np.testing.assert_allclose(dust.diff(bands, 1.6, 19.0)[1], d_ref, rtol=1e-13)


def test_freefree_equals_high_precision_reference():
    """fgbuster's form 1 - exp(-tau) loses ~5 digits (tau ~ 1e-11); ours matches mpmath."""
    mpmath.mp.dps = 40
    comp = SHIPPED["freefree"]
    log_em, te = 0.3, 6800.0

    def reference(nu):
        nu, te_, em = mpmath.mpf(nu), mpmath.mpf(te), mpmath.mpf(log_em)
        gaunt = mpmath.log(mpmath.exp(mpmath.mpf("5.960") - mpmath.sqrt(3) / mpmath.pi
                                      * mpmath.log(nu * (te_ * mpmath.mpf("1e-4")) ** -1.5))
                           + mpmath.e)
        tau = mpmath.mpf("0.05468") * te_**-1.5 / nu**2 * mpmath.power(10, em) * gaunt
        x = mpmath.mpf(fgjax.H_OVER_K) * nu / mpmath.mpf(fgjax.TCMB)
        return float(mpmath.mpf("1e6") * te_ * -mpmath.expm1(-tau)
                     * mpmath.expm1(x) ** 2 / (mpmath.exp(x) * x**2))

    assert comp.params == ["Te", "logEM"]
    np.testing.assert_allclose(comp.eval(NU, te, log_em), [reference(n) for n in NU], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(beta=st.floats(0.5, 2.5), temp=st.floats(8.0, 40.0), nu0=st.floats(100.0, 400.0))
def test_normalised_seds_are_one_at_nu0(beta, temp, nu0):
    dust = fgjax.ModifiedBlackBody(nu0=nu0, units="K_RJ")
    np.testing.assert_allclose(dust.eval(np.array([nu0]), beta, temp), [1.0], rtol=1e-12)
    dust_cmb = fgjax.Dust(nu0=nu0)
    np.testing.assert_allclose(dust_cmb.eval(np.array([nu0]), beta, temp), [1.0], rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(beta=st.floats(-4.0, -2.0), nu0=st.floats(10.0, 100.0))
def test_power_law_ratios_do_not_depend_on_nu0(beta, nu0):
    sync = fgjax.Synchrotron(nu0=nu0)
    a, b = np.asarray(sync.eval(np.array([30.0, 90.0]), beta))
    ref = fgjax.Synchrotron(nu0=23.0).eval(np.array([30.0, 90.0]), beta)
    np.testing.assert_allclose(b / a, ref[1] / ref[0], rtol=1e-12)


def test_units():
    assert fgjax.parse_units("mK_RJ") == ("K_RJ", 1e3)
    rj = fgjax.CMB(units="K_RJ").eval(NU)
    np.testing.assert_allclose(rj * fgjax.K_RJ_to_K_CMB(NU), np.ones(NU.size), rtol=1e-13)
    np.testing.assert_allclose(fgjax.ThermalSZ(units="K_CMB").eval(NU) * 1e6,
                               fgjax.ThermalSZ(units="uK_CMB").eval(NU), rtol=1e-13)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: fgjax.Dust(353.0, units="Jy"), "`units` must be one of"),
        (lambda: fgjax.ThermalSZ(units="K_cmb"), "`units` must be one of"),
        (lambda: fgjax.AnalyticComponent("nu ** (a"), "does not parse"),
        (lambda: fgjax.AnalyticComponent("gff(nu) * a"), "unknown function 'gff'"),
        (lambda: fgjax.AnalyticComponent("exp * nu"), "function name 'exp'"),
        (lambda: fgjax.AnalyticComponent("I * nu"), "'I', a reserved SymPy name"),
        (lambda: fgjax.AnalyticComponent("nu ** a", a="x"), "fixed parameter 'a'"),
    ],
)
def test_bad_construction_raises_clearly(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_evaluation_raises_clearly():
    dust = SHIPPED["dust"]
    with pytest.raises(TypeError, match=r"\['beta_d', 'temp'\], got 1"):
        dust.eval(NU, 1.5)
    with pytest.raises(ValueError, match="finite and positive"):
        dust.eval(np.array([30.0, -1.0]), 1.5, 20.0)
    with pytest.raises(ValueError, match="3 weights for 4 frequencies"):
        dust.eval([(np.linspace(1, 2, 4), np.ones(3))], 1.5, 20.0)
    with pytest.raises(ValueError, match="do not broadcast"):
        dust.eval(NU, np.ones(3), np.ones(4))


def test_names_that_sympy_reserves_for_functions_are_plain_parameters():
    comp = fgjax.AnalyticComponent("(nu / 100) ** beta * gamma")
    assert comp.params == ["beta", "gamma"]
    np.testing.assert_allclose(comp.eval(np.array([200.0]), 2.0, 3.0), [12.0])


def test_bands_given_as_bare_frequencies_or_stacked_arrays():
    comp = fgjax.AnalyticComponent("nu * a + nu**b + hundred", hundred=100)
    bands = np.arange(1, 4)[:, None] * 10.0 * np.linspace(0.9, 1.1, 11)  # (3, 11)
    weights = np.linspace(0.5, 1.5, bands.size).reshape(bands.shape)
    f = lambda nu: nu * 2.0 + nu**1.5 + 100.0  # noqa: E731
    bare = comp.eval(tuple(bands), 2.0, 1.5)  # unit weights
    np.testing.assert_allclose(bare, [np.trapezoid(f(b), b * 1e9) for b in bands], rtol=1e-13)
    stacked = tuple(np.stack([bands, weights], axis=1))  # each band a (2, n) array
    np.testing.assert_allclose(
        comp.eval(stacked, 2.0, 1.5),
        [np.trapezoid(f(b) * w, b * 1e9) for b, w in zip(bands, weights)], rtol=1e-13,
    )


def test_reciprocal_params_are_found_in_the_expression():
    """Parameters the SED sees only as 1/x (a black-body temperature) are flagged; the
    batched Newton fits step in 1/x for them."""
    assert fgjax.Dust(353.0).reciprocal_params == ["temp"]
    assert fgjax.ModifiedBlackBody(353.0, units="K_RJ").reciprocal_params == ["temp"]
    for comp in (fgjax.Synchrotron(30.0), fgjax.CMB(), fgjax.FreeFree(), fgjax.ThermalSZ()):
        assert comp.reciprocal_params == []
    assert fgjax.AnalyticComponent("(nu / 30) ** b * exp(nu / T) ** 2").reciprocal_params == ["T"]
    # T also appears as itself, or beta as 1/beta would need a negative power: not flagged
    assert fgjax.AnalyticComponent("exp(nu / T) + T").reciprocal_params == []
    assert fgjax.AnalyticComponent("exp(nu * T)").reciprocal_params == []
    mm = fgjax.MixingMatrix(fgjax.CMB(), fgjax.Dust(353.0), fgjax.Synchrotron(30.0))
    assert mm.params == ["Dust.beta_d", "Dust.temp", "Synchrotron.beta_pl"]
    assert mm.reciprocal == (False, True, False)
