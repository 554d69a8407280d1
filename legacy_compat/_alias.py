"""Resolve ``import fgbuster`` (and every ``fgbuster.<module>``) to ``legacy_compat``.

Two mechanisms work together: ``sys.modules`` entries for the package and its seven public
submodules (so modules already imported resolve at once), and a meta-path finder placed
first on ``sys.meta_path`` that maps any other ``fgbuster.X`` to ``legacy_compat.X``.
Neither is installed over a real fgbuster unless the caller asks for it (``force=True``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import warnings

__all__ = ["alias_fgbuster", "unalias_fgbuster", "is_aliased"]

_LOG = logging.getLogger(__name__)

_LEGACY = "legacy_compat"
_TARGET = "fgbuster"
SUBMODULES = (
    "component_model",
    "mixingmatrix",
    "algebra",
    "separation_recipes",
    "observation_helpers",
    "cosmology",
    "visualization",
)


class _ExistingModuleLoader(importlib.abc.Loader):
    """Loader that hands back a module object that already exists."""

    def __init__(self, module):
        self._module = module

    def create_module(self, spec):
        return self._module

    def exec_module(self, module):
        return None


class _FgbusterAliasFinder(importlib.abc.MetaPathFinder):
    """Meta-path finder mapping ``fgbuster[.X]`` to the module ``legacy_compat[.X]``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET and not fullname.startswith(_TARGET + "."):
            return None
        legacy_name = _LEGACY + fullname[len(_TARGET) :]
        try:
            module = importlib.import_module(legacy_name)
        except ModuleNotFoundError as err:
            if err.name == legacy_name:  # no such legacy module: a clear ImportError follows
                return None
            raise
        return importlib.util.spec_from_loader(
            fullname, _ExistingModuleLoader(module), origin=getattr(module, "__file__", None)
        )


def _finder_installed() -> bool:
    return any(isinstance(f, _FgbusterAliasFinder) for f in sys.meta_path)


def is_aliased() -> bool:
    """True when ``import fgbuster`` currently resolves to ``legacy_compat``."""
    return sys.modules.get(_TARGET) is sys.modules.get(_LEGACY) is not None or _finder_installed()


def _real_fgbuster_spec():
    """Spec of a real fgbuster install (ignoring our own alias), or None."""
    current = sys.modules.get(_TARGET)
    if current is not None and current is not sys.modules.get(_LEGACY):
        return current.__spec__ or importlib.machinery.ModuleSpec(_TARGET, None)
    for finder in sys.meta_path:
        if isinstance(finder, _FgbusterAliasFinder) or not hasattr(finder, "find_spec"):
            continue
        try:
            spec = finder.find_spec(_TARGET, None)
        except (ImportError, ValueError, AttributeError):
            continue
        if spec is not None:
            return spec
    return None


def alias_fgbuster(force: bool = False) -> bool:
    """Make ``import fgbuster`` and ``import fgbuster.<module>`` give ``legacy_compat``.

    After this call an unmodified fgbuster script (``from fgbuster import *``,
    ``import fgbuster.separation_recipes as sr``, ``from fgbuster.algebra import W``, ...)
    runs on fgjax. Objects the session imported from a real fgbuster before the call keep
    pointing at it.

    Args:
        force: Alias even when a real fgbuster is installed (or already imported), shadowing
            it for the rest of the session. Without it, an installed fgbuster wins: the call
            warns and changes nothing.

    Returns:
        True if ``fgbuster`` now resolves to ``legacy_compat``, False if a real fgbuster was
        left in place.

    Examples:
        >>> import legacy_compat
        >>> legacy_compat.alias_fgbuster()  # doctest: +SKIP
        True
        >>> import fgbuster  # doctest: +SKIP
        >>> fgbuster is legacy_compat  # doctest: +SKIP
        True
    """
    if not isinstance(force, bool):
        raise TypeError(f"`force` must be a bool, got {type(force).__name__}.")
    spec = _real_fgbuster_spec()
    if spec is not None and not force:
        where = spec.origin or "an earlier import"
        warnings.warn(
            f"A real fgbuster is importable ({where}); `import fgbuster` keeps resolving to "
            "it. Call alias_fgbuster(force=True) (or `python -m legacy_compat --force`) to "
            "use legacy_compat instead.",
            UserWarning,
            stacklevel=2,
        )
        return False

    legacy = importlib.import_module(_LEGACY)
    if spec is not None:
        _LOG.info("Shadowing the real fgbuster at %s with legacy_compat.", spec.origin)
        for name in [n for n in sys.modules if n == _TARGET or n.startswith(_TARGET + ".")]:
            del sys.modules[name]
    sys.modules[_TARGET] = legacy
    for sub in SUBMODULES:
        sys.modules[f"{_TARGET}.{sub}"] = importlib.import_module(f"{_LEGACY}.{sub}")
    if not _finder_installed():
        sys.meta_path.insert(0, _FgbusterAliasFinder())
    importlib.invalidate_caches()
    return True


def unalias_fgbuster() -> None:
    """Undo :func:`alias_fgbuster`: ``import fgbuster`` goes back to the normal search."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _FgbusterAliasFinder)]
    legacy = sys.modules.get(_LEGACY)
    for name in [n for n in sys.modules if n == _TARGET or n.startswith(_TARGET + ".")]:
        module = sys.modules[name]
        if module is legacy or getattr(module, "__name__", "").startswith(_LEGACY + "."):
            del sys.modules[name]
    importlib.invalidate_caches()
