from . import asvd, bnb, llmcompressor_quant, pruning, structured, training  # noqa: F401  (each registers its methods)
from .base import REGISTRY, Context, Method, Param, available_methods, get, register, registered

__all__ = ["REGISTRY", "Context", "Method", "Param", "available_methods", "get", "register", "registered"]
