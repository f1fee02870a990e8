"""Record sources: files (jsonl, csv, tsv, parquet, plain text) and ``datasets`` ids, read as streams.

Every source and every wrapper here is an iterator of ``dict`` records with ``state_dict()`` and
``load_state_dict()``, so that training can save the position with its checkpoint and resume with exactly
the records that would have followed. Nothing is loaded whole: files are read line by line (or row group
by row group for parquet), so a corpus larger than memory streams through.

Why a class per stage rather than bare generators: a generator cannot report or restore its position.
Each stage keeps its own counters up to date *before* it yields, and asks the stage below for its state
only when ``state_dict()`` is called, so saving is cheap and always consistent.

Records from files carry ``"_where": "path:line"`` (or ``path:row``) so that later stages (task
templates) can name the offending line in their errors; keys starting with ``_`` are metadata.
"""

from __future__ import annotations

import copy
import csv
import glob
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from t5kit.errors import DataError, closest_names

Record = dict[str, Any]

FORMATS = ("jsonl", "csv", "tsv", "parquet", "text")
_EXTENSIONS = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".text": "text",
    ".md": "text",
}
_SKIP_BAD_HINT = "fix it, or pass skip_bad=True (CLI: --skip-bad) to skip and count bad records"


class Stream:
    """Base class: an iterator of records whose position can be saved and restored.

    Iterating again continues from the current position (it does not restart); use
    ``load_state_dict(initial_state)`` or :class:`Repeat` to start over.
    """

    def __init__(self) -> None:
        self._gen: Iterator[Record] | None = None

    def _generate(self) -> Iterator[Record]:  # pragma: no cover - abstract
        raise NotImplementedError

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Record:
        if self._gen is None:
            self._gen = self._generate()
        return next(self._gen)

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError  # pragma: no cover

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError  # pragma: no cover

    def _reset(self) -> None:
        self._gen = None

    # Composition helpers, so pipelines read left to right.
    def shard(self, rank: int, world_size: int) -> Shard:
        return Shard(self, rank, world_size)

    def shuffle(self, buffer_size: int, seed: int) -> Shuffle:
        return Shuffle(self, buffer_size, seed)

    def map(self, fn: Callable[[Record], Record | None]) -> Map:
        return Map(self, fn)

    def repeat(self, epochs: int | None = None) -> Repeat:
        return Repeat(self, epochs)

    def take(self, n: int) -> list[Record]:
        """The next ``n`` records (fewer if the stream ends) as a list."""
        out = []
        for rec in self:
            out.append(rec)
            if len(out) >= n:
                break
        return out


def _expand_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out: list[Path] = []
    for item in items:
        s = str(item)
        if any(c in s for c in "*?["):
            matches = sorted(glob.glob(s, recursive=True))
            if not matches:
                raise DataError(f"no files match {s!r}; check the pattern and the working directory")
            out.extend(Path(m) for m in matches)
        else:
            p = Path(s)
            if p.is_dir():
                files = sorted(f for f in p.rglob("*") if f.is_file() and _guess_format(f, strict=False))
                if not files:
                    raise DataError(f"directory {s} has no data files ({', '.join(sorted(_EXTENSIONS))})")
                out.extend(files)
            elif not p.exists():
                raise DataError(f"data file {s} does not exist; check the path")
            else:
                out.append(p)
    if not out:
        raise DataError("no data files given")
    return out


def _guess_format(path: Path, strict: bool = True) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    fmt = _EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if fmt is None and strict:
        raise DataError(
            f"cannot tell the format of {path} from its extension; pass format= one of {', '.join(FORMATS)}"
        )
    return fmt


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")


def _decode(raw: bytes, encoding: str, where: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        bad = raw[err.start : err.start + 1]
        raise DataError(
            f"{where}: not valid {encoding} (byte 0x{bad.hex()} at column {err.start + 1}); "
            f"re-encode the file (e.g. 'iconv -f latin1 -t utf-8') or pass encoding= the file's encoding"
        ) from None


class FileSource(Stream):
    """Records from one or more files read in order: jsonl, csv, tsv, parquet or plain text (.gz too).

    - jsonl: one JSON object per line; blank lines are ignored.
    - csv / tsv: the first row names the fields (or pass ``fieldnames``).
    - parquet: one record per row, read a row group at a time (needs ``pyarrow``).
    - text: ``{"text": ...}`` per line (``text_mode="line"``), per blank-line-separated paragraph
      (``"paragraph"``) or per file (``"document"``).

    A bad record (malformed JSON, wrong field count, bad bytes) raises :class:`DataError` naming the file
    and line; with ``skip_bad=True`` it is skipped and counted in ``self.bad`` (and ``bad_messages``).
    The position is (file index, byte offset or row, line number); resuming seeks straight to it.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        format: str | None = None,
        skip_bad: bool = False,
        encoding: str = "utf-8",
        text_mode: str = "line",
        text_field: str = "text",
        fieldnames: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.paths = _expand_paths(paths)
        if format is not None and format not in FORMATS:
            raise DataError(f"unknown data format {format!r}; use one of {', '.join(FORMATS)}."
                            + closest_names(format, FORMATS))
        self.formats = [format or _guess_format(p) for p in self.paths]
        if text_mode not in ("line", "paragraph", "document"):
            raise DataError(f"text_mode must be 'line', 'paragraph' or 'document', got {text_mode!r}")
        self.skip_bad = skip_bad
        self.encoding = encoding
        self.text_mode = text_mode
        self.text_field = text_field
        self.fieldnames = list(fieldnames) if fieldnames else None
        self.bad = 0
        self.bad_messages: list[str] = []
        self._pos = {"file": 0, "offset": 0, "line": 0, "bad": 0}

    # -- position ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self._pos, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pos = {k: int(state[k]) for k in ("file", "offset", "line")}
        self.bad = int(state.get("bad", 0))
        self._reset()

    def _bad(self, message: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{message}; {_SKIP_BAD_HINT}")
        self.bad += 1
        if len(self.bad_messages) < 100:
            self.bad_messages.append(message)

    # -- reading -------------------------------------------------------------------------------
    def _generate(self) -> Iterator[Record]:
        while self._pos["file"] < len(self.paths):
            i = self._pos["file"]
            path, fmt = self.paths[i], self.formats[i]
            reader = {
                "jsonl": self._read_jsonl,
                "csv": self._read_csv,
                "tsv": self._read_csv,
                "parquet": self._read_parquet,
                "text": self._read_text,
            }[fmt]
            yield from reader(path, fmt)
            self._pos = {"file": i + 1, "offset": 0, "line": 0}

    def _lines(self, path: Path) -> Iterator[tuple[bytes, int, int]]:
        """(raw line, line number, byte offset after it) from the saved position on."""
        with _open_binary(path) as f:
            f.seek(self._pos["offset"])
            line_no = self._pos["line"]
            offset = self._pos["offset"]
            for raw in f:
                line_no += 1
                offset += len(raw)
                yield raw, line_no, offset

    def _read_jsonl(self, path: Path, fmt: str) -> Iterator[Record]:
        for raw, line_no, offset in self._lines(path):
            self._pos.update(offset=offset, line=line_no)
            where = f"{path}:{line_no}"
            if not raw.strip():
                continue
            try:
                text = _decode(raw, self.encoding, where)
            except DataError as err:
                self._bad(str(err))
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as err:
                self._bad(f"{where}: malformed JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(rec, dict):
                self._bad(f"{where}: expected a JSON object per line, got {type(rec).__name__}")
                continue
            rec["_where"] = where
            yield rec

    def _read_csv(self, path: Path, fmt: str) -> Iterator[Record]:
        delimiter = "\t" if fmt == "tsv" else ","
        header = self.fieldnames
        if header is None:
            with _open_binary(path) as f:
                first = f.readline()
            header_text = _decode(first, self.encoding, f"{path}:1").lstrip("\ufeff")
            header = next(csv.reader([header_text], delimiter=delimiter), [])
            if not header:
                raise DataError(f"{path}:1: empty header row; the first row must name the fields")
            if self._pos["offset"] == 0:
                self._pos.update(offset=len(first), line=1)
        state = {"line": self._pos["line"], "offset": self._pos["offset"]}
        bad_bytes: list[str] = []

        def text_lines() -> Iterator[str]:
            for raw, line_no, offset in self._lines(path):
                state.update(line=line_no, offset=offset)
                try:
                    yield _decode(raw, self.encoding, f"{path}:{line_no}")
                except DataError as err:
                    bad_bytes.append(str(err))
                    yield ""

        start_line = self._pos["line"] + 1
        reader = csv.reader(text_lines(), delimiter=delimiter)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                self._pos.update(state)
                self._bad(f"{path}:{state['line']}: malformed {fmt.upper()} ({err})")
                continue
            self._pos.update(state)
            where = f"{path}:{start_line}"
            start_line = state["line"] + 1
            if bad_bytes:
                self._bad(bad_bytes.pop())
                bad_bytes.clear()
                continue
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                self._bad(f"{where}: {len(row)} fields, but the header names {len(header)} ({', '.join(header)})")
                continue
            rec: Record = dict(zip(header, row))
            rec["_where"] = where
            yield rec

    def _read_parquet(self, path: Path, fmt: str) -> Iterator[Record]:
        try:
            import pyarrow.parquet as pq  # optional: data
        except ImportError:  # pragma: no cover - pyarrow is in the data extra
            raise DataError("reading parquet needs pyarrow: pip install 't5kit[data]'") from None
        pf = pq.ParquetFile(path)
        # For parquet, "offset" is the row group and "line" the row index in the file.
        group = self._pos["offset"]
        row = self._pos["line"]
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(group))
        while group < pf.num_row_groups:
            rows = pf.read_row_group(group).to_pylist()
            skip = row - first_row
            for j in range(skip, len(rows)):
                rec = rows[j]
                last = j == len(rows) - 1
                self._pos.update(offset=group + 1 if last else group, line=first_row + j + 1)
                rec["_where"] = f"{path}:row {first_row + j + 1}"
                yield rec
            first_row += len(rows)
            row = first_row
            group += 1
            self._pos.update(offset=group, line=first_row)

    def _read_text(self, path: Path, fmt: str) -> Iterator[Record]:
        if self.text_mode == "document":
            if self._pos["offset"] > 0:
                return
            with _open_binary(path) as f:
                raw = f.read()
            self._pos.update(offset=max(len(raw), 1), line=raw.count(b"\n") + 1)
            try:
                text = _decode(raw, self.encoding, str(path))
            except DataError as err:
                self._bad(str(err))
                return
            if text.strip():
                yield {self.text_field: text, "_where": str(path)}
            return
        para: list[str] = []
        para_line = 0
        for raw, line_no, offset in self._lines(path):
            where = f"{path}:{line_no}"
            try:
                line = _decode(raw, self.encoding, where).rstrip("\r\n")
            except DataError as err:
                self._pos.update(offset=offset, line=line_no)
                self._bad(str(err))
                continue
            if self.text_mode == "line":
                self._pos.update(offset=offset, line=line_no)
                if line.strip():
                    yield {self.text_field: line, "_where": where}
                continue
            if line.strip():
                if not para:
                    para_line = line_no
                para.append(line)
                continue
            # A blank line ends a paragraph; the position is after the blank line.
            self._pos.update(offset=offset, line=line_no)
            if para:
                text = "\n".join(para)
                para = []
                yield {self.text_field: text, "_where": f"{path}:{para_line}"}
        if para:
            with _open_binary(path) as f:
                f.seek(0, io.SEEK_END)
                end = f.tell()
            self._pos.update(offset=end, line=self._pos["line"] + len(para))
            yield {self.text_field: "\n".join(para), "_where": f"{path}:{para_line}"}


class HFDatasetSource(Stream):
    """A Hugging Face ``datasets`` dataset id, streamed (needs the optional ``datasets`` package and a
    network connection, or a local cache). The position is the number of records read; resuming skips
    that many (the hub streams cannot seek)."""

    def __init__(self, name: str, split: str = "train", config: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        self.name, self.split, self.config, self.kwargs = name, split, config, kwargs
        self._count = 0

    def _load(self):
        try:
            import datasets  # type: ignore[import-not-found]  # optional: the 'datasets' package (no extra)
        except ImportError:
            raise DataError(
                f"the dataset id {self.name!r} needs the optional 'datasets' package (pip install datasets); "
                f"without it, export the data to jsonl/csv/parquet and pass the file path instead"
            ) from None
        try:
            return datasets.load_dataset(self.name, self.config, split=self.split, streaming=True, **self.kwargs)
        except Exception as err:  # network, unknown id, offline mode: all reach the user the same way
            raise DataError(
                f"could not open dataset {self.name!r} (split {self.split!r}): {err}. If this machine is "
                f"offline, download the data elsewhere and pass local jsonl/csv/parquet files"
            ) from err

    def _generate(self) -> Iterator[Record]:
        ds = self._load()
        if self._count:
            ds = ds.skip(self._count)
        for rec in ds:
            self._count += 1
            rec = dict(rec)
            rec["_where"] = f"{self.name}[{self.split}] #{self._count}"
            yield rec

    def state_dict(self) -> dict[str, Any]:
        return {"count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._count = int(state["count"])
        self._reset()


class ListSource(Stream):
    """Records from an in-memory list (tests, small hand-made tasks)."""

    def __init__(self, records: Sequence[Record]) -> None:
        super().__init__()
        self.records = list(records)
        self._i = 0

    def _generate(self) -> Iterator[Record]:
        while self._i < len(self.records):
            rec = self.records[self._i]
            self._i += 1
            yield dict(rec)

    def state_dict(self) -> dict[str, Any]:
        return {"index": self._i}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._i = int(state["index"])
        self._reset()


class Shard(Stream):
    """Every ``world_size``-th record starting at ``rank``: distributed ranks never see the same record."""

    def __init__(self, inner: Stream, rank: int, world_size: int) -> None:
        super().__init__()
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"shard needs 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.inner, self.rank, self.world_size = inner, rank, world_size
        self._index = 0  # records of the inner stream consumed

    def _generate(self) -> Iterator[Record]:
        for rec in self.inner:
            i = self._index
            self._index += 1
            if i % self.world_size == self.rank:
                yield rec

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "index": self._index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self._index = int(state["index"])
        self._reset()


class Shuffle(Stream):
    """Deterministic buffered shuffle: keep ``buffer_size`` records, emit a random one, refill.

    The same seed and input give the same order. The saved state holds the buffer and the generator
    state, so a resumed stream continues with exactly the same records.
    """

    def __init__(self, inner: Stream, buffer_size: int, seed: int) -> None:
        super().__init__()
        if buffer_size < 1:
            raise DataError(f"shuffle buffer_size must be at least 1, got {buffer_size}")
        self.inner, self.buffer_size, self.seed = inner, buffer_size, seed
        self._rng = np.random.default_rng(seed)
        self._buffer: list[Record] = []

    def _generate(self) -> Iterator[Record]:
        for rec in self.inner:
            if len(self._buffer) < self.buffer_size:
                self._buffer.append(rec)
                continue
            j = int(self._rng.integers(len(self._buffer)))
            out, self._buffer[j] = self._buffer[j], rec
            yield out
        while self._buffer:
            j = int(self._rng.integers(len(self._buffer)))
            out = self._buffer[j]
            self._buffer[j] = self._buffer[-1]
            self._buffer.pop()
            yield out

    def state_dict(self) -> dict[str, Any]:
        return {
            "inner": self.inner.state_dict(),
            "rng": copy.deepcopy(self._rng.bit_generator.state),
            "buffer": list(self._buffer),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = copy.deepcopy(state["rng"])
        self._buffer = list(state["buffer"])
        self._reset()


class Map(Stream):
    """Apply ``fn`` to each record; ``fn`` returning None drops the record. ``fn`` must be deterministic."""

    def __init__(self, inner: Stream, fn: Callable[[Record], Record | None]) -> None:
        super().__init__()
        self.inner, self.fn = inner, fn

    def _generate(self) -> Iterator[Record]:
        for rec in self.inner:
            out = self.fn(rec)
            if out is not None:
                yield out

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self._reset()


class Repeat(Stream):
    """Start the inner stream over when it ends (``epochs=None``: forever); the epoch is in the state."""

    def __init__(self, inner: Stream, epochs: int | None = None) -> None:
        super().__init__()
        self.inner, self.epochs = inner, epochs
        self._start = inner.state_dict()
        self.epoch = 0

    def _generate(self) -> Iterator[Record]:
        while self.epochs is None or self.epoch < self.epochs:
            produced = False
            for rec in self.inner:
                produced = True
                yield rec
            if not produced and self.epochs is None:
                raise DataError("cannot repeat an empty data source; check that it has records")
            self.epoch += 1
            self.inner.load_state_dict(self._start)

    def state_dict(self) -> dict[str, Any]:
        return {"inner": self.inner.state_dict(), "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state["inner"])
        self.epoch = int(state["epoch"])
        self._reset()


def open_source(spec: Any, base_dir: str | os.PathLike | None = None, skip_bad: bool = False) -> Stream:
    """A stream from a declaration: a path or glob, ``"hf:NAME"``, a dict, or an existing stream.

    Dict keys: ``path`` (or ``paths``), optional ``format``, ``text_mode``, ``text_field``, ``encoding``,
    ``skip_bad``, ``fieldnames``; or ``dataset`` (a ``datasets`` id) with ``split``/``config``.
    Relative paths are resolved against ``base_dir`` (the directory of the task file).
    """
    if isinstance(spec, ListSource):
        return ListSource(spec.records)  # a fresh position each time a task opens it
    if isinstance(spec, Stream):
        return spec
    if isinstance(spec, (list, tuple)) and all(isinstance(r, dict) for r in spec):
        return ListSource(spec)

    def resolve(p: Any) -> str:
        p = os.path.expanduser(str(p))
        return p if base_dir is None or os.path.isabs(p) else os.path.join(str(base_dir), p)

    if isinstance(spec, (str, os.PathLike)):
        s = str(spec)
        if s.startswith("hf:"):
            return HFDatasetSource(s[3:])
        return FileSource(resolve(s), skip_bad=skip_bad)
    if isinstance(spec, dict):
        spec = dict(spec)
        if "dataset" in spec:
            name = spec.pop("dataset")
            return HFDatasetSource(name, split=spec.pop("split", "train"), config=spec.pop("config", None), **spec)
        paths = spec.pop("paths", None) or spec.pop("path", None)
        if paths is None:
            raise DataError(f"source {spec!r} needs 'path' (a file, directory or glob) or 'dataset' (an id)")
        paths = [resolve(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
        allowed = {"format", "text_mode", "text_field", "encoding", "skip_bad", "fieldnames"}
        unknown = set(spec) - allowed
        if unknown:
            key = sorted(unknown)[0]
            raise DataError(f"unknown source key {key!r}; allowed: {', '.join(sorted(allowed))}."
                            + closest_names(key, allowed))
        spec.setdefault("skip_bad", skip_bad)
        return FileSource(paths, **spec)
    raise DataError(f"cannot make a data source from {type(spec).__name__}: give a path, a dict or a Stream")
