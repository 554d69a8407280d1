"""Conversion helpers shared by the legacy_compat modules: x64 context and NumPy outputs."""

from __future__ import annotations

import functools

import jax
import numpy as np


def to_numpy(obj):
    """Recursively turn JAX arrays into NumPy arrays (lists, tuples and dicts kept)."""
    if isinstance(obj, jax.Array):
        return np.asarray(obj)
    if isinstance(obj, list):
        return [to_numpy(o) for o in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(to_numpy(o) for o in obj)
    if isinstance(obj, dict):
        return type(obj)((k, to_numpy(v)) for k, v in obj.items())
    return obj


def x64(fn):
    """Run ``fn`` in JAX's float64 mode (a context, not a global switch) and return NumPy."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.enable_x64(True):
            return to_numpy(fn(*args, **kwargs))

    return wrapper
