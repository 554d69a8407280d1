"""Loader for the golden fixtures computed by legacy fgbuster 2.0.0 (copied from ../shared/golden)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).parent / "golden"


@lru_cache(maxsize=1)
def manifest() -> dict:
    return json.loads((GOLDEN / "manifest.json").read_text())


def cases(group: str | None = None) -> list[dict]:
    """Manifest entries, optionally only those of one group."""
    return [c for c in manifest()["cases"] if group is None or c["group"] == group]


def load_case(name: str):
    """Return ``(entry, inputs, outputs)`` with the ``in__``/``out__`` prefixes stripped."""
    entry = next(c for c in manifest()["cases"] if c["name"] == name)
    with np.load(GOLDEN / entry["file"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "meta_json"}
    inputs = {k[len("in__"):]: v for k, v in arrays.items() if k.startswith("in__")}
    outputs = {k[len("out__"):]: v for k, v in arrays.items() if k.startswith("out__")}
    truth = {k[len("truth__"):]: v for k, v in arrays.items() if k.startswith("truth__")}
    return entry, inputs, outputs, truth


def check(entry: dict, key: str, actual, expected, extra_rtol=0.0) -> None:
    """Compare one output at the manifest's tolerance for it.

    Where fgbuster returned a partially broadcast array (a derivative that does not involve
    every parameter comes back without the axes of the missing ones, or as a Python int),
    the expected array is broadcast to our documented full shape. ``extra_rtol`` (broadcast
    against the arrays) widens the tolerance where the legacy value carries a known rounding
    error of its own; every use says why.
    """
    info = entry["arrays"]["out__" + key]
    actual = np.asarray(actual, dtype=float)
    expected = np.asarray(expected, dtype=float)
    if expected.shape != actual.shape:
        if np.broadcast_shapes(expected.shape, actual.shape) != actual.shape:
            raise AssertionError(
                f"{entry['name']}: {key}: shape {actual.shape}, expected {expected.shape}"
            )
        expected = np.broadcast_to(expected, actual.shape)
    rtol = info["rtol"] + np.asarray(extra_rtol)
    with np.errstate(invalid="ignore"):
        ok = np.abs(actual - expected) <= info["atol"] + rtol * np.abs(expected)
    ok |= np.isnan(actual) & np.isnan(expected)
    ok |= actual == expected  # equal infinities / UNSEEN
    # Report what is outside the (possibly element-wise) tolerance with NumPy's message.
    np.testing.assert_allclose(
        actual[~ok], expected[~ok], rtol=info["rtol"], atol=info["atol"], equal_nan=True,
        err_msg=f"{entry['name']}: {key}",
    )


def bandpasses(inputs: dict, n_bands: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(inputs[f"bp__{k}__nu"], inputs[f"bp__{k}__w"]) for k in range(n_bands)]
