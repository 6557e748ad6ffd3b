"""Verifier registry: names -> importable ``"module:function"`` paths.

Workers are fresh interpreters (never forked), so a verifier must be importable by path.
Built-ins are registered by path; ``register(name, fn)`` stores ``fn.__module__:__qualname__``
(so module-level functions of any importable module, including a test module, work), and any
``"module:function"`` string can be passed directly as the verifier name.

A verifier registered with ``isolated=True`` (``math``: sympy's parser evaluates text) runs only
in isolated workers (:func:`reason_jax.verifiers.isolation.isolate_worker`), never in the
calling process: the pool gives it workers of its own, and calling it through :func:`get`
scores the sample on the default pool.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

from .base import compose

_REGISTRY: dict[str, str] = {
    "math": "reason_jax.verifiers.math_verifier:verify",
    "countdown": "reason_jax.verifiers.countdown:verify",
    "code": "reason_jax.verifiers.code_verifier:verify",
}
# Paths that only ever run in isolated workers.
_ISOLATED: set[str] = {"reason_jax.verifiers.math_verifier:verify"}
_LOADED: dict[str, Callable] = {}


def register(name: str, target: "str | Callable", *, isolated: bool = False) -> str:
    """Registers a verifier under ``name``; ``target`` is a callable or ``"module:function"``.

    Returns the import path. The callable must be a module-level function of an importable
    module (not ``__main__``, not a lambda or closure): workers import it by path.
    ``isolated=True``: it runs only in isolated workers (its module is imported there, as the
    calling user, before the worker isolates itself; a ``prepare`` attribute of the function,
    if any, is called then too).
    """
    if callable(target):
        mod, qual = target.__module__, target.__qualname__
        if mod == "__main__" or "<" in qual:
            raise ValueError(f"verifier {target!r} is not importable by path; define it at "
                             "module level in an importable module")
        path = f"{mod}:{qual}"
    else:
        path = str(target)
        if ":" not in path:
            raise ValueError("expected 'module:function'")
    _REGISTRY[name] = path
    if isolated:
        _ISOLATED.add(path)
    return path


def is_isolated(path: str) -> bool:
    return path in _ISOLATED


def names() -> list[str]:
    return sorted(_REGISTRY)


def resolve_path(name: str) -> str:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        return name
    raise KeyError(f"unknown verifier {name!r}; known: {names()}")


def load(path: str) -> Callable:
    fn = _LOADED.get(path)
    if fn is None:
        mod, _, attr = path.partition(":")
        obj: Any = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
        fn = _LOADED[path] = obj
    return fn


class Verifier:
    """A registered verifier. ``verifier(completion, record, **options)`` scores one sample
    in-process (no timeout enforcement; an isolated verifier: on the default pool) and returns
    the info dict (with ``reward``)."""

    def __init__(self, name: str):
        self.name = name
        self.path = resolve_path(name)

    @property
    def fn(self) -> Callable:
        return load(self.path)

    def verify(self, completion: str, record: Mapping[str, Any], **options):
        """The raw verdict (a :class:`~reason_jax.verifiers.base.Verdict` or float)."""
        return self.fn(completion, record, **options)

    def __call__(self, completion: str, record: Mapping[str, Any], **options) -> dict:
        if is_isolated(self.path):
            from .pool import default_pool
            timeout_s = options.pop("timeout_s", 10.0)
            return default_pool().score(self.name, [completion], [record], timeout_s=timeout_s,
                                        **options).infos[0]
        return compose(self.verify(completion, record, **options), options)

    def __repr__(self):
        return f"Verifier({self.name!r} -> {self.path})"


def get(name: str) -> Verifier:
    return Verifier(name)
