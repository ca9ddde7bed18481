"""Registries that users extend: the prior and guide families, the score networks.

A configuration names a factory by its registered name (``"lognormal"``) or by an import path
(``"mypkg.priors:log_mixture"``). A factory object given directly is recorded by the name it is
registered under, else by its import path, so that a run's ``config.toml`` and checkpoint say
what built the model and ``load`` / ``--resume`` build it again; an object that has neither (a
lambda, a function defined inside another) is refused, naming the way to record it.

Factories are called with the arguments they declare (:func:`bind`), so a family takes only
the parameters it uses: ``def gamma(log_mean, shape)``, ``def lognormal(log_mean, sigma)``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable


class RegistryError(ValueError):
    """A factory name, import path or object that cannot be resolved or recorded."""


class Registry:
    """Factories of one kind (``"prior family"``, say) by name; the built-ins are registered the
    same way as users' own."""

    def __init__(self, kind: str, register_with: str) -> None:
        self.kind, self.register_with = kind, register_with
        self._factories: dict[str, Callable] = {}

    def register(self, name: str, factory: Callable | None = None, replace: bool = False):
        """Register ``factory`` under ``name`` (as a decorator when ``factory`` is omitted).

        An existing name keeps its factory unless ``replace`` is set, or the new one has the
        same import path (a module imported again, a notebook cell run again).
        """
        if factory is None:
            return functools.partial(self.register, name, replace=replace)
        if not isinstance(name, str) or not name.isidentifier():
            raise RegistryError(f"a {self.kind} name must be an identifier, got {name!r}")
        if not callable(factory):
            raise RegistryError(f"the {self.kind} {name!r} must be callable, got {factory!r}")
        known = self._factories.get(name)
        same = known is factory or (known is not None and _path_of(known) == _path_of(factory))
        if known is not None and not same and not replace:
            raise RegistryError(
                f"{self.kind} {name!r} is already registered ({_path_of(known)}); pass "
                "replace=True to replace it"
            )
        self._factories[name] = factory
        return factory

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._factories)

    def resolve(self, spec: str | Callable) -> Callable:
        """The factory named by ``spec`` (a registered name or ``"package.module:attribute"``),
        or ``spec`` itself if it is callable."""
        if callable(spec):
            return spec
        if not isinstance(spec, str):
            raise RegistryError(f"a {self.kind} is a name or a callable, got {spec!r}")
        if ":" in spec:
            return self._imported(spec)
        if spec not in self._factories:
            raise RegistryError(
                f"unknown {self.kind} {spec!r}: registered are {', '.join(self._factories)}; "
                f"register yours with {self.register_with}(name, factory) or give an import "
                "path 'package.module:name'"
            )
        return self._factories[spec]

    def name_of(self, spec: str | Callable) -> str:
        """The name that records ``spec`` in a configuration: a name or import path as given
        (checked); for an object, a built-in's registered name, else its import path (which any
        process can import), else (defined in ``__main__``) its registered name."""
        if isinstance(spec, str):
            self.resolve(spec)
            return spec
        names = [name for name, factory in self._factories.items() if factory is spec]
        path = _path_of(spec)
        if names and path.startswith("pyro_bamf."):
            return names[0]
        try:
            found = None if path.startswith("__main__:") else self._imported(path)
        except RegistryError:
            found = None
        if found is spec:
            return path
        if names:
            return names[0]
        raise RegistryError(
            f"the {self.kind} {path} cannot be recorded for save, load and resume: "
            f"register it with {self.register_with}(name, factory), or define it at the "
            "top level of an importable module"
        )
        return path

    def _imported(self, path: str) -> Callable:
        module_name, _, attribute = path.partition(":")
        try:
            found = importlib.import_module(module_name)
            for part in attribute.split("."):
                found = getattr(found, part)
        except (ImportError, AttributeError, ValueError) as err:
            raise RegistryError(
                f"the {self.kind} {path!r} cannot be imported ({type(err).__name__}: {err})"
            ) from None
        if not callable(found):
            raise RegistryError(f"the {self.kind} {path!r} is not callable")
        return found


def _path_of(factory: Callable) -> str:
    """``"module:qualified.name"`` of ``factory`` (of its function, for a partial)."""
    if isinstance(factory, functools.partial):
        return f"functools.partial({_path_of(factory.func)})"
    module = getattr(factory, "__module__", None) or "?"
    name = getattr(factory, "__qualname__", None) or type(factory).__qualname__
    return f"{module}:{name}"


def _parameters(factory: Callable) -> list[inspect.Parameter] | None:
    """``factory``'s parameters, or ``None`` when it has no signature to read (a builtin)."""
    try:
        return list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None


def accepts(factory: Callable, name: str) -> bool:
    """Whether ``factory`` takes the keyword argument ``name`` (or any, by ``**kwargs``)."""
    parameters = _parameters(factory) or []
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == name and p.kind in keywords) for p in parameters
    )


def bind(factory: Callable, kind: str, at_call: tuple[str, ...] = (), **available) -> Callable:
    """``factory`` with the keyword arguments of ``available`` that it declares (all of them
    if it takes ``**kwargs``); a parameter it requires that is neither available nor passed at
    each call (``at_call``) is an error."""
    parameters = _parameters(factory)
    if parameters is None:
        return factory
    bound = factory.keywords if isinstance(factory, functools.partial) else {}  # kept as bound
    available = {key: value for key, value in available.items() if key not in bound}
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return functools.partial(factory, **available)
    keywords = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = (p for p in parameters[1:] if p.kind in keywords and p.name not in bound)
    chosen, missing = {}, []
    for parameter in named:
        if parameter.name in available:
            chosen[parameter.name] = available[parameter.name]
        elif parameter.default is parameter.empty and parameter.name not in at_call:
            missing.append(parameter.name)
    if missing:
        raise RegistryError(
            f"the {kind} {_path_of(factory)} requires {', '.join(missing)}, which BAMF does not "
            f"supply (it supplies {', '.join(available)}): give it a default, or register a "
            "functools.partial that binds it"
        )
    return functools.partial(factory, **chosen)
