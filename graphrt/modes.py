"""The mode registry: decode modes by name, and the model loader, as the ops are registered.

The core knows no mode by name. A mode is a factory
``factory(block_length=None, threshold=None) -> Policy`` registered under its
name with :func:`register_mode`; :func:`graphrt.compile` and
:func:`graphrt.generate` look a name up here. The built-in modes (``ar``,
``diffusion``, ``self-spec``, ``self-spec-quadratic``, ...) are registered by
:mod:`graphrt.frontends.policies.builtin`, and the loader of checkpoints behind
:func:`graphrt.load` by :mod:`graphrt.frontends.models.loader`, through
:func:`register_loader`.

How the core finds them without importing ``graphrt.frontends``: the layers
above declare themselves as *plugins* in ``pyproject.toml``::

    [project.entry-points."graphrt.plugins"]
    frontends = "graphrt.frontends:register"

and the first lookup of a mode or of the loader calls every installed
``graphrt.plugins`` entry point once (:func:`load_plugins`). A plugin of your
own registers its modes the same way, or you call :func:`register_mode`
directly::

    register_mode("my-mode", lambda block_length=None, threshold=None: my_policy(block_length))
    graphrt.generate(model, "Hello", mode="my-mode")
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from graphrt.policy import Policy

__all__ = ["ModeFactory", "check_mode", "get_loader", "get_mode", "load_plugins", "mode_names",
           "register_loader", "register_mode"]

ModeFactory = Callable[..., Policy]
"""``factory(block_length=None, threshold=None) -> Policy``."""

PLUGIN_GROUP = "graphrt.plugins"
"""The entry-point group whose ``register()`` callables fill these registries."""

_MODES: dict[str, ModeFactory] = {}
_CHECKS: dict[str, Callable[[Any], None]] = {}
_LOADER: list[Callable[..., Any]] = []
_PLUGINS_LOADED: list[str] = []
_LOCK = threading.RLock()


def register_mode(name: str, factory: ModeFactory, *, check: Callable[[Any], None] | None = None,
                  replace: bool = False) -> None:
    """Register a decode mode under ``name``.

    Parameters
    ----------
    name:
        The mode's name in the API and the command line.
    factory:
        ``factory(block_length=None, threshold=None) -> Policy``.
    check:
        ``check(model) -> None``: raises ``ValueError`` when the mode cannot run on ``model``
        (a :class:`graphrt.api.Model` or a backbone), e.g. a mode that drafts with mask tokens
        on a checkpoint without one.
    replace:
        Allow replacing a registered mode.

    Raises
    ------
    ValueError
        ``name`` is registered already (and ``replace`` is false).
    """
    if name in _MODES and not replace and _MODES[name] is not factory:
        raise ValueError(f"register_mode: mode {name!r} is already registered")
    _MODES[name] = factory
    if check is not None:
        _CHECKS[name] = check
    else:
        _CHECKS.pop(name, None)


def check_mode(name: str, model: Any) -> None:
    """Run mode ``name``'s registered check against ``model`` (nothing when it has none)."""
    get_mode(name)
    check = _CHECKS.get(name)
    if check is not None:
        check(model)


def get_mode(name: str) -> ModeFactory:
    """The factory of mode ``name``.

    Raises
    ------
    ValueError
        No such mode; the message lists the registered ones.
    """
    load_plugins()
    factory = _MODES.get(name)
    if factory is None:
        hint = "" if _MODES else (f" (no {PLUGIN_GROUP!r} plugin is installed: the built-in modes come with "
                                  f"graphrt.frontends; reinstall graphrt with `pip install -e .`)")
        raise ValueError(f"mode: expected one of {tuple(_MODES)}, found {name!r}{hint}")
    return factory


def mode_names() -> tuple[str, ...]:
    """The registered mode names, in registration order."""
    load_plugins()
    return tuple(_MODES)


def register_loader(loader: Callable[..., Any]) -> None:
    """Register the function behind :func:`graphrt.load` (``loader(path, **options) -> Model``)."""
    _LOADER[:] = [loader]


def get_loader() -> Callable[..., Any]:
    """The registered model loader.

    Raises
    ------
    RuntimeError
        No plugin registered one.
    """
    load_plugins()
    if not _LOADER:
        raise RuntimeError(f"load: expected a model loader registered by a {PLUGIN_GROUP!r} plugin, found none "
                           f"(graphrt.frontends registers it; reinstall graphrt with `pip install -e .`)")
    return _LOADER[0]


def load_plugins() -> None:
    """Call every installed ``graphrt.plugins`` entry point once (later calls, and calls a plugin makes
    while it registers, return at once)."""
    if _PLUGINS_LOADED:
        return
    with _LOCK:
        if _PLUGINS_LOADED:
            return
        _PLUGINS_LOADED.append("")  # loading: a lookup from inside a plugin's register() sees what is there
        from importlib.metadata import entry_points

        for entry in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
            entry.load()()
            _PLUGINS_LOADED.append(entry.name)
