from . import llmcompressor_quant  # noqa: F401  (registers its methods)
from .base import REGISTRY, Context, Method, Param, available_methods, get, register

__all__ = ["REGISTRY", "Context", "Method", "Param", "available_methods", "get", "register"]
