"""Atomic writes: the one helper every file and directory t5kit writes goes through (checkpoints, configs,
logs, corpora, training checkpoints).

A file is written under a temporary name in its own directory and moved into place with ``os.replace``, so
a reader (or a run resumed after a crash, a full disk or Ctrl-C) sees the old file or the new one, never
half of one. The temporary name is removed when the write fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_path(path: str | os.PathLike) -> Path:
    """The name ``path`` is written under before it is moved into place (same directory, same suffix, so
    tools that pick a format from the suffix, as matplotlib does, still see it)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path`` through; on success it replaces ``path`` atomically.

    For writers that want a file name (``safetensors.save_file``, ``fig.savefig``). The result gets the
    ordinary permissions of a new file (``0o666 & ~umask``), whatever the writer created it with.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """``open`` for writing whose result appears at ``path`` only once the block ends without an error."""
    if "b" in mode:
        encoding = None
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """Write ``data`` as JSON (UTF-8, non-ASCII kept as is, a final newline) to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Any]) -> int:
    """Write one JSON value per line to ``path`` atomically; returns the number of lines."""
    count = 0
    with atomic_open(path) as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    return count


def _fsync_directory(path: Path) -> None:
    """Flush a directory's entries (the renames into it) to disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``path`` (``.tmp-<name>-<pid>``); when the block ends without
    an error its files are flushed to disk and it takes ``path``'s place in one rename (an existing ``path``
    is moved aside to ``.old-<name>-<pid>`` first and removed after). On an error it is removed, and
    ``path`` is as it was. A reader never sees a half-written directory: for training checkpoints."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                with open(child, "rb") as f:
                    os.fsync(f.fileno())
        _fsync_directory(tmp)
        if path.exists():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_directory(path.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_directory(path: str | os.PathLike) -> None:
    """Remove a directory so that it never looks half-deleted: renamed to ``.old-<name>`` first, then removed."""
    path = Path(path)
    trash = path.with_name(f".old-{path.name}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
