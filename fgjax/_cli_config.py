"""Configuration files of the command line: YAML parsing and validation, before any output.

A configuration is read, checked field by field and turned into a :class:`RunSpec` (maps in
memory, an instrument, component specifications, recipes) without writing anything. Every
problem raises :class:`CLIError`, whose one-line message names the file and the field.
Relative paths in a configuration are relative to the folder of the configuration file.
The accepted keys are documented in ``docs/configuration.md``.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any

import numpy as np

from ._constants import UNSEEN, parse_units

__all__ = ["CLIError", "ComponentSpec", "RecipeSpec", "RunSpec", "build_components", "load_config"]

STOKES_CHOICES = ("I", "QU", "IQU")
RECIPE_TYPES = ("basic", "multi_res", "adaptive", "ilc")
TOP_KEYS = ("maps", "instrument", "components", "recipe", "mask", "truth", "output")


class CLIError(Exception):
    """A user error of the command line: one line naming the file and the field."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.file = file
        self.field = field

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.field) if p]
        return ": ".join([*parts, " ".join(self.message.split())])


# -- components ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _ComponentType:
    cls_name: str
    params: tuple[str, ...]  # parameters that may be free or fixed
    required: tuple[str, ...] = ()  # options without default (nu0)
    optional: tuple[str, ...] = ()  # other options
    constant_default: tuple[tuple[str, float], ...] = ()  # fixed unless asked free


COMPONENT_TYPES: dict[str, _ComponentType] = {
    "CMB": _ComponentType("CMB", ()),
    "Dust": _ComponentType("Dust", ("beta_d", "temp"), ("nu0",)),
    "ModifiedBlackBody": _ComponentType("ModifiedBlackBody", ("beta_d", "temp"), ("nu0",)),
    "Synchrotron": _ComponentType(
        "Synchrotron", ("beta_pl", "running", "nu_pivot"), ("nu0",), (), (("running", 0.0),)
    ),
    "PowerLaw": _ComponentType(
        "PowerLaw", ("beta_pl", "running", "nu_pivot"), ("nu0",), (), (("running", 0.0),)
    ),
    "FreeFree": _ComponentType("FreeFree", ("logEM", "Te")),
    "ThermalSZ": _ComponentType("ThermalSZ", ()),
    "AnalyticComponent": _ComponentType("AnalyticComponent", (), ("expression",)),
}
"""Component types a configuration may name, with their parameters and options."""


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """One component of a configuration.

    Attributes:
        type: A key of :data:`COMPONENT_TYPES`.
        options: Constructor options (``nu0``, ``expression``).
        fixed: Parameters fixed to a value.
        free: Free parameters in the component's order, each with its start value (``None``:
            the component's default) and ``(min, max)`` bounds (``None`` ends: unbounded).
    """

    type: str
    options: dict
    fixed: dict
    free: dict  # name -> (start | None, (lo | None, hi | None))


def build_components(specs: list[ComponentSpec], unit: str) -> tuple[list, list, list]:
    """Instantiate fgjax components from their specifications.

    Identical specifications give the same component objects within a process, so that
    repeated runs (``main`` called twice, the tests) reuse the compiled fits: the recipes'
    jitted functions key their cache on the components.

    Returns:
        ``(components, bounds, labels)``: bounds and labels (``'Dust.beta_d'``) follow the
        mixing matrix's parameter order.
    """
    key = repr((list(specs), unit))  # ComponentSpec holds dicts: not hashable itself
    if key not in _COMPONENTS:
        if len(_COMPONENTS) >= 32:
            _COMPONENTS.pop(next(iter(_COMPONENTS)))
        _COMPONENTS[key] = _make_components(list(specs), unit)
    comps, bounds, labels = _COMPONENTS[key]
    return list(comps), list(bounds), list(labels)


_COMPONENTS: dict[str, tuple] = {}  # specification -> components, see build_components


def _make_components(specs: list[ComponentSpec], unit: str) -> tuple[tuple, tuple, tuple]:
    import fgjax._sed as sed

    comps, bounds, labels = [], [], []
    for spec in specs:
        cls = getattr(sed, COMPONENT_TYPES[spec.type].cls_name)
        kwargs = dict(spec.fixed)
        kwargs.update({name: None for name in spec.free})
        if spec.type == "AnalyticComponent":
            comp = cls(spec.options["expression"], **kwargs)
        else:
            base = "uK_CMB" if spec.type == "ThermalSZ" else unit
            comp = cls(**spec.options, **kwargs, units=base)
        if comp.params:
            defaults = comp.defaults if spec.type != "AnalyticComponent" else [1.0] * comp.n_param
            if spec.type == "AnalyticComponent" and comp._defaults is not None:
                defaults = comp.defaults
            starts = [
                spec.free[p][0] if spec.free.get(p, (None,))[0] is not None else d
                for p, d in zip(comp.params, defaults, strict=True)
            ]
            comp.defaults = [float(s) for s in starts]
        for p in comp.params:
            bounds.append(spec.free.get(p, (None, (None, None)))[1])
            labels.append(f"{comp.name}.{p}")
        comps.append(comp)
    return tuple(comps), tuple(bounds), tuple(labels)


# -- recipes --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RecipeSpec:
    """One separation to run.

    Attributes:
        type: ``basic``, ``multi_res``, ``adaptive`` or ``ilc``.
        label: Prefix of its output files (unique).
        nside: ``basic``: 0 (global) or the patch nside. ``ilc``: 0 or the patch nside.
        nsides: ``multi_res``: parameter label -> nside.
        cluster_maps: ``adaptive``: parameter label -> integer map ``(n_pix,)``.
        maxiter: Newton iterations allowed (``None``: the recipe's default).
        components: ``ilc``: its (fixed) component specifications.
    """

    type: str
    label: str
    nside: int = 0
    nsides: dict | None = None
    cluster_maps: dict | None = None
    maxiter: int | None = None
    components: list | None = None


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """A validated configuration, ready to run (nothing written yet).

    Attributes:
        path: The configuration file (for messages), or a description.
        data: Frequency maps ``(n_freq, n_stokes, n_pix)`` in `unit`, ``UNSEEN`` at bad or
            masked pixels.
        stokes: ``'I'``, ``'QU'`` or ``'IQU'``.
        unit: Unit of the maps (``uK_CMB``...).
        instrument: A :class:`fgjax._instruments.Instrument`.
        components: Component specifications (parametric recipes).
        recipes: What to run, in order.
        mask: Good pixels ``(n_pix,)`` or ``None``.
        truth_params: Parameter label -> true value (for pulls), possibly empty.
        truth_cmb: True CMB maps ``(n_stokes, n_pix)`` in `unit`, or ``None``.
        output: Output folder.
        config: The normalised configuration (absolute paths), written back as YAML.
    """

    path: str
    data: np.ndarray
    stokes: str
    unit: str
    instrument: Any
    components: list
    recipes: list
    mask: np.ndarray | None
    truth_params: dict
    truth_cmb: np.ndarray | None
    output: str
    config: dict

    @property
    def nside(self) -> int:
        """HEALPix resolution of the maps."""
        return int(round(np.sqrt(self.data.shape[-1] / 12)))

    @property
    def param_labels(self) -> list[str]:
        """Labels of the free parameters of the components, in mixing-matrix order."""
        return build_components(self.components, self.unit)[2]


# -- reading -------------------------------------------------------------------------------------
class _Ctx:
    """Where we are: the configuration file and its folder."""

    def __init__(self, path: str):
        self.path = path
        self.folder = os.path.dirname(os.path.abspath(path))

    def error(self, field: str, message: str, file: str | None = None) -> CLIError:
        return CLIError(message, file=file or self.path, field=field)

    def resolve(self, field: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(field, f"expected a file path, got {value!r}")
        path = os.path.expanduser(value)
        if not os.path.isabs(path):
            path = os.path.join(self.folder, path)
        path = os.path.normpath(path)
        if not os.path.exists(path):
            raise self.error(field, f"file not found: {path}")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise self.error(field, f"not a readable file: {path}")
        return path


def _number(ctx: _Ctx, field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ctx.error(field, f"expected a finite number, got {value!r}")
    return float(value)


def _nside_value(ctx: _Ctx, field: str, value: Any, allow_zero: bool = True) -> int:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    ok = ok and (value == 0 and allow_zero or value > 0 and value & (value - 1) == 0)
    if not ok:
        zero = "0 or " if allow_zero else ""
        raise ctx.error(field, f"expected {zero}a power of 2 (HEALPix nside), got {value!r}")
    return int(value)


def _mapping(ctx: _Ctx, field: str, value: Any, allowed: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise ctx.error(field, f"expected a mapping with keys among {', '.join(allowed)}")
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ctx.error(
            f"{field}.{unknown[0]}" if field else str(unknown[0]),
            f"unknown key; expected one of {', '.join(allowed)}",
        )
    return value


def read_fits_fields(ctx: _Ctx, field: str, path: str) -> np.ndarray:
    """All fields of a HEALPix FITS file, ``(n_field, n_pix)`` float64, RING ordering."""
    import healpy as hp

    try:
        maps = hp.read_map(path, field=None, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 (astropy/healpy raise many types)
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ctx.error(field, f"cannot read {path} as a HEALPix FITS map ({reason})") from err
    return np.atleast_2d(np.asarray(maps, dtype=np.float64))


def _select_stokes(ctx: _Ctx, field: str, path: str, fields: np.ndarray, stokes: str) -> np.ndarray:
    n = fields.shape[0]
    if n == len(stokes):
        return fields
    if n == 3:
        return fields[["IQU".index(s) for s in stokes]]
    raise ctx.error(
        field,
        f"{path} holds {n} map(s); stokes {stokes!r} needs {len(stokes)} (or 3: I, Q, U)",
    )


def _check_nside(ctx, field, path, maps, nside_ref, ref_desc) -> int:
    n_pix = maps.shape[-1]
    nside = int(round(np.sqrt(n_pix / 12)))
    if 12 * nside**2 != n_pix:
        raise ctx.error(field, f"{path} has {n_pix} pixels, not a HEALPix map")
    if nside_ref is not None and nside != nside_ref:
        raise ctx.error(field, f"{path} has nside {nside} but {ref_desc} has nside {nside_ref}")
    return nside


def _read_maps(ctx: _Ctx, raw: Any, n_freq: int) -> tuple[np.ndarray, str, str, dict]:
    m = _mapping(ctx, "maps", raw, ("files", "file", "stokes", "unit"))
    stokes = m.get("stokes", "QU")
    if stokes not in STOKES_CHOICES:
        raise ctx.error(
            "maps.stokes", f"expected one of {', '.join(STOKES_CHOICES)}, got {stokes!r}"
        )
    unit = m.get("unit", "uK_CMB")
    try:
        parse_units(unit)
    except ValueError:
        raise ctx.error(
            "maps.unit", f"expected one of K_CMB, mK_CMB, uK_CMB, K_RJ, mK_RJ, uK_RJ; got {unit!r}"
        ) from None
    norm = {"stokes": stokes, "unit": unit}
    if ("files" in m) == ("file" in m):
        raise ctx.error("maps", "give either `files` (one FITS per band) or `file` (one file)")
    if "files" in m:
        files = m["files"]
        if not isinstance(files, list) or not files:
            raise ctx.error("maps.files", "expected a non-empty list of FITS files")
        if len(files) != n_freq:
            raise ctx.error(
                "maps.files", f"{len(files)} maps given but the instrument has {n_freq} bands"
            )
        paths = [ctx.resolve(f"maps.files[{i}]", f) for i, f in enumerate(files)]
        maps, nside0 = [], None
        for i, path in enumerate(paths):
            fields = read_fits_fields(ctx, f"maps.files[{i}]", path)
            nside = _check_nside(ctx, f"maps.files[{i}]", path, fields, nside0, paths[0])
            nside0 = nside if nside0 is None else nside0
            maps.append(_select_stokes(ctx, f"maps.files[{i}]", path, fields, stokes))
        norm["files"] = paths
        data = np.stack(maps)
    else:
        path = ctx.resolve("maps.file", m["file"])
        fields = read_fits_fields(ctx, "maps.file", path)
        _check_nside(ctx, "maps.file", path, fields, None, "")
        n = fields.shape[0]
        if n == n_freq * len(stokes):
            data = fields.reshape(n_freq, len(stokes), -1)
        elif n == n_freq * 3:
            data = fields.reshape(n_freq, 3, -1)[:, ["IQU".index(s) for s in stokes]]
        else:
            per = f"{len(stokes)} or 3"
            raise ctx.error(
                "maps.file",
                f"{path} holds {n} maps but the instrument has {n_freq} bands ({per} Stokes "
                f"maps each, band after band, expected)",
            )
        norm["file"] = path
    return data, stokes, unit, norm


def _read_instrument(ctx: _Ctx, raw: Any) -> tuple[Any, Any]:
    from ._instruments import get_instrument, standardize_instrument

    if raw is None:
        raise ctx.error(
            "instrument", "missing: an instrument tag (see `fgjax instruments`) or a mapping"
        )
    if isinstance(raw, str):
        try:
            return get_instrument(raw), raw
        except ValueError as err:
            raise ctx.error("instrument", str(err)) from None
    m = _mapping(
        ctx, "instrument", raw, ("frequency", "depth_i", "depth_p", "fwhm", "bandpass_files")
    )
    norm = dict(m)
    desc = dict(m)
    bp = desc.pop("bandpass_files", None)
    if bp is not None:
        if not isinstance(bp, list) or not bp:
            raise ctx.error("instrument.bandpass_files", "expected a list of text files")
        paths = [ctx.resolve(f"instrument.bandpass_files[{i}]", f) for i, f in enumerate(bp)]
        bands = []
        for i, path in enumerate(paths):
            try:
                table = np.loadtxt(path, dtype=np.float64, ndmin=2)
            except Exception as err:  # noqa: BLE001
                raise ctx.error(
                    f"instrument.bandpass_files[{i}]",
                    f"cannot read {path} as two columns (frequency GHz, weight): {err}",
                ) from err
            if table.shape[1] != 2 or table.shape[0] < 2:
                raise ctx.error(
                    f"instrument.bandpass_files[{i}]",
                    f"{path} must hold two columns (frequency GHz, weight) and >= 2 rows; "
                    f"got shape {table.shape}",
                )
            bands.append((table[:, 0], table[:, 1]))
        if "frequency" in desc and len(desc["frequency"]) != len(bands):
            raise ctx.error(
                "instrument.bandpass_files",
                f"{len(bands)} bandpass files but {len(desc['frequency'])} frequencies",
            )
        desc["frequency"] = bands
        norm["bandpass_files"] = paths
    if "frequency" not in desc:
        raise ctx.error("instrument.frequency", "missing: band centres in GHz (or bandpass_files)")
    try:
        inst = standardize_instrument(desc)
    except ValueError as err:
        msg = str(err)
        field = "instrument"
        for key in ("frequency", "depth_i", "depth_p", "fwhm"):
            if f"instrument.{key}" in msg:
                field = f"instrument.{key}"
        raise ctx.error(field, msg.replace(f"`{field}`", "").strip()) from None
    return inst, norm


def _read_param(ctx, field, name, value):
    """-> ('fixed', v, None) | ('free', start, (lo, hi))."""
    if value is None or value == "free":
        return "free", None, (None, None)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "free", _number(ctx, field, value), (None, None)
    m = _mapping(ctx, field, value, ("fixed", "start", "bounds"))
    if "fixed" in m:
        if len(m) > 1:
            raise ctx.error(field, "a fixed parameter takes no `start` or `bounds`")
        return "fixed", _number(ctx, f"{field}.fixed", m["fixed"]), None
    start = None if m.get("start") is None else _number(ctx, f"{field}.start", m["start"])
    lo = hi = None
    if m.get("bounds") is not None:
        b = m["bounds"]
        if not isinstance(b, list) or len(b) != 2:
            raise ctx.error(f"{field}.bounds", f"expected [min, max], got {b!r}")
        lo = None if b[0] is None else _number(ctx, f"{field}.bounds[0]", b[0])
        hi = None if b[1] is None else _number(ctx, f"{field}.bounds[1]", b[1])
        if lo is not None and hi is not None and not lo < hi:
            raise ctx.error(f"{field}.bounds", f"min must be below max, got {b!r}")
        if start is not None and not ((lo is None or lo <= start) and (hi is None or start <= hi)):
            raise ctx.error(f"{field}.start", f"start {start} outside bounds {b!r}")
    return "free", start, (lo, hi)


def _read_components(ctx: _Ctx, raw: Any, field: str = "components") -> tuple[list, list]:
    if not isinstance(raw, list) or not raw:
        raise ctx.error(field, "expected a non-empty list of components (e.g. - type: CMB)")
    specs, norm = [], []
    for i, item in enumerate(raw):
        f = f"{field}[{i}]"
        if isinstance(item, str):
            item = {"type": item}
        if not isinstance(item, dict) or "type" not in item:
            raise ctx.error(f, "expected a mapping with a `type`")
        kind = item["type"]
        if kind not in COMPONENT_TYPES:
            raise ctx.error(
                f"{f}.type", f"unknown component {kind!r}; known: {', '.join(COMPONENT_TYPES)}"
            )
        ct = COMPONENT_TYPES[kind]
        m = _mapping(ctx, f, item, ("type", "params", *ct.required, *ct.optional))
        options = {}
        for key in ct.required:
            if key not in m:
                raise ctx.error(f"{f}.{key}", f"missing: {kind} needs `{key}`")
            if key == "expression":
                if not isinstance(m[key], str):
                    raise ctx.error(f"{f}.{key}", "expected a SymPy expression of nu (GHz)")
                options[key] = m[key]
            else:
                options[key] = _number(ctx, f"{f}.{key}", m[key])
        known = ct.params
        if kind == "AnalyticComponent":
            from ._sed import parse_sed_expression

            try:
                expr = parse_sed_expression(options["expression"])
            except Exception as err:  # noqa: BLE001 (SymPy raises many types)
                raise ctx.error(f"{f}.expression", f"cannot parse: {err}") from None
            known = tuple(sorted(str(s) for s in expr.free_symbols if str(s) != "nu"))
        params = m.get("params") or {}
        if not isinstance(params, dict):
            raise ctx.error(f"{f}.params", "expected a mapping parameter -> spec")
        fixed, free = {}, {}
        for name, value in params.items():
            if name not in known:
                raise ctx.error(
                    f"{f}.params.{name}",
                    f"unknown parameter of {kind}; known: {', '.join(known) or 'none'}",
                )
            state, v, bounds = _read_param(ctx, f"{f}.params.{name}", name, value)
            if state == "fixed":
                fixed[name] = v
            else:
                free[name] = (v, bounds)
        for name, v in ct.constant_default:
            if name not in free and name not in fixed:
                fixed[name] = v
        if kind == "AnalyticComponent":
            missing = [p for p in known if p not in fixed and p not in free]
            for p in missing:  # unspecified symbols of an expression are free, start 1
                free[p] = (None, (None, None))
        ordered = {p: free[p] for p in sorted(free)}
        specs.append(ComponentSpec(kind, options, fixed, ordered))
        norm.append(copy.deepcopy(item))
    try:
        build_components(specs, "K_CMB")
    except (TypeError, ValueError) as err:
        raise ctx.error(field, str(err)) from None
    return specs, norm


def _read_recipes(ctx: _Ctx, raw: Any, specs: list, unit: str, n_pix: int) -> tuple[list, list]:
    if raw is None:
        raw = {"type": "basic"}
    items = raw if isinstance(raw, list) else [raw]
    labels = build_components(specs, unit)[2]
    nside_map = int(round(np.sqrt(n_pix / 12)))
    out, norm, seen = [], [], set()
    for i, item in enumerate(items):
        f = "recipe" if not isinstance(raw, list) else f"recipe[{i}]"
        if not isinstance(item, dict) or "type" not in item:
            raise ctx.error(f, f"expected a mapping with a `type` among {', '.join(RECIPE_TYPES)}")
        kind = item["type"]
        if kind not in RECIPE_TYPES:
            raise ctx.error(
                f"{f}.type", f"unknown recipe {kind!r}; known: {', '.join(RECIPE_TYPES)}"
            )
        extra = {
            "basic": ("nside", "maxiter"),
            "multi_res": ("nsides", "maxiter"),
            "adaptive": ("cluster_maps", "maxiter"),
            "ilc": ("nside", "components"),
        }[kind]
        m = _mapping(ctx, f, item, ("type", "label", *extra))
        label = m.get("label", kind)
        if not isinstance(label, str) or not label.replace("_", "").replace("-", "").isalnum():
            raise ctx.error(f"{f}.label", f"expected letters, digits, - or _, got {label!r}")
        if label in seen:
            raise ctx.error(f"{f}.label", f"label {label!r} used twice (add `label:`)")
        seen.add(label)
        maxiter = m.get("maxiter")
        if maxiter is not None and (not isinstance(maxiter, int) or maxiter < 1):
            raise ctx.error(f"{f}.maxiter", f"expected a positive integer, got {maxiter!r}")
        nside, nsides, clusters, comps = 0, None, None, None
        n = dict(m)
        if kind in ("basic", "ilc"):
            nside = _nside_value(ctx, f"{f}.nside", m.get("nside", 0))
            if nside > nside_map:
                raise ctx.error(f"{f}.nside", f"{nside} exceeds the maps' nside {nside_map}")
        if kind in ("basic", "multi_res", "adaptive") and not labels:
            raise ctx.error(f, f"recipe {kind!r} needs at least one free parameter")
        if kind == "multi_res":
            raw_n = m.get("nsides")
            if isinstance(raw_n, int) and not isinstance(raw_n, bool):
                raw_n = {p: raw_n for p in labels}
            if not isinstance(raw_n, dict):
                raise ctx.error(f"{f}.nsides", "expected a mapping parameter label -> nside")
            for key in raw_n:
                if key not in labels:
                    raise ctx.error(
                        f"{f}.nsides.{key}", f"unknown parameter; free: {', '.join(labels)}"
                    )
            nsides = {}
            for p in labels:
                if p not in raw_n:
                    raise ctx.error(f"{f}.nsides", f"missing the nside of {p}")
                nsides[p] = _nside_value(ctx, f"{f}.nsides.{p}", raw_n[p])
                if nsides[p] > nside_map:
                    raise ctx.error(
                        f"{f}.nsides.{p}", f"{nsides[p]} exceeds the maps' nside {nside_map}"
                    )
            n["nsides"] = nsides
        if kind == "adaptive":
            clusters, n["cluster_maps"] = _read_cluster_maps(
                ctx, f"{f}.cluster_maps", m.get("cluster_maps"), labels, nside_map
            )
        if kind == "ilc":
            raw_comps = m.get("components", [{"type": "CMB"}])
            comps, n["components"] = _read_components(ctx, raw_comps, f"{f}.components")
            if build_components(comps, unit)[2]:
                raise ctx.error(f"{f}.components", "ILC components must have every parameter fixed")
        out.append(RecipeSpec(kind, label, nside, nsides, clusters, maxiter, comps))
        norm.append(n)
    return out, norm


def _cluster_ids(ctx, field, path, cm):
    if not np.all(np.isfinite(cm)) or np.any(cm < 0) or np.any(cm != np.round(cm)):
        raise ctx.error(field, f"{path} must hold non-negative integer cluster ids")
    return cm.astype(np.int64)


def _read_cluster_maps(ctx, field, raw, labels, nside_map) -> tuple[dict, Any]:
    """Cluster ids per free parameter: one file with a field per parameter, or a mapping."""
    if isinstance(raw, str):
        path = ctx.resolve(field, raw)
        fields = read_fits_fields(ctx, field, path)
        _check_nside(ctx, field, path, fields, nside_map, "the frequency maps")
        if fields.shape[0] != len(labels):
            raise ctx.error(
                field,
                f"{path} holds {fields.shape[0]} map(s); expected one per free parameter "
                f"({len(labels)}: {', '.join(labels)})",
            )
        ids = {p: _cluster_ids(ctx, field, path, cm) for p, cm in zip(labels, fields, strict=True)}
        return ids, path
    if not isinstance(raw, dict):
        raise ctx.error(
            field, "expected a FITS file (one map per free parameter) or a mapping label -> file"
        )
    for key in raw:
        if key not in labels:
            raise ctx.error(f"{field}.{key}", f"unknown parameter; free: {', '.join(labels)}")
    clusters, paths = {}, {}
    for p in labels:
        if p not in raw:
            raise ctx.error(field, f"missing the cluster map of {p}")
        fld = f"{field}.{p}"
        path = ctx.resolve(fld, raw[p])
        cm = read_fits_fields(ctx, fld, path)[0]
        _check_nside(ctx, fld, path, cm, nside_map, "the frequency maps")
        clusters[p] = _cluster_ids(ctx, fld, path, cm)
        paths[p] = path
    return clusters, paths


def _read_truth(ctx, raw, labels, stokes, nside_map):
    if raw is None:
        return {}, None, None
    m = _mapping(ctx, "truth", raw, ("params", "cmb"))
    params = m.get("params") or {}
    if not isinstance(params, dict):
        raise ctx.error("truth.params", "expected a mapping parameter label -> value")
    truth = {}
    for key, value in params.items():
        if key not in labels:
            raise ctx.error(f"truth.params.{key}", f"unknown parameter; free: {', '.join(labels)}")
        truth[key] = _number(ctx, f"truth.params.{key}", value)
    norm = {"params": dict(truth)}
    cmb = None
    if m.get("cmb") is not None:
        path = ctx.resolve("truth.cmb", m["cmb"])
        fields = read_fits_fields(ctx, "truth.cmb", path)
        _check_nside(ctx, "truth.cmb", path, fields, nside_map, "the frequency maps")
        cmb = _select_stokes(ctx, "truth.cmb", path, fields, stokes)
        norm["cmb"] = path
    return truth, cmb, norm


def parse_yaml(path: str) -> dict:
    """Read a YAML mapping; a malformed file raises :class:`CLIError` with the line."""
    import yaml

    if not os.path.exists(path):
        raise CLIError(f"configuration file not found: {os.path.abspath(path)}", file=path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as err:
        raise CLIError(f"cannot read the configuration ({err})", file=path) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        problem = getattr(err, "problem", None) or str(err)
        raise CLIError(f"malformed YAML: {problem}", file=path, field=where) from None
    if not isinstance(raw, dict):
        raise CLIError(
            "expected a YAML mapping with keys maps, instrument, components...", file=path
        )
    return raw


def load_config(path: str, output: str | None = None) -> RunSpec:
    """Read and validate a configuration file; nothing is written.

    Args:
        path: The YAML file.
        output: Output folder overriding the file's ``output`` (relative to the current
            directory).

    Raises:
        CLIError: anything wrong, with the file and the field.
    """
    raw = parse_yaml(path)
    return validate_config(raw, path, output)


def validate_config(raw: dict, path: str, output: str | None = None) -> RunSpec:
    """Validate a configuration already parsed (see :func:`load_config`)."""
    ctx = _Ctx(path)
    unknown = [k for k in raw if k not in TOP_KEYS]
    if unknown:
        raise ctx.error(str(unknown[0]), f"unknown key; expected one of {', '.join(TOP_KEYS)}")
    for key in ("maps", "instrument", "components"):
        if key not in raw:
            raise ctx.error(key, "missing (required)")
    instrument, inst_norm = _read_instrument(ctx, raw["instrument"])
    specs, comp_norm = _read_components(ctx, raw["components"])
    data, stokes, unit, maps_norm = _read_maps(ctx, raw["maps"], instrument.n_freq)
    n_pix = data.shape[-1]
    nside_map = int(round(np.sqrt(n_pix / 12)))
    mask = None
    mask_norm = None
    if raw.get("mask") is not None:
        mpath = ctx.resolve("mask", raw["mask"])
        mfields = read_fits_fields(ctx, "mask", mpath)
        _check_nside(ctx, "mask", mpath, mfields, nside_map, "the frequency maps")
        mask = (mfields[0] > 0) & (mfields[0] != UNSEEN) & np.isfinite(mfields[0])
        if not mask.any():
            raise ctx.error("mask", f"{mpath} masks every pixel")
        mask_norm = mpath
    bad_values = ~np.isfinite(data)
    if bad_values.any():
        data = np.where(bad_values, UNSEEN, data)
    if mask is not None:
        data = np.where(mask[None, None, :], data, UNSEEN)
    recipes, recipe_norm = _read_recipes(ctx, raw.get("recipe"), specs, unit, n_pix)
    labels = build_components(specs, unit)[2]
    truth, truth_cmb, truth_norm = _read_truth(ctx, raw.get("truth"), labels, stokes, nside_map)
    if output is None:
        out = raw.get("output", "fgjax-output")
        if not isinstance(out, str) or not out.strip():
            raise ctx.error("output", f"expected a folder path, got {out!r}")
        out = os.path.expanduser(out)
        output = out if os.path.isabs(out) else os.path.join(ctx.folder, out)
    output = os.path.abspath(output)
    if os.path.exists(output) and not os.path.isdir(output):
        raise ctx.error("output", f"{output} exists and is not a folder")
    config = {
        "maps": maps_norm,
        "instrument": inst_norm,
        "components": comp_norm,
        "recipe": recipe_norm if isinstance(raw.get("recipe"), list) else recipe_norm[0],
    }
    if mask_norm:
        config["mask"] = mask_norm
    if truth_norm:
        config["truth"] = truth_norm
    config["output"] = output
    return RunSpec(
        path=path,
        data=data,
        stokes=stokes,
        unit=unit,
        instrument=instrument,
        components=specs,
        recipes=recipes,
        mask=mask,
        truth_params=truth,
        truth_cmb=truth_cmb,
        output=output,
        config=config,
    )
