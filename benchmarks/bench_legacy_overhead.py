"""Overhead of ``legacy_compat`` over the native fgjax call: a global ``basic_comp_sep`` fit.

Same data, same machine, one process: the legacy drop-in
(``legacy_compat.separation_recipes.basic_comp_sep``: x64 context per call, NumPy
conversion, ``OptimizeResult`` packing) against ``fgjax._recipes.basic_comp_sep`` called
inside one ``jax.enable_x64`` context. Both are warmed up first (compile time excluded),
then timed alternately, ``--repeat`` times each; the ratio of the medians is printed with
the target (legacy / native - 1 < 10 %).

Usage::

    python benchmarks/bench_legacy_overhead.py                 # nside 64
    python benchmarks/bench_legacy_overhead.py --nside 64 128 --repeat 9

Sky: the offline ``c1d0s0`` preset, LiteBIRD bands and depths, QU maps without noise;
model CMB + dust (``beta_d``, ``temp``) + synchrotron (``beta_pl``), fit started 2 % off.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import jax
import numpy as np

import legacy_compat
from fgjax import _recipes
from fgjax._instruments import get_instrument
from fgjax._observation import get_observation
from fgjax._sky import get_sky
from legacy_compat._convert import to_numpy
from legacy_compat.separation_recipes import _PATCH_FIELDS, _sep_result


def _components(module):
    comps = [module.CMB(), module.Dust(150.0), module.Synchrotron(150.0)]
    for c in comps:
        c.defaults = [1.02 * v for v in c.defaults]
    return comps


def _timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def run(nside: int, repeat: int) -> dict:
    instrument = get_instrument("LiteBIRD")
    data = np.asarray(get_observation(instrument, get_sky(nside, "c1d0s0")))[:, 1:]

    import fgjax

    native_comps = _components(fgjax)
    legacy_comps = _components(legacy_compat)

    def native():
        with jax.enable_x64(True):
            r = _recipes.basic_comp_sep(native_comps, instrument, data)
            jax.block_until_ready(r.s)
        return r

    def legacy():
        return legacy_compat.basic_comp_sep(legacy_comps, instrument, data)

    t0 = time.perf_counter()
    r_nat = native()
    compile_native = time.perf_counter() - t0
    t0 = time.perf_counter()
    r_leg = legacy()
    compile_legacy = time.perf_counter() - t0
    np.testing.assert_allclose(r_leg.x, np.asarray(r_nat.x), rtol=1e-10)  # same fit

    t_nat, t_leg = [], []
    for _ in range(repeat):  # alternate, so drifts of a shared machine hit both alike
        t_nat += _timed(native, 1)
        t_leg += _timed(legacy, 1)
    med_nat, med_leg = statistics.median(t_nat), statistics.median(t_leg)

    # The wrapper's own work, timed alone (insensitive to the fit's run-to-run noise): the
    # x64 context, the NumPy conversion and the OptimizeResult packing of a native result.
    def wrap_only():
        with jax.enable_x64(True):
            return to_numpy(_sep_result(r_nat, _PATCH_FIELDS))

    t_wrap = _timed(wrap_only, 5 * repeat)
    return {
        "nside": nside,
        "n_pix": data.shape[-1],
        "first_native_s": compile_native,
        "first_legacy_s": compile_legacy,
        "native_ms": 1e3 * med_nat,
        "legacy_ms": 1e3 * med_leg,
        "native_min_ms": 1e3 * min(t_nat),
        "legacy_min_ms": 1e3 * min(t_leg),
        "overhead": med_leg / med_nat - 1.0,
        "overhead_min": min(t_leg) / min(t_nat) - 1.0,
        "wrapper_ms": 1e3 * statistics.median(t_wrap),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, nargs="+", default=[64])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{platform.processor() or platform.machine()}, jax {jax.__version__}, float64"
    )
    print("case: basic_comp_sep, global fit, LiteBIRD QU, c1d0s0, CMB + dust + sync (3 params)")
    for nside in args.nside:
        r = run(nside, args.repeat)
        verdict = "OK" if r["overhead"] < 0.10 else "ABOVE TARGET"
        print(
            f"nside {r['nside']:4d} ({r['n_pix']} pix): "
            f"first call native {r['first_native_s']:.1f} s"
            f", legacy {r['first_legacy_s']:.1f} s | warm median native {r['native_ms']:.1f} ms"
            f", legacy {r['legacy_ms']:.1f} ms | min native {r['native_min_ms']:.1f} ms"
            f", legacy {r['legacy_min_ms']:.1f} ms"
        )
        print(
            f"    legacy / native = {1 + r['overhead']:.3f} (median), "
            f"{1 + r['overhead_min']:.3f} (min); overhead {100 * r['overhead']:+.1f} % "
            f"(target < 10 %): {verdict}"
        )
        print(
            f"    wrapper alone (x64 context + NumPy conversion + OptimizeResult): "
            f"{r['wrapper_ms']:.2f} ms = {100 * r['wrapper_ms'] / r['native_min_ms']:.2f} % "
            "of the fastest native call"
        )


if __name__ == "__main__":
    main()
