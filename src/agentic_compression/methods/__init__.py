"""Compression methods: each module registers its methods (base.py: the interface), so a new method is one file."""
import importlib
import pkgutil

from .base import REGISTRY, Context, Method, Param, ParamError, available_methods, get, register, registered

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["REGISTRY", "Context", "Method", "Param", "ParamError", "available_methods", "get", "register", "registered"]
