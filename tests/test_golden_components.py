"""Every `component` and `mixingmatrix` golden case, through legacy_compat (fgbuster's API)."""

import numpy as np
import pytest

import legacy_compat as lc
from legacy_compat import component_model as cm

from ._golden import bandpasses, cases, check, load_case

# fgbuster spells the emission-measure symbol of its (broken) FreeFree "EM"; ours is "logEM".
_RENAME = {"EM": "logEM"}

_CONSTRUCTORS = {
    "comp_cmb_K_CMB": lambda: cm.CMB(units="K_CMB"),
    "comp_cmb_K_RJ": lambda: cm.CMB(units="K_RJ"),
    "comp_dust_free_K_CMB": lambda: cm.Dust(nu0=353.0),
    "comp_mbb_free_K_RJ": lambda: cm.ModifiedBlackBody(nu0=353.0, units="K_RJ"),
    "comp_dust_fixtemp_K_CMB": lambda: cm.Dust(nu0=353.0, temp=19.6),
    "comp_dust_fixbeta_K_RJ": lambda: cm.Dust(nu0=353.0, beta_d=1.6, units="K_RJ"),
    "comp_dust_fixed_K_CMB": lambda: cm.Dust(nu0=353.0, temp=19.6, beta_d=1.6),
    "comp_sync_beta_K_CMB": lambda: cm.Synchrotron(nu0=30.0),
    "comp_sync_running_free_K_RJ": lambda: cm.PowerLaw(
        nu0=30.0, nu_pivot=40.0, running=None, units="K_RJ"
    ),
    "comp_sync_running_fixed_K_CMB": lambda: cm.Synchrotron(
        nu0=30.0, nu_pivot=40.0, running=-0.07
    ),
    "comp_tsz_uK_CMB": lambda: cm.ThermalSZ(),
    "comp_tsz_K_RJ": lambda: cm.ThermalSZ(units="K_RJ"),
    "comp_freefree_free_K_CMB": lambda: cm.FreeFree(units="K_CMB"),
    "comp_freefree_fixTe_K_RJ": lambda: cm.FreeFree(Te=6500.0, units="K_RJ"),
    "comp_analytic_curved_pl": lambda: cm.AnalyticComponent(
        "(nu / nu0) ** (b0 + run * log(nu / nu0))", nu0=23.0
    ),
    "comp_analytic_two_temp_dust": lambda: cm.AnalyticComponent(
        "f1 * (nu / nu0)**(1 + b1) * (exp(hk * nu0 / t1) - 1) / (exp(hk * nu / t1) - 1)"
        " + (1 - f1) * (nu / nu0)**(1 + b2) * (exp(hk * nu0 / t2) - 1) / (exp(hk * nu / t2) - 1)",
        nu0=353.0, b2=1.6, hk=cm.H_OVER_K,
    ),
    "comp_analytic_logexp": lambda: cm.AnalyticComponent(
        "amp * exp(-nu / nc) * log(nu / nu0) + log(1 + (nu / nu0)**q)", nu0=100.0
    ),
}

_COMPONENT_CASES = [c["name"] for c in cases("component")]
_MM_CASES = [c["name"] for c in cases("mixingmatrix")]


def _freefree_tau(nu, log_em, te):
    """Free-free optical depth (NumPy), to size fgbuster's rounding error below."""
    gaunt = np.log(np.exp(5.960 - np.sqrt(3) / np.pi * np.log(nu * (te * 1e-4) ** -1.5)) + np.e)
    return 0.05468 * te**-1.5 / nu**2 * 10.0**log_em * gaunt


def _legacy_freefree_rtol(freqs, log_em, te):
    """fgbuster evaluates ``1 - exp(-tau)`` with tau ~ 1e-9..1e-12 at these frequencies: the
    difference carries an absolute error of ~1.1e-16, i.e. a relative error of ~1.1e-16 / tau
    (up to 1e-4). Ours uses ``-expm1(-tau)`` (checked against mpmath in test_sed.py). The
    allowance is 4x that legacy error, per channel (the smallest tau in a band)."""
    log_em, te = (np.asarray(p, dtype=float)[..., None] for p in (log_em, te))
    if isinstance(freqs, list):
        tau = np.stack([_freefree_tau(f, log_em, te).min(axis=-1) for f, _ in freqs], axis=-1)
    else:
        tau = _freefree_tau(np.asarray(freqs), log_em, te)
    return 4 * 1.1e-16 / tau


def test_every_component_case_has_a_constructor():
    assert sorted(_CONSTRUCTORS) == sorted(_COMPONENT_CASES)


def _our_order(golden_params, comp):
    """Indices that map our parameter order onto the golden one (names may differ: EM)."""
    ours = comp.params
    return [ours.index(_RENAME.get(p, p)) for p in golden_params]


def check_component_case(name):
    """A `component` golden case (run by test_golden_equality.py)."""
    entry, inp, out, _ = load_case(name)
    meta = entry["meta"]
    comp = _CONSTRUCTORS[name]()
    gparams = meta["params"]
    assert sorted(_RENAME.get(p, p) for p in gparams) == comp.params
    assert comp.n_param == meta["n_param"]
    if "uninitialised" not in " ".join(entry["notes"]):
        order = _our_order(gparams, comp)
        assert [comp.defaults[i] for i in order] == pytest.approx(meta["defaults"])
    else:
        with pytest.warns(UserWarning, match="no defaults"):
            assert comp.defaults == [1.0] * comp.n_param
    perm = _our_order(gparams, comp)  # perm[g] = our index of golden param g
    inv = [gparams.index(next(p for p in gparams if _RENAME.get(p, p) == q)) for q in comp.params]
    for cfg in meta["param_configs"]:
        golden_vals = [inp[f"{cfg}__{p}"] for p in gparams]
        golden_vals = [float(v) if v.ndim == 0 else v for v in golden_vals]
        ours = [golden_vals[inv[i]] for i in range(comp.n_param)]
        for tag, freqs in (("nu", inp["nu"]), ("bp", bandpasses(inp, meta["bp_n_bands"]))):
            extra = 0.0
            if name.startswith("comp_freefree"):
                values = dict(zip(gparams, golden_vals))
                extra = _legacy_freefree_rtol(freqs, values["EM"], values.get("Te", 6500.0))
            check(
                entry, f"eval__{cfg}__{tag}", comp.eval(freqs, *ours),
                out[f"eval__{cfg}__{tag}"], extra,
            )
            diff = comp.diff(freqs, *ours)
            for g in range(len(gparams)):
                key = f"diff__{cfg}__{tag}__{g}"
                check(entry, key, diff[perm[g]], out[key], extra)
            if f"out__diff_diff__{cfg}__{tag}" in entry["errors"]:
                continue  # fgbuster raised here; ours works (constant derivatives broadcast)
            dd = comp.diff_diff(freqs, *ours)
            for g in range(len(gparams)):
                for h in range(len(gparams)):
                    key = f"diff_diff__{cfg}__{tag}__{g}_{h}"
                    check(entry, key, dd[perm[g]][perm[h]], out[key], extra)


_MM_CONSTRUCTORS = {
    "mm_cmb_dust_sync": lambda: lc.MixingMatrix(
        cm.CMB(), cm.Dust(nu0=353.0), cm.Synchrotron(nu0=30.0)
    ),
    "mm_cmb_dustfixT_syncrun_freefree": lambda: lc.MixingMatrix(
        cm.CMB(), cm.Dust(nu0=353.0, temp=19.6),
        cm.Synchrotron(nu0=30.0, nu_pivot=40.0, running=None), cm.FreeFree(),
    ),
}


def check_mixing_matrix_case(name):
    """A `mixingmatrix` golden case (run by test_golden_equality.py)."""
    entry, inp, out, _ = load_case(name)
    meta = entry["meta"]
    mm = _MM_CONSTRUCTORS[name]()
    gparams = [".".join(_RENAME.get(s, s) for s in p.split(".")) for p in meta["params"]]
    perm = [mm.params.index(p) for p in gparams]  # golden index -> our index
    assert sorted(mm.params) == sorted(gparams)
    assert mm.components == meta["components"]
    assert mm.n_param == meta["n_param"]
    assert [mm.defaults[i] for i in perm] == pytest.approx(meta["defaults"])
    assert [mm.comp_of_dB[i][-1] for i in perm] == meta["comp_of_dB"]
    inv = np.argsort(perm)
    x = inp["x"][inv]
    xpix = [inp[f"xpix__{g}"] for g in inv]
    bps = bandpasses(inp, meta["bp_n_bands"])
    ff = [g for g, p in enumerate(gparams) if p.startswith("FreeFree.")]

    def allowance(freqs, values, g=None, h=None, column=False):
        """Legacy FreeFree rounding (see _legacy_freefree_rtol), on FreeFree entries only."""
        if not ff or (g is not None and g not in ff) or (h is not None and h not in ff):
            return 0.0
        em, te = (values[gparams.index(f"FreeFree.{p}")] for p in ("logEM", "Te"))
        rtol = _legacy_freefree_rtol(freqs, em, te)[..., None]  # (..., n_freq, 1)
        if column:  # the whole matrix: only the FreeFree column
            rtol = rtol * (np.arange(mm.n_comp) == mm.components.index("FreeFree"))
        return rtol

    xg = inp["x"]
    xpix_g = [inp[f"xpix__{g}"] for g in range(len(gparams))]
    for tag, freqs in (("nu", inp["nu"]), ("bp", bps)):
        check(entry, f"eval__x__{tag}", mm.eval(freqs, *x), out[f"eval__x__{tag}"],
              allowance(freqs, xg, column=True))
        diff, dd = mm.diff(freqs, *x), mm.diff_diff(freqs, *x)
        for g, i in enumerate(perm):
            check(entry, f"diff__x__{tag}__{g}", diff[i], out[f"diff__x__{tag}__{g}"],
                  allowance(freqs, xg, g))
            for h, j in enumerate(perm):
                key = f"diff_diff__x__{tag}__{g}_{h}"
                assert dd[i][j].shape == out[key].shape
                check(entry, key, dd[i][j], out[key], allowance(freqs, xg, g, h))
    check(entry, "eval__xpix__nu", mm.eval(inp["nu"], *xpix), out["eval__xpix__nu"],
          allowance(inp["nu"], xpix_g, column=True))
    diff, dd = mm.diff(inp["nu"], *xpix), mm.diff_diff(inp["nu"], *xpix)
    for g, i in enumerate(perm):
        check(entry, f"diff__xpix__nu__{g}", diff[i], out[f"diff__xpix__nu__{g}"],
              allowance(inp["nu"], xpix_g, g))
        for h, j in enumerate(perm):
            key = f"diff_diff__xpix__nu__{g}_{h}"
            assert dd[i][j].shape == out[key].shape  # fgbuster's (npix * n_freq, 1) blocks
            rt = allowance(inp["nu"], xpix_g, g, h)
            check(entry, key, dd[i][j], out[key], np.reshape(rt, (-1, 1)))
    check(entry, "evaluator__x__nu", mm.evaluator(inp["nu"])(x), out["evaluator__x__nu"],
          allowance(inp["nu"], xg, column=True))
    check(entry, "evaluator__x__bp", mm.evaluator(bps)(x), out["evaluator__x__bp"],
          allowance(bps, xg, column=True))
    diff, dd = mm.diff_evaluator(inp["nu"])(x), mm.diff_diff_evaluator(inp["nu"])(x)
    for g, i in enumerate(perm):
        check(entry, f"diff_evaluator__x__nu__{g}", diff[i], out[f"diff_evaluator__x__nu__{g}"],
              allowance(inp["nu"], xg, g))
        for h, j in enumerate(perm):
            key = f"diff_diff_evaluator__x__nu__{g}_{h}"
            check(entry, key, dd[i][j], out[key], allowance(inp["nu"], xg, g, h))
