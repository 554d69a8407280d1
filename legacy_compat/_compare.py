"""Run a script on the real fgbuster and on legacy_compat, and compare every public call.

``python -m legacy_compat --compare script.py [args]`` runs ``script.py`` twice, each time
in a fresh interpreter that executes this file as a program (``--record``): once with
``import fgbuster`` giving the installed fgbuster, once with it aliased to legacy_compat.
Before the script starts, the recorder replaces every public function of the fgbuster
namespaces (the package and its submodules) with a wrapper that saves the numeric content
of the result of each outermost call (calls made from inside another recorded call are not
recorded, so the two backends' internals need not match) to ``call_NNNN.npz`` in call
order, with an ``index.json``. :func:`compare_recordings` then pairs the calls (same name,
same order) and reports, field by field, the largest absolute and relative differences.

This file only imports the standard library and NumPy at the top, so the run on the real
fgbuster never imports legacy_compat or JAX.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import inspect
import json
import os
import runpy
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

UNSEEN = -1.6375e30  # healpy.UNSEEN: masked entries must match exactly
SUBMODULES = (
    "component_model",
    "mixingmatrix",
    "algebra",
    "separation_recipes",
    "observation_helpers",
    "cosmology",
    "visualization",
)
EXIT_OK, EXIT_DIFFERENT, EXIT_RUN_FAILED = 0, 1, 2
_EXIT_NO_FGBUSTER = 3  # the recorder could not import a real fgbuster
_LEGACY_ROOT = str(Path(__file__).resolve().parent.parent)


# ----------------------------------------------------------------------------- running


def run_script(path: str, args: list[str], replace_first_path: bool = False) -> None:
    """Run ``path`` as ``__main__`` with ``sys.argv`` as ``python path args`` would set it.

    The script's directory becomes ``sys.path[0]``, as for ``python path``; with
    ``replace_first_path`` it replaces the current first entry (the working directory that
    ``python -m`` put there) instead of being inserted before it.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"can't open file {path!r}: no such file")
    sys.argv = [path, *args]
    script_dir = os.path.dirname(os.path.abspath(path))
    if replace_first_path and sys.path:
        sys.path[0] = script_dir
    else:
        sys.path.insert(0, script_dir)
    runpy.run_path(path, run_name="__main__")


# --------------------------------------------------------------------------- recording


def _flatten(obj, prefix: str, out: dict, skipped: list, depth: int = 0) -> None:
    """Collect the numeric content of ``obj`` into ``out`` under dotted/indexed keys."""
    if depth > 8:
        skipped.append(prefix)
        return
    if isinstance(obj, np.ma.MaskedArray):
        obj = np.ma.filled(obj.astype(np.float64) if obj.dtype.kind in "iub" else obj, np.nan)
    if isinstance(obj, (bool, int, float, complex, np.generic)) and not isinstance(obj, str):
        obj = np.asarray(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "biufc":
            out[prefix or "value"] = obj
        elif obj.dtype.kind == "O":
            for i, item in enumerate(obj.ravel().tolist()):
                _flatten(item, f"{prefix}[{i}]", out, skipped, depth + 1)
        else:
            skipped.append(prefix or "value")
        return
    sep = "." if prefix else ""
    if isinstance(obj, dict):  # includes scipy's OptimizeResult
        for key in sorted(obj, key=str):
            _flatten(obj[key], f"{prefix}{sep}{key}", out, skipped, depth + 1)
    elif isinstance(obj, (list, tuple)):
        try:  # a list of equal-shape numbers is one array in both backends' eyes
            arr = np.asarray(obj)
        except (ValueError, TypeError):
            arr = None
        if arr is not None and arr.dtype.kind in "biufc" and arr.size:
            out[prefix or "value"] = arr
            return
        for i, item in enumerate(obj):
            _flatten(item, f"{prefix}[{i}]", out, skipped, depth + 1)
    elif isinstance(obj, types.SimpleNamespace):
        for key in sorted(vars(obj)):
            _flatten(getattr(obj, key), f"{prefix}{sep}{key}", out, skipped, depth + 1)
    elif hasattr(obj, "columns") and hasattr(obj, "to_numpy"):  # pandas.DataFrame
        for col in obj.columns:
            _flatten(obj[col].to_numpy(), f"{prefix}{sep}{col}", out, skipped, depth + 1)
    elif hasattr(obj, "__array__") and not callable(obj):  # JAX arrays and friends
        _flatten(np.asarray(obj), prefix, out, skipped, depth + 1)
    elif obj is None or isinstance(obj, str):
        return
    else:
        skipped.append(f"{prefix or 'value'} ({type(obj).__name__})")


class Recorder:
    """Wraps public functions and saves the numeric content of each outermost call."""

    def __init__(self, out_dir: Path, backend: str):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.backend = backend
        self.calls: list[dict] = []
        self._depth = 0

    def wrap(self, name: str, fn):
        recorder = self

        @functools.wraps(fn)
        def recorded(*args, **kwargs):
            if recorder._depth:
                return fn(*args, **kwargs)
            recorder._depth += 1
            try:
                result = fn(*args, **kwargs)
            except Exception as err:
                recorder._depth -= 1
                recorder._save(name, None, f"{type(err).__name__}: {err}")
                raise
            recorder._depth -= 1
            recorder._save(name, result, None)
            return result

        recorded.__wrapped_by_recorder__ = fn
        return recorded

    def _save(self, name, result, error) -> None:
        index = len(self.calls)
        fields: dict = {}
        skipped: list = []
        if error is None:
            _flatten(result, "", fields, skipped)
        file = f"call_{index:04d}.npz"
        # npz member names are file names: keep the keys, map them to safe names
        safe = {f"f{i}": np.asarray(v) for i, v in enumerate(fields.values())}
        np.savez(self.out_dir / file, **safe)
        self.calls.append(
            {
                "name": name,
                "file": file,
                "fields": {k: f"f{i}" for i, k in enumerate(fields)},
                "skipped": skipped,
                "error": error,
            }
        )
        self.write_index()

    def write_index(self, **extra) -> None:
        payload = {"backend": self.backend, "calls": self.calls, **extra}
        (self.out_dir / "index.json").write_text(json.dumps(payload, indent=1))


def _public_functions(module, roots: tuple[str, ...]):
    # __all__ plus every other public name: fgbuster scripts also call helpers that are
    # not in __all__ (observation_helpers.standardize_instrument, algebra.verbose_callback)
    names = list(getattr(module, "__all__", []))
    names += [n for n in vars(module) if not n.startswith("_") and n not in names]
    for name in names:
        obj = getattr(module, name, None)
        if not (inspect.isfunction(obj) or isinstance(obj, functools.partial)):
            continue
        owner = getattr(obj, "__module__", "") or ""
        if owner.split(".")[0] in roots:
            yield name, obj


def install_recorder(recorder: Recorder, package, roots: tuple[str, ...]) -> int:
    """Replace the public functions of ``package`` and its submodules with recording wrappers.

    A function reachable under several names (``fgbuster.basic_comp_sep`` and
    ``fgbuster.separation_recipes.basic_comp_sep``) gets one wrapper, named after the first
    submodule (in fgbuster's module order) that holds it. Returns the number wrapped.
    """
    namespaces = []
    for sub in SUBMODULES:
        try:
            namespaces.append((sub, importlib.import_module(f"{package.__name__}.{sub}")))
        except ImportError:  # e.g. fgbuster.visualization needs the `corner` package
            continue
    namespaces.append(("", package))
    wrappers: dict[int, object] = {}
    for label, module in namespaces:
        for name, fn in list(_public_functions(module, roots)):
            if id(fn) not in wrappers:
                wrappers[id(fn)] = recorder.wrap(f"{label}.{name}" if label else name, fn)
            setattr(module, name, wrappers[id(fn)])
    return len(wrappers)


def _record_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="legacy_compat._compare --record")
    parser.add_argument("--record", choices=("real", "legacy"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    opts = parser.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or os.curdir) == here:
        sys.path.pop(0)  # run as a file: legacy_compat/ itself must not be a search root
    recorder = Recorder(Path(opts.out), opts.record)
    if opts.record == "legacy":
        if _LEGACY_ROOT not in sys.path:
            sys.path.insert(0, _LEGACY_ROOT)
        import legacy_compat

        legacy_compat.alias_fgbuster(force=True)
        roots: tuple[str, ...] = ("legacy_compat", "fgjax")
    else:
        roots = ("fgbuster",)
    try:
        package = importlib.import_module("fgbuster")
    except ImportError as err:
        recorder.write_index(fatal=f"cannot import fgbuster: {err}")
        sys.stderr.write(f"legacy_compat --compare: cannot import fgbuster: {err}\n")
        return _EXIT_NO_FGBUSTER
    if opts.record == "real" and package.__name__ != "fgbuster":
        recorder.write_index(fatal="`import fgbuster` did not give a real fgbuster")
        return _EXIT_NO_FGBUSTER
    n_wrapped = install_recorder(recorder, package, roots)
    recorder.write_index(fgbuster_file=getattr(package, "__file__", None), n_wrapped=n_wrapped)
    exit_code = 0
    try:
        run_script(opts.script, opts.args)
    except SystemExit as exc:
        code = exc.code
        exit_code = code if isinstance(code, int) else (0 if code is None else 1)
        if not isinstance(code, int) and code is not None:
            sys.stderr.write(f"{code}\n")
    finally:
        recorder.write_index(
            fgbuster_file=getattr(package, "__file__", None),
            n_wrapped=n_wrapped,
            exit_code=exit_code,
        )
    return exit_code


# -------------------------------------------------------------------------- comparing


def _load(run_dir: Path):
    index = json.loads((Path(run_dir) / "index.json").read_text())
    return index


def _fields(run_dir: Path, call: dict) -> dict:
    with np.load(Path(run_dir) / call["file"], allow_pickle=False) as z:
        return {key: z[member] for key, member in call["fields"].items()}


def compare_field(ref: np.ndarray, new: np.ndarray, rtol: float, atol: float) -> dict:
    """Compare one field: ``ref`` from fgbuster, ``new`` from legacy_compat.

    UNSEEN and NaN entries must coincide; elsewhere the difference is measured against the
    largest |value| of ``ref`` (``max_rel``), so near-zero entries of residual maps do not
    dominate. Integer and boolean fields must be equal.
    """
    row: dict = {"shape": list(ref.shape), "note": ""}
    if ref.shape != new.shape:
        try:
            shape = np.broadcast_shapes(ref.shape, new.shape)
        except ValueError:
            row.update(status="FAIL", note=f"shape {ref.shape} vs {new.shape}")
            row.update(max_abs=float("nan"), max_rel=float("nan"))
            return row
        row["note"] = f"shape {ref.shape} vs {new.shape}, compared broadcast"
        ref, new = np.broadcast_to(ref, shape), np.broadcast_to(new, shape)
    if ref.size == 0:
        row.update(max_abs=0.0, max_rel=0.0, status="ok")
        return row
    if ref.dtype.kind in "biu" and new.dtype.kind in "biu":
        n_bad = int(np.count_nonzero(ref != new))
        diff = np.abs(ref.astype(np.float64) - new.astype(np.float64))
        row.update(max_abs=float(diff.max()), max_rel=float("nan") if n_bad else 0.0)
        row.update(status="FAIL" if n_bad else "ok")
        if n_bad:
            row["note"] = (row["note"] + f"; {n_bad} entries differ").lstrip("; ")
        return row
    ref_c = ref.astype(np.complex128 if ref.dtype.kind == "c" else np.float64)
    new_c = new.astype(np.complex128 if new.dtype.kind == "c" else np.float64)
    special_ref = np.isnan(ref_c) | (ref_c == UNSEEN)
    special_new = np.isnan(new_c) | (new_c == UNSEEN)
    mismatched = (special_ref != special_new) | (
        special_ref & special_new & ~((np.isnan(ref_c) & np.isnan(new_c)) | (ref_c == new_c))
    )
    valid = ~(special_ref | special_new)
    diff = np.abs(ref_c - new_c)[valid]
    finite_ref = np.abs(ref_c[valid])
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(finite_ref.max()) if finite_ref.size else 0.0
    if not np.all(np.isfinite(diff)):
        max_rel = float("inf")
    elif max_abs == 0.0:
        max_rel = 0.0
    else:
        max_rel = max_abs / scale if scale > 0 else float("inf")
    bad = bool(np.any(mismatched)) or not (max_abs <= atol + rtol * scale)
    if np.any(mismatched):
        n = int(np.count_nonzero(mismatched))
        row["note"] = (row["note"] + f"; {n} masked/NaN entries differ").lstrip("; ")
    row.update(max_abs=max_abs, max_rel=max_rel, status="FAIL" if bad else "ok")
    return row


def compare_recordings(real_dir, legacy_dir, rtol: float = 1e-5, atol: float = 0.0):
    """Compare two recordings call by call; return ``(ok, rows)``.

    Each row is a dict with ``call`` (index), ``name``, ``field``, ``shape``, ``max_abs``,
    ``max_rel``, ``status`` (``ok``, ``FAIL`` or ``extra``) and ``note``. Fields only
    legacy_compat returns (deliberate additions such as ``Sigma`` of adaptive fits) are
    ``extra`` and do not fail; fields missing from legacy_compat do.
    """
    if rtol < 0 or atol < 0:
        raise ValueError(f"`rtol` and `atol` must be non-negative, got {rtol}, {atol}.")
    real, legacy = _load(real_dir), _load(legacy_dir)
    rows: list[dict] = []
    ok = True

    def add(**row):
        nonlocal ok
        base = dict(field="", shape=[], max_abs=float("nan"), max_rel=float("nan"), note="")
        base.update(row)
        rows.append(base)
        ok = ok and base["status"] != "FAIL"

    # Pair the calls by name in order; a call made by one backend only is reported (and the
    # rest stays aligned) instead of shifting every later pair.
    names_real = [c["name"] for c in real["calls"]]
    names_new = [c["name"] for c in legacy["calls"]]
    matcher = difflib.SequenceMatcher(a=names_real, b=names_new, autojunk=False)
    pairs = []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            pairs += [(i, j) for i, j in zip(range(i1, i2), range(j1, j2), strict=True)]
        else:
            pairs += [(i, None) for i in range(i1, i2)] + [(None, j) for j in range(j1, j2)]
    for i, j in pairs:
        if i is None or j is None:
            only = "legacy_compat" if i is None else "fgbuster"
            call = legacy["calls"][j] if i is None else real["calls"][i]
            add(
                call=i if i is not None else j,
                name=call["name"],
                status="FAIL",
                note=f"call #{j if i is None else i} made only on {only}",
            )
            continue
        c_real, c_new = real["calls"][i], legacy["calls"][j]
        if c_real["error"] or c_new["error"]:
            same = bool(c_real["error"] and c_new["error"]) and (
                c_real["error"].split(":")[0] == c_new["error"].split(":")[0]
            )
            add(
                call=i,
                name=c_real["name"],
                status="ok" if same else "FAIL",
                note=f"fgbuster: {c_real['error'] or 'returned'}; "
                f"legacy_compat: {c_new['error'] or 'returned'}",
            )
            continue
        f_real, f_new = _fields(real_dir, c_real), _fields(legacy_dir, c_new)
        if not f_real and not f_new:
            add(call=i, name=c_real["name"], status="ok", note="no numeric result")
        for key in list(f_real) + [k for k in f_new if k not in f_real]:
            if key not in f_new:
                add(
                    call=i,
                    name=c_real["name"],
                    field=key,
                    shape=list(f_real[key].shape),
                    status="FAIL",
                    note="missing from legacy_compat",
                )
            elif key not in f_real:
                add(
                    call=i,
                    name=c_real["name"],
                    field=key,
                    shape=list(f_new[key].shape),
                    status="extra",
                    note="only legacy_compat returns it",
                )
            else:
                row = compare_field(f_real[key], f_new[key], rtol, atol)
                add(call=i, name=c_real["name"], field=key, **row)
    return ok, rows


def format_report(rows: list[dict], rtol: float, atol: float) -> str:
    """Plain-text table of :func:`compare_recordings` rows."""
    header = (
        f"{'#':>4}  {'call':<44} {'field':<22} {'shape':<16} {'max_abs':>10} "
        f"{'max_rel':>10}  status"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        shape = "x".join(str(s) for s in r["shape"]) or "()"
        lines.append(
            f"{r['call']:>4}  {r['name'][:44]:<44} {r['field'][:22]:<22} {shape[:16]:<16} "
            f"{r['max_abs']:>10.3g} {r['max_rel']:>10.3g}  {r['status']}"
            + (f"  ({r['note']})" if r["note"] else "")
        )
    n_fail = sum(r["status"] == "FAIL" for r in rows)
    n_calls = len({r["call"] for r in rows})
    lines.append(
        f"{n_calls} calls compared, {n_fail} failing field(s) "
        f"(max_abs > atol + rtol * max|fgbuster value|; rtol={rtol:g}, atol={atol:g})."
    )
    return "\n".join(lines)


def compare_main(
    script: str,
    args: list[str],
    rtol: float = 1e-5,
    atol: float = 0.0,
    keep: str | None = None,
    python: str | None = None,
    out=None,
) -> int:
    """Run ``script`` on fgbuster and on legacy_compat, print the report, return exit code."""
    out = out or sys.stdout
    if not os.path.isfile(script):
        out.write(f"legacy_compat --compare: can't open file {script!r}\n")
        return EXIT_RUN_FAILED
    python = python or sys.executable
    with tempfile.TemporaryDirectory(prefix="legacy_compat_compare_") as tmp:
        root = Path(keep) if keep else Path(tmp)
        codes = {}
        for backend in ("real", "legacy"):
            env = dict(os.environ)
            if backend == "legacy":
                env["PYTHONPATH"] = os.pathsep.join(
                    p for p in (_LEGACY_ROOT, env.get("PYTHONPATH")) if p
                )
            label = "fgbuster" if backend == "real" else "legacy_compat"
            out.write(f"=== running {script} on {label} ===\n")
            out.flush()
            cmd = [
                python,
                os.path.abspath(__file__),
                "--record",
                backend,
                "--out",
                str(root / backend),
                script,
                *args,
            ]
            codes[backend] = subprocess.run(cmd, env=env, check=False).returncode
        if codes["real"] == _EXIT_NO_FGBUSTER:
            out.write(
                "legacy_compat --compare: no real fgbuster is importable here; "
                "install it (or put it on PYTHONPATH) to compare.\n"
            )
            return EXIT_RUN_FAILED
        ok, rows = compare_recordings(root / "real", root / "legacy", rtol=rtol, atol=atol)
        out.write(format_report(rows, rtol, atol) + "\n")
        if keep:
            out.write(f"recordings kept in {root}\n")
        failed = [b for b, c in codes.items() if c != 0]
        if failed:
            out.write(
                "the script failed on "
                + " and ".join("fgbuster" if b == "real" else "legacy_compat" for b in failed)
                + f" (exit codes {codes})\n"
            )
            return EXIT_RUN_FAILED
        return EXIT_OK if ok else EXIT_DIFFERENT


if __name__ == "__main__":
    sys.exit(_record_main(sys.argv[1:]))
