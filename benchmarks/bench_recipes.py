"""Benchmark of the separation recipes on synthetic QU maps (15 bands, 3 free parameters).

Cases (issue 4):
  * ``basic_comp_sep`` with ``nside=8`` parameter patches (768 patches) on nside 64 and 128;
  * ``multi_res_comp_sep`` with ``nsides=(8, 4, 0)`` on nside 128.

For each: the first call (trace + compile + run), the warm call (median of repeats,
compiled programs reused), Newton iterations, and the peak resident memory of the process
against the size of the input maps. Also a one-pass floor: the time to reduce the maps
once to the per-patch ``sum d d^T`` (read every sample once).

Run: ``python benchmarks/bench_recipes.py [--nsides 64 128] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import time
import timeit

import jax

jax.config.update("jax_enable_x64", True)  # a benchmark script, not the library

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fgjax  # noqa: E402
from fgjax import _healpix as hpx  # noqa: E402
from fgjax import _recipes  # noqa: E402

NU = np.array([40, 50, 60, 68, 78, 89, 100, 119, 140, 166, 195, 235, 280, 337, 402.0])
DEPTH_P = np.array([37.4, 33.5, 21.3, 16.9, 12.1, 11.3, 6.6, 4.6, 4.8, 3.8, 4.5, 6.3, 9.2, 11.5,
                    21.2])  # fmt: skip  # uK arcmin, LiteBIRD-like
INSTRUMENT = {"frequency": NU, "depth_i": DEPTH_P / 2**0.5, "depth_p": DEPTH_P}
COMPONENTS = (fgjax.CMB(), fgjax.Dust(nu0=353.0), fgjax.Synchrotron(nu0=30.0))


MEMORY_CALLS = 5  # warm calls whose working memory is measured


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def working_memory_mb(call) -> float | None:
    """Peak resident memory during ``call()`` above the resident memory before it (Linux:
    free heap memory is returned with glibc's ``malloc_trim`` and the peak is reset
    through /proc/self/clear_refs); None where that is not available."""
    try:  # give freed heap memory back to the OS first, or the call just reuses it
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_mb("VmRSS")
    call()
    peak = _status_mb("VmHWM")
    return None if before is None or peak is None else peak - before


def make_maps(nside: int, seed: int = 0) -> np.ndarray:
    """QU maps (15, 2, n_pix) in uK_CMB: CMB + dust + synchrotron + white noise."""
    rng = np.random.default_rng(seed)
    n_pix = 12 * nside**2
    amp = rng.normal(size=(3, 2, n_pix)) * np.array([0.5, 10.0, 20.0])[:, None, None]
    mm = fgjax.MixingMatrix(*COMPONENTS)
    A = np.asarray(mm.eval(NU, 1.54, 20.0, -3.0))
    noise = (
        rng.normal(size=(15, 2, n_pix))
        * (DEPTH_P / (np.degrees(np.sqrt(4 * np.pi / n_pix)) * 60))[:, None, None]
    )
    return np.einsum("fc,csp->fsp", A, amp) + noise


def one_pass_floor(data: np.ndarray, nside_patch: int, repeat: int) -> float:
    nside = hpx.check_nside_of_npix(data.shape[-1])
    group = hpx.cluster_ids_from_nside(nside_patch, nside)
    n_group = 12 * nside_patch**2 if nside_patch else 1
    layout = _recipes._grouping(group, n_group)
    d = jnp.asarray(hpx.to_pixel_major(data))
    f = _recipes._group_covariance
    f(d, layout).block_until_ready()
    times = timeit.repeat(lambda: f(d, layout).block_until_ready(), number=1, repeat=repeat)
    return float(np.median(times))


def bench(label, call, data, repeat):
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    res = call()
    first = time.perf_counter() - t0
    times = timeit.repeat(call, number=1, repeat=repeat)
    warm = float(np.median(times))
    # the heap keeps some freed memory from call to call, so one figure varies by ~0.3x
    # of the input: the median and range of a few calls
    works = [working_memory_mb(call) for _ in range(MEMORY_CALLS)]
    nit = np.asarray(res.nit)
    size = data.nbytes / 2**20
    if None in works:
        work_txt = "n/a"
    else:
        work = float(np.median(works))
        work_txt = (
            f"{work:.0f} MB = {work / size:.2f}x input (median of {MEMORY_CALLS} calls, "
            f"{min(works) / size:.2f}x to {max(works) / size:.2f}x)"
        )
    print(
        f"{label:42s} first {first:7.2f} s  warm {warm * 1e3:8.1f} ms  "
        f"(compile+trace ~{first - warm:6.2f} s)  Newton iterations max {nit.max()} "
        f"mean {nit.mean():.1f}  warm-call working memory {work_txt}  peak RSS "
        f"{peak_rss_mb():7.0f} MB (before {rss0:5.0f} MB; input maps {size:.1f} MB)"
    )
    return res, warm


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsides", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"jax {jax.__version__}, float64")  # fmt: skip
    for nside in args.nsides:
        data = make_maps(nside)
        floor = one_pass_floor(data, 8, args.repeat)
        _, warm = bench(
            f"basic_comp_sep nside={nside} patches nside=8",
            lambda data=data: _recipes.basic_comp_sep(COMPONENTS, INSTRUMENT, data, nside=8),
            data,
            args.repeat,
        )
        print(f"{'':42s} one-pass floor {floor * 1e3:.1f} ms -> ratio {warm / floor:.1f}")
    if 128 in args.nsides or max(args.nsides) >= 128:
        nside = max(n for n in args.nsides if n >= 128)
        data = make_maps(nside, seed=1)
        res, _ = bench(
            f"multi_res_comp_sep nside={nside} nsides=(8,4,0)",
            lambda: _recipes.multi_res_comp_sep(COMPONENTS, INSTRUMENT, data, (8, 4, 0)),
            data,
            args.repeat,
        )
        print(f"{'':42s} {sum(len(x) for x in res.x)} cluster values fitted jointly")


if __name__ == "__main__":
    main()
