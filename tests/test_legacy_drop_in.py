"""legacy_compat as a drop-in for fgbuster 2.0.0: names, module tree, signatures, the
``fgbuster`` alias, ``python -m legacy_compat`` (plain and ``--compare``), no x64 leak, and
the visualization module.

The expected names and signatures below were read from fgbuster's sources (repository
fgbuster/fgbuster, the 2.0.0-era versions) and cross-checked with the golden manifest's
``call`` lines; fgbuster itself cannot be installed here.
"""

from __future__ import annotations

import importlib
import inspect
import io
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import legacy_compat
from legacy_compat import _alias, _compare
from legacy_compat.__main__ import main as cli_main

ROOT = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ names and the tree

# `from fgbuster import *` in 2.0.0: fgbuster/__init__.py star-imports observation_helpers,
# separation_recipes, component_model, mixingmatrix and cosmology (each with an __all__) and
# has no __all__, so the submodules bound on the package come along too.
STAR_NAMES = {
    # observation_helpers.__all__
    "get_sky", "get_instrument", "get_observation", "get_noise_realization",
    # separation_recipes.__all__
    "basic_comp_sep", "weighted_comp_sep", "ilc", "harmonic_ilc", "harmonic_ilc_alm",
    "adaptive_comp_sep", "multi_res_comp_sep",
    # component_model.__all__
    "Component", "AnalyticComponent", "CMB", "ThermalSZ", "Dust", "Synchrotron",
    "ModifiedBlackBody", "PowerLaw", "FreeFree",
    # mixingmatrix.__all__
    "MixingMatrix",
    # cosmology.__all__
    "xForecast",
    "get_statistical_information",
    "get_post_comp_sep_power",
    # submodules (algebra is imported by separation_recipes; nothing imports visualization)
    "algebra", "component_model", "cosmology", "mixingmatrix", "observation_helpers",
    "separation_recipes",
}  # fmt: skip
MODULES = (
    "component_model", "mixingmatrix", "algebra", "separation_recipes",
    "observation_helpers", "cosmology", "visualization",
)  # fmt: skip
# Public names of each module that fgbuster scripts use (its __all__ plus public helpers).
MODULE_NAMES = {
    "component_model": [
        "Component", "AnalyticComponent", "CMB", "ThermalSZ", "Dust", "Synchrotron",
        "ModifiedBlackBody", "PowerLaw", "FreeFree",
    ],
    "mixingmatrix": ["MixingMatrix"],
    "algebra": [
        "comp_sep", "multi_comp_sep", "logL", "logL_dB", "invAtNA", "P", "P_dBdB", "D", "W",
        "W_dB", "W_dBdB", "Wd", "fisher_logL_dB_dB",
    ],
    "separation_recipes": [
        "basic_comp_sep", "weighted_comp_sep", "ilc", "harmonic_ilc", "harmonic_ilc_alm",
        "adaptive_comp_sep", "multi_res_comp_sep",
    ],
    "observation_helpers": [
        "get_sky", "get_instrument", "get_observation", "get_noise_realization",
        "standardize_instrument",
    ],
    "cosmology": ["xForecast", "get_statistical_information", "get_post_comp_sep_power"],
    "visualization": ["corner_norm", "plot_component"],
}  # fmt: skip


def test_star_import_gives_exactly_fgbusters_names():
    namespace: dict = {}
    exec("from legacy_compat import *", namespace)
    assert set(namespace) - {"__builtins__"} == STAR_NAMES
    assert len(legacy_compat.__all__) == len(set(legacy_compat.__all__))


@pytest.mark.parametrize("module", MODULES)
def test_module_tree_and_public_names(module):
    mod = importlib.import_module(f"legacy_compat.{module}")
    assert getattr(legacy_compat, module) is mod
    missing = [name for name in MODULE_NAMES[module] if not hasattr(mod, name)]
    assert not missing, f"legacy_compat.{module} lacks {missing}"


def test_package_names_are_the_module_objects():
    for module in MODULES[:-1]:
        mod = getattr(legacy_compat, module)
        for name in getattr(mod, "__all__", []):
            if name in STAR_NAMES:
                assert getattr(legacy_compat, name) is getattr(mod, name), name


# ------------------------------------------------------------------------- signatures


class _FG:
    """fgbuster 2.0.0 signatures (bodies omitted), one namespace per module."""

    class component_model:
        def AnalyticComponent(analytic_expr, **fixed_params): ...
        def ModifiedBlackBody(nu0, temp=None, beta_d=None, units="K_CMB"): ...
        def Dust(nu0, temp=None, beta_d=None, units="K_CMB"): ...
        def PowerLaw(nu0, beta_pl=None, nu_pivot=None, running=0.0, units="K_CMB"): ...
        def Synchrotron(nu0, beta_pl=None, nu_pivot=None, running=0.0, units="K_CMB"): ...
        def CMB(units="K_CMB"): ...
        def ThermalSZ(units="uK_CMB"): ...
        def FreeFree(logEM=None, Te=None, units="K_CMB"): ...

    class mixingmatrix:
        def MixingMatrix(*components): ...

    class algebra:
        def comp_sep(A_ev, d, invN, A_dB_ev, comp_of_dB, *minimize_args, **minimize_kwargs): ...
        def multi_comp_sep(
            A_ev, d, invN, A_dB_ev, comp_of_dB, patch_ids, *minimize_args, **minimize_kargs
        ): ...
        def logL(A, d, invN=None, return_svd=False): ...
        def logL_dB(A, d, invN, A_dB, comp_of_dB=np.s_[:], return_svd=False): ...
        def invAtNA(A, invN=None, return_svd=False): ...
        def P(A, invN=None, return_svd=False): ...
        def D(A, invN=None, return_svd=False): ...
        def W(A, invN=None, return_svd=False): ...
        def Wd(A, d, invN=None, return_svd=False): ...
        def W_dB(A, A_dB, comp_of_dB, invN=None, return_svd=False): ...
        def W_dBdB(A, A_dB, A_dBdB, comp_of_dB, invN=None, return_svd=False): ...
        def P_dBdB(A, A_dB, A_dBdB, comp_of_dB, invN=None, return_svd=False): ...
        def fisher_logL_dB_dB(A, s, A_dB, comp_of_dB, invN=None, return_svd=False): ...

    class separation_recipes:
        def basic_comp_sep(components, instrument, data, nside=0, **minimize_kwargs): ...
        def weighted_comp_sep(components, instrument, data, cov, nside=0, **minimize_kwargs): ...
        def adaptive_comp_sep(components, instrument, data, patch_ids, **minimize_kwargs): ...
        def multi_res_comp_sep(components, instrument, data, nsides, **minimize_kwargs): ...
        def ilc(components, instrument, data, patch_ids=None): ...
        def harmonic_ilc(components, instrument, data, lbins=None, weights=None, iter=3): ...
        def harmonic_ilc_alm(components, instrument, alms, lbins=None, fsky=None): ...

    class observation_helpers:
        def get_sky(nside, tag="c1d0s0"): ...
        def get_instrument(tag=""): ...
        def get_observation(instrument="", sky=None, noise=False, nside=None, unit="uK_CMB"): ...
        def get_noise_realization(nside, instrument, unit="uK_CMB"): ...
        def standardize_instrument(instrument): ...

    class cosmology:
        # 2.0.0 also takes `sigma_r_68CL` (checked separately: its position is not known)
        def xForecast(
            components, instrument, d_fgs, lmin, lmax, Alens=1.0, r=0.001, make_figure=False
        ): ...
        def get_statistical_information(components, freqs, var_t=None, var_p=None): ...
        def get_post_comp_sep_power(
            components,
            instrument,
            nside,
            nsides,
            nosum_and_white_noise=False,
            temp=False,
            pol=False,
            target_comp="CMB",
        ): ...

    class visualization:
        def corner_norm(mean, cov, *args, **kwargs): ...
        def plot_component(component, nu_min, nu_max): ...


# xForecast has **minimize_kwargs after the keywords; the stub leaves it out on purpose so
# that an added sigma_r_68CL may sit before or after make_figure. The check below allows it.
_VAR_EXTRA_OK = {("cosmology", "xForecast")}
SIGNATURES = [
    (module, name)
    for module, ns in vars(_FG).items()
    if not module.startswith("_")
    for name in vars(ns)
    if not name.startswith("_")
]


def _same_default(a, b):
    if callable(a) or callable(b):
        return callable(a) and callable(b)
    try:
        equal = bool(a == b)
    except (TypeError, ValueError):
        return False
    return equal and (type(a) is type(b) or {type(a), type(b)} <= {int, float})


def check_drop_in_signature(expected: inspect.Signature, actual: inspect.Signature, extra_ok):
    """fgbuster's parameters come first, with the same names, kinds and defaults; ours may
    only add parameters that have defaults (``extra_ok``: required ones allowed too)."""
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    exp = list(expected.parameters.values())
    act = list(actual.parameters.values())
    exp_var = {p.kind for p in exp if p.kind in variadic}
    act_var = {p.kind for p in act if p.kind in variadic}
    assert exp_var <= act_var, f"variadic parameters {exp_var} expected, got {act_var}"
    for position, e in enumerate(exp):
        if e.kind in variadic:
            continue
        a = act[position] if position < len(act) else None
        assert a is not None and a.name == e.name, (
            f"parameter {position} should be {e.name!r}: {actual}"
        )
        assert a.kind == e.kind, f"{e.name}: kind {a.kind} instead of {e.kind}"
        if e.default is inspect.Parameter.empty:
            assert a.default is inspect.Parameter.empty, f"{e.name} must stay required"
        else:
            assert _same_default(e.default, a.default), (
                f"{e.name}: default {a.default!r} != {e.default!r}"
            )
    known = {p.name for p in exp}
    for a in act:
        if a.name not in known and a.kind not in variadic and not extra_ok:
            assert a.default is not inspect.Parameter.empty, (
                f"added parameter {a.name!r} needs a default"
            )


@pytest.mark.parametrize(("module", "name"), SIGNATURES, ids=[f"{m}.{n}" for m, n in SIGNATURES])
def test_signature_matches_fgbuster(module, name):
    ours = getattr(importlib.import_module(f"legacy_compat.{module}"), name)
    expected = inspect.signature(getattr(getattr(_FG, module), name))
    check_drop_in_signature(expected, inspect.signature(ours), (module, name) in _VAR_EXTRA_OK)


def test_xforecast_takes_sigma_r_68CL_and_minimize_kwargs():
    params = inspect.signature(legacy_compat.cosmology.xForecast).parameters
    assert "sigma_r_68CL" in params
    assert any(p.kind == p.VAR_KEYWORD for p in params.values())


@pytest.mark.parametrize(
    ("owner", "method", "expected"),
    [
        ("Component", "eval", "(self, nu, *params)"),
        ("Component", "diff", "(self, nu, *params)"),
        ("Component", "diff_diff", "(self, nu, *params)"),
        ("MixingMatrix", "eval", "(self, nu, *params)"),
        ("MixingMatrix", "diff", "(self, nu, *params)"),
        ("MixingMatrix", "diff_diff", "(self, nu, *params)"),
        ("MixingMatrix", "evaluator", "(self, nu, shape=(-1,))"),
    ],
)
def test_method_signatures(owner, method, expected):
    assert str(inspect.signature(getattr(getattr(legacy_compat, owner), method))) == expected


@pytest.mark.parametrize("method", ["diff_evaluator", "diff_diff_evaluator"])
def test_mixingmatrix_unpack_default_reshapes_to_1d(method):
    sig = inspect.signature(getattr(legacy_compat.MixingMatrix, method))
    assert list(sig.parameters) == ["self", "nu", "unpack"]
    unpack = sig.parameters["unpack"].default
    np.testing.assert_array_equal(unpack(np.arange(6.0).reshape(2, 3)), np.arange(6.0))


def test_signature_checker_catches_differences():
    def fg(a, b=1, *args, **kw): ...
    def renamed(a, c=1, *args, **kw): ...
    def new_default(a, b=2, *args, **kw): ...
    def no_kwargs(a, b=1, *args): ...
    def required_extra(a, b=1, *args, c, **kw): ...
    def ok_extra(a, b=1, c=None, *args, seed=None, **kw): ...

    for bad in (renamed, new_default, no_kwargs, required_extra):
        with pytest.raises(AssertionError):
            check_drop_in_signature(inspect.signature(fg), inspect.signature(bad), False)
    check_drop_in_signature(inspect.signature(fg), inspect.signature(ok_extra), False)


# ------------------------------------------------------------------ user-visible output


def test_legacy_component_warns_instead_of_printing(capsys):
    with pytest.warns(UserWarning, match="defaults"):
        defaults = legacy_compat.AnalyticComponent("a * nu**b").defaults
    assert defaults == [1.0, 1.0]  # fgbuster's fallback, now announced by a warning
    with pytest.warns(UserWarning, match="nu_pivot"):
        legacy_compat.PowerLaw(30.0, running=None)
    assert capsys.readouterr().out == ""


def test_legacy_bad_input_is_a_clear_exception_not_an_assert():
    dust = legacy_compat.Dust(353.0)
    with pytest.raises((TypeError, ValueError), match="beta_d"):
        dust.eval(np.array([100.0, 200.0]), 1.5)  # fgbuster: bare AssertionError


# ---------------------------------------------------------------------------- alias


@pytest.fixture
def clean_fgbuster(monkeypatch):
    """Leave sys.modules / sys.meta_path / sys.path as they were."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    saved = {k: v for k, v in sys.modules.items() if k == "fgbuster" or k.startswith("fgbuster.")}
    yield
    _alias.unalias_fgbuster()
    for k in [k for k in sys.modules if k == "fgbuster" or k.startswith("fgbuster.")]:
        del sys.modules[k]
    sys.modules.update(saved)
    importlib.invalidate_caches()


def _fake_fgbuster(root: Path, perturbation: float = 1e-9) -> Path:
    """A stand-in 'real' fgbuster whose functions return slightly perturbed numbers."""
    pkg = root / "fgbuster"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "from .observation_helpers import *\nfrom . import algebra\nREAL = True\n"
    )
    (pkg / "observation_helpers.py").write_text(
        textwrap.dedent(f"""
        import types
        import numpy as np
        __all__ = ['get_instrument']
        def standardize_instrument(instrument):
            out = types.SimpleNamespace()
            for key in ('frequency', 'depth_i', 'depth_p', 'fwhm'):
                if key in instrument:
                    setattr(out, key, np.asarray(instrument[key], float) * (1 + {perturbation}))
            return out
        def get_instrument(tag=''):
            raise ValueError('stand-in')
    """)
    )
    (pkg / "algebra.py").write_text(
        textwrap.dedent(f"""
        import numpy as np
        __all__ = ['W', 'invAtNA', 'logL']
        EPS = {perturbation}
        def _chol(invN, n):
            return np.eye(n) if invN is None else np.linalg.cholesky(invN)
        def W(A, invN=None, return_svd=False):
            N = np.eye(A.shape[-2]) if invN is None else invN
            return np.linalg.solve(A.T @ N @ A, A.T @ N) * (1 + EPS)
        def invAtNA(A, invN=None, return_svd=False):
            N = np.eye(A.shape[-2]) if invN is None else invN
            return np.linalg.inv(A.T @ N @ A) * (1 + EPS)
        def logL(A, d, invN=None, return_svd=False):
            N = np.eye(A.shape[-2]) if invN is None else invN
            AtNd = d @ N @ A
            return 0.5 * np.sum(AtNd * np.linalg.solve(A.T @ N @ A, AtNd.T).T) * (1 + EPS)
    """)
    )
    return root


def test_alias_resolves_every_fgbuster_import(clean_fgbuster):
    assert _alias.alias_fgbuster() is True  # no real fgbuster on this machine
    import fgbuster
    import fgbuster.algebra
    from fgbuster.separation_recipes import ilc

    assert fgbuster is legacy_compat
    assert fgbuster.algebra is legacy_compat.algebra
    assert ilc is legacy_compat.separation_recipes.ilc
    for module in MODULES:
        assert importlib.import_module(f"fgbuster.{module}") is getattr(legacy_compat, module)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fgbuster.no_such_module")
    assert _alias.is_aliased()
    _alias.unalias_fgbuster()
    assert not _alias.is_aliased()
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fgbuster")


def test_alias_does_not_shadow_a_real_fgbuster_unless_forced(clean_fgbuster, tmp_path):
    sys.path.insert(0, str(_fake_fgbuster(tmp_path)))
    importlib.invalidate_caches()
    with pytest.warns(UserWarning, match="real fgbuster"):
        assert _alias.alias_fgbuster() is False
    import fgbuster

    assert fgbuster.REAL
    assert _alias.alias_fgbuster(force=True) is True
    import fgbuster as again

    assert again is legacy_compat
    assert importlib.import_module("fgbuster.algebra") is legacy_compat.algebra
    with pytest.raises(TypeError, match="force"):
        _alias.alias_fgbuster(force="yes")


def test_cli_refuses_a_real_fgbuster_without_force(clean_fgbuster, tmp_path, capsys):
    sys.path.insert(0, str(_fake_fgbuster(tmp_path / "fake")))
    importlib.invalidate_caches()
    script = tmp_path / "script.py"
    out = tmp_path / "out.json"
    script.write_text(
        "import sys, json, fgbuster\n"
        "json.dump({'argv': sys.argv, 'name': __name__, 'pkg': fgbuster.__name__},"
        " open(sys.argv[1], 'w'))\n"
    )
    assert cli_main([str(script), str(out)]) == _compare.EXIT_RUN_FAILED
    assert "--force" in capsys.readouterr().err
    assert not out.exists()
    assert cli_main(["--force", str(script), str(out), "--", "-x"]) == 0  # args verbatim
    result = json.loads(out.read_text())
    assert result == {"argv": [str(script), str(out), "--", "-x"], "name": "__main__",
                      "pkg": "legacy_compat"}  # fmt: skip
    assert cli_main([str(tmp_path / "missing.py")]) == _compare.EXIT_RUN_FAILED


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.update(extra)
    return env


def test_python_m_runs_an_unmodified_script_without_leaking_x64(tmp_path):
    """One subprocess: fgbuster imports of every form, argv/__main__, float64 results from
    component_model/mixingmatrix, and the user's own JAX code still in float32 after them."""
    script = tmp_path / "fg_script.py"
    script.write_text(
        textwrap.dedent("""
        import json
        import sys

        import jax.numpy as jnp
        import numpy as np

        import fgbuster
        import fgbuster.mixingmatrix as mm
        from fgbuster import *
        from fgbuster.component_model import Dust

        assert __name__ == "__main__"
        nu = np.array([30.0, 100.0, 353.0])
        A = mm.MixingMatrix(CMB(), Dust(353.0), Synchrotron(30.0))
        value = A.eval(nu, 1.5, 20.0, -3.0)
        dust = Dust(353.0).eval(nu, 1.5, 20.0)
        json.dump({
            "argv": sys.argv, "package": fgbuster.__name__, "A": value.tolist(),
            "A_dtype": str(value.dtype), "dust": dust.tolist(),
            "user_dtype": str(jnp.ones(2).dtype), "user_sum_dtype": str((jnp.ones(2) + 1.0).dtype),
        }, open(sys.argv[1], "w"))
    """)
    )
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "-m", "legacy_compat", str(script), str(out), "--flag", "7"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["argv"] == [str(script), str(out), "--flag", "7"]
    assert result["package"] == "legacy_compat"
    assert result["A_dtype"] == "float64"
    assert result["user_dtype"] == "float32" and result["user_sum_dtype"] == "float32"
    nu = np.array([30.0, 100.0, 353.0])
    A = legacy_compat.MixingMatrix(
        legacy_compat.CMB(), legacy_compat.Dust(353.0), legacy_compat.Synchrotron(30.0)
    ).eval(nu, 1.5, 20.0, -3.0)
    np.testing.assert_allclose(result["A"], A, rtol=1e-15)  # same code path, same process kind
    np.testing.assert_allclose(result["dust"], A[:, 1], rtol=1e-15)
    np.testing.assert_allclose(np.array(result["A"])[2, 1], 1.0, rtol=1e-14)  # dust at nu0


# ------------------------------------------------------------------------- --compare

COMPARE_SCRIPT = """
import numpy as np
from fgbuster.observation_helpers import standardize_instrument
from fgbuster.algebra import W, logL
import fgbuster.algebra as alg

inst = standardize_instrument({'frequency': [30.0, 90.0, 150.0], 'depth_p': [10.0, 5.0, 7.0]})
A = np.array([[1.0, 0.5], [1.0, 1.0], [1.0, 2.0]])
d = np.array([[1.0, 2.0, 3.0], [0.5, 1.0, 4.0]])
W(A)
logL(A, d)
alg.invAtNA(A, np.diag([1.0, 2.0, 3.0]))
"""


def test_compare_mode_reports_per_call_per_field(tmp_path, monkeypatch):
    """Two subprocesses: the stand-in 'real' fgbuster (results perturbed by 1e-9 relative)
    and legacy_compat. Agreement at rtol 1e-6, disagreement at 1e-12."""
    fake = _fake_fgbuster(tmp_path / "fake", perturbation=1e-9)
    script = tmp_path / "cmp_script.py"
    script.write_text(COMPARE_SCRIPT)
    for key in [k for k in os.environ if k.startswith("JAX_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake), str(ROOT)]))
    report = io.StringIO()
    keep = tmp_path / "rec"
    code = _compare.compare_main(str(script), [], rtol=1e-6, keep=str(keep), out=report)
    text = report.getvalue()
    assert code == _compare.EXIT_OK, text

    ok, rows = _compare.compare_recordings(keep / "real", keep / "legacy", rtol=1e-6)
    assert ok
    by_call = [(r["call"], r["name"], r["field"]) for r in rows]
    assert by_call == [
        (0, "observation_helpers.standardize_instrument", "depth_p"),
        (0, "observation_helpers.standardize_instrument", "frequency"),
        (1, "algebra.W", "value"),
        (2, "algebra.logL", "value"),
        (3, "algebra.invAtNA", "value"),
    ]
    for r in rows:  # the stand-in's 1e-9 perturbation, seen through legacy's own rounding
        assert 5e-10 < r["max_rel"] < 2e-9, r
        assert r["status"] == "ok"
        assert r["name"] in text
    ok, rows = _compare.compare_recordings(keep / "real", keep / "legacy", rtol=1e-12)
    assert not ok and all(r["status"] == "FAIL" for r in rows)
    assert "5 failing field(s)" in _compare.format_report(rows, 1e-12, 0.0)


def test_compare_recorder_without_fgbuster_says_so(tmp_path):
    """The recorder alone (stdlib + NumPy, no JAX): exit code 3 and a note in the index."""
    script = tmp_path / "s.py"
    script.write_text("import fgbuster\n")
    proc = subprocess.run(
        [sys.executable, _compare.__file__, "--record", "real", "--out", str(tmp_path / "r"),
         str(script)], cwd=tmp_path, env=_env(PYTHONPATH=""), capture_output=True, text=True,
        check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert (
        "cannot import fgbuster" in json.loads((tmp_path / "r" / "index.json").read_text())["fatal"]
    )


def _rec(tmp_path: Path, name: str, calls: list[tuple[str, dict | None, str | None]]) -> Path:
    rec = _compare.Recorder(tmp_path / name, name)
    for fn_name, result, error in calls:
        rec._save(fn_name, result, error)
    return tmp_path / name


def test_compare_recordings_rules(tmp_path):
    unseen = _compare.UNSEEN
    real = _rec(tmp_path, "real", [
        ("basic_comp_sep", {"x": np.array([1.0, 2.0]), "s": np.array([unseen, 1.0, 0.0]),
                            "mask_good": np.array([False, True, True]), "params": ["a", "b"],
                            "chi_dB": [np.array([np.nan, 1.0])]}, None),
        ("ilc", None, "ValueError: bad"),
        ("W", {"value": np.ones((2, 3))}, None),
    ])  # fmt: skip
    same = _rec(tmp_path, "same", [
        ("basic_comp_sep", {"x": np.array([1.0, 2.0 + 1e-7]), "s": np.array([unseen, 1.0, 5e-4]),
                            "mask_good": np.array([False, True, True]), "params": ["a", "b"],
                            "chi_dB": [np.array([np.nan, 1.0])], "Sigma": np.eye(2)}, None),
        ("ilc", None, "ValueError: also bad"),
        ("W", {"value": np.ones((1, 3))}, None),
    ])  # fmt: skip
    ok, rows = _compare.compare_recordings(real, same, rtol=1e-3)
    assert ok, _compare.format_report(rows, 1e-3, 0)
    status = {(r["call"], r["field"]): r for r in rows}
    assert status[(0, "Sigma")]["status"] == "extra"
    assert math.isclose(status[(0, "x")]["max_rel"], 1e-7 / 2.0, rel_tol=1e-6)
    assert math.isclose(status[(0, "s")]["max_abs"], 5e-4)  # UNSEEN entries matched exactly
    assert "broadcast" in status[(2, "value")]["note"]

    different = _rec(tmp_path, "different", [
        ("basic_comp_sep", {"x": np.array([1.0, 2.0]), "s": np.array([0.0, 1.0, 0.0]),
                            "mask_good": np.array([True, True, True]),
                            "chi_dB": [np.array([0.0, 1.0])]}, None),
        ("ilc", {"s": np.ones(2)}, None),
    ])  # fmt: skip
    ok, rows = _compare.compare_recordings(real, different, rtol=1e-3)
    assert not ok
    failing = {(r["call"], r["field"]) for r in rows if r["status"] == "FAIL"}
    assert failing == {(0, "s"), (0, "mask_good"), (0, "chi_dB"), (1, ""), (2, "")}
    with pytest.raises(ValueError, match="rtol"):
        _compare.compare_recordings(real, same, rtol=-1.0)

    # a call made by one backend only is reported without shifting the later pairs
    extra = _rec(tmp_path, "extra", [
        ("basic_comp_sep", {"x": np.array([1.0, 2.0]), "s": np.array([unseen, 1.0, 0.0]),
                            "mask_good": np.array([False, True, True]),
                            "chi_dB": [np.array([np.nan, 1.0])]}, None),
        ("standardize_instrument", {"frequency": np.ones(3)}, None),
        ("ilc", None, "ValueError: bad"),
        ("W", {"value": np.ones((2, 3))}, None),
    ])  # fmt: skip
    ok, rows = _compare.compare_recordings(real, extra, rtol=1e-12)
    assert not ok
    assert [(r["name"], r["status"]) for r in rows if r["status"] != "ok"] == [
        ("standardize_instrument", "FAIL")
    ]


# ----------------------------------------------------------------------- visualization

MEAN = np.array([1.5, 20.0, -3.0])
COV = np.array([[0.01, 0.05, 0.0], [0.05, 1.0, -0.02], [0.0, -0.02, 0.04]])


@pytest.fixture
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_corner_norm_draws_the_exact_gaussian(plt):
    viz = legacy_compat.visualization
    assert viz.corner_norm(MEAN, COV, labels=["b", "T", "bs"], truths=list(MEAN),
                           show_titles=True, quantiles=[0.16, 0.84]) is None  # fmt: skip
    fig = plt.gcf()
    axes = np.array(fig.axes).reshape(3, 3)
    sigma = np.sqrt(np.diag(COV))
    for i in range(3):
        x, pdf = axes[i, i].lines[0].get_data()
        # marginal density: integrates to P(|z| < 4) over the default +-4 sigma range
        np.testing.assert_allclose(np.trapezoid(pdf, x), math.erf(4 / math.sqrt(2)), rtol=1e-4)
        np.testing.assert_allclose(x[np.argmax(pdf)], MEAN[i], atol=sigma[i] * 0.02)
        assert axes[i, i].get_title().startswith(["b", "T", "bs"][i])
        for j in range(i):
            inv = np.linalg.inv(COV[np.ix_([j, i], [j, i])])
            for line, level in zip(axes[i, j].lines[:4], (0.5, 1.0, 1.5, 2.0), strict=True):
                xy = np.stack(line.get_data()) - MEAN[[j, i], None]
                r2 = np.einsum("an,ab,bn->n", xy, inv, xy)  # Mahalanobis radius of each point
                np.testing.assert_allclose(r2, level**2, rtol=1e-10)
        for j in range(i + 1, 3):
            assert not axes[i, j].get_frame_on()
    assert axes[2, 0].get_xlabel() == "b" and axes[1, 0].get_ylabel() == "T"


def test_corner_norm_reuses_fig_and_accepts_corner_arguments(plt):
    fig, _ = plt.subplots(2, 2)
    legacy_compat.visualization.corner_norm(
        MEAN[:2], COV[:2, :2], 30, [(1.0, 2.0), (15.0, 25.0)], fig=fig, smooth=1.0,
        plot_datapoints=False, levels=[0.68],
    )  # fmt: skip
    ax = fig.axes[2]
    assert ax.get_xlim() == (1.0, 2.0) and ax.get_ylim() == (15.0, 25.0)
    assert len(ax.lines) == 2  # one level and the mean marker
    from matplotlib.figure import Figure

    detached = Figure()  # a figure pyplot does not manage works too
    detached.subplots(2, 2)
    legacy_compat.visualization.corner_norm(MEAN[:2], COV[:2, :2], fig=detached)
    assert len(detached.axes[2].lines) == 5  # four default levels and the mean marker


@pytest.mark.parametrize(
    ("mean", "cov", "kwargs", "error", "match"),
    [
        (MEAN, COV[:2, :2], {}, ValueError, "cov"),
        (MEAN, -COV, {}, ValueError, "variances"),
        (MEAN[:2], [[1.0, 2.0], [2.0, 1.0]], {}, ValueError, "semi-definite"),
        (MEAN[:2], [[1.0, 0.5], [0.0, 1.0]], {}, ValueError, "symmetric"),
        ([np.nan, 1.0], np.eye(2), {}, ValueError, "finite"),
        (MEAN, COV, {"bogus": 1}, TypeError, "bogus"),
        (MEAN, COV, {"labels": ["a"]}, ValueError, "labels"),
    ],
)
def test_corner_norm_bad_input(plt, mean, cov, kwargs, error, match):
    with pytest.raises(error, match=match):
        legacy_compat.visualization.corner_norm(mean, cov, **kwargs)


def test_plot_component_plots_the_sed_at_its_defaults(plt):
    dust = legacy_compat.Dust(353.0)
    legacy_compat.visualization.plot_component(dust, 10.0, 1000.0)
    line = plt.gca().lines[-1]
    nu, sed = line.get_data()
    assert line.get_label() == "Dust" and nu.shape == (1000,)
    np.testing.assert_allclose(nu[[0, -1]], [10.0, 1000.0], rtol=1e-12)
    np.testing.assert_allclose(sed, dust.eval(nu, *dust.defaults), rtol=1e-14)
    assert plt.gca().get_xscale() == "log" and plt.gca().get_yscale() == "log"
    legacy_compat.visualization.plot_component(legacy_compat.CMB(), 10.0, 1000.0)
    np.testing.assert_array_equal(plt.gca().lines[-1].get_ydata(), 1.0)
    with pytest.raises(ValueError, match="nu_min"):
        legacy_compat.visualization.plot_component(dust, -1.0, 10.0)
    with pytest.raises(TypeError, match="component"):
        legacy_compat.visualization.plot_component("dust", 1.0, 10.0)
