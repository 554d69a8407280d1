"""Spectral likelihood and global fit: timings against a one-pass floor, in one run.

Sky: QU maps, 15 LiteBIRD-like bands, CMB + dust (beta_d, temp) + synchrotron (beta_pl),
Gaussian random amplitudes per pixel and white noise from LiteBIRD-like polarisation
depths. The floor is the time to read the data once: the n_freq x n_freq data covariance
``sum_p N^-1 d_p d_p^T N^-1`` (one pass, a GEMM).

Printed, each as seconds and as a ratio to the floor:

* fast path (shared A and invN): one likelihood + gradient evaluation (no pixel work), the
  data reduction, the SciPy fit alone, and the full ``comp_sep`` (reduction + fit + s, chi,
  chi_dB, Sigma) warm; compile times separately;
* general per-pixel path (pixel-dependent diagonal noise): one likelihood + gradient
  evaluation at ``--nside-pixel``, with the per-pixel ``A^T N^-1 A`` inverted by the
  unrolled Cholesky (default for n_comp <= 4) and by batched lineax solves.

Usage::

    python benchmarks/bench_likelihood.py                 # nside 64, ~1 minute on 2 CPU cores
    python benchmarks/bench_likelihood.py --nside 256 --nside-pixel 256
"""

from __future__ import annotations

import argparse
import functools
import time
import timeit

import jax
import jax.numpy as jnp
import numpy as np

import fgjax
from fgjax import _likelihood
from fgjax._likelihood import DiagonalInvN, _logL_core, data_covariance
from fgjax._optimize import _FastObjective, comp_sep, minimize

NU = np.array(
    [
        40.0,
        50.0,
        60.0,
        68.0,
        78.0,
        89.0,
        100.0,
        119.0,
        140.0,
        166.0,
        195.0,
        235.0,
        280.0,
        337.0,
        402.0,
    ]
)
DEPTH_P = np.array(
    [
        37.42,
        33.46,
        21.31,
        16.87,
        12.07,
        11.30,
        6.56,
        4.58,
        4.79,
        5.57,
        5.85,
        10.79,
        13.80,
        21.95,
        47.45,
    ]
)  # uK-arcmin
X_TRUE = np.array([1.54, 20.0, -3.0])


def _timed(f, *args, repeat=5, number=1):
    jax.block_until_ready(f(*args))
    times = timeit.repeat(lambda: jax.block_until_ready(f(*args)), repeat=repeat, number=number)
    return min(times) / number


def _compile_time(f, *args):
    t0 = time.perf_counter()
    compiled = jax.jit(f).lower(*args).compile()
    return time.perf_counter() - t0, compiled


def make_sky(nside, seed=0, pixel_noise=False):
    n_pix = 12 * nside**2
    mm = fgjax.MixingMatrix(fgjax.CMB(), fgjax.Dust(nu0=353.0), fgjax.Synchrotron(nu0=23.0))
    mixing = functools.partial(mm, jnp.asarray(NU))
    rng = np.random.default_rng(seed)
    amp = np.array([1.0, 10.0, 5.0])  # uK_CMB-ish scales of CMB, dust at 353, sync at 23
    s = rng.normal(size=(n_pix, 2, 3)) * amp
    pix_arcmin = np.sqrt(4 * np.pi / n_pix) * 180 * 60 / np.pi
    sigma = DEPTH_P / pix_arcmin
    A = np.asarray(mixing(jnp.asarray(X_TRUE)))
    if pixel_noise:
        sigma = sigma * rng.uniform(0.5, 2.0, size=(n_pix, 1, 1))  # hit-count-like variation
    d = np.einsum("fc,psc->psf", A, s) + rng.normal(size=(n_pix, 2, 15)) * sigma
    return mixing, jnp.asarray(d), jnp.asarray(1.0 / sigma**2)


def bench_fast(nside):
    mixing, d, n_inv = make_sky(nside)
    invN = DiagonalInvN(n_inv)
    x0 = jnp.asarray(X_TRUE + np.array([0.05, 1.0, 0.05]))

    t_c_floor, floor_fn = _compile_time(data_covariance, d, invN)
    floor = _timed(floor_fn, d, invN)
    C = floor_fn(d, invN)

    fun = _FastObjective(mixing, 3, False)
    vg = lambda x, args: jax.value_and_grad(fun)(x, args)  # noqa: E731
    t_c_vg, vg_c = _compile_time(vg, x0, (C, invN))
    t_vg = _timed(vg_c, x0, (C, invN), repeat=5, number=20)

    # Fit alone (SciPy L-BFGS-B driving the jitted value-and-grad), warm.
    minimize(fun, x0, (C, invN), method="L-BFGS-B")
    t0 = time.perf_counter()
    res = minimize(fun, x0, (C, invN), method="L-BFGS-B")
    t_fit = time.perf_counter() - t0

    # Full comp_sep (reduce + fit + s, chi, chi_dB, Sigma): first call compiles, then warm.
    t0 = time.perf_counter()
    comp_sep(mixing, d, invN, x0, method="L-BFGS-B")
    t_cold = time.perf_counter() - t0
    t_full = min(
        timeit.repeat(
            lambda: jax.block_until_ready(comp_sep(mixing, d, invN, x0, method="L-BFGS-B").s),
            repeat=3,
            number=1,
        )
    )
    return {
        "n_pix": d.shape[0],
        "floor": floor,
        "compile_floor": t_c_floor,
        "compile_vg": t_c_vg,
        "vg": t_vg,
        "fit": t_fit,
        "nit": res.nit,
        "nfev": res.nfev,
        "full_cold": t_cold,
        "full": t_full,
    }


def bench_pixel(nside):
    mixing, d, n_inv = make_sky(nside, pixel_noise=True)
    invN = DiagonalInvN(n_inv)
    x0 = jnp.asarray(X_TRUE)
    t_c_floor, floor_fn = _compile_time(
        lambda d, w: (d * w).reshape(-1, 15).T @ d.reshape(-1, 15), d, n_inv
    )
    floor = _timed(floor_fn, d, n_inv)

    def neg_logL(x, args):
        d, invN = args
        return -_logL_core(mixing(x), d, invN)[0]

    out = {"n_pix": d.shape[0], "floor": floor}
    default = _likelihood._CLOSED_FORM_MAX_N
    for label, max_n in (("closed", default), ("lineax", 0)):
        _likelihood._CLOSED_FORM_MAX_N = max_n  # read at trace time: a fresh trace below
        vg = lambda x, args: jax.value_and_grad(neg_logL)(x, args)  # noqa: E731
        t_c_vg, vg_c = _compile_time(vg, x0, (d, invN))
        out[f"compile_{label}"] = t_c_vg
        out[label] = _timed(vg_c, x0, (d, invN), repeat=3)
    _likelihood._CLOSED_FORM_MAX_N = default
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nside", type=int, default=64, help="fast-path fit (64 to 512)")
    parser.add_argument("--nside-pixel", type=int, default=64, help="per-pixel path (e.g. 256)")
    parser.add_argument("--float32", action="store_true", help="run in float32 (default float64)")
    args = parser.parse_args()
    jax.config.update("jax_enable_x64", not args.float32)
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"dtype: {'float32' if args.float32 else 'float64'}, jax {jax.__version__}"
    )

    r = bench_fast(args.nside)
    f = r["floor"]

    def line(label, t, digits=2):
        return f"  {label:<36s}{t * 1e3:10.{digits}f} ms = {t / f:7.3f} x floor"

    print(f"\n[fast path] QU, 15 bands, 3 parameters, nside {args.nside} ({r['n_pix']} pixels)")
    print(line("one-pass floor (data covariance)", f) + f"   (compile {r['compile_floor']:.2f} s)")
    print(
        line("logL + gradient (per iteration)", r["vg"], 4)
        + f"   (compile {r['compile_vg']:.2f} s)"
    )
    print(line(f"fit alone (L-BFGS-B, {r['nit']} it, {r['nfev']} ev)", r["fit"]))
    print(line("full comp_sep, warm", r["full"]))
    print(f"  full comp_sep, first call (compiles) {r['full_cold']:7.2f} s")

    p = bench_pixel(args.nside_pixel)
    print(f"\n[per-pixel path] pixel-dependent diagonal noise, nside {args.nside_pixel}")
    print(f"  ({p['n_pix']} pixels)")
    print(f"  one-pass floor (data covariance)   {p['floor'] * 1e3:9.2f} ms")
    for label, name in (("closed", "unrolled Cholesky"), ("lineax", "lineax Cholesky ")):
        print(
            f"  logL + gradient, {name}  {p[label] * 1e3:9.2f} ms = "
            f"{p[label] / p['floor']:6.2f} x floor   (compile {p['compile_' + label]:.2f} s)"
        )


if __name__ == "__main__":
    main()
