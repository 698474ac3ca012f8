"""Reading and writing files so that errors name the file and line, and no half-written output
is ever left looking complete: everything is written to a temporary name, then renamed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

# C0 controls but tab, and DEL: never text (a NUL would even reach SentencePiece as a piece). C1
# controls (U+0080-U+009F) pass: real corpora (IWSLT'14) hold a few as mojibake.
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")


class InputError(ValueError):
    """Bad input data; the message names the file and line."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would hide results from the rest of a shared cluster
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a path (not yet existing) inside a temporary directory beside `path`; if the block
    succeeds and created it, it replaces `path` whole (model directories: never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield scratch / "new"
        if path.exists():
            shutil.rmtree(path)
        os.replace(scratch / "new", path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def umask() -> int:
    """This process's umask, read without setting it (setting it races with other threads' files)."""
    with contextlib.suppress(OSError, StopIteration, ValueError), open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)  # no /proc: the classic way, briefly setting it
    os.umask(mask)
    return mask


def _control_error(where: str, number: int, column: int, char: str) -> InputError:
    return InputError(f"{where}:{number}: control character U+{ord(char):04X} at column {column}; "
                      "corpora must be plain text (tabs allowed)")


def check_line(line: str, where: str, number: int) -> None:
    """A line of text holds no control character but tab (the line end already split off)."""
    if found := CONTROL.search(line):
        raise _control_error(where, number, found.start() + 1, found.group())


def check_text(data: bytes, where: str) -> None:
    """`data` is non-empty UTF-8 text without control characters; errors name `where` and the line.
    (One pass over the whole text: corpora have millions of lines.)"""
    if not data.strip():
        raise InputError(f"{where}: no text (the file is empty)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        number = data.count(b"\n", 0, err.start) + 1
        raise InputError(f"{where}:{number}: invalid UTF-8 ({err.reason})") from None
    if found := CONTROL.search(text):
        at = found.start()
        raise _control_error(where, text.count("\n", 0, at) + 1, at - text.rfind("\n", 0, at), found.group())


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
    trailing spaces). Invalid UTF-8, control characters and empty files are errors naming the file
    (and line)."""
    lines = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
            except UnicodeDecodeError as err:
                raise InputError(f"{path}:{number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
            check_line(line, str(path), number)
            lines.append(line.strip())
    if not lines:
        raise InputError(f"{path}: file is empty")
    return lines


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """The tensors and metadata of a safetensors file; a truncated or foreign file is an error naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in f.keys()}, f.metadata() or {}
    except SafetensorError as err:
        raise InputError(f"{path}: not a readable safetensors file ({err}); a truncated copy? "
                         "Delete it and re-run the step that writes it") from None


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike) -> tuple[list[str], list[str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise InputError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}: "
                         "the two sides of a parallel corpus must align line by line")
    return src, tgt
