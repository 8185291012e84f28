# each registers its methods
from . import asvd, bnb, gguf, llmcompressor_quant, mixed, ort, pruning, structured, training  # noqa: F401
from .base import REGISTRY, Context, Method, Param, ParamError, available_methods, get, register, registered

__all__ = ["REGISTRY", "Context", "Method", "Param", "ParamError", "available_methods", "get", "register", "registered"]
