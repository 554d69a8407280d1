"""The ``fgjax`` command line: ``demo``, ``separate CONFIG.yaml`` and ``instruments``.

``main(argv)`` is the entry point (``fgjax = "fgjax.cli:main"``); it returns the exit status:
0 on success, 2 on a user error (one line on stderr naming the file and the field; the
traceback only with ``--debug``), 1 on an unexpected failure. Inputs are validated before
anything is written to the output folder.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import logging
import os
import sys
import time
import traceback

import numpy as np

from ._cli_config import CLIError, RunSpec, build_components, validate_config

__all__ = ["DEMO_CONFIG", "main", "run_demo", "run_separate"]

logger = logging.getLogger(__name__)

DEMO_TRUTH = {"Dust.beta_d": 1.54, "Dust.temp": 20.0, "Synchrotron.beta_pl": -3.0}
"""Spectral parameters of the offline ``c1d0s0`` sky (the demo's truth)."""

DEMO_CONFIG = {
    "maps": {"file": "inputs/frequency_maps.fits", "stokes": "QU", "unit": "uK_CMB"},
    "instrument": "LiteBIRD",
    "components": [
        {"type": "CMB"},
        {
            "type": "Dust",
            "nu0": 353.0,
            "params": {
                "beta_d": {"start": 1.6, "bounds": [0.5, 3.0]},
                "temp": {"start": 19.0, "bounds": [5.0, 100.0]},
            },
        },
        {
            "type": "Synchrotron",
            "nu0": 23.0,
            "params": {"beta_pl": {"start": -2.9, "bounds": [-5.0, -1.0]}},
        },
    ],
    "recipe": [
        {"type": "basic", "label": "basic", "nside": 0},
        {
            "type": "multi_res",
            "label": "multires",
            "nsides": {"Dust.beta_d": 4, "Dust.temp": 0, "Synchrotron.beta_pl": 2},
        },
    ],
    "truth": {"params": dict(DEMO_TRUTH), "cmb": "inputs/cmb.fits"},
    "output": "repeat",
}
"""Configuration the demo writes (``config.yaml``) and runs; paths relative to its folder."""

_DESCRIPTION = """\
fgjax: parametric CMB foreground component separation (a JAX port of fgbuster).

Commands:
  demo         simulate a LiteBIRD-like observation of the offline c1d0s0 sky and separate it
  separate     separate your own frequency maps described by a YAML configuration file
  instruments  list the instruments of the shipped database

Run `fgjax COMMAND --help` for the options of a command. Exit status: 0 success,
2 bad input (one line on stderr; --debug for the traceback), 1 unexpected error.
"""


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    """A tqdm bar over the steps of a run, on stderr; silent when stdout is not a terminal."""

    def __init__(self, steps: list[str], enabled: bool):
        self._bar = None
        if enabled and steps:
            try:
                from tqdm.auto import tqdm
            except ImportError:  # tqdm is optional: no bar
                tqdm = None
            if tqdm is not None:
                self._bar = tqdm(
                    total=len(steps), file=sys.stderr, leave=False, dynamic_ncols=True,
                    bar_format="{desc:<42} {bar} {n_fmt}/{total_fmt} [{elapsed}]",
                )  # fmt: skip

    @contextlib.contextmanager
    def step(self, description: str):
        logger.info("%s", description)
        if self._bar is not None:
            self._bar.set_description_str(description)
            self._bar.refresh()
        yield
        if self._bar is not None:
            self._bar.update(1)

    def close(self):
        if self._bar is not None:
            self._bar.close()


def _progress_enabled(args) -> bool:
    if getattr(args, "quiet", False):
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


# -- running a configuration ------------------------------------------------------------------
def _sigma_of(Sigma: np.ndarray) -> np.ndarray:
    """sqrt(diag(Sigma)) over the first two axes, NaN where undefined (UNSEEN, <= 0)."""
    from ._constants import UNSEEN

    d = np.diagonal(np.asarray(Sigma, dtype=np.float64), axis1=0, axis2=1)  # (..., n)
    return np.where((d > 0) & (d != UNSEEN), np.sqrt(np.abs(d)), np.nan)


def _run_recipe(spec: RunSpec, recipe):
    from ._cli_outputs import RecipeOutcome, Timer
    from ._constants import UNSEEN
    from ._healpix import cluster_ids_from_nside

    nside_map = spec.nside
    if recipe.type == "ilc":
        from ._ilc import ilc

        comps, _, _ = build_components(recipe.components, spec.unit)
        ids = None if recipe.nside == 0 else cluster_ids_from_nside(recipe.nside, nside_map)
        with Timer() as timer:
            res = ilc(comps, spec.instrument, spec.data, patch_ids=ids)
        names = [c.name for c in comps]
        return RecipeOutcome(
            label=recipe.label, kind="ilc", params=[], x=[], sigma=[], x_maps=[],
            sigma_maps=[], Sigma=None, components=names, s=np.asarray(res.s),
            comp_objects=comps, timer=timer, raw={"W": np.asarray(res.W)},
        )  # fmt: skip

    from ._recipes import adaptive_comp_sep, basic_comp_sep, multi_res_comp_sep

    comps, bounds, labels = build_components(spec.components, spec.unit)
    kwargs = {}
    if any(b != (None, None) for b in bounds):
        kwargs["bounds"] = bounds
    if recipe.maxiter is not None:
        kwargs["options"] = {"maxiter": recipe.maxiter}
    with Timer() as timer:
        if recipe.type == "basic":
            res = basic_comp_sep(comps, spec.instrument, spec.data, nside=recipe.nside, **kwargs)
        elif recipe.type == "multi_res":
            nsides = [recipe.nsides[p] for p in labels]
            res = multi_res_comp_sep(comps, spec.instrument, spec.data, nsides, **kwargs)
        else:
            ids = [recipe.cluster_maps[p] for p in labels]
            res = adaptive_comp_sep(comps, spec.instrument, spec.data, ids, **kwargs)
    Sigma = np.asarray(res.Sigma, dtype=np.float64)
    x_list, sigma_list, x_maps, sigma_maps = [], [], [], []
    if recipe.type == "basic":
        x = np.asarray(res.x, dtype=np.float64)
        sig = _sigma_of(Sigma)  # (n_param,) or (n_patch, n_param)
        if recipe.nside == 0:
            x_list = [x[i : i + 1] for i in range(len(labels))]
            sigma_list = [sig[i : i + 1] for i in range(len(labels))]
            x_maps = sigma_maps = [None] * len(labels)
            full_Sigma = Sigma
        else:
            ids = cluster_ids_from_nside(recipe.nside, nside_map)
            bad = ~spec_good(spec)
            x_list = [x[i] for i in range(len(labels))]
            sigma_list = [sig[:, i] for i in range(len(labels))]
            x_maps = [np.where(bad, UNSEEN, xi[ids]) for xi in x_list]
            sigma_maps = [
                np.where(bad | ~np.isfinite(si[ids]), UNSEEN, si[ids]) for si in sigma_list
            ]
            full_Sigma = None
        success = bool(np.all(res.success))
    else:
        sig = _sigma_of(Sigma)
        start = 0
        for i, p in enumerate(labels):
            xi = np.asarray(res.x[i], dtype=np.float64).ravel()
            si = sig[start : start + xi.size]
            start += xi.size
            x_list.append(xi)
            sigma_list.append(si)
            if recipe.type == "multi_res":
                ids = cluster_ids_from_nside(recipe.nsides[p], nside_map)
            else:
                ids = recipe.cluster_maps[p]
            xm = np.asarray(res.x_map[i], dtype=np.float64) if res.x_map is not None else xi[ids]
            bad = ~spec_good(spec)
            x_maps.append(np.where(bad, UNSEEN, xm) if xi.size > 1 else None)
            sm = np.where(np.isfinite(si[ids]), si[ids], UNSEEN)
            sigma_maps.append(np.where(bad, UNSEEN, sm) if xi.size > 1 else None)
        full_Sigma = Sigma if all(v.size == 1 for v in x_list) else None
        success = bool(np.all(res.success))
    return RecipeOutcome(
        label=recipe.label, kind=recipe.type, params=labels, x=x_list, sigma=sigma_list,
        x_maps=x_maps, sigma_maps=sigma_maps, Sigma=full_Sigma,
        components=[c.name for c in comps], s=np.asarray(res.s), comp_objects=comps,
        timer=timer, success=success, message=str(res.message),
        raw={"Sigma_full": Sigma, "nit": np.asarray(res.nit)},
    )  # fmt: skip


def spec_good(spec: RunSpec) -> np.ndarray:
    """Good pixels of the input maps ``(n_pix,)``."""
    from ._constants import UNSEEN

    return ~np.any(spec.data == UNSEEN, axis=(0, 1))


def _noise_rms(spec: RunSpec) -> np.ndarray | None:
    """White-noise rms per pixel of each band in the maps' unit, from the depths."""
    import healpy as hp

    from ._instruments import effective_frequency
    from ._observation import unit_factor

    depth = spec.instrument.depth_i if spec.stokes == "I" else spec.instrument.depth_p
    if depth is None:
        return None
    nu = effective_frequency(spec.instrument)
    return depth / hp.nside2resol(spec.nside, arcmin=True) * unit_factor(nu, spec.unit, "uK_CMB")


def _figures(spec: RunSpec, out, folder: str) -> list[str]:
    from . import _cli_plots as plots
    from ._instruments import effective_frequency

    fig_dir = os.path.join(folder, "figures")
    made = []
    names = out.components
    made.append(plots.plot_components(
        os.path.join(fig_dir, f"{out.label}_components.png"), out.s, names, spec.stokes,
        spec.unit, out.label,
    ))  # fmt: skip
    if spec.truth_cmb is not None and "CMB" in names:
        made.append(plots.plot_residual(
            os.path.join(fig_dir, f"{out.label}_cmb_residual.png"), out.s[names.index("CMB")],
            spec.truth_cmb, spec.stokes, spec.unit, out.label,
        ))  # fmt: skip
    if out.params:
        made.append(plots.plot_param_maps(
            os.path.join(fig_dir, f"{out.label}_parameter_maps.png"), out.params, out.x_maps,
            out.sigma_maps, spec.truth_params, out.label,
        ))  # fmt: skip
        Sigma = out.Sigma if out.is_global else None
        made.append(plots.plot_seds(
            os.path.join(fig_dir, f"{out.label}_seds.png"), out.comp_objects, out.params,
            out.x, out.sigma, Sigma, effective_frequency(spec.instrument), out.s, spec.data,
            spec.unit, out.label, noise=_noise_rms(spec),
        ))  # fmt: skip
        if out.is_global:
            made.append(plots.plot_fisher(
                os.path.join(fig_dir, f"{out.label}_fisher.png"), out.params, out.x,
                out.Sigma, spec.truth_params, out.label,
            ))  # fmt: skip
    return [m for m in made if m]


def execute(
    spec: RunSpec,
    *,
    force: bool,
    figures: bool,
    progress: bool,
    prepared: bool = False,
    extra_steps: int = 0,
    bar=None,
) -> list:
    """Run a validated configuration: output folder, recipes, files, figures, summary.

    Returns:
        The :class:`fgjax._cli_outputs.RecipeOutcome` of each recipe.
    """
    import jax

    from . import _cli_outputs as outputs
    from . import _cli_plots as plots
    from ._instruments import effective_frequency

    if figures and importlib.util.find_spec("matplotlib") is None:
        logger.warning("matplotlib is not installed: no figures (pip install matplotlib).")
        figures = False
    if not prepared:
        outputs.prepare_output(spec.output, force)
    folder = spec.output
    outputs.write_yaml(
        os.path.join(folder, "config.yaml"), spec.config,
        "# fgjax configuration of this run; repeat it with: fgjax separate config.yaml\n",
    )  # fmt: skip
    steps = [f"fit: {r.label} ({r.type})" for r in spec.recipes]
    steps += [f"write: {r.label}" for r in spec.recipes]
    if figures:
        steps += ["figures: input maps"] + [f"figures: {r.label}" for r in spec.recipes]
    bar = bar or _Progress(steps, progress)
    outcomes = []
    try:
        with jax.enable_x64(True):
            for recipe in spec.recipes:
                with bar.step(f"fit: {recipe.label} ({recipe.type})"):
                    outcomes.append(_run_recipe(spec, recipe))
            for out in outcomes:
                with bar.step(f"write: {out.label}"):
                    outputs.write_results(folder, out, spec.truth_params, spec.unit, spec.stokes)
            if figures:
                with bar.step("figures: input maps"):
                    plots.plot_frequency_maps(
                        os.path.join(folder, "figures", "input_maps.png"), spec.data,
                        effective_frequency(spec.instrument), spec.stokes, spec.unit,
                    )  # fmt: skip
                for out in outcomes:
                    with bar.step(f"figures: {out.label}"):
                        _figures(spec, out, folder)
    finally:
        bar.close()
    table = outputs.summary_table(outcomes, spec.truth_params)
    with open(os.path.join(folder, "summary.txt"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    sys.stdout.write(table + "\n" + f"outputs in {folder}\n")
    sys.stdout.flush()
    return outcomes


# -- commands ---------------------------------------------------------------------------------
def run_separate(args) -> int:
    """``fgjax separate CONFIG``: validate everything, then run."""
    from ._cli_config import load_config

    spec = load_config(args.config, args.output)
    execute(spec, force=args.force, figures=not args.no_figures, progress=_progress_enabled(args))
    return 0


def _demo_observation(nside: int, seed: int):
    from ._instruments import get_instrument
    from ._observation import get_observation
    from ._sky import get_sky

    instrument = get_instrument("LiteBIRD")
    sky = get_sky(nside, "c1d0s0", backend="offline")
    data = get_observation(instrument, sky, noise=True, unit="uK_CMB", seed=seed)
    cmb = get_observation({"frequency": [150.0]}, get_sky(nside, "c1", backend="offline"),
                          unit="uK_CMB")[0]  # fmt: skip
    return instrument, data[:, 1:], cmb[1:]


def run_demo(args) -> int:
    """``fgjax demo``: simulate, write the inputs and the configuration, separate."""
    from . import _cli_outputs as outputs

    if args.nside < 4 or args.nside & (args.nside - 1):
        raise CLIError(f"expected a power of 2 >= 4, got {args.nside}", field="--nside")
    folder = outputs.prepare_output(args.output, args.force)
    t0 = time.perf_counter()
    progress = _progress_enabled(args)
    _, data, cmb = _demo_observation(args.nside, args.seed)
    n_freq = data.shape[0]
    outputs.write_fits(
        os.path.join(folder, "inputs", "frequency_maps.fits"),
        data.reshape(n_freq * 2, -1), "uK_CMB",
    )  # fmt: skip
    outputs.write_fits(os.path.join(folder, "inputs", "cmb.fits"), cmb, "uK_CMB")
    config = _demo_config(args.nside)
    path = os.path.join(folder, "config.yaml")
    spec = validate_config(config, path, output=folder)
    # config.yaml keeps the demo's relative paths: the folder can be moved and re-run.
    spec = dataclasses.replace(spec, config=config)
    execute(spec, force=True, figures=not args.no_figures, progress=progress, prepared=True)
    logger.info("demo finished in %.1f s", time.perf_counter() - t0)
    sys.stdout.write(f"demo wall time {time.perf_counter() - t0:.1f} s (nside {args.nside})\n")
    return 0


def _demo_config(nside: int) -> dict:
    import copy

    config = copy.deepcopy(DEMO_CONFIG)
    nsides = config["recipe"][1]["nsides"]
    for key, value in nsides.items():
        nsides[key] = min(value, nside // 2)
    return config


def run_instruments(args) -> int:
    """``fgjax instruments``: the database, one instrument per line (or one in detail)."""
    from ._instruments import available_instruments, get_instrument

    if args.name:
        try:
            inst = get_instrument(args.name)
        except ValueError as err:
            raise CLIError(str(err), field="instruments NAME") from None
        lines = [f"{inst.name}: {inst.n_freq} channels", f"  reference: {inst.reference}"]
        lines.append(f"  {'GHz':>8}{'depth_i':>10}{'depth_p':>10}{'fwhm':>8}")
        for k in range(inst.n_freq):
            row = [inst.frequency[k]] + [
                getattr(inst, a)[k] if getattr(inst, a) is not None else np.nan
                for a in ("depth_i", "depth_p", "fwhm")
            ]
            lines.append(f"  {row[0]:8.1f}{row[1]:10.2f}{row[2]:10.2f}{row[3]:8.1f}")
        sys.stdout.write("\n".join(lines) + "\n")
        return 0
    lines = [f"{'name':<14}{'bands':>6}  {'GHz':<16} reference"]
    for tag in available_instruments():
        inst = get_instrument(tag)
        nu = np.asarray(inst.frequency)
        span = f"{nu.min():g}-{nu.max():g}"
        ref = (inst.reference or "").split(";")[0]
        ref = ref.rsplit(" (", 1)[0] if ref.endswith(")") else ref  # drop the details
        ref = ref if len(ref) <= 72 else ref[:71] + "..."
        lines.append(f"{tag:<14}{inst.n_freq:>6}  {span:<16} {ref}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# -- argument parsing -------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Sub-commands take the same flags; SUPPRESS keeps a flag given before the command.
    default = False if top else argparse.SUPPRESS
    p.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="show the full traceback of errors and debug-level logging",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no progress bar (it is off anyway when stdout is not a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``fgjax`` and its sub-commands."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="fgjax", description=_DESCRIPTION, formatter_class=fmt)
    from . import __version__

    parser.add_argument("--version", action="version", version=f"fgjax {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo", formatter_class=fmt,
        help="separate a simulated LiteBIRD-like sky (no input files, no network)",
        description=(
            "Simulate a LiteBIRD-like observation (15 bands, Q and U, white noise seeded by\n"
            "--seed) of the offline c1d0s0 sky (CMB, dust with beta_d=1.54 and T=20 K,\n"
            "synchrotron with beta_pl=-3), then separate it twice: basic_comp_sep with one\n"
            "set of spectral parameters for the whole sky, and multi_res_comp_sep with\n"
            "beta_d on nside-4 pixels, T global and beta_pl on nside-2 pixels.\n"
            "Writes inputs/, maps/ (HEALPix FITS), results/ (JSON and NPZ), figures/ (PNG),\n"
            "config.yaml (repeat with `fgjax separate OUTPUT/config.yaml`) and summary.txt."
        ),
    )  # fmt: skip
    demo.add_argument(
        "-o",
        "--output",
        default="fgjax-demo",
        help="output folder (default: ./fgjax-demo); must be empty or absent",
    )
    demo.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty output folder, replacing fgjax's files",
    )
    demo.add_argument(
        "--nside",
        type=int,
        default=64,
        help="HEALPix nside of the simulation (power of 2, >= 4; default 64)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    demo.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    _common(demo)
    demo.set_defaults(func=run_demo)

    sep = sub.add_parser(
        "separate", formatter_class=fmt,
        help="separate your frequency maps described by a YAML configuration",
        description=(
            "Read CONFIG (YAML): frequency maps (FITS, one per band or one multi-frequency\n"
            "file), the instrument (a database tag or inline frequency/depths/bandpasses),\n"
            "the components with free, fixed or bounded parameters, one or more recipes\n"
            "(basic, multi_res, adaptive, ilc), an optional mask, units and the output\n"
            "folder. Every input is checked before anything is written. The keys are\n"
            "described in docs/configuration.md."
        ),
    )  # fmt: skip
    sep.add_argument("config", metavar="CONFIG.yaml", help="the configuration file")
    sep.add_argument(
        "-o",
        "--output",
        default=None,
        help="output folder, overriding the configuration's `output`",
    )
    sep.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty output folder, replacing fgjax's files",
    )
    sep.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    _common(sep)
    sep.set_defaults(func=run_separate)

    ins = sub.add_parser(
        "instruments",
        formatter_class=fmt,
        help="list the instrument database (or show one instrument's channels)",
        description="List the instruments shipped with fgjax, or the channels of NAME.",
    )
    ins.add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="an instrument tag: print its frequencies, depths and beams",
    )
    _common(ins)
    ins.set_defaults(func=run_instruments)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (also used by the console script).

    Args:
        argv: Arguments without the program name (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse's own errors exit with status 2, help with 0
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    if args.debug:
        logging.getLogger("fgjax").setLevel(logging.DEBUG)
    try:
        return int(args.func(args) or 0)
    except CLIError as err:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"fgjax {args.command}: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("fgjax: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 (the last line of defence of a command line)
        if args.debug:
            traceback.print_exc()
        msg = " ".join(f"{type(err).__name__}: {err}".split())
        sys.stderr.write(f"fgjax {args.command}: unexpected error: {msg} (rerun with --debug)\n")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
