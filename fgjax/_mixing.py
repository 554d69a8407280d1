"""The mixing matrix: components -> A(params), shape (..., n_freq, n_comp)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ._bandpass import as_frequencies, integrate
from ._sed import AbstractComponent, _common_float_dtype

__all__ = ["MixingMatrix"]


class MixingMatrix(tuple):
    """An ordered collection of components; column ``c`` of ``A`` is the SED of component ``c``.

    The parameters of all components are concatenated in component order; their labels are
    ``'<ComponentName>.<param>'`` (``'Dust.beta_d'``), as in fgbuster.

    Two ways to evaluate it:

    * fgbuster's: ``eval(nu, *params)``, ``diff``, ``diff_diff`` and the ``*_evaluator``
      closures of a flat parameter array;
    * the pure JAX form used by the likelihood: ``mm(nu, x)`` with ``x`` of shape
      ``(..., n_param)`` returns ``A`` of shape ``(..., n_freq, n_comp)``; it is jittable,
      vmappable and differentiable in ``x``.

    Examples:
        >>> from fgjax import CMB, Dust, Synchrotron
        >>> mm = MixingMatrix(CMB(), Dust(150.0), Synchrotron(150.0))
        >>> mm.params
        ['Dust.beta_d', 'Dust.temp', 'Synchrotron.beta_pl']
        >>> mm(jnp.array([30.0, 150.0, 353.0]), jnp.array(mm.defaults)).shape
        (3, 3)
    """

    def __new__(cls, *components):
        for i, c in enumerate(components):
            if not isinstance(c, AbstractComponent):
                raise TypeError(
                    f"MixingMatrix: argument {i} must be a component (e.g. fgjax.Dust), "
                    f"got {type(c).__name__}."
                )
        if not components:
            raise ValueError("MixingMatrix needs at least one component.")
        return tuple.__new__(cls, components)

    def __init__(self, *components):
        self._comp_of_param = [i for i, c in enumerate(self) for _ in range(c.n_param)]
        starts = np.cumsum([0] + [c.n_param for c in self])
        self._slices = [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:], strict=True)]

    @property
    def params(self) -> list[str]:
        """Parameter labels, ``'<Component>.<param>'``, in evaluation order."""
        return [f"{c.name}.{p}" for c in self for p in c.params]

    @property
    def components(self) -> list[str]:
        """Names of the components, in column order."""
        return [c.name for c in self]

    @property
    def n_param(self) -> int:
        """Total number of free parameters."""
        return len(self._comp_of_param)

    @property
    def n_comp(self) -> int:
        """Number of components (columns of ``A``)."""
        return len(self)

    @property
    def defaults(self) -> list[float]:
        """Default values of all the parameters, in ``params`` order."""
        return [d for c in self for d in c.defaults]

    @property
    def reciprocal(self) -> tuple[bool, ...]:
        """For each parameter, whether its component's SED depends on it only through its
        reciprocal (``AbstractComponent.reciprocal_params``): the batched Newton fits step
        in ``1/x`` for those."""
        return tuple(p in c.reciprocal_params for c in self for p in c.params)

    @property
    def comp_of_param(self) -> list[int]:
        """Index of the component (column) each parameter acts on."""
        return list(self._comp_of_param)

    @property
    def comp_of_dB(self) -> list:
        """For each parameter, the index expression of its column (``np.s_[..., c]``)."""
        return [np.s_[..., c] for c in self._comp_of_param]

    # -- evaluation ------------------------------------------------------------------------
    def _prepare(self, nu, params):
        if len(params) != self.n_param:
            raise TypeError(
                f"MixingMatrix takes {self.n_param} parameters {self.params}, got {len(params)}."
            )
        freqs = as_frequencies(nu)
        dtype = _common_float_dtype(freqs.nu, *params)
        params = tuple(jnp.asarray(p, dtype=dtype) for p in params)
        try:
            shape = jnp.broadcast_shapes(*(p.shape for p in params)) if params else ()
        except ValueError:
            raise ValueError(
                f"MixingMatrix: parameters with shapes {[tuple(p.shape) for p in params]} "
                "do not broadcast together."
            ) from None
        return freqs, params, shape, dtype

    def eval(self, nu, *params):
        """Mixing matrix, shape ``broadcast(*params).shape + (n_freq, n_comp)``."""
        freqs, params, shape, dtype = self._prepare(nu, params)
        n_sample = freqs.nu.shape[0]
        columns = []
        for c, sl in zip(self, self._slices, strict=True):
            col = jnp.broadcast_to(c.sed(freqs, *params[sl]), shape + (n_sample,))
            columns.append(integrate(col, freqs))
        return jnp.stack(columns, axis=-1)

    def __call__(self, nu, x):
        """Pure form: ``x`` ``(..., n_param)`` -> ``A`` ``(..., n_freq, n_comp)``."""
        x = jnp.asarray(x)
        if x.shape[-1:] != (self.n_param,):
            raise ValueError(
                f"`x` must have shape (..., {self.n_param}) for parameters {self.params}, "
                f"got {x.shape}."
            )
        return MixingMatrix.eval(self, nu, *(x[..., i] for i in range(self.n_param)))

    def taylor(self, nu, x, second: bool = True):
        """``A`` and its parameter derivatives at ``x`` (pure form), fgbuster's compressed way.

        Each parameter moves one column (``comp_of_param``), so its derivatives are vectors.

        Args:
            nu: Frequencies or bandpasses.
            x: ``(..., n_param)``.
            second: Also return the second derivatives.

        Returns:
            ``A`` ``(..., n_freq, n_comp)``; ``A_dB`` ``(..., n_param, n_freq)``, the
            derivative of column ``comp_of_param[i]``; ``A_dBdB``
            ``(..., n_param, n_param, n_freq)`` (zero for parameters of different
            components), or None when ``second`` is False. Forward-mode autodiff of the
            SEDs, batched over the leading axes.
        """
        freqs = as_frequencies(nu)
        x = jnp.asarray(x)
        A = self(freqs, x)
        lead, n_param, n_freq = x.shape[:-1], self.n_param, A.shape[-2]
        A = jnp.broadcast_to(A, lead + A.shape[-2:])  # also without free parameter
        if n_param == 0:
            zeros = jnp.zeros(lead + (0, n_freq), A.dtype)
            return A, zeros, (jnp.zeros(lead + (0, 0, n_freq), A.dtype) if second else None)
        flat = x.reshape((-1, n_param))
        n_sample = freqs.nu.shape[0]
        firsts, seconds = [], []
        for c, sl in zip(self, self._slices, strict=True):
            if c.n_param == 0:
                continue

            def column(t, c=c):  # this component's column, from its own parameters only
                sed = c.sed(freqs, *(t[i] for i in range(c.n_param)))
                return integrate(jnp.broadcast_to(sed, (n_sample,)), freqs)

            own = flat[:, sl]
            firsts.append(jax.vmap(jax.jacfwd(column))(own))  # (n, n_freq, k)
            if second:
                seconds.append((sl, jax.vmap(jax.jacfwd(jax.jacfwd(column)))(own)))  # forward only
        A_dB = jnp.moveaxis(jnp.concatenate(firsts, -1), 1, -1)  # (n, n_param, n_freq)
        A_dB = A_dB.reshape(lead + (n_param, n_freq))
        if not second:
            return A, A_dB, None
        A_dBdB = jnp.zeros((flat.shape[0], n_param, n_param, n_freq), A.dtype)
        for sl, h in seconds:  # zero between parameters of different components
            A_dBdB = A_dBdB.at[:, sl, sl].set(jnp.moveaxis(h, 1, -1))
        A_dBdB = A_dBdB.reshape(lead + (n_param, n_param, n_freq))
        return A, A_dB, A_dBdB

    def diff(self, nu, *params) -> list | None:
        """Derivative of ``A`` with respect to each parameter: its component's column only.

        Returns:
            A list of ``n_param`` arrays of shape ``broadcast(params) + (n_freq, 1)``, or
            ``None`` without parameters (as fgbuster).
        """
        if not params and self.n_param == 0:
            return None
        freqs, params, _, _ = self._prepare(nu, params)
        res = []
        for c, sl in zip(self, self._slices, strict=True):
            res += [integrate(g, freqs)[..., None] for g in c.sed_diff(freqs, *params[sl])]
        return res

    def diff_diff(self, nu, *params) -> list | None:
        """Second derivatives ``[i][j]``: the ``(..., n_freq, 1)`` column when both parameters
        act on the same component, ``zeros((1, 1))`` otherwise."""
        if not params and self.n_param == 0:
            return None
        freqs, params, _, dtype = self._prepare(nu, params)
        n = self.n_param
        res = [[jnp.zeros((1, 1), dtype=dtype) for _ in range(n)] for _ in range(n)]
        for c, sl in zip(self, self._slices, strict=True):
            if c.n_param == 0:
                continue
            block = c.sed_diff_diff(freqs, *params[sl])
            for i in range(c.n_param):
                for j in range(c.n_param):
                    res[sl.start + i][sl.start + j] = integrate(block[i][j], freqs)[..., None]
        return res

    def evaluator(self, nu, shape=(-1,)) -> Callable:
        """``f(x)``: reshape the flat parameter array ``x`` to ``shape`` and call :meth:`eval`
        with its first axis as the parameters (fgbuster's convention). Pure and jittable."""
        freqs = as_frequencies(nu)

        def f(param_array):
            p = jnp.asarray(param_array).reshape(shape)
            # The class's own (pure JAX) methods: subclasses may wrap eval for NumPy users.
            return MixingMatrix.eval(self, freqs, *(p[i] for i in range(p.shape[0])))

        return f

    def diff_evaluator(self, nu, unpack=(lambda x: x.reshape((-1,)))) -> Callable:
        """``f(x)``: :meth:`diff` at the parameters ``unpack(x)``."""
        freqs = as_frequencies(nu)

        def f(param_array):
            p = unpack(jnp.asarray(param_array))
            return MixingMatrix.diff(self, freqs, *(p[i] for i in range(p.shape[0])))

        return f

    def diff_diff_evaluator(self, nu, unpack=(lambda x: x.reshape((-1,)))) -> Callable:
        """``f(x)``: :meth:`diff_diff` at the parameters ``unpack(x)``."""
        freqs = as_frequencies(nu)

        def f(param_array):
            p = unpack(jnp.asarray(param_array))
            return MixingMatrix.diff_diff(self, freqs, *(p[i] for i in range(p.shape[0])))

        return f
