"""Spectral energy distributions: SymPy expressions lambdified into JAX.

An :class:`AnalyticComponent` parses a closed-form SED of ``nu`` (GHz) with SymPy,
substitutes the fixed parameters, sorts the free ones by name (as fgbuster does) and
lambdifies the expression into ``jax.numpy``. :func:`make_broadcastable` then fixes the
shape of every evaluation to ``broadcast(*params).shape + (n_freq,)``, also when SymPy
returns a bare constant or an expression that does not depend on ``nu``.

Derivatives. Production path: JAX forward-mode autodiff (``jax.jvp``) of the lambdified
value. It is exact (no finite differences), composes with ``jit``/``vmap``/``grad`` so the
likelihood can be differentiated through the mixing matrix, and it costs one lambdified
function per component instead of ``1 + n + n^2`` SymPy derivatives to build. SymPy's
symbolic derivatives stay the independent oracle in the tests (as are fgbuster's, through
the golden fixtures).
"""

from __future__ import annotations

import ast
import functools
import warnings
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import sympy
from sympy.codegen.cfunctions import expm1 as _sympy_expm1
from sympy.codegen.cfunctions import log1p as _sympy_log1p
from sympy.parsing.sympy_parser import parse_expr

from ._bandpass import Frequencies, as_frequencies, integrate
from ._constants import H_OVER_K, TCMB, K_RJ_to_K_CMB_expression, parse_units

__all__ = [
    "AbstractComponent",
    "AnalyticComponent",
    "CMB",
    "Dust",
    "FreeFree",
    "ModifiedBlackBody",
    "PowerLaw",
    "Synchrotron",
    "ThermalSZ",
    "make_broadcastable",
    "parse_sed_expression",
]

# Functions an SED expression may call. `expm1` and `log1p` are SymPy's real functions
# (so they differentiate); everything else keeps its usual SymPy meaning.
_FUNCTIONS: dict[str, object] = {
    "exp": sympy.exp,
    "expm1": _sympy_expm1,
    "log": sympy.log,
    "log1p": _sympy_log1p,
    "sqrt": sympy.sqrt,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "sinh": sympy.sinh,
    "cosh": sympy.cosh,
    "tanh": sympy.tanh,
    "atan": sympy.atan,
    "Abs": sympy.Abs,
    "abs": sympy.Abs,
}
_CONSTANTS: dict[str, object] = {"pi": sympy.pi, "E": sympy.E}
# Names SymPy gives a special meaning that a user may reach for as a symbol.
_RESERVED = frozenset({"I", "oo", "zoo", "nan", "S", "N", "O", "Q"})
_JAX_FUNCTIONS = {"expm1": jnp.expm1, "log1p": jnp.log1p}


def parse_sed_expression(analytic_expr: str) -> sympy.Expr:
    """Parse an SED expression of ``nu`` (GHz) into SymPy.

    Every bare name becomes a plain symbol (so ``beta`` or ``gamma`` are parameters, not
    SymPy's functions), ``pi`` and ``E`` are the constants, and only the functions in
    ``exp, expm1, log, log1p, sqrt, sin, cos, tan, sinh, cosh, tanh, atan, abs`` may be called.

    Raises:
        ValueError: the expression does not parse, calls an unknown function, or uses a
            function name or a reserved SymPy name (``I, oo, zoo, nan, S, N, O, Q``) as a
            symbol.
    """
    if not isinstance(analytic_expr, str):
        raise TypeError(f"`analytic_expr` must be a string, got {type(analytic_expr).__name__}.")
    try:
        tree = ast.parse(analytic_expr.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(
            f"`analytic_expr` does not parse: {analytic_expr!r} ({err.msg})."
        ) from None
    called = set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
                func = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
                raise ValueError(
                    f"`analytic_expr` calls unknown function {func!r}; allowed: "
                    f"{', '.join(sorted(_FUNCTIONS))}."
                )
            called.add(id(node.func))
        elif not isinstance(
            node,
            (
                ast.Expression,
                ast.BinOp,
                ast.UnaryOp,
                ast.Name,
                ast.Constant,
                ast.Load,
                ast.operator,
                ast.unaryop,
            ),
        ):
            raise ValueError(
                f"`analytic_expr` may only use arithmetic, names and function calls; "
                f"found {type(node).__name__} in {analytic_expr!r}."
            )
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and id(node) not in called:
            if node.id in _FUNCTIONS:
                raise ValueError(
                    f"`analytic_expr` uses the function name {node.id!r} as a symbol; rename it."
                )
            if node.id in _RESERVED:
                raise ValueError(
                    f"`analytic_expr` uses {node.id!r}, a reserved SymPy name; rename it."
                )
            names.add(node.id)
    local = dict(_FUNCTIONS)
    local.update({n: _CONSTANTS.get(n) or sympy.Symbol(n) for n in names})
    expr = parse_expr(analytic_expr, local_dict=local)
    return sympy.sympify(expr)


def _common_float_dtype(*arrays) -> np.dtype:
    dtypes = [jnp.asarray(a).dtype for a in arrays if not isinstance(a, (int, float))]
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    dtype = np.result_type(*floats) if floats else jnp.result_type(float)
    return jax.dtypes.canonicalize_dtype(dtype)


def make_broadcastable(fn: Callable) -> Callable:
    """Wrap a lambdified ``fn(nu, *params)`` so it returns ``broadcast(params) + nu.shape``.

    SymPy's lambdified functions return whatever the expression gives: a Python number for a
    constant, an array without the frequency axis when the expression does not involve
    ``nu``, or a partially broadcast array. The wrapper gives every parameter a trailing
    frequency axis, calls ``fn`` once, and broadcasts the result to the full shape. The dtype
    is the common floating dtype of ``nu`` and the parameters (Python scalars follow it).

    Args:
        fn: ``fn(nu, *params)`` acting elementwise with NumPy broadcasting.

    Returns:
        ``f(nu, *params)`` with ``nu`` of shape ``(n_freq,)`` and parameters that broadcast
        together to ``S``; output of shape ``S + (n_freq,)``.

    Raises:
        ValueError: the parameters do not broadcast together.

    Examples:
        >>> f = make_broadcastable(lambda nu, a: 1)
        >>> f(jnp.ones(3), jnp.zeros(2)).shape
        (2, 3)
    """

    def broadcast_fn(nu, *params):
        nu = jnp.asarray(nu)
        dtype = _common_float_dtype(nu, *params)
        params = [jnp.asarray(p, dtype=dtype) for p in params]
        try:
            shape = jnp.broadcast_shapes(*(p.shape for p in params)) if params else ()
        except ValueError:
            raise ValueError(
                f"the parameters' shapes {[tuple(p.shape) for p in params]} do not broadcast "
                "together."
            ) from None
        params = [jnp.broadcast_to(p, shape)[..., None] for p in params]
        nu = nu.astype(dtype).reshape((1,) * len(shape) + nu.shape)
        out = jnp.asarray(fn(nu, *params), dtype=dtype)
        return jnp.broadcast_to(out, shape + nu.shape[-1:])

    return broadcast_fn


def _one_hot_tangents(params, i):
    return tuple(jnp.ones_like(p) if k == i else jnp.zeros_like(p) for k, p in enumerate(params))


class AbstractComponent:
    """Interface of an SED: ``eval``, ``diff``, ``diff_diff`` at frequencies or bandpasses.

    Subclasses provide :meth:`sed` (the pure evaluation on :class:`Frequencies`), ``params``
    and ``defaults``; derivatives come from JAX autodiff of :meth:`sed`.
    """

    _params: list[str]
    _defaults: list[float] | None = None

    @property
    def params(self) -> list[str]:
        """Names of the free parameters (sorted alphabetically)."""
        return list(self._params)

    @property
    def n_param(self) -> int:
        """Number of free parameters."""
        return len(self._params)

    @property
    def name(self) -> str:
        """Name used in mixing-matrix parameter labels (``'Dust.beta_d'``)."""
        return type(self).__name__

    @property
    def reciprocal_params(self) -> list[str]:
        """Free parameters that the SED depends on only through their reciprocal (none
        here; an :class:`AnalyticComponent` finds them in its expression). The batched
        Newton fits step in ``1/x`` for these: a black-body temperature enters as
        ``exp(h nu / k T)``, nearly linear in ``1/T`` at CMB frequencies, so the likelihood
        is far closer to quadratic in ``1/T`` than in ``T``."""
        return []

    @property
    def defaults(self) -> list[float]:
        """Default (reference) values of the free parameters, in ``params`` order."""
        if self._defaults is None or len(self._defaults) != self.n_param:
            warnings.warn(
                f"{self.name}: no defaults were set for parameters {self.params}; returning ones.",
                stacklevel=2,
            )
            return [1.0] * self.n_param
        return list(self._defaults)

    @defaults.setter
    def defaults(self, new_defaults: Sequence[float]) -> None:
        new_defaults = list(new_defaults)
        if len(new_defaults) != self.n_param:
            raise ValueError(
                f"`defaults` must have {self.n_param} values (for {self.params}), "
                f"got {len(new_defaults)}."
            )
        self._defaults = new_defaults

    # -- pure core -------------------------------------------------------------------------
    def sed(self, freqs: Frequencies, *params):
        """SED at ``freqs`` (no checks): shape ``broadcast(params) + (n_freq,)``."""
        raise NotImplementedError

    def sed_diff(self, freqs: Frequencies, *params) -> list:
        """First derivatives with respect to every parameter (JAX forward mode)."""
        return [
            jax.jvp(lambda *p: self.sed(freqs, *p), tuple(params), _one_hot_tangents(params, i))[1]
            for i in range(len(params))
        ]

    def sed_diff_diff(self, freqs: Frequencies, *params) -> list[list]:
        """Second derivatives, a symmetric list of lists (forward over forward)."""
        n = len(params)

        def first(i):
            return lambda *p: jax.jvp(lambda *q: self.sed(freqs, *q), p, _one_hot_tangents(p, i))[1]

        out = [[None] * n for _ in range(n)]
        for i in range(n):
            for j in range(i, n):
                out[i][j] = jax.jvp(first(i), tuple(params), _one_hot_tangents(params, j))[1]
                out[j][i] = out[i][j]
        return out

    # -- checked API -----------------------------------------------------------------------
    def _checked(self, nu, params):
        if len(params) != self.n_param:
            raise TypeError(
                f"{self.name} takes {self.n_param} parameter(s) {self.params}, got {len(params)}."
            )
        freqs = as_frequencies(nu)
        dtype = _common_float_dtype(freqs.nu, *params)
        params = tuple(jnp.asarray(p, dtype=dtype) for p in params)
        try:
            jnp.broadcast_shapes(*(p.shape for p in params))
        except ValueError:
            raise ValueError(
                f"{self.name}: parameters {self.params} with shapes "
                f"{[tuple(p.shape) for p in params]} do not broadcast together."
            ) from None
        return freqs, params

    def eval(self, nu, *params):
        """Evaluate the SED.

        Args:
            nu: Frequencies in GHz, shape ``(n_freq,)``, or a list of ``(frequencies,
                weights)`` bandpasses (integrated with the trapezoid rule over Hz).
            *params: One value per free parameter (``params`` order); arrays broadcast.

        Returns:
            Array of shape ``broadcast(*params).shape + (n_freq,)``.
        """
        freqs, params = self._checked(nu, params)
        return integrate(self.sed(freqs, *params), freqs)

    def diff(self, nu, *params) -> list:
        """First derivatives, one array per parameter, each shaped like :meth:`eval`."""
        freqs, params = self._checked(nu, params)
        return [integrate(d, freqs) for d in self.sed_diff(freqs, *params)]

    def diff_diff(self, nu, *params) -> list[list]:
        """Second derivatives ``[i][j]``, each shaped like :meth:`eval`."""
        freqs, params = self._checked(nu, params)
        if not params:
            return [[]]
        return [[integrate(d, freqs) for d in row] for row in self.sed_diff_diff(freqs, *params)]


class AnalyticComponent(AbstractComponent):
    """SED given by a closed-form expression of ``nu`` (GHz), differentiable by JAX.

    Args:
        analytic_expr: SymPy-parsable expression; ``nu`` is the frequency in GHz.
        **fixed_params: Values of parameters to fix; a parameter left out or set to ``None``
            is free. Free parameters are sorted by name.

    Examples:
        >>> comp = AnalyticComponent("(nu / nu0) ** beta", nu0=30.0)
        >>> comp.params
        ['beta']
        >>> comp.eval(jnp.array([30.0, 60.0]), 2.0).tolist()
        [1.0, 4.0]
    """

    def __init__(self, analytic_expr: str, **fixed_params):
        self._analytic_expr = analytic_expr
        self._fixed_params = dict(fixed_params)
        expr = parse_sed_expression(analytic_expr)
        subs = {}
        for key, value in fixed_params.items():
            if value is None:
                continue
            try:
                subs[sympy.Symbol(key)] = float(value)
            except (TypeError, ValueError):
                raise TypeError(
                    f"fixed parameter {key!r} must be a real number or None, got {value!r}."
                ) from None
            if not np.isfinite(subs[sympy.Symbol(key)]):
                raise ValueError(f"fixed parameter {key!r} must be finite, got {value!r}.")
        self._expr = expr.subs(subs)
        self._params = sorted(str(s) for s in self._expr.free_symbols if str(s) != "nu")
        self._symbols = sympy.symbols(["nu", *self._params])  # a list, nu first
        # Numeric constants (sqrt(3)/pi, ...) become floats so they take the inputs' dtype;
        # integer exponents stay integers (exact powers).
        numeric = sympy.nfloat(self._expr, exponent=False)
        self._lambda = sympy.lambdify(self._symbols, numeric, modules=[_JAX_FUNCTIONS, "jax"])
        self._value = make_broadcastable(self._lambda)

    @property
    def expr(self) -> sympy.Expr:
        """The SymPy expression, fixed parameters substituted."""
        return self._expr

    @functools.cached_property
    def _reciprocal(self) -> tuple[str, ...]:
        u = sympy.Dummy("u", positive=True)

        def only_reciprocal(name):
            # x -> 1/u leaves no negative power of u: x appears only as 1/x
            e = self._expr.subs(sympy.Symbol(name), 1 / u)
            return not any(
                isinstance(a, sympy.Pow) and a.base == u and a.exp.is_negative is not False
                for a in sympy.preorder_traversal(e)
            )

        return tuple(p for p in self._params if only_reciprocal(p))

    @property
    def reciprocal_params(self) -> list[str]:
        """Free parameters that appear in the expression only as ``1/x`` (e.g. ``temp`` in
        ``exp(h nu / (k temp))``): the batched Newton fits step in their reciprocal."""
        return list(self._reciprocal)

    def sed(self, freqs: Frequencies, *params):
        return self._value(freqs.nu, *params)

    def _set_default_of_free_symbols(self, **values: float) -> None:
        self._defaults = [values[p] for p in self._params]

    def __repr__(self) -> str:
        return repr(self._expr)


def _units_factor(units: str, normalised_at: str | None) -> str:
    """SymPy factor that converts a K_RJ SED to ``units`` (ratio at ``nu0`` if normalised)."""
    base, _ = parse_units(units)
    if base == "K_RJ":
        return ""
    factor = K_RJ_to_K_CMB_expression("nu")
    if normalised_at is not None:
        factor += " / " + K_RJ_to_K_CMB_expression(normalised_at)
    return " * " + factor


class ModifiedBlackBody(AnalyticComponent):
    """Modified black body (grey body), normalised to 1 at ``nu0``.

    $(\\nu/\\nu_0)^{1+\\beta_d} (e^{h\\nu_0/kT} - 1) / (e^{h\\nu/kT} - 1)$ in K_RJ, times the
    K_RJ -> K_CMB ratio between ``nu`` and ``nu0`` for K_CMB units.

    Args:
        nu0: Reference frequency in GHz.
        temp: Dust temperature in K; ``None`` leaves it free (default 20 K).
        beta_d: Spectral index; ``None`` leaves it free (default 1.54).
        units: ``K_CMB`` or ``K_RJ`` (``uK_``/``mK_`` prefixes accepted: the SED is a ratio).

    Examples:
        >>> ModifiedBlackBody(nu0=353.0).params
        ['beta_d', 'temp']
    """

    _REF_BETA = 1.54
    _REF_TEMP = 20.0

    def __init__(self, nu0, temp=None, beta_d=None, units="K_CMB"):
        expr = (
            "(exp(nu0 / temp * h_over_k) - 1) / (exp(nu / temp * h_over_k) - 1)"
            " * (nu / nu0)**(1 + beta_d)"
        ) + _units_factor(units, "nu0")
        super().__init__(expr, nu0=nu0, temp=temp, beta_d=beta_d, h_over_k=H_OVER_K)
        self._set_default_of_free_symbols(beta_d=self._REF_BETA, temp=self._REF_TEMP)


class Dust(ModifiedBlackBody):
    """Alias of :class:`ModifiedBlackBody` (parameters are labelled ``Dust.*``)."""


class PowerLaw(AnalyticComponent):
    """Power law with optional running, normalised to 1 at ``nu0``.

    $(\\nu/\\nu_0)^{\\beta + r \\log(\\nu/\\nu_{pivot})}$ in K_RJ.

    Args:
        nu0: Reference frequency in GHz.
        beta_pl: Spectral index; ``None`` leaves it free (default -3).
        nu_pivot: Pivot frequency of the running in GHz; ``None`` leaves it free (default 70)
            when the running is not zero.
        running: Curvature; ``0.`` (default) drops ``nu_pivot``, ``None`` leaves it free.
        units: ``K_CMB`` or ``K_RJ`` (``uK_``/``mK_`` prefixes accepted).
    """

    _REF_BETA = -3.0
    _REF_RUN = 0.0
    _REF_NU_PIVOT = 70.0

    def __init__(self, nu0, beta_pl=None, nu_pivot=None, running=0.0, units="K_CMB"):
        if nu_pivot is None and running is None:
            warnings.warn(
                "PowerLaw: both `nu_pivot` and `running` are free; they are nearly degenerate.",
                stacklevel=2,
            )
        expr = "(nu / nu0)**(beta_pl + running * log(nu / nu_pivot))" + _units_factor(units, "nu0")
        super().__init__(expr, nu0=nu0, nu_pivot=nu_pivot, beta_pl=beta_pl, running=running)
        self._set_default_of_free_symbols(
            beta_pl=self._REF_BETA, running=self._REF_RUN, nu_pivot=self._REF_NU_PIVOT
        )


class Synchrotron(PowerLaw):
    """Alias of :class:`PowerLaw` (parameters are labelled ``Synchrotron.*``)."""


class CMB(AnalyticComponent):
    """Cosmic microwave background: 1 in K_CMB, the K_CMB -> K_RJ factor in K_RJ.

    Args:
        units: ``K_CMB`` or ``K_RJ`` (``uK_``/``mK_`` prefixes accepted).
    """

    def __init__(self, units="K_CMB"):
        base, _ = parse_units(units)
        expr = "1" if base == "K_CMB" else "1 / " + K_RJ_to_K_CMB_expression("nu")
        super().__init__(expr)
        self._defaults = []


class ThermalSZ(AnalyticComponent):
    """Thermal Sunyaev-Zeldovich effect, $T_{CMB} (x \\coth(x/2) - 4)$ with $x = h\\nu/kT_{CMB}$.

    Not normalised: the output is the temperature change per unit Compton-y in ``units``
    (default ``uK_CMB``, as in fgbuster).

    Args:
        units: ``K_CMB``, ``mK_CMB``, ``uK_CMB``, ``K_RJ``, ``mK_RJ`` or ``uK_RJ``.
    """

    def __init__(self, units="uK_CMB"):
        base, scale = parse_units(units)
        x = f"(nu * {H_OVER_K!r} / {TCMB!r})"
        expr = f"{TCMB!r} * {scale!r} * ({x} * (exp({x}) + 1) / expm1({x}) - 4)"
        if base == "K_RJ":
            expr += " / " + K_RJ_to_K_CMB_expression("nu")
        super().__init__(expr)
        self._defaults = []


class FreeFree(AnalyticComponent):
    """Free-free (bremsstrahlung) emission, Draine (2011) / Planck 2015 X, Table 4.

    $10^6\\,T_e\\,(1 - e^{-\\tau})$ in uK_RJ (times the K_RJ -> K_CMB factor for K_CMB), with
    optical depth $\\tau = 0.05468\\, T_e^{-3/2} \\nu^{-2}\\, 10^{\\log EM}\\, g_{ff}$ and Gaunt
    factor $g_{ff} = \\log(\\exp(5.960 - \\sqrt3/\\pi \\log(\\nu\\, T_4^{-3/2})) + e)$,
    $T_4 = T_e / 10^4$ K.

    Args:
        logEM: log10 of the emission measure in cm^-6 pc; ``None``: free (default 0).
        Te: Electron temperature in K; ``None``: free (default 7000 K).
        units: ``K_CMB`` or ``K_RJ`` (``uK_``/``mK_`` prefixes accepted, as in fgbuster).
    """

    _REF_LOGEM = 0.0
    _REF_TE = 7000.0

    def __init__(self, logEM=None, Te=None, units="K_CMB"):
        gaunt = "log(exp(5.960 - (sqrt(3) / pi) * log(nu * (Te * 1e-4)**(-3 / 2))) + exp(1))"
        tau = f"(0.05468 * Te**(-3 / 2) / nu**2 * 10**logEM * {gaunt})"
        # -expm1(-tau) rather than 1 - exp(-tau): tau is ~1e-11 at CMB frequencies, where the
        # difference keeps only ~5 significant digits (fgbuster's form).
        expr = f"-1e6 * Te * expm1(-{tau})" + _units_factor(units, None)
        super().__init__(expr, logEM=logEM, Te=Te)
        self._set_default_of_free_symbols(logEM=self._REF_LOGEM, Te=self._REF_TE)
