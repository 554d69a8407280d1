"""Drop-in for ``fgbuster.visualization``: ``corner_norm`` and ``plot_component``.

Plain matplotlib (pyplot, so ``plt.gcf()`` / ``plt.show()`` behave as with fgbuster, and any
backend works, Agg included); matplotlib is imported on first use, so importing this module
costs nothing. ``corner_norm`` draws the Gaussian exactly (curves and ellipses) instead of a
corner plot of 100000 random draws: deterministic, and no ``corner`` dependency.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["corner_norm", "plot_component"]

# corner.corner's positional parameters after the samples, in order.
_CORNER_POSITIONAL = ("bins", "range", "weights", "color")
# corner.corner / hist2d keywords that only shape histograms of samples: meaningless for an
# exact Gaussian, accepted and ignored so that fgbuster calls keep working.
_SAMPLING_ONLY = frozenset(
    {
        "bins",
        "weights",
        "hist_bin_factor",
        "smooth",
        "smooth1d",
        "scale_hist",
        "verbose",
        "plot_datapoints",
        "plot_density",
        "plot_contours",
        "fill_contours",
        "no_fill_contours",
        "contourf_kwargs",
        "data_kwargs",
        "hist_kwargs",
        "pcolor_kwargs",
        "new_fig",
        "top_ticks",
        "use_math_text",
        "reverse",
        "labelpad",
        "title_quantiles",
        "axes_scale",
    }
)
_SUPPORTED = frozenset(
    {
        "range",
        "color",
        "labels",
        "label_kwargs",
        "titles",
        "show_titles",
        "title_fmt",
        "title_kwargs",
        "truths",
        "truth_color",
        "quantiles",
        "fig",
        "max_n_ticks",
        "levels",
        "contour_kwargs",
    }
)
# corner's default 2-D levels: the probability inside 0.5, 1, 1.5 and 2 sigma of a 2-D Gaussian.
_DEFAULT_LEVELS = tuple(1.0 - math.exp(-0.5 * r**2) for r in (0.5, 1.0, 1.5, 2.0))
_N_SIGMA_RANGE = 4.0  # default axis range: mean +- 4 sigma (corner's span of 1e5 draws)


def _normal_ppf(q: float) -> float:
    from scipy.special import ndtri

    return float(ndtri(q))


def _check_mean_cov(mean, cov):
    mean = np.asarray(mean, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    if mean.ndim != 1 or mean.size == 0:
        raise ValueError(f"`mean` must have shape (n_param,), got {mean.shape}.")
    n = mean.size
    if cov.shape != (n, n):
        raise ValueError(f"`cov` must have shape ({n}, {n}) to match `mean`, got {cov.shape}.")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError("`mean` and `cov` must be finite (no NaN, inf or hp.UNSEEN).")
    if not np.allclose(cov, cov.T, rtol=1e-8, atol=0.0):
        raise ValueError("`cov` must be symmetric.")
    var = np.diag(cov)
    if np.any(var <= 0.0):
        bad = np.flatnonzero(var <= 0.0).tolist()
        raise ValueError(f"`cov` must have positive variances; entries {bad} are not.")
    if np.linalg.eigvalsh(cov / np.sqrt(np.outer(var, var))).min() < -1e-10:
        raise ValueError("`cov` must be positive semi-definite.")
    return mean, cov


def _get_figure(fig, n):
    import matplotlib.pyplot as plt

    if fig is None:
        size = 1.0 + 2.0 * n + 0.1 * (n - 1) + 0.4  # left/bottom margin, panels, gaps, top
        fig, axes = plt.subplots(n, n, figsize=(size, size), squeeze=False)
        margin_lb, margin_tr = 1.0 / size, 0.4 / size
        fig.subplots_adjust(
            left=margin_lb,
            bottom=margin_lb,
            right=1.0 - margin_tr,
            top=1.0 - margin_tr,
            wspace=0.05,
            hspace=0.05,
        )
        return fig, axes
    if len(fig.axes) != n * n:
        raise ValueError(
            f"`fig` must have {n}*{n} = {n * n} axes for {n} parameters, got {len(fig.axes)}."
        )
    return fig, np.array(fig.axes).reshape(n, n)


def corner_norm(mean, cov, *args, **kwargs):
    """Corner plot of a multivariate Gaussian given its mean and covariance.

    Same call as fgbuster's (itself ``corner.corner`` with samples replaced by ``mean`` and
    ``cov``), drawn exactly: the diagonal panels show the marginal densities, the panels
    below it the 2-D marginals as ellipses enclosing the probabilities ``levels`` (corner's
    default: 0.5, 1, 1.5 and 2 sigma). The figure is drawn with pyplot (``plt.gcf()``) and,
    as in fgbuster, nothing is returned.

    Args:
        mean: Mean, shape ``(n_param,)``.
        cov: Covariance, shape ``(n_param, n_param)``, symmetric positive semi-definite
            with positive variances.
        *args: corner's positional arguments after the samples (``bins, range, weights,
            color``); only ``range`` and ``color`` matter here.
        **kwargs: corner's keywords. Honoured: ``range`` (list of ``(low, high)``; default
            mean +- 4 sigma), ``color``, ``labels``, ``label_kwargs``, ``titles``,
            ``show_titles``, ``title_fmt``, ``title_kwargs``, ``truths``, ``truth_color``,
            ``quantiles``, ``fig``, ``max_n_ticks``, ``levels``, ``contour_kwargs``.
            Keywords that only shape histograms of samples (``bins``, ``smooth``,
            ``plot_datapoints``, ...) are accepted and ignored; anything else is an error.

    Raises:
        ValueError: ``mean``/``cov`` of inconsistent shape, non-finite, not symmetric, not
            positive semi-definite, or ``fig`` with the wrong number of axes.
        TypeError: an argument corner does not know.

    Examples:
        >>> import matplotlib.pyplot as plt
        >>> from legacy_compat.visualization import corner_norm
        >>> corner_norm([1.54, 20.0], [[1e-4, 1e-3], [1e-3, 0.25]], labels=["beta_d", "temp"])
        >>> len(plt.gcf().axes)
        4
        >>> plt.close("all")
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    mean, cov = _check_mean_cov(mean, cov)
    n = mean.size
    if len(args) > len(_CORNER_POSITIONAL):
        raise TypeError(
            f"corner_norm takes at most {2 + len(_CORNER_POSITIONAL)} positional arguments "
            f"(mean, cov, {', '.join(_CORNER_POSITIONAL)}), got {2 + len(args)}."
        )
    for name, value in zip(_CORNER_POSITIONAL, args, strict=False):
        if name in kwargs:
            raise TypeError(f"corner_norm got multiple values for argument {name!r}.")
        kwargs[name] = value
    unknown = sorted(set(kwargs) - _SUPPORTED - _SAMPLING_ONLY)
    if unknown:
        raise TypeError(f"corner_norm got unexpected keyword arguments {unknown}.")

    sigma = np.sqrt(np.diag(cov))
    ranges = kwargs.get("range")
    if ranges is None:
        ranges = [
            (m - _N_SIGMA_RANGE * s, m + _N_SIGMA_RANGE * s)
            for m, s in zip(mean, sigma, strict=True)
        ]
    else:
        ranges = list(ranges)
        if len(ranges) != n:
            raise ValueError(f"`range` must have {n} entries, got {len(ranges)}.")
        # corner also accepts a float f in (0, 1]: the central fraction of the samples.
        ranges = [
            (m - s * _normal_ppf(0.5 + 0.5 * r), m + s * _normal_ppf(0.5 + 0.5 * r))
            if np.isscalar(r)
            else tuple(float(v) for v in r)
            for r, m, s in zip(ranges, mean, sigma, strict=True)
        ]
    color = kwargs.get("color") or "k"
    labels = kwargs.get("labels")
    if labels is not None and len(labels) != n:
        raise ValueError(f"`labels` must have {n} entries, got {len(labels)}.")
    label_kwargs = kwargs.get("label_kwargs") or {}
    truths = kwargs.get("truths")
    if truths is not None and len(truths) != n:
        raise ValueError(f"`truths` must have {n} entries, got {len(truths)}.")
    truth_color = kwargs.get("truth_color", "#4682b4")
    quantiles = list(kwargs.get("quantiles") or [])
    levels = kwargs.get("levels") or _DEFAULT_LEVELS
    levels = np.asarray(levels, dtype=np.float64)
    if np.any((levels <= 0.0) | (levels >= 1.0)):
        raise ValueError("`levels` must be probabilities strictly between 0 and 1.")
    radii = np.sqrt(-2.0 * np.log1p(-levels))  # Mahalanobis radius enclosing each level
    contour_kwargs = {"color": color, **(kwargs.get("contour_kwargs") or {})}
    max_n_ticks = kwargs.get("max_n_ticks", 5)

    fig, axes = _get_figure(kwargs.get("fig"), n)
    angle = np.linspace(0.0, 2.0 * np.pi, 200)
    circle = np.stack([np.cos(angle), np.sin(angle)])  # (2, n_angle)

    for i in range(n):
        for j in range(n):
            ax = axes[i, j]
            if j > i:
                ax.set_frame_on(False)
                ax.set_xticks([])
                ax.set_yticks([])
                continue
            if i == j:
                x = np.linspace(*ranges[i], 400)
                pdf = np.exp(-0.5 * ((x - mean[i]) / sigma[i]) ** 2) / (
                    sigma[i] * math.sqrt(2.0 * math.pi)
                )
                ax.plot(x, pdf, color=color)
                ax.set_ylim(0.0, 1.1 * pdf.max())
                ax.set_yticks([])
                for q in quantiles:
                    ax.axvline(mean[i] + sigma[i] * _normal_ppf(q), ls="dashed", color=color)
                if truths is not None and truths[i] is not None:
                    ax.axvline(truths[i], color=truth_color)
                if kwargs.get("show_titles"):
                    fmt = "{:" + kwargs.get("title_fmt", ".2f") + "}"
                    titles = kwargs.get("titles")
                    name = titles[i] if titles is not None else (labels[i] if labels else None)
                    body = f"${fmt.format(mean[i])}_{{-{fmt.format(sigma[i])}}}"
                    body += f"^{{+{fmt.format(sigma[i])}}}$"
                    ax.set_title(
                        f"{name} = {body}" if name else body, **(kwargs.get("title_kwargs") or {})
                    )
            else:
                sub = cov[np.ix_([j, i], [j, i])]  # (x, y) = (param j, param i)
                w, v = np.linalg.eigh(sub)
                root = v * np.sqrt(np.clip(w, 0.0, None))  # sub = root @ root.T
                for r in radii:
                    xy = mean[[j, i], None] + r * (root @ circle)
                    ax.plot(xy[0], xy[1], **contour_kwargs)
                ax.plot(mean[j], mean[i], marker="+", color=color)
                if truths is not None:
                    if truths[j] is not None:
                        ax.axvline(truths[j], color=truth_color)
                    if truths[i] is not None:
                        ax.axhline(truths[i], color=truth_color)
                    if truths[i] is not None and truths[j] is not None:
                        ax.plot(truths[j], truths[i], "s", color=truth_color)
                ax.set_ylim(*ranges[i])
                ax.yaxis.set_major_locator(MaxNLocator(max_n_ticks, prune="lower"))
                if j > 0:
                    ax.set_yticklabels([])
                elif labels is not None:
                    ax.set_ylabel(labels[i], **label_kwargs)
            ax.set_xlim(*ranges[j])
            ax.xaxis.set_major_locator(MaxNLocator(max_n_ticks, prune="lower"))
            if i < n - 1:
                ax.set_xticklabels([])
            else:
                for tick in ax.get_xticklabels():
                    tick.set_rotation(45)
                if labels is not None:
                    ax.set_xlabel(labels[j], **label_kwargs)
    if plt.fignum_exists(getattr(fig, "number", -1)):
        plt.figure(fig.number)  # make it the current figure, as corner leaves it
    return None


def plot_component(component, nu_min, nu_max):
    """Plot a component's SED at its default parameters on log-log axes (current axes).

    1000 log-spaced frequencies between ``nu_min`` and ``nu_max`` (GHz); the curve is
    labelled with the component's class name, as in fgbuster. Non-positive values (e.g. the
    thermal SZ decrement) are not shown on the log axis.

    Args:
        component: A component (``legacy_compat.component_model``), or anything with
            ``eval(nu, *params)`` and ``defaults``.
        nu_min: Lowest frequency in GHz, positive.
        nu_max: Highest frequency in GHz, positive.

    Raises:
        ValueError: a non-positive or non-finite frequency.
        TypeError: ``component`` without ``eval`` / ``defaults``.

    Examples:
        >>> import matplotlib.pyplot as plt
        >>> from legacy_compat import Dust
        >>> from legacy_compat.visualization import plot_component
        >>> plot_component(Dust(353.0), 10.0, 1000.0)
        >>> plt.gca().lines[-1].get_label()
        'Dust'
        >>> plt.close("all")
    """
    import matplotlib.pyplot as plt

    for name, value in (("nu_min", nu_min), ("nu_max", nu_max)):
        if not (np.isscalar(value) and np.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive frequency in GHz, got {value!r}.")
    if not (hasattr(component, "eval") and hasattr(component, "defaults")):
        raise TypeError(
            "`component` must be a component with `eval` and `defaults`, got "
            f"{type(component).__name__}."
        )
    nus = np.logspace(np.log10(nu_min), np.log10(nu_max), 1000)
    emission = np.asarray(component.eval(nus, *component.defaults))
    plt.loglog(nus, np.broadcast_to(emission, nus.shape), label=type(component).__name__)
    return None
