"""Figures of the command line (matplotlib, Agg canvas; no pyplot state, no display).

Mollweide views are projected with healpy's projector and drawn with ``imshow`` on our own
figures, so nothing here opens a window or touches a global figure manager.
"""

from __future__ import annotations

import os
from functools import partial

import numpy as np

from ._constants import UNSEEN

__all__ = [
    "plot_components",
    "plot_fisher",
    "plot_frequency_maps",
    "plot_param_maps",
    "plot_residual",
    "plot_seds",
]

_DPI = 80


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    return path


def _project(m: np.ndarray, xsize: int = 360) -> np.ndarray:
    import healpy as hp

    nside = hp.npix2nside(m.shape[-1])
    proj = hp.projector.MollweideProj(xsize=xsize)
    m = np.where((m == UNSEEN) | ~np.isfinite(m), np.nan, m)
    return proj.projmap(m, partial(hp.vec2pix, nside))  # -inf outside the ellipse


def _moll(fig, ax, m, title, unit="", symmetric=True, cmap=None):
    img = _project(m)
    good = np.isfinite(img)
    unseen = np.isnan(img)  # bad pixels inside the sky ellipse: drawn grey
    if symmetric:
        v = np.nanpercentile(np.abs(img[good]), 99) if good.any() else 1.0
        vmin, vmax = -v, v
        cmap = cmap or "RdBu_r"
    else:
        vmin, vmax = np.nanpercentile(img[good], [1, 99]) if good.any() else (0.0, 1.0)
        cmap = cmap or "viridis"
    if not vmax > vmin:
        vmin, vmax = vmin - 1e-12, vmax + 1e-12
    import matplotlib

    cm = matplotlib.colormaps[cmap].with_extremes(bad=(0.0, 0.0, 0.0, 0.0))
    ax.imshow(
        np.where(good, img, np.nan),
        origin="lower",
        cmap=cm,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
    )
    if unseen.any():
        grey = np.zeros(img.shape + (4,))
        grey[unseen] = (0.75, 0.75, 0.75, 1.0)
        ax.imshow(grey, origin="lower", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    cb = fig.colorbar(
        ax.images[0], ax=ax, orientation="horizontal", fraction=0.06, pad=0.01, shrink=0.6
    )
    cb.ax.tick_params(labelsize=7)
    if unit:
        cb.set_label(unit, fontsize=7)


def plot_frequency_maps(path, data, freqs, stokes, unit) -> str:
    """Input frequency maps (first Stokes parameter), one panel per band."""
    n = data.shape[0]
    cols = min(5, n)
    rows = -(-n // cols)
    fig = _figure(2.6 * cols, 2.0 * rows + 0.5)
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        _moll(fig, ax, data[i, 0], f"{freqs[i]:.0f} GHz", unit)
    fig.suptitle(f"Input frequency maps, Stokes {stokes[0]} ({unit})", fontsize=11)
    return _save(fig, path)


def plot_components(path, s, names, stokes, unit, label) -> str:
    """Separated components: one row per component, one column per Stokes parameter."""
    n_comp, n_stokes = s.shape[:2]
    fig = _figure(3.6 * n_stokes, 2.3 * n_comp + 0.4)
    for c in range(n_comp):
        for k in range(n_stokes):
            ax = fig.add_subplot(n_comp, n_stokes, c * n_stokes + k + 1)
            _moll(fig, ax, s[c, k], f"{names[c]} {stokes[k]}", unit)
    fig.suptitle(f"Recovered components [{label}]", fontsize=11)
    return _save(fig, path)


def plot_residual(path, cmb, truth, stokes, unit, label) -> str:
    """Recovered minus input CMB, one panel per Stokes parameter, with its rms."""
    n_stokes = cmb.shape[0]
    fig = _figure(3.8 * n_stokes, 2.6)
    for k in range(n_stokes):
        good = (cmb[k] != UNSEEN) & (truth[k] != UNSEEN)
        res = np.where(good, cmb[k] - truth[k], UNSEEN)
        rms = float(np.sqrt(np.mean(res[good] ** 2))) if good.any() else float("nan")
        ax = fig.add_subplot(1, n_stokes, k + 1)
        _moll(fig, ax, res, f"CMB {stokes[k]} residual, rms {rms:.3g} {unit}", unit)
    fig.suptitle(f"CMB residual: recovered - input [{label}]", fontsize=11)
    return _save(fig, path)


def plot_param_maps(path, params, x_maps, sigma_maps, truth, label) -> str | None:
    """Maps of the spatially varying parameters and of their standard deviation."""
    rows = [
        (p, xm, sm) for p, xm, sm in zip(params, x_maps, sigma_maps, strict=True) if xm is not None
    ]
    if not rows:
        return None
    fig = _figure(7.4, 2.5 * len(rows) + 0.4)
    for r, (p, xm, sm) in enumerate(rows):
        t = truth.get(p)
        title = p + (f" (truth {t:g})" if t is not None else "")
        _moll(fig, fig.add_subplot(len(rows), 2, 2 * r + 1), xm, title, symmetric=False)
        _moll(
            fig, fig.add_subplot(len(rows), 2, 2 * r + 2), sm, f"sigma({p})",
            symmetric=False, cmap="magma",
        )  # fmt: skip
    fig.suptitle(f"Spatially varying parameters [{label}]", fontsize=11)
    return _save(fig, path)


def _rms(a: np.ndarray) -> float:
    a = np.asarray(a)
    good = a != UNSEEN
    return float(np.sqrt(np.mean(a[good] ** 2))) if good.any() else float("nan")


def plot_seds(
    path, comps, params, x, sigma, Sigma, freqs, s, data, unit, label, noise=None, seed=0
):
    """Component SEDs scaled by the rms of their recovered amplitude, in RJ units.

    The band is the 16-84 % range of the SED over parameter draws: from the Gaussian of
    covariance ``Sigma`` for global fits, from the fitted values across the sky otherwise.
    Dots: rms of the input maps in each band; `noise` (optional, per band, in `unit`): the
    white-noise rms per pixel, drawn as crosses.
    """
    import jax
    import jax.numpy as jnp

    from ._constants import K_RJ_to_K_CMB, parse_units
    from ._mixing import MixingMatrix

    base, _ = parse_units(unit)
    rj_unit = unit.replace("CMB", "RJ")
    nu = np.geomspace(0.8 * np.min(freqs), 1.2 * np.max(freqs), 120)
    mm = MixingMatrix(*comps)
    rng = np.random.default_rng(seed)
    n_draw = 300
    if mm.n_param == 0:
        draws = np.zeros((1, 0))
        centre = np.zeros(0)
        band_desc = ""
    elif all(np.size(v) == 1 for v in x):
        centre = np.array([float(np.ravel(v)[0]) for v in x])
        cov = np.asarray(Sigma, dtype=np.float64)
        ok = np.all(np.isfinite(cov))
        draws = rng.multivariate_normal(centre, cov, size=n_draw) if ok else centre[None]
        band_desc = "band: 16-84 % over the Fisher covariance"
    else:
        vals = [np.asarray(v, dtype=np.float64).ravel() for v in x]
        vals = [v[v != UNSEEN] for v in vals]
        centre = np.array([np.mean(v) for v in vals])
        draws = np.stack([rng.choice(v, size=n_draw) for v in vals], axis=-1)
        band_desc = "band: 16-84 % of the fitted values across the sky"

    def evaluate(theta):  # (n, n_param) -> (n, n_nu, n_comp)
        with jax.enable_x64(True):
            th = jnp.asarray(theta, dtype=jnp.float64)
            A = mm.eval(jnp.asarray(nu), *(th[:, i] for i in range(mm.n_param)))
            return np.asarray(A)

    A0 = evaluate(centre[None])[0] if mm.n_param else np.asarray(mm.eval(nu), dtype=np.float64)
    A0 = np.broadcast_to(A0, (nu.size, len(comps)))
    conv = 1.0 / np.asarray(K_RJ_to_K_CMB(nu)) if base == "K_CMB" else np.ones_like(nu)
    amp = np.array([_rms(s[c]) for c in range(len(comps))])
    fig = _figure(6.4, 4.4)
    ax = fig.add_subplot(1, 1, 1)
    colors = ["C0", "C3", "C2", "C1", "C4", "C5", "C6"]
    if mm.n_param:
        A = evaluate(draws)
        lo, hi = np.percentile(A, [16, 84], axis=0)
    for c, comp in enumerate(comps):
        y = np.abs(A0[:, c] * conv * amp[c])
        ax.loglog(nu, y, color=colors[c % len(colors)], label=comp.name)
        if mm.n_param and comp.params:
            ylo = np.abs(lo[:, c] * conv * amp[c])
            yhi = np.abs(hi[:, c] * conv * amp[c])
            ax.fill_between(
                nu,
                np.minimum(ylo, yhi),
                np.maximum(ylo, yhi),
                color=colors[c % len(colors)],
                alpha=0.3,
                lw=0,
            )
    conv_f = 1.0 / np.asarray(K_RJ_to_K_CMB(np.asarray(freqs))) if base == "K_CMB" else 1.0
    d_rms = np.array([_rms(d) for d in data]) * conv_f
    ax.loglog(freqs, d_rms, "ko", ms=4, label="input maps (rms)")
    if noise is not None:
        ax.loglog(
            freqs,
            np.asarray(noise) * conv_f,
            "x",
            color="grey",
            ms=5,
            label="noise per pixel (rms)",
        )
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    ticks = [t for t in (20, 30, 50, 100, 200, 300, 500, 1000) if nu[0] <= t <= nu[-1]]
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("frequency [GHz]")
    ax.set_ylabel(f"rms amplitude [{rj_unit}]")
    ax.set_title(f"Fitted SEDs [{label}]" + (f"\n{band_desc}" if band_desc else ""), fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.2)
    return _save(fig, path)


def plot_fisher(path, params, x, Sigma, truth, label) -> str | None:
    """Corner plot of a global fit: 1 and 2 sigma Fisher ellipses, Gaussian marginals."""
    n = len(params)
    if n == 0 or Sigma is None or not np.all(np.isfinite(Sigma)):
        return None
    from matplotlib.patches import Ellipse

    x = np.array([float(np.ravel(v)[0]) for v in x])
    sig = np.sqrt(np.diag(Sigma))
    size = max(2.2 * n, 3.0)
    fig = _figure(size, size)
    for i in range(n):
        for j in range(i + 1):
            ax = fig.add_subplot(n, n, i * n + j + 1)
            if i == j:
                g = np.linspace(x[i] - 4 * sig[i], x[i] + 4 * sig[i], 200)
                ax.plot(g, np.exp(-0.5 * ((g - x[i]) / sig[i]) ** 2), color="C0")
                ax.set_yticks([])
                ax.set_xlim(g[0], g[-1])
                if params[i] in truth:
                    ax.axvline(truth[params[i]], color="k", ls="--", lw=1)
                ax.set_title(f"{params[i]}\n{x[i]:.4g} ± {sig[i]:.2g}", fontsize=8)
            else:
                C = Sigma[np.ix_([j, i], [j, i])]
                vals, vecs = np.linalg.eigh(C)
                vals = np.clip(vals, 0.0, None)
                angle = np.degrees(np.arctan2(vecs[1, -1], vecs[0, -1]))
                for n_sig, alpha in ((1.52, 0.5), (2.48, 0.25)):
                    # 1.52 and 2.48: 68 % and 95 % contours of a 2-d Gaussian
                    e = Ellipse(
                        (x[j], x[i]),
                        2 * n_sig * np.sqrt(vals[-1]),
                        2 * n_sig * np.sqrt(vals[0]),
                        angle=angle,
                        facecolor="C0",
                        alpha=alpha,
                        edgecolor="C0",
                    )
                    ax.add_patch(e)
                ax.set_xlim(x[j] - 4 * sig[j], x[j] + 4 * sig[j])
                ax.set_ylim(x[i] - 4 * sig[i], x[i] + 4 * sig[i])
                if params[j] in truth:
                    ax.axvline(truth[params[j]], color="k", ls="--", lw=1)
                if params[i] in truth:
                    ax.axhline(truth[params[i]], color="k", ls="--", lw=1)
                ax.plot([x[j]], [x[i]], "C0+")
            from matplotlib.ticker import MaxNLocator

            ax.tick_params(labelsize=6)
            ax.xaxis.set_major_locator(MaxNLocator(3))
            if i != j:
                ax.yaxis.set_major_locator(MaxNLocator(3))
            ax.ticklabel_format(useOffset=False)
            if i == n - 1:
                ax.set_xlabel(params[j], fontsize=8)
            else:
                ax.set_xticklabels([])
            if j == 0 and i > 0:
                ax.set_ylabel(params[i], fontsize=8)
            elif j > 0:
                ax.set_yticklabels([])
    fig.suptitle(f"Fisher ellipses (68 %, 95 %) [{label}]; dashed: truth", fontsize=10)
    return _save(fig, path)
