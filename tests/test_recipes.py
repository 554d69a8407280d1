"""Parametric recipes on HEALPix maps: golden fixtures from fgbuster 2.0, properties, bad input.

Two-level check of the golden fits (tests/golden/README.md): (1) the full call through
legacy_compat, compared at the manifest tolerances; (2) the deterministic outputs (s, chi,
chi_dB, invAtNA, Sigma) evaluated at the golden ``x`` (``x0`` = golden x, ``maxiter`` 0),
compared tightly. The second call reuses the first one's compiled programs.
"""

import healpy as hp
import numpy as np
import pytest

import fgjax
from fgjax import _recipes
from legacy_compat import component_model as cm
from legacy_compat import separation_recipes as sr

from ._golden import check, load_case

UNSEEN = hp.UNSEEN


def _instrument(inputs):
    return {k.split("__", 1)[1]: v for k, v in inputs.items() if k.startswith("instrument__")}


def _cdsync(fixed_temp=False):
    dust = cm.Dust(nu0=353.0, temp=20.0) if fixed_temp else cm.Dust(nu0=353.0)
    return [cm.CMB(), dust, cm.Synchrotron(nu0=30.0)]


def _call(name, comps, inp, **kwargs):
    entry = load_case(name)[0]
    mk = dict(entry["meta"]["minimize_kwargs"], **kwargs)
    inst = _instrument(inp)
    if name.startswith("basic"):
        nside = 2 if "patches" in name else 0
        return sr.basic_comp_sep(comps, inst, inp["data"], nside=nside, **mk)
    if name.startswith("weighted"):
        return sr.weighted_comp_sep(comps, inst, inp["data"], inp["cov"], nside=0, **mk)
    if name.startswith("multi_res"):
        return sr.multi_res_comp_sep(comps, inst, inp["data"], nsides=[2, 0, 1], **mk)
    ids = [inp[f"patch_ids__{i}"] for i in range(3)]
    return sr.adaptive_comp_sep(comps, inst, inp["data"], ids, **mk)


def _get(res, key):
    base, _, idx = key.partition("__")
    value = res[base]
    return value[int(idx)] if idx else value


def _tight(actual, expected, rtol=1e-8):
    """Deterministic algebra at the same x: round-off only (ill-conditioned solves: 1e-8)."""
    expected = np.asarray(expected, dtype=float)
    finite = expected[np.isfinite(expected) & (expected != UNSEEN)]
    atol = 1e-10 * np.abs(finite).max() if finite.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, float), expected, rtol=rtol, atol=atol,
                               equal_nan=True)  # fmt: skip


CASES = {
    "basic_comp_sep_T_global": False,
    "basic_comp_sep_QU_global_masked": False,
    "basic_comp_sep_IQU_patches_masked": True,
    "weighted_comp_sep_QU_nside0": False,
    "multi_res_comp_sep_QU": False,
    "adaptive_comp_sep_IQU": False,
}


def check_recipe_case(name):
    """A fitting-recipe golden case (run by test_golden_equality.py)."""
    entry, inp, out, _ = load_case(name)
    comps = _cdsync(fixed_temp=CASES[name])
    res = _call(name, comps, inp)
    # (1) the fit: every output at the manifest tolerance (optimizer: x rtol 1e-4, ...)
    for key in out:
        actual = _get(res, key)
        assert np.shape(actual) == out[key].shape, key
        check(entry, key, actual, out[key])
    assert res.params == entry["meta"]["params"]
    assert np.all(res.success)
    # (2) deterministic outputs at the golden x
    if "x__0" in out:
        x0 = np.concatenate([out[f"x__{i}"] for i in range(3)])
    else:
        # empty patch: fgbuster leaves it at the defaults, where its invAtNA is evaluated
        defaults = np.array(fgjax.MixingMatrix(*comps).defaults)
        defaults = defaults.reshape(defaults.shape + (1,) * (out["x"].ndim - 1))
        x0 = np.where(out["x"] == UNSEEN, defaults, out["x"])
    at = _call(name, comps, inp, x0=x0, options={"maxiter": 0})
    for key in ("s", "chi", "invAtNA", "Sigma") + tuple(k for k in out if "chi_dB" in k):
        if key in out:
            _tight(_get(at, key), out[key])
    if "x_map__0" in out:
        for i in range(3):
            _tight(at.x_map[i], out[f"x_map__{i}"])


@pytest.mark.slow
def test_empty_patch_gets_unseen_and_sigma_everywhere():
    entry, inp, out, _ = load_case("basic_comp_sep_IQU_patches_masked")
    res = _call("basic_comp_sep_IQU_patches_masked", _cdsync(True), inp)
    empty = np.all(out["x"] == UNSEEN, axis=0)
    assert empty.sum() == 1
    assert np.all(res.x[:, empty] == UNSEEN) and np.all(res.Sigma[..., empty] == UNSEEN)
    assert np.all(np.isfinite(res.x)) and not np.any(np.isnan(res.Sigma))
    assert np.all(res.Sigma[0, 0, ~empty] > 0)


@pytest.mark.slow
def test_adaptive_sigma_and_empty_cluster(tmp_path):
    entry, inp, out, _ = load_case("adaptive_comp_sep_IQU")
    data = inp["data"].copy()
    ids = [inp[f"patch_ids__{i}"].copy() for i in range(3)]
    data[..., ids[0] == 2] = UNSEEN  # cluster 2 of beta_d loses all its pixels
    comps = [fgjax.CMB(), fgjax.Dust(nu0=353.0), fgjax.Synchrotron(nu0=30.0)]
    res = _recipes.adaptive_comp_sep(comps, _instrument(inp), data, ids)
    assert res.x[0][2] == UNSEEN
    n_x = 7 + 1 + 12
    assert res.Sigma.shape == (n_x, n_x)
    assert np.all(res.Sigma[2] == UNSEEN) and np.all(res.Sigma[:, 2] == UNSEEN)
    keep = np.arange(n_x) != 2
    sub = res.Sigma[np.ix_(keep, keep)]
    np.testing.assert_allclose(sub, sub.T, rtol=1e-10)
    assert np.all(np.linalg.eigvalsh(sub) > 0)
    # checkpoints: iterate 2 by 2, then restart from the files
    ck = {"odir": str(tmp_path), "delta": 2}
    res_ck = _recipes.adaptive_comp_sep(comps, _instrument(inp), data, ids, checkpoint=ck)
    assert sorted(p.name for p in tmp_path.iterdir())[0].startswith("iter_")
    # same optimum: the fits stop within 1e-2 sigma of it (Newton decrement below 1e-4)
    sigma = np.sqrt(np.abs(np.diag(res.Sigma)))  # UNSEEN row of the empty cluster: not used
    np.testing.assert_array_less(np.abs(np.concatenate(res_ck.x) - np.concatenate(res.x))[keep],
                                 0.01 * sigma[keep])  # fmt: skip
    again = _recipes.adaptive_comp_sep(
        comps, _instrument(inp), data, ids, checkpoint={"odir": str(tmp_path)}
    )
    np.testing.assert_array_less(np.abs(np.concatenate(again.x) - np.concatenate(res.x))[keep],
                                 0.01 * sigma[keep])  # fmt: skip


@pytest.mark.slow
def test_noiseless_recovery_and_bounds():
    # noise-free c1d0s0-like maps: the global fit gives back the truth to round-off
    entry, inp, out, truth = load_case("basic_comp_sep_QU_global_masked")
    nu = inp["instrument__frequency"]
    comps = [fgjax.CMB(), fgjax.Dust(nu0=353.0), fgjax.Synchrotron(nu0=30.0)]
    rng = np.random.default_rng(3)
    amps = rng.normal(size=(3, 2, 768)) * np.array([1.0, 10.0, 5.0])[:, None, None]
    A = np.asarray(fgjax.MixingMatrix(*comps).eval(nu, 1.54, 20.0, -3.0))
    data = np.einsum("fc,csp->fsp", A, amps)
    inst = _instrument(inp)
    res = _recipes.basic_comp_sep(comps, inst, data)
    np.testing.assert_allclose(res.x, [1.54, 20.0, -3.0], rtol=1e-8)
    np.testing.assert_allclose(res.s, amps, rtol=1e-7, atol=1e-9)
    bounds = [(1.0, 1.5), (None, None), (-4, -2)]
    bounded = _recipes.basic_comp_sep(comps, inst, data, bounds=bounds)
    assert bounded.x[0] == pytest.approx(1.5)


# -- bad input (raised before anything is compiled) -------------------------------------------
NU = {"frequency": np.array([30.0, 100.0, 200.0, 300.0]), "depth_p": np.ones(4)}
COMPS = [fgjax.CMB(), fgjax.Synchrotron(nu0=30.0)]


def test_bad_input_messages():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(4, 2, 48))
    with pytest.raises(ValueError, match="`data` has 3 frequency maps"):
        _recipes.basic_comp_sep(COMPS, NU, data[:3])
    with pytest.raises(ValueError, match="must be HEALPix maps"):
        _recipes.basic_comp_sep(COMPS, NU, data[..., :47])
    with pytest.raises(ValueError, match="must be HEALPix maps"):
        _recipes.basic_comp_sep(COMPS, NU, data[..., :47], nside=1)
    with pytest.raises(ValueError, match=r"`nside` \(4\) must not be larger"):
        _recipes.basic_comp_sep(COMPS, NU, data, nside=4)
    with pytest.raises(ValueError, match="power of 2"):
        _recipes.basic_comp_sep(COMPS, NU, data, nside=3)
    with pytest.raises(ValueError, match=r"`nsides\[0\]` \(8\) must not be larger"):
        _recipes.multi_res_comp_sep(COMPS, NU, data, [8])
    with pytest.raises(ValueError, match="depth_p"):
        _recipes.basic_comp_sep(COMPS, dict(NU, depth_p=[1.0, 1.0, -1.0, 1.0]), data)
    with pytest.raises(ValueError, match="depth_p"):
        _recipes.basic_comp_sep(COMPS, dict(NU, depth_p=[1.0, np.inf, 1.0, 1.0]), data)
    with pytest.raises(ValueError, match=r"`patch_ids\[0\]` must have shape \(n_pix,\)"):
        _recipes.adaptive_comp_sep(COMPS, NU, data, [np.zeros(47, int)])
    with pytest.raises(ValueError, match=r"`patch_ids\[0\]` must be non-negative"):
        _recipes.adaptive_comp_sep(COMPS, NU, data, [-np.ones(48, int)])
    with pytest.raises(ValueError, match="one cluster map per free parameter"):
        _recipes.adaptive_comp_sep(COMPS, NU, data, [np.zeros(48, int)] * 2)
    with pytest.raises(ValueError, match="`cov` must be broadcastable"):
        _recipes.weighted_comp_sep(COMPS, NU, data, np.ones((4, 3, 48)))
    with pytest.raises(ValueError, match="`cov` must be positive"):
        _recipes.weighted_comp_sep(COMPS, NU, data, -np.ones((4, 2, 48)))
    with pytest.raises(ValueError, match="`bounds` must have one"):
        _recipes.basic_comp_sep(COMPS, NU, data, bounds=[(0, 1), (0, 1)])
    with pytest.raises(ValueError, match="1, 2 or 3 Stokes"):
        _recipes.basic_comp_sep(COMPS, NU, rng.normal(size=(4, 4, 48)))


@pytest.mark.slow
def test_explicit_method_delegates_to_optimize():
    # method="L-BFGS-B": the fit runs in fgjax._optimize.multi_comp_sep (SciPy); same outputs
    entry, inp, out, _ = load_case("basic_comp_sep_IQU_patches_masked")
    comps = [fgjax.CMB(), fgjax.Dust(nu0=353.0, temp=20.0), fgjax.Synchrotron(nu0=30.0)]
    options = {"ftol": 0.0, "gtol": 1e-12, "maxiter": 5000}
    res = _recipes.basic_comp_sep(
        comps, _instrument(inp), inp["data"], nside=2, method="L-BFGS-B", options=options
    )
    for key in ("x", "Sigma", "s", "chi", "invAtNA"):
        check(entry, key, getattr(res, key), out[key])


def test_every_parameter_fixed_separates_directly():
    """No free parameter: the recipe is a plain linear separation (fgbuster's test_chi)."""
    nu = np.array([30.0, 90.0, 150.0, 220.0, 353.0])
    inst = {"frequency": nu, "depth_i": np.full(5, 10.0), "depth_p": np.full(5, 14.0)}
    comps = [cm.CMB(), cm.Dust(nu0=353.0, temp=20.0, beta_d=1.54)]
    rng = np.random.default_rng(3)
    amp = rng.normal(size=(2, 2, 12 * 4**2)) * np.array([1.0, 10.0])[:, None, None]
    A = np.asarray(fgjax.MixingMatrix(*comps).eval(nu))
    data = np.einsum("fc,csp->fsp", A, amp)
    res = sr.basic_comp_sep(comps, inst, data)
    np.testing.assert_allclose(res.s, amp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.chi, 0.0, atol=1e-9)


def test_multi_res_with_equal_nsides_equals_basic_patches():
    """Equal nsides make the joint problem separable: it is fitted patch by patch, and
    equals basic_comp_sep on those patches (fgbuster's own multi-res tests rely on it)."""
    nu = np.array([30.0, 60.0, 90.0, 150.0, 220.0, 353.0])
    inst = {"frequency": nu, "depth_i": np.full(6, 3.0), "depth_p": np.full(6, 4.0)}
    comps = [fgjax.CMB(), fgjax.Dust(nu0=353.0, temp=20.0), fgjax.Synchrotron(nu0=30.0)]
    rng = np.random.default_rng(5)
    n_pix = 12 * 8**2
    amp = rng.normal(size=(3, 2, n_pix)) * np.array([1.0, 20.0, 30.0])[:, None, None]
    beta = np.stack([1.5 + 0.1 * rng.random(12), -3.0 + 0.1 * rng.random(12)])  # per patch
    ids = hp.ud_grade(np.arange(12.0), 8).astype(int)
    A = np.asarray(fgjax.MixingMatrix(*comps).eval(nu, beta[0][ids], beta[1][ids]))
    data = np.einsum("pfc,csp->fsp", A, amp)
    multi = fgjax.multi_res_comp_sep(comps, inst, data, [1, 1])
    basic = fgjax.basic_comp_sep(comps, inst, data, nside=1)
    np.testing.assert_allclose(np.stack(multi.x), basic.x, rtol=1e-8)
    np.testing.assert_allclose(np.stack(multi.x), beta, rtol=1e-6)


def test_chunked_layout_handles_uneven_and_empty_groups():
    """One group with most pixels, small ones and an empty one: per-group sums equal a
    direct reduction, and the padded layout holds every pixel once."""
    rng = np.random.default_rng(3)
    n_pix, n_group = 1000, 6
    group = np.where(rng.random(n_pix) < 0.9, 0, rng.integers(1, 5, n_pix))  # group 5 empty
    x = rng.normal(size=(n_pix, 2, 4))
    layout = _recipes._grouping(group, n_group)
    assert layout.K == _recipes._CHUNK
    assert layout.n_chunk * layout.K < 2 * n_pix  # no padding to the largest group
    C = np.asarray(_recipes._group_covariance(x, layout))
    want = np.zeros((n_group, 2, 4, 4))
    np.add.at(want, group, x[:, :, :, None] * x[:, :, None, :])
    np.testing.assert_allclose(C, want, rtol=1e-12, atol=1e-12)
    src = np.asarray(layout.src)
    np.testing.assert_array_equal(np.sort(src[src < n_pix]), np.arange(n_pix))  # each once
    padded = np.asarray(layout.pad(x)).reshape((-1,) + x.shape[1:])
    np.testing.assert_array_equal(padded[src < n_pix], x[src[src < n_pix]])
    assert not padded[src == n_pix].any()


def test_stokes_with_equal_prewhitening_are_fitted_as_one():
    pw = np.array([[1.0, 2.0], [3.0, 4.0], [3.0, 4.0]])  # I apart, Q and U together
    rows, classes = _recipes._stokes_classes(pw)
    assert sorted(classes) == [(0,), (1, 2)]
    for row, idx in zip(np.asarray(rows), classes, strict=True):
        np.testing.assert_array_equal(row, pw[idx[0]])
    rng = np.random.default_rng(0)
    d = rng.normal(size=(64, 3, 2))
    layout = _recipes._grouping(np.repeat(np.arange(4), 16), 4)
    C = np.asarray(_recipes._fit_covariance(d.T, np.zeros(64, bool), pw, layout, classes))
    dw = (d * pw[None]).reshape(4, 16, 3, 2)
    full = np.einsum("gpsf,gpsk->gsfk", dw, dw)
    for c, idx in enumerate(classes):
        np.testing.assert_allclose(C[:, c], full[:, list(idx)].sum(axis=1), rtol=1e-13)
    assert _recipes._stokes_classes(pw[:2])[1] == ((0,), (1,))


def test_recipes_never_write_into_the_data():
    """A Fortran-ordered data array (e.g. ``maps.T`` of pixel-major maps) with UNSEEN
    pixels comes back unchanged (its transpose must not be zeroed in place)."""
    rng = np.random.default_rng(5)
    nside = 2
    comps = [fgjax.CMB(), fgjax.Synchrotron(nu0=30.0)]
    inst = {"frequency": np.array([30.0, 70.0, 150.0, 250.0])}
    pix_major = rng.normal(size=(12 * nside**2, 4))
    pix_major[3] = UNSEEN
    data = pix_major.T  # (n_freq, n_pix), not C-contiguous
    before = data.copy()
    cov = np.ones_like(before)
    fgjax.weighted_comp_sep(comps, inst, data, cov)
    fgjax.basic_comp_sep(comps, inst, data)
    np.testing.assert_array_equal(data, before)


def test_maps_read_in_blocks_give_the_same_separation(monkeypatch):
    """The maps are read block by block (the device never holds them whole): many small
    blocks, with uneven clusters, padding and bad pixels, give what one block gives."""
    rng = np.random.default_rng(11)
    nside = 4
    n_pix = 12 * nside**2
    comps = [fgjax.CMB(), fgjax.Dust(353.0), fgjax.Synchrotron(30.0)]
    nu = np.array([30.0, 44.0, 70.0, 100.0, 143.0, 217.0, 353.0])
    inst = {"frequency": nu, "depth_i": np.full(7, 10.0), "depth_p": np.full(7, 14.0)}
    A = np.asarray(fgjax.MixingMatrix(*comps).eval(nu, 1.6, 19.0, -3.1))
    data = np.einsum("fc,csp->fsp", A, rng.normal(size=(3, 2, n_pix)) * [[[1.0]], [[5.0]], [[8.0]]])
    data += rng.normal(size=data.shape) * 0.05
    data[:, :, rng.choice(n_pix, 20, replace=False)] = hp.UNSEEN
    ids = np.where(rng.random(n_pix) < 0.7, 0, rng.integers(1, 4, n_pix))  # uneven clusters
    whole = fgjax.adaptive_comp_sep(comps, inst, data, [ids, ids, ids])
    basic_whole = fgjax.basic_comp_sep(comps, inst, data, nside=1)
    monkeypatch.setattr(_recipes, "_MIN_BLOCK", 1)
    monkeypatch.setattr(_recipes, "_BLOCKS", 7)  # blocks of a few chunks, the last one padded
    layout = _recipes._grouping(ids, 4)
    assert len(list(_recipes._chunk_blocks(data, np.zeros(n_pix, bool), layout))) > 1
    blocks = fgjax.adaptive_comp_sep(comps, inst, data, [ids, ids, ids])
    basic_blocks = fgjax.basic_comp_sep(comps, inst, data, nside=1)
    for a, b in ((whole, blocks), (basic_whole, basic_blocks)):
        np.testing.assert_allclose(
            np.concatenate([np.ravel(v) for v in a.x]),
            np.concatenate([np.ravel(v) for v in b.x]),
            rtol=1e-10,
        )
        for key in ("s", "chi", "invAtNA"):
            np.testing.assert_allclose(getattr(a, key), getattr(b, key), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.Sigma, b.Sigma, rtol=1e-8)
    for a, b in zip(basic_whole.chi_dB, basic_blocks.chi_dB, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dims", [(7, 3, 1), (50, 40, 30), (2**40, 2**30, 3)])
def test_cells_of_cluster_maps_match_unique_rows(dims):
    """The groups of pixels sharing every cluster (a table of combinations, a sort of
    mixed-radix keys, or rows beyond int64) are numpy's unique rows, in the same order."""
    from fgjax._recipes import _cells

    rng = np.random.default_rng(0)
    ids = [rng.integers(0, min(n, 60), 3000) for n in dims]
    cells, group = _cells(ids, dims)
    ref, inverse = np.unique(np.stack(ids, axis=1), axis=0, return_inverse=True)
    np.testing.assert_array_equal(cells, ref)
    np.testing.assert_array_equal(group, inverse.reshape(-1))


def test_joint_sigma_inverts_the_kept_values_in_place():
    """The joint Sigma is the inverse of the Fisher matrix over the kept values (UNSEEN
    rows and columns elsewhere), for an unsymmetric matrix too, and all UNSEEN when that
    matrix is singular."""
    from fgjax._recipes import _joint_sigma

    rng = np.random.default_rng(1)
    F = rng.normal(size=(6, 6)) + 6.0 * np.eye(6)
    F_before = F.copy()
    np.testing.assert_allclose(_joint_sigma(F, np.ones(6, bool)), np.linalg.inv(F), rtol=1e-12)
    np.testing.assert_array_equal(F, F_before)  # the caller's matrix is left as it was
    keep = np.array([True, False, True, True, False, True])
    Sigma = _joint_sigma(F, keep)
    np.testing.assert_allclose(Sigma[np.ix_(keep, keep)], np.linalg.inv(F[np.ix_(keep, keep)]),
                               rtol=1e-12)  # fmt: skip
    assert np.all(Sigma[~keep] == UNSEEN) and np.all(Sigma[:, ~keep] == UNSEEN)
    singular = np.ones((3, 3))
    assert np.all(_joint_sigma(singular, np.ones(3, bool)) == UNSEEN)


def test_bad_pixels_of_maps_and_masked_arrays():
    """A pixel is bad when any frequency or Stokes entry is UNSEEN (or masked)."""
    from fgjax._healpix import bad_pixels

    rng = np.random.default_rng(2)
    maps = rng.normal(size=(4, 3, 48))
    maps[2, 1, 5] = UNSEEN
    maps[0, 0, 40] = UNSEEN
    expected = np.zeros(48, bool)
    expected[[5, 40]] = True
    np.testing.assert_array_equal(bad_pixels(maps), expected)
    np.testing.assert_array_equal(bad_pixels(maps[:, 0]), np.arange(48) == 40)
    masked = np.ma.masked_equal(maps, UNSEEN)
    np.testing.assert_array_equal(bad_pixels(masked), expected)
    np.testing.assert_array_equal(bad_pixels(np.ma.MaskedArray(maps[:, 0])), np.zeros(48, bool))
