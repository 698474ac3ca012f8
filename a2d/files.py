"""Reading and writing files so that errors name the file and line, and no half-written output
is ever left looking complete: everything is written to a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


class InputError(ValueError):
    """Bad input data; the message names the file and line."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_lines(path: str | os.PathLike, lines) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | os.PathLike):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_lines(path: str | os.PathLike) -> list[str]:
    """Lines of a UTF-8 text file, stripped of surrounding whitespace (upstream corpora carry
    trailing spaces). Invalid UTF-8 and empty files are errors naming the file (and line)."""
    lines = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                lines.append(raw.decode("utf-8").strip())
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
    if not lines:
        raise InputError(f"{path}: file is empty")
    return lines


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise InputError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                         "the two sides of a parallel corpus must align line by line")
    return src, tgt
