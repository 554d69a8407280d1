"""Outputs of the command line: folder, HEALPix FITS, JSON / NPZ results, summary table.

Host-side code (NumPy, healpy, PyYAML). Nothing here runs before the inputs are validated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from typing import Any

import numpy as np

from ._cli_config import CLIError
from ._constants import UNSEEN

__all__ = [
    "RecipeOutcome",
    "Timer",
    "prepare_output",
    "summary_table",
    "write_fits",
    "write_results",
    "write_yaml",
]


def prepare_output(path: str, force: bool, field: str = "--output") -> str:
    """Create the output folder; refuse a non-empty one unless `force`.

    With `force`, the files fgjax writes (``maps/``, ``results/``, ``figures/``,
    ``inputs/``, ``config.yaml``, ``summary.txt``) are removed first; nothing else is.
    """
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"{path} exists and is not a folder", field=field)
    if os.path.isdir(path) and os.listdir(path):
        if not force:
            raise CLIError(
                f"{path} exists and is not empty (use --force to overwrite, or --output)",
                field=field,
            )
        for name in ("maps", "results", "figures", "inputs"):
            shutil.rmtree(os.path.join(path, name), ignore_errors=True)
        for name in ("config.yaml", "summary.txt"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, name))
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise CLIError(f"cannot create {path} ({err.strerror})", field=field) from None
    return path


def write_fits(path: str, maps: np.ndarray, unit: str | None = None) -> None:
    """Write ``(n_pix,)`` or ``(n_field, n_pix)`` maps as one HEALPix FITS file (RING)."""
    import healpy as hp

    os.makedirs(os.path.dirname(path), exist_ok=True)
    maps = np.asarray(maps, dtype=np.float64)
    hp.write_map(
        path,
        list(maps) if maps.ndim == 2 else maps,
        overwrite=True,
        dtype=np.float64,
        column_units=unit,
    )


def _yaml_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _yaml_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_yaml_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _yaml_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_yaml(path: str, config: dict, header: str = "") -> None:
    """Write a configuration (NumPy values become plain numbers) with a comment header."""
    import yaml

    text = yaml.safe_dump(_yaml_safe(config), sort_keys=False, default_flow_style=None)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(header + text)


class Timer:
    """Wall time of a block, split into JAX compilation and the rest.

    Compilation time is the sum of JAX's own duration events for lowering to MLIR and
    backend (XLA) compilation reported while the block runs; Python tracing, which nests
    (a jitted function traced inside another), is counted as fit time.
    """

    _EVENTS = (
        "/jax/core/compile/backend_compile_duration",
        "/jax/core/compile/jaxpr_to_mlir_module_duration",
    )

    def __init__(self):
        self.compile = 0.0
        self.total = 0.0

    def _listener(self, event: str, duration: float, **_kwargs) -> None:
        if event in self._EVENTS:
            self.compile += float(duration)

    def __enter__(self) -> Timer:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listener)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        self.total = time.perf_counter() - self._t0
        with contextlib.suppress(Exception):
            jax.monitoring.unregister_event_duration_listener(self._listener)
        self.compile = min(self.compile, self.total)

    @property
    def fit(self) -> float:
        """Time outside compilation, s."""
        return max(self.total - self.compile, 0.0)


@dataclasses.dataclass
class RecipeOutcome:
    """What one recipe produced, in the shape the writers and plots need.

    Attributes:
        label: Output prefix; kind: the recipe type.
        params: Free-parameter labels (empty for ILC).
        x: Per parameter, its fitted values (1 for a global fit, one per patch/cluster).
        sigma: Per parameter, the matching standard deviations ``sqrt(diag(Sigma))``.
        x_maps: Per parameter, a map ``(n_pix,)`` when it varies across the sky, else None.
        sigma_maps: Same for its standard deviation.
        Sigma: The full covariance (global fits: ``(n_param, n_param)``), or None.
        components: Names of the separated components; s: ``(n_comp, n_stokes, n_pix)``.
        comp_objects: The fgjax components (SED plots).
        timer: Compile / fit timings.
        success, message: The recipe's outcome.
        raw: Extra arrays for the NPZ file.
    """

    label: str
    kind: str
    params: list
    x: list
    sigma: list
    x_maps: list
    sigma_maps: list
    Sigma: np.ndarray | None
    components: list
    s: np.ndarray
    comp_objects: list
    timer: Timer
    success: bool = True
    message: str = ""
    raw: dict = dataclasses.field(default_factory=dict)

    @property
    def is_global(self) -> bool:
        """One value per parameter."""
        return all(np.size(v) == 1 for v in self.x)


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.where(a == UNSEEN, np.nan, a)


def write_results(folder: str, out: RecipeOutcome, truth: dict, unit: str, stokes: str) -> list:
    """Component and parameter maps (FITS), results (JSON + NPZ). Returns the files written."""
    written = []
    maps_dir = os.path.join(folder, "maps")
    for name, s in zip(out.components, out.s, strict=True):
        path = os.path.join(maps_dir, f"{out.label}_{name.lower()}.fits")
        write_fits(path, s, unit)
        written.append(path)
    for p, xm, sm in zip(out.params, out.x_maps, out.sigma_maps, strict=True):
        if xm is None:
            continue
        path = os.path.join(maps_dir, f"{out.label}_{p}.fits")
        write_fits(path, np.stack([xm, sm]))
        written.append(path)
    res_dir = os.path.join(folder, "results")
    os.makedirs(res_dir, exist_ok=True)
    doc = {
        "recipe": out.kind,
        "label": out.label,
        "success": bool(out.success),
        "message": out.message,
        "stokes": stokes,
        "unit": unit,
        "components": list(out.components),
        "wall_time_s": {"compile": out.timer.compile, "fit": out.timer.fit,
                        "total": out.timer.total},
        "parameters": {},
    }  # fmt: skip
    for p, x, sg in zip(out.params, out.x, out.sigma, strict=True):
        x = np.atleast_1d(_finite(x))
        sg = np.atleast_1d(_finite(sg))
        entry = {"x": _json_list(x), "sigma": _json_list(sg)}
        if p in truth:
            entry["truth"] = truth[p]
            entry["pull"] = _json_list((x - truth[p]) / sg)
        if x.size == 1:
            entry = {k: (v[0] if isinstance(v, list) else v) for k, v in entry.items()}
        doc["parameters"][p] = entry
    if out.Sigma is not None:
        doc["Sigma"] = [_json_list(row) for row in _finite(out.Sigma)]
    path = os.path.join(res_dir, f"{out.label}.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, allow_nan=True)
    written.append(path)
    arrays = {"params": np.asarray(out.params, dtype=str), "components": np.asarray(out.components)}
    for i in range(len(out.params)):
        arrays[f"x_{i}"] = np.asarray(out.x[i])
        arrays[f"sigma_{i}"] = np.asarray(out.sigma[i])
    if out.Sigma is not None:
        arrays["Sigma"] = np.asarray(out.Sigma)
    arrays.update(out.raw)
    path = os.path.join(res_dir, f"{out.label}.npz")
    np.savez(path, **arrays)
    written.append(path)
    return written


def _json_list(a) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.ravel(a)]


def _fmt(v: float | None, width: int = 11) -> str:
    if v is None or not np.isfinite(v):
        return "-".rjust(width)
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:{width}.3e}"
    return f"{v:{width}.5f}"


def summary_table(outcomes: list[RecipeOutcome], truth: dict) -> str:
    """The terminal summary: per parameter fit, sigma, truth and pull; timings per recipe.

    Spatially varying parameters show their mean value and mean sigma over the patches or
    clusters, and the rms of the pulls.
    """
    lines = []
    head = f"{'parameter':<28}{'fit':>11}{'sigma':>11}{'truth':>11}{'pull':>9}  n"
    for out in outcomes:
        status = "converged" if out.success else f"NOT CONVERGED ({out.message})"
        lines.append(f"[{out.label}] recipe {out.kind}: {status}")
        lines.append(
            f"  wall time: compile {out.timer.compile:.1f} s, fit {out.timer.fit:.1f} s "
            f"(total {out.timer.total:.1f} s)"
        )
        if out.params:
            lines.append("  " + head)
            lines.append("  " + "-" * len(head))
        for p, x, sg in zip(out.params, out.x, out.sigma, strict=True):
            x = np.atleast_1d(_finite(x))
            sg = np.atleast_1d(_finite(sg))
            good = np.isfinite(x)
            n = int(good.sum())
            fit = float(np.mean(x[good])) if n else None
            sig = float(np.mean(sg[good])) if n else None
            t = truth.get(p)
            pull = None
            if t is not None and n:
                pulls = (x[good] - t) / sg[good]
                pull = float(pulls[0]) if x.size == 1 else float(np.sqrt(np.nanmean(pulls**2)))
            name = p if x.size == 1 else p + " (mean)"
            pull_s = (
                _fmt(pull, 9) if pull is None or x.size == 1 else f"{'rms ' + f'{pull:.2f}':>9}"
            )
            lines.append(f"  {name:<28}{_fmt(fit)}{_fmt(sig)}{_fmt(t)}{pull_s}  {n}")
        lines.append("")
    return "\n".join(lines)
