"""The base of every user-facing settings model: an unknown key, and a yes/no where a number or a name is expected,
are refused with the key's path (a config file is read as strictly as `acf run`'s flags)."""
from __future__ import annotations

import types
import typing

from pydantic import BaseModel, ConfigDict, model_validator


def _takes_bool(annotation) -> bool:
    if annotation is bool or annotation is typing.Any:
        return True
    return any(_takes_bool(a) for a in typing.get_args(annotation)) if typing.get_origin(annotation) in (
        typing.Union, types.UnionType) else False


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data):
        """pydantic reads true as 1 for an int field; a config file that says `max_episodes: true` means
        something else, so it is refused."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(name), bool) and not _takes_bool(field.annotation):
                    raise ValueError(f"{name}: expected {_kind(field.annotation)}, got {data[name]!r}")
        return data


def _kind(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
