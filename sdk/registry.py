"""Named components by kind, and discovery of plugins through the ``edgesplit.plugins`` entry-point group.

Components register with ``@register(kind, name)`` and are built with ``create(kind, name, **params)``.
Entry points are listed without importing them; they are imported on the first lookup that needs them,
and a plugin that fails to import is recorded (name, distribution, cause) without hiding the others. A plugin that
declares what it needs (``requires("torch", extra="train")``) and lacks it is *unavailable*, with an install hint.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterator, TypeVar

from .errors import PluginError

__all__ = [
    "KINDS",
    "ENTRY_POINT_GROUP",
    "BrokenPlugin",
    "UnavailablePlugin",
    "register",
    "create",
    "get",
    "available",
    "broken_plugins",
    "unavailable_plugins",
    "load_plugins",
    "requires",
    "isolated",
]

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("backbone", "student", "bottleneck", "loss", "exporter", "backend", "codec", "estimator")
ENTRY_POINT_GROUP = "edgesplit.plugins"
# A full student is a backbone trained as is, so kind ``student`` (what the registry lists under it: students built
# around another model, split, quantized or binary) also finds every backbone by name.
_ALSO_FOUND_IN: dict[str, str] = {"student": "backbone"}
# torch-free modules of the core whose components register on import, like a plugin's
_BUILTIN_MODULES: tuple[str, ...] = ("edgesplit.codec", "edgesplit.runtime.backends")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin entry point that could not be imported."""

    name: str
    value: str
    distribution: str
    error: str


@dataclass(frozen=True)
class UnavailablePlugin:
    """A plugin entry point whose declared dependency is not installed (e.g. torch on a device)."""

    name: str
    value: str
    distribution: str
    hint: str  # "needs torch (pip install edgesplit[train])"


class _MissingDependency(PluginError, ModuleNotFoundError):
    """Raised by ``requires`` while a plugin module imports; discovery records the plugin as unavailable. Also a
    ``ModuleNotFoundError`` naming the package, so callers that catch the import failure keep working."""

    def __init__(self, package: str, hint: str) -> None:
        super().__init__(f"{package}: {hint}")
        self.name = package
        self.hint = hint


def requires(package: str, *, extra: str, distribution: str = "edgesplit") -> None:
    """Declare, first thing in a plugin module, a package it cannot import without: if ``package`` is not
    installed, the import stops with a ``PluginError`` saying ``pip install distribution[extra]``, and discovery
    lists the plugin as unavailable instead of broken."""
    if importlib.util.find_spec(package) is None:
        raise _MissingDependency(package, f"needs {package} (pip install {distribution}[{extra}])")


_lock = threading.RLock()
_components: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
_origins: dict[tuple[str, str], str] = {}
_broken: list[BrokenPlugin] = []
_unavailable: list[UnavailablePlugin] = []
_loaded_entry_points: set[str] = set()
_discovered = False


def _check_kind(kind: str) -> None:
    if kind not in _components:
        raise PluginError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")


def register(kind: str, name: str, *, override: bool = False) -> Callable[[F], F]:
    """Register the decorated factory as component ``name`` of ``kind``.

    A second registration under the same name is a ``PluginError`` unless ``override=True``.
    """
    _check_kind(kind)
    if not name or not isinstance(name, str):
        raise PluginError(f"component name must be a non-empty string, got {name!r}")

    def decorator(factory: F) -> F:
        origin = f"{getattr(factory, '__module__', '?')}.{getattr(factory, '__qualname__', '?')}"
        with _lock:
            existing = _components[kind].get(name)
            if existing is not None and existing is not factory and not override:
                raise PluginError(
                    f"{kind} {name!r} is already registered by {_origins[(kind, name)]}; "
                    f"{origin} cannot register it again (pass override=True to replace it on purpose)"
                )
            _components[kind][name] = factory
            _origins[(kind, name)] = origin
        return factory

    return decorator


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_plugins(*, force: bool = False) -> list[BrokenPlugin]:
    """Import every plugin entry point not yet imported; returns the plugins that failed."""
    global _discovered
    with _lock:
        if _discovered and not force:
            return list(_broken)
        for module in _BUILTIN_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:  # a missing optional dependency, not a module still to be written
                    log.warning("edgesplit built-in %s failed to load: %s", module, exc)
        for ep in _entry_points():
            key = f"{ep.name}={ep.value}"
            if key in _loaded_entry_points:
                continue
            _loaded_entry_points.add(key)
            dist = ep.dist.name if getattr(ep, "dist", None) is not None else "?"
            try:
                obj = ep.load()
                if callable(obj) and not isinstance(obj, type) and not hasattr(obj, "__path__"):
                    obj()  # an entry point may name a setup function instead of a module
            except _MissingDependency as exc:
                _unavailable.append(UnavailablePlugin(ep.name, ep.value, dist, exc.hint))
                log.debug("edgesplit plugin %r is unavailable: it %s", ep.name, exc.hint)
            except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the others
                broken = BrokenPlugin(ep.name, ep.value, dist, f"{type(exc).__name__}: {exc}")
                _broken.append(broken)
                log.warning("edgesplit plugin %r (%s, from %s) failed to load: %s", ep.name, ep.value, dist, broken.error)
        _discovered = True
        return list(_broken)


def broken_plugins() -> list[BrokenPlugin]:
    """Plugins whose import failed, after discovery (unavailable ones, missing a declared dependency, excluded)."""
    load_plugins()
    return list(_broken)


def unavailable_plugins() -> list[UnavailablePlugin]:
    """Plugins whose declared dependency (``requires``) is not installed, after discovery."""
    load_plugins()
    return list(_unavailable)


def available(kind: str) -> list[str]:
    """Sorted names of every component of ``kind``, plugins included."""
    _check_kind(kind)
    load_plugins()
    return sorted(_components[kind])


def get(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` of ``kind`` (for ``student``: or the backbone ``name``, a full student);
    plugins are imported only if it is not built in."""
    _check_kind(kind)
    factory = _components[kind].get(name)
    if factory is None:
        load_plugins()
        factory = _components[kind].get(name)
    also = _ALSO_FOUND_IN.get(kind)
    if factory is None and also is not None:
        factory = _components[also].get(name)
    if factory is None:
        names = sorted(_components[kind])
        close = difflib.get_close_matches(name, names + (sorted(_components[also]) if also else []), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        known = ", ".join(names) if names else "none"
        if also is not None:
            known += f"; and every {also} as a full {kind}"
        broken = "".join(f"\n  plugin {b.name!r} ({b.distribution}) failed to load: {b.error}" for b in _broken)
        unavailable = "".join(f"\n  plugin {u.name!r} ({u.distribution}) is not loaded: it {u.hint}"
                              for u in _unavailable)
        raise PluginError(f"unknown {kind} {name!r}{hint} (known {kind}s: {known}){broken}{unavailable}")
    return factory


def create(kind: str, name: str, **params: Any) -> Any:
    """Build component ``name`` of ``kind``; parameters given as ``None`` are dropped so defaults apply."""
    factory = get(kind, name)
    params = {k: v for k, v in params.items() if v is not None}
    try:
        return factory(**params)
    except TypeError as exc:
        raise PluginError(f"cannot build {kind} {name!r} with parameters {sorted(params)}: {exc}") from exc


@contextmanager
def isolated() -> Iterator[None]:
    """A block whose registrations and plugin discovery are undone on exit (tests, notebooks).

    The installed plugins are discovered first and stay registered; inside, discovery starts afresh, so a faked
    ``importlib.metadata.entry_points`` is read, and components registered there are forgotten afterwards.
    """
    global _discovered
    with _lock:
        load_plugins()  # a plugin module imports once per process: keep what it registered
        saved = ({kind: dict(names) for kind, names in _components.items()}, dict(_origins), list(_broken),
                 list(_unavailable), set(_loaded_entry_points))
        _reset_for_tests()
    try:
        yield
    finally:
        with _lock:
            components, origins, broken, unavailable, loaded = saved
            for kind in _components:
                _components[kind].clear()
                _components[kind].update(components[kind])
            _origins.clear()
            _origins.update(origins)
            _broken[:] = broken
            _unavailable[:] = unavailable
            _loaded_entry_points.clear()
            _loaded_entry_points.update(loaded)
            _discovered = True


def _reset_for_tests() -> None:
    """Forget discovered plugins (tests fake ``entry_points``)."""
    global _discovered
    with _lock:
        _discovered = False
        _broken.clear()
        _unavailable.clear()
        _loaded_entry_points.clear()
