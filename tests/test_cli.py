"""The command line: demo, separate, instruments, help, and every input error.

The demo runs once in-process at nside 8 (module fixture); runs that reuse its components
hit the compiled fits it left in the cache. One separation runs as a subprocess (ILC, cheap
to compile). Error cases check: exit status 2, one line on stderr naming the file and the
field, and an output folder that was never created.
"""

import json
import os
import subprocess
import sys

import healpy as hp
import numpy as np
import pytest
import yaml

from fgjax._cli_config import CLIError, build_components, load_config
from fgjax._constants import UNSEEN
from fgjax.cli import DEMO_TRUTH, main

NSIDE = 8
N_PIX = 12 * NSIDE**2


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


# -- the demo -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo") / "out"
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = main(["demo", "--nside", str(NSIDE), "--output", str(folder)])
    return folder, rc, out.getvalue(), err.getvalue()


EXPECTED_DEMO_FILES = [
    "config.yaml",
    "summary.txt",
    "inputs/frequency_maps.fits",
    "inputs/cmb.fits",
    *(f"maps/{r}_{c}.fits" for r in ("basic", "multires") for c in ("cmb", "dust", "synchrotron")),
    "maps/multires_Dust.beta_d.fits",
    "maps/multires_Synchrotron.beta_pl.fits",
    *(f"results/{r}.{e}" for r in ("basic", "multires") for e in ("json", "npz")),
    "figures/input_maps.png",
    *(
        f"figures/basic_{f}.png"
        for f in ("components", "cmb_residual", "parameter_maps", "seds", "fisher")
        if f != "parameter_maps"
    ),
    *(
        f"figures/multires_{f}.png"
        for f in ("components", "cmb_residual", "parameter_maps", "seds")
    ),
]


def test_demo_writes_every_output(demo):
    folder, rc, out, err = demo
    assert rc == 0, err
    missing = [f for f in EXPECTED_DEMO_FILES if not (folder / f).is_file()]
    assert not missing
    # Component maps: Q and U at the demo's nside.
    cmb = hp.read_map(folder / "maps/basic_cmb.fits", field=None)
    assert cmb.shape == (2, N_PIX)
    # Figures are real PNGs with some content.
    import matplotlib.image as mpimg

    for f in EXPECTED_DEMO_FILES:
        if f.endswith(".png"):
            img = mpimg.imread(folder / f)
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
            assert np.std(img[..., :3]) > 0.01  # not a blank canvas
    # The terminal summary names every parameter, its truth and the timings.
    for name in DEMO_TRUTH:
        assert name in out
    assert "compile" in out and "fit" in out and "pull" in out
    assert (folder / "summary.txt").read_text().strip() in out


def test_demo_recovers_the_truth(demo):
    folder = demo[0]
    doc = json.loads((folder / "results/basic.json").read_text())
    assert doc["success"]
    for name, truth in DEMO_TRUTH.items():
        p = doc["parameters"][name]
        assert p["truth"] == truth
        # A global fit of a noisy sky: the estimate lies within a few Fisher sigmas.
        assert abs(p["x"] - truth) < 5 * p["sigma"], (name, p)
        assert p["pull"] == pytest.approx((p["x"] - truth) / p["sigma"], rel=1e-12)
    npz = np.load(folder / "results/basic.npz")
    Sigma = npz["Sigma"]
    np.testing.assert_allclose(Sigma, Sigma.T, rtol=1e-10, atol=0)
    assert np.all(np.linalg.eigvalsh(Sigma) > 0)
    np.testing.assert_allclose(
        np.sqrt(np.diag(Sigma)), [doc["parameters"][p]["sigma"] for p in npz["params"]], rtol=1e-12
    )
    # Multi-resolution: one value per nside-4 pixel for beta_d, per nside-2 pixel for beta_pl.
    multi = json.loads((folder / "results/multires.json").read_text())
    assert len(multi["parameters"]["Dust.beta_d"]["x"]) == 12 * 4**2
    assert len(multi["parameters"]["Synchrotron.beta_pl"]["x"]) == 12 * 2**2
    pulls = np.array(multi["parameters"]["Dust.beta_d"]["pull"], dtype=float)
    assert 0.3 < np.sqrt(np.mean(pulls**2)) < 3.0  # pulls of unit scale
    beta_map = hp.read_map(folder / "maps/multires_Dust.beta_d.fits", field=None)
    assert beta_map.shape == (2, N_PIX)  # value and sigma
    # The recovered CMB differs from the input by noise: well below the CMB's own rms
    # (0.12 uK in Q and U at nside 8; the residual is about 0.007 uK).
    truth = hp.read_map(folder / "inputs/cmb.fits", field=None)
    cmb = hp.read_map(folder / "maps/basic_cmb.fits", field=None)
    assert np.std(cmb - truth) < 0.1 * np.std(truth)


def test_demo_config_repeats_the_run(demo, tmp_path, capsys):
    folder = demo[0]
    config = yaml.safe_load((folder / "config.yaml").read_text())
    assert config["instrument"] == "LiteBIRD"
    rc, out, err = _run(
        capsys,
        ["separate", str(folder / "config.yaml"), "-o", str(tmp_path / "again"), "--no-figures"],
    )
    assert rc == 0, err
    first = json.loads((folder / "results/basic.json").read_text())["parameters"]
    again = json.loads((tmp_path / "again/results/basic.json").read_text())["parameters"]
    for name in DEMO_TRUTH:  # same data, same fit: the same numbers
        assert again[name]["x"] == pytest.approx(first[name]["x"], rel=1e-10)
    assert not (tmp_path / "again/figures").exists()


def test_demo_refuses_a_non_empty_folder(demo, capsys):
    folder = demo[0]
    before = sorted(os.listdir(folder))
    rc, out, err = _run(capsys, ["demo", "--nside", "8", "--output", str(folder)])
    assert rc == 2
    assert err.count("\n") == 1 and "--force" in err and str(folder) in err
    assert sorted(os.listdir(folder)) == before


def test_separate_per_band_files_with_mask(demo, tmp_path, capsys):
    """One FITS per band (IQU files, Q and U selected), a mask, and --force on a used folder."""
    folder = demo[0]
    fields = hp.read_map(folder / "inputs/frequency_maps.fits", field=None).reshape(15, 2, -1)
    files = []
    for k in range(15):
        path = tmp_path / f"band{k:02d}.fits"
        iqu = np.concatenate([np.zeros((1, N_PIX)), fields[k]])
        hp.write_map(path, list(iqu), dtype=np.float64)
        files.append(path.name)
    theta, _ = hp.pix2ang(NSIDE, np.arange(N_PIX))
    mask = (np.abs(np.pi / 2 - theta) > np.radians(20)).astype(float)  # galactic cut
    hp.write_map(tmp_path / "mask.fits", mask, dtype=np.float64)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["maps"] = {"files": files, "stokes": "QU", "unit": "uK_CMB"}
    config["mask"] = "mask.fits"
    config["recipe"] = config["recipe"][0]  # basic only
    del config["truth"]["cmb"]
    config["output"] = "out"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("x")
    rc, out, err = _run(capsys, ["separate", str(tmp_path / "run.yaml"), "--no-figures"])
    assert rc == 2 and "--force" in err
    rc, out, err = _run(capsys, ["separate", str(tmp_path / "run.yaml"), "--no-figures", "--force"])
    assert rc == 0, err
    assert (tmp_path / "out/old.txt").exists()  # --force replaces only fgjax's own files
    dust = hp.read_map(tmp_path / "out/maps/basic_dust.fits", field=None)
    assert np.all(dust[:, mask == 0] == UNSEEN)
    assert np.all(dust[:, mask == 1] != UNSEEN)
    doc = json.loads((tmp_path / "out/results/basic.json").read_text())
    full = json.loads((folder / "results/basic.json").read_text())
    # Fewer pixels: larger errors than the full-sky fit, still consistent with the truth.
    for name, truth in DEMO_TRUTH.items():
        p = doc["parameters"][name]
        assert p["sigma"] > full["parameters"][name]["sigma"]
        assert abs(p["x"] - truth) < 5 * p["sigma"]
    written = yaml.safe_load((tmp_path / "out/config.yaml").read_text())
    assert written["mask"] == str(tmp_path / "mask.fits")  # absolute: re-runnable anywhere


def test_separate_ilc_as_a_subprocess(demo, tmp_path):
    """The console entry point in a fresh interpreter: an ILC with an inline instrument."""
    folder = demo[0]
    from fgjax._instruments import get_instrument

    lb = get_instrument("LiteBIRD")
    config = {
        "maps": {"file": str(folder / "inputs/frequency_maps.fits"), "stokes": "QU"},
        "instrument": {"frequency": lb.frequency.tolist(), "depth_p": lb.depth_p.tolist()},
        "components": ["CMB"],
        "recipe": {"type": "ilc"},
        "truth": {"cmb": str(folder / "inputs/cmb.fits")},
        "output": "ilc-out",
    }
    (tmp_path / "ilc.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [sys.executable, "-m", "fgjax.cli", "separate", "ilc.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == ""  # no progress bar: stdout is not a terminal
    assert "[ilc] recipe ilc" in proc.stdout
    cmb = hp.read_map(tmp_path / "ilc-out/maps/ilc_cmb.fits", field=None)
    truth = hp.read_map(folder / "inputs/cmb.fits", field=None)
    # ILC keeps the CMB with unit response; foreground and noise leakage stay well below it.
    assert np.std(cmb - truth) < 0.3 * np.std(truth)
    assert (tmp_path / "ilc-out/figures/ilc_cmb_residual.png").is_file()


def _demo_variant(demo, tmp_path, recipe):
    config = yaml.safe_load((demo[0] / "config.yaml").read_text())
    config["maps"]["file"] = str(demo[0] / "inputs/frequency_maps.fits")
    config["truth"]["cmb"] = str(demo[0] / "inputs/cmb.fits")
    config["recipe"] = recipe
    config["output"] = "out"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "run.yaml"


@pytest.mark.parametrize("one_file", [True, False], ids=["one-file", "file-per-parameter"])
def test_adaptive_with_nside_clusters_equals_multi_res(demo, tmp_path, capsys, one_file):
    """Cluster maps made of nside-4 / global / nside-2 pixels: the demo's multi-res fit."""
    ids = [
        hp.ud_grade(np.arange(12 * n**2, dtype=float), NSIDE) if n else np.zeros(N_PIX)
        for n in (4, 0, 2)
    ]
    labels = list(DEMO_TRUTH)
    if one_file:
        hp.write_map(tmp_path / "clusters.fits", ids, dtype=np.float64)
        clusters = "clusters.fits"
    else:
        clusters = {}
        for p, cm in zip(labels, ids, strict=True):
            hp.write_map(tmp_path / f"{p}.fits", cm, dtype=np.float64)
            clusters[p] = f"{p}.fits"
    path = _demo_variant(demo, tmp_path, {"type": "adaptive", "cluster_maps": clusters})
    rc, out, err = _run(capsys, ["separate", str(path), "--no-figures"])
    assert rc == 0, err
    adaptive = json.loads((tmp_path / "out/results/adaptive.json").read_text())["parameters"]
    multi = json.loads((demo[0] / "results/multires.json").read_text())["parameters"]
    for p in labels:  # same clusters, same likelihood, same optimiser: the same numbers
        np.testing.assert_allclose(adaptive[p]["x"], multi[p]["x"], rtol=1e-9)
        np.testing.assert_allclose(adaptive[p]["sigma"], multi[p]["sigma"], rtol=1e-7)
    if one_file:  # a file with the wrong number of maps
        hp.write_map(tmp_path / "clusters.fits", ids[:2], dtype=np.float64, overwrite=True)
        rc, out, err = _run(capsys, ["separate", str(path), "-o", str(tmp_path / "o3")])
        assert rc == 2 and "recipe.cluster_maps" in err and "one per free parameter" in err
        assert not (tmp_path / "o3").exists()


# -- help and instruments -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, words",
    [
        (["--help"], ["demo", "separate", "instruments", "--debug"]),
        (["demo", "--help"], ["--output", "--force", "--nside", "--seed", "--no-figures"]),
        (["separate", "--help"], ["CONFIG.yaml", "--output", "--force", "--debug"]),
        (["instruments", "--help"], ["NAME"]),
    ],
)
def test_help_explains_every_option(capsys, argv, words):
    rc, out, err = _run(capsys, argv)
    assert rc == 0
    for w in words:
        assert w in out


def test_no_command_and_bad_option_exit_2(capsys):
    assert _run(capsys, [])[0] == 2
    rc, out, err = _run(capsys, ["demo", "--nside", "x"])
    assert rc == 2 and "--nside" in err
    rc, out, err = _run(capsys, ["demo", "--nside", "6"])
    assert rc == 2 and err.count("\n") == 1 and "--nside" in err


def test_instruments(capsys):
    rc, out, err = _run(capsys, ["instruments"])
    assert rc == 0 and "LiteBIRD" in out and "Planck" in out
    rc, out, err = _run(capsys, ["instruments", "litebird"])
    assert rc == 0
    assert " 402.0" in out and len(out.strip().splitlines()) == 3 + 15
    rc, out, err = _run(capsys, ["instruments", "NoSuchScope"])
    assert rc == 2 and "NoSuchScope" in err and err.count("\n") == 1


# -- configuration errors --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three bands of random Q/U maps at nside 8, a valid configuration, helper files."""
    d = tmp_path_factory.mktemp("small")
    rng = np.random.default_rng(0)
    for k in range(3):
        hp.write_map(d / f"m{k}.fits", list(rng.normal(size=(3, N_PIX))), dtype=np.float64)
    hp.write_map(d / "low.fits", list(rng.normal(size=(3, 12 * 4**2))), dtype=np.float64)
    hp.write_map(d / "mask4.fits", np.ones(12 * 4**2), dtype=np.float64)
    (d / "garbage.fits").write_text("not a FITS file\n")
    return d


def _valid_config():
    return {
        "maps": {"files": ["m0.fits", "m1.fits", "m2.fits"], "stokes": "QU"},
        "instrument": {"frequency": [30.0, 150.0, 350.0], "depth_p": [10.0, 5.0, 20.0]},
        "components": [
            {"type": "CMB"},
            {"type": "Dust", "nu0": 150.0, "params": {"temp": {"fixed": 20.0}}},
        ],
        "recipe": {"type": "basic"},
        "output": "out",
    }


def _edit(cfg, path, value):
    keys = path.split(".")
    node = cfg
    for k in keys[:-1]:
        node = node[int(k)] if isinstance(node, list) else node[k]
    node[keys[-1]] = value
    return cfg


ERROR_CASES = {
    # name: (edit of the valid configuration, words expected in the message)
    "missing map file": (
        lambda c: _edit(c, "maps.files", ["m0.fits", "nope.fits", "m2.fits"]),
        ["maps.files[1]", "nope.fits", "not found"],
    ),
    "unreadable map file": (
        lambda c: _edit(c, "maps.files", ["m0.fits", "garbage.fits", "m2.fits"]),
        ["maps.files[1]", "garbage.fits", "cannot read"],
    ),
    "maps of different nsides": (
        lambda c: _edit(c, "maps.files", ["m0.fits", "low.fits", "m2.fits"]),
        ["maps.files[1]", "nside 4", "nside 8"],
    ),
    "too few maps": (
        lambda c: _edit(c, "maps.files", ["m0.fits", "m1.fits"]),
        ["maps.files", "2 maps", "3 bands"],
    ),
    "multi-frequency file with the wrong count": (
        lambda c: _edit(c, "maps", {"file": "m0.fits", "stokes": "QU"}),
        ["maps.file", "m0.fits", "3 maps", "3 bands"],
    ),
    "unknown component": (
        lambda c: _edit(c, "components.1.type", "Dusty"),
        ["components[1].type", "Dusty", "known"],
    ),
    "unknown parameter": (
        lambda c: _edit(c, "components.1.params", {"beta": 1.5}),
        ["components[1].params.beta", "beta_d"],
    ),
    "unknown instrument": (
        lambda c: _edit(c, "instrument", "Hubble"),
        ["instrument", "Hubble", "LiteBIRD"],
    ),
    "depths of the wrong length": (
        lambda c: _edit(c, "instrument.depth_p", [1.0, 2.0]),
        ["instrument.depth_p", "3"],
    ),
    "unknown recipe": (
        lambda c: _edit(c, "recipe", {"type": "magic"}),
        ["recipe.type", "magic", "multi_res"],
    ),
    "multi_res nside of an unknown parameter": (
        lambda c: _edit(c, "recipe", {"type": "multi_res", "nsides": {"Dust.temp": 2}}),
        ["recipe.nsides.Dust.temp", "Dust.beta_d"],
    ),
    "adaptive cluster map missing": (
        lambda c: _edit(
            c, "recipe", {"type": "adaptive", "cluster_maps": {"Dust.beta_d": "clusters.fits"}}
        ),
        ["recipe.cluster_maps.Dust.beta_d", "clusters.fits", "not found"],
    ),
    "mask of another nside": (
        lambda c: _edit(c, "mask", "mask4.fits"),
        ["mask", "mask4.fits", "nside 4"],
    ),
    "bad unit": (lambda c: _edit(c, "maps.unit", "Jy"), ["maps.unit", "Jy"]),
    "bounds reversed": (
        lambda c: _edit(c, "components.1.params", {"beta_d": {"bounds": [3, 1]}}),
        ["components[1].params.beta_d.bounds"],
    ),
    "unknown top-level key": (lambda c: _edit(c, "recipes", {"type": "basic"}), ["recipes"]),
    "missing instrument": (lambda c: c.pop("instrument") and c, ["instrument", "missing"]),
    "ILC with a free parameter": (
        lambda c: _edit(
            c, "recipe", {"type": "ilc", "components": [{"type": "Dust", "nu0": 353.0}]}
        ),
        ["recipe.components", "fixed"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_config_error_is_one_line_exit_2_nothing_written(small, capsys, case):
    edit, words = ERROR_CASES[case]
    path = small / f"{case.replace(' ', '_')}.yaml"
    path.write_text(yaml.safe_dump(edit(_valid_config())))
    rc, out, err = _run(capsys, ["separate", str(path)])
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert str(path) in err
    for w in words:
        assert w in err, (w, err)
    assert not (small / "out").exists()


def test_malformed_yaml(small, capsys):
    path = small / "broken.yaml"
    path.write_text("maps:\n  files: [m0.fits, m1.fits\ninstrument: LiteBIRD\n")
    rc, out, err = _run(capsys, ["separate", str(path)])
    assert rc == 2 and err.count("\n") == 1
    assert "broken.yaml" in err and "malformed YAML" in err and "line" in err
    path.write_text("- just\n- a list\n")
    rc, out, err = _run(capsys, ["separate", str(path)])
    assert rc == 2 and "mapping" in err


def test_missing_config_and_debug_traceback(small, capsys):
    rc, out, err = _run(capsys, ["separate", str(small / "absent.yaml")])
    assert rc == 2 and err.count("\n") == 1 and "absent.yaml" in err and "not found" in err
    rc, out, err = _run(capsys, ["separate", "--debug", str(small / "absent.yaml")])
    assert rc == 2 and "Traceback" in err and "absent.yaml" in err.splitlines()[-1]
    rc, out, err = _run(capsys, ["--debug", "separate", str(small / "absent.yaml")])
    assert rc == 2 and "Traceback" in err


def test_valid_small_config_parses(small):
    path = small / "valid.yaml"
    cfg = _valid_config()
    cfg["components"].append(
        {
            "type": "Synchrotron",
            "nu0": 30.0,
            "params": {"beta_pl": {"start": -2.5, "bounds": [-4, -1]}},
        }
    )
    path.write_text(yaml.safe_dump(cfg))
    spec = load_config(str(path))
    assert spec.data.shape == (3, 2, N_PIX)
    assert spec.output == str(small / "out")
    comps, bounds, labels = build_components(spec.components, spec.unit)
    assert labels == ["Dust.beta_d", "Synchrotron.beta_pl"]
    assert bounds == [(None, None), (-4.0, -1.0)]
    assert comps[1].defaults == [1.54]  # temp fixed: only beta_d left, at its default
    assert comps[2].defaults == [-2.5]
    assert [c.params for c in comps] == [[], ["beta_d"], ["beta_pl"]]
    # The same specification gives the same objects (compiled fits are reused).
    assert build_components(spec.components, spec.unit)[0][1] is comps[1]
    assert not (small / "out").exists()


def test_cli_error_message_format():
    err = CLIError("file not found:\n  x.fits", file="c.yaml", field="maps.files[0]")
    assert str(err) == "c.yaml: maps.files[0]: file not found: x.fits"


# -- the full demo ----------------------------------------------------------------------
@pytest.mark.slow
def test_full_demo_nside_64(tmp_path, capsys):
    rc, out, err = _run(capsys, ["demo", "--output", str(tmp_path / "demo")])
    assert rc == 0, err
    doc = json.loads((tmp_path / "demo/results/basic.json").read_text())
    for name, truth in DEMO_TRUTH.items():
        p = doc["parameters"][name]
        assert abs(p["x"] - truth) < 5 * p["sigma"]
    for f in EXPECTED_DEMO_FILES:
        assert (tmp_path / "demo" / f).is_file(), f
    cmb = hp.read_map(tmp_path / "demo/maps/basic_cmb.fits", field=None)
    assert cmb.shape == (2, 12 * 64**2)


def test_progress_bar_on_a_terminal_only(capsys, monkeypatch):
    import argparse

    from fgjax.cli import _Progress, _progress_enabled

    bar = _Progress(["fit: basic", "write: basic"], enabled=True)
    with bar.step("fit: basic (basic)"):
        pass
    bar.close()
    assert "fit: basic (basic)" in capsys.readouterr().err
    bar = _Progress(["fit: basic"], enabled=False)
    with bar.step("fit: basic (basic)"):
        pass
    bar.close()
    assert capsys.readouterr().err == ""
    args = argparse.Namespace(quiet=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False, raising=False)
    assert not _progress_enabled(args)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    assert _progress_enabled(args)
    assert not _progress_enabled(argparse.Namespace(quiet=True))


@pytest.mark.slow
def test_basic_patches_and_ilc_patches(demo, tmp_path, capsys):
    """basic with an nside-2 patch grid, and ILC per nside-2 patch (compiles new fits)."""
    recipe = [{"type": "basic", "label": "patches", "nside": 2}, {"type": "ilc", "nside": 2}]
    path = _demo_variant(demo, tmp_path, recipe)
    rc, out, err = _run(capsys, ["separate", str(path)])
    assert rc == 0, err
    doc = json.loads((tmp_path / "out/results/patches.json").read_text())["parameters"]
    for name, truth in DEMO_TRUTH.items():
        x, sigma = np.array(doc[name]["x"]), np.array(doc[name]["sigma"])
        assert x.shape == (48,)
        pulls = (x - truth) / sigma
        assert 0.3 < np.sqrt(np.mean(pulls**2)) < 3.0
    beta = hp.read_map(tmp_path / "out/maps/patches_Dust.beta_d.fits", field=None)
    ids = hp.ud_grade(np.arange(48, dtype=float), NSIDE).astype(int)
    np.testing.assert_allclose(beta[0], np.array(doc["Dust.beta_d"]["x"])[ids], rtol=1e-12)
    for f in ("patches_parameter_maps", "patches_seds", "ilc_components", "ilc_cmb_residual"):
        assert (tmp_path / f"out/figures/{f}.png").is_file()


def test_inline_instrument_with_bandpass_files(small, capsys):
    cfg = _valid_config()
    names = []
    for k, nu in enumerate((30.0, 150.0, 350.0)):
        f = np.linspace(0.8 * nu, 1.2 * nu, 11)
        np.savetxt(small / f"bp{k}.txt", np.stack([f, np.ones_like(f)], axis=1))
        names.append(f"bp{k}.txt")
    cfg["instrument"] = {"bandpass_files": names, "depth_p": [10.0, 5.0, 20.0]}
    path = small / "bandpass.yaml"
    path.write_text(yaml.safe_dump(cfg))
    spec = load_config(str(path))
    assert spec.instrument.has_bandpasses
    np.testing.assert_allclose(spec.instrument.frequency[1][0], np.linspace(120.0, 180.0, 11))
    assert spec.config["instrument"]["bandpass_files"][0] == str(small / "bp0.txt")
    (small / "bp1.txt").write_text("1 2 3\n4 5 6\n")  # three columns
    rc, out, err = _run(capsys, ["separate", str(path)])
    assert rc == 2 and "instrument.bandpass_files[1]" in err and "two columns" in err
    assert not (small / "out").exists()
