"""Files: atomic JSON writes (a reader, a crash or a second writer never sees half a file), and reads of files a
user may have damaged, which fail as one clear error naming the file, never a traceback."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")  # per process: two writers never share a temp file
    tmp.write_text(json.dumps(obj, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


@contextlib.contextmanager
def reading(path: Path | str, what: str, todo: str = "") -> Iterator[None]:
    """Any exception raised while reading ``path`` (a user's file, or one a user may have damaged) becomes a
    UserError that names the file, says what it should be and what to do."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read {path} ({what}): {why}",
                        todo or f"check or replace {Path(path).name}") from None


def within(path: Path, folder: Path) -> bool:
    """Whether ``path``, links followed, stays inside ``folder`` (for a Hub cache snapshot, inside its repository,
    whose snapshots link into blobs/)."""
    root = folder.parent.parent if folder.parent.name == "snapshots" else folder
    return Path(path).resolve().is_relative_to(root.resolve())


def read_json(path: Path, what: str, todo: str = "") -> dict:
    """A JSON object from ``path``; a missing, truncated, binary or non-object file, or a link that leads out of the
    folder it lies in, is a UserError (which quotes none of the file)."""
    with reading(path, what, todo):
        if Path(path).is_symlink() and not within(path, Path(path).parent):
            raise ValueError("it is a link that leads out of its folder")
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, found {type(obj).__name__}")
        return obj
