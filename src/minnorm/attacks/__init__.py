"""Attacks: one module per family, each a plain function plus registry entries.

Every module in this package is imported here, and the names in its ``__all__`` become
attributes of ``minnorm.attacks`` (``minnorm.attacks.ddn(...)``). A new attack is one module:
no list to edit. ``minnorm.attacks.get(name)`` returns the registered spec.
"""
import importlib
import pkgutil

from ..core.registry import available, get, specs

__all__ = ["available", "get", "specs"]

for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_"):
        continue
    _module = importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", []):
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
