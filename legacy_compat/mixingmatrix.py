"""Drop-in for ``fgbuster.mixingmatrix``: ``MixingMatrix`` with NumPy outputs in float64."""

from __future__ import annotations

import jax
import numpy as np

import fgjax

from ._convert import to_numpy, x64

__all__ = ["MixingMatrix"]


def _numpy_closure(jax_fn):
    """Wrap a pure JAX closure so it takes and returns NumPy in float64; keep the JAX twin
    as ``.jax`` so legacy_compat's algebra can trace through it. The NumPy form is compiled
    (once per input shape): scripts call evaluators over and over, e.g. inside SciPy loops."""
    compiled = jax.jit(jax_fn)

    def f(param_array):
        with jax.enable_x64(True):
            return to_numpy(compiled(np.asarray(param_array, dtype=np.float64)))

    f.jax = jax_fn
    return f


class MixingMatrix(fgjax.MixingMatrix):
    """fgbuster's ``MixingMatrix(*components)`` (a tuple of components)."""

    @x64
    def eval(self, nu, *params):
        return super().eval(nu, *params)

    @x64
    def diff(self, nu, *params):
        return super().diff(nu, *params)

    @x64
    def diff_diff(self, nu, *params):
        return self._legacy_blocks(super().diff_diff(nu, *params))

    @staticmethod
    def _legacy_blocks(blocks):
        # fgbuster flattens the same-component blocks to (-1, 1); cross blocks stay (1, 1).
        if blocks is None:
            return None
        return [[b if b.shape == (1, 1) else b.reshape(-1, 1) for b in row] for row in blocks]

    def evaluator(self, nu, shape=(-1,)):
        return _numpy_closure(super().evaluator(nu, shape))

    def diff_evaluator(self, nu, unpack=(lambda x: x.reshape((-1,)))):
        return _numpy_closure(super().diff_evaluator(nu, unpack))

    def diff_diff_evaluator(self, nu, unpack=(lambda x: x.reshape((-1,)))):
        jax_fn = super().diff_diff_evaluator(nu, unpack)
        f = _numpy_closure(lambda x: self._legacy_blocks(jax_fn(x)))
        f.jax = jax_fn
        return f
