"""Intra-op threads for decoding: as many as the cores that other processes' work leaves free.

Why: torch's OpenMP pool (GNU libgomp in the torch wheel) collapses when another process keeps a core busy.
Measured on a 2-core Xeon VM (t5-small, greedy batch 1): 81 tokens/s with 2 threads when idle, but 19-25 with
one CPU-bound neighbour, while 1 thread gives 53 either way (a thread waiting at a barrier for a partner
that the scheduler has parked behind the neighbour loses whole time slices). ``OMP_WAIT_POLICY=PASSIVE``
survives the neighbour (47) but costs the idle case (48), so the thread count adapts instead: at the start
of each decoding call and every ``LOOK_S`` during one, it is set to the cores of this process's CPU set not
taken by other processes' runnable tasks, never above the caller's ``torch.get_num_threads()``.

``T5KIT_THREADS``: ``auto`` (the default) adapts as above; a whole number >= 1 uses that many threads for
every decoding call, fixed. The count is restored when the call returns (``stream`` restores it before each
token it hands out), so the rest of the program keeps its own setting.

One look (:func:`free_cores`) reads the kernel's count of runnable tasks (``/proc/loadavg``: the same
``nr_running()`` as ``procs_running`` in ``/proc/stat``, but a one-line file, where ``/proc/stat`` grows with
the core count and the interrupt table) and subtracts this process's own threads in state ``R``. A look is
an instant, so the policy averages the looks of the last ``WINDOW_S``: a core counts as taken when another
process kept it busy at least half of that time. Without ``/proc`` (not Linux) nothing adapts.
"""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TypeVar

import torch

from t5kit.errors import ConfigError

ENV = "T5KIT_THREADS"
AUTO = "auto"
LOOK_S = 0.025  # a look costs ~50 us on the 2-core VM: 0.2% of a decoding call at one look per 25 ms
# A look reads a file per own thread, twice: with a big pool it costs more, and the looks are spaced out to
# keep them under this share of the time.
LOOK_SHARE = 0.01
WINDOW_S = 0.2  # looks averaged; a neighbour that starts or stops is followed within this time

_T = TypeVar("_T")


def setting(environ: Mapping[str, str] | None = None) -> int | None:
    """``T5KIT_THREADS`` read: ``None`` for ``auto`` (unset, empty or ``auto``), else the fixed count."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip()
    if raw.lower() in ("", AUTO):
        return None
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"{ENV}={raw!r} is not a thread setting: use {AUTO!r} (the default: as many threads "
                          "as cores other processes leave free) or a whole number >= 1 (that many, fixed)")
    return count


# ---------------------------------------------------------------------------------------------- /proc text


def runnable_tasks(loadavg: str) -> int:
    """Runnable tasks system-wide from the text of ``/proc/loadavg`` (``"0.52 0.31 0.20 3/245 1234"``: 3)."""
    return int(loadavg.split()[3].split("/", 1)[0])


def task_state(stat: str) -> str:
    """The state letter of a ``/proc/<pid>/task/<tid>/stat`` line. The command name in parentheses may hold
    spaces and parentheses itself, so the state is the first field after the last ``)``."""
    return stat.rpartition(")")[2].split()[0]


def other_runnable(loadavg: str, own_before: Mapping[str, str], own_after: Mapping[str, str]) -> int | None:
    """Runnable tasks that are not this process's threads: the system count minus own threads in ``R``.

    ``own_before`` / ``own_after`` map thread id -> stat line, read just before and just after ``loadavg``;
    ``None`` when they disagree on which threads run (a pool thread that stopped spinning between the reads
    may or may not be in the system count), and the caller looks again.
    """
    before = {tid for tid, stat in own_before.items() if task_state(stat) == "R"}
    after = {tid for tid, stat in own_after.items() if task_state(stat) == "R"}
    if before != after:
        return None
    return max(0, runnable_tasks(loadavg) - len(after))


def free_from(cores: int, online: int, others: float) -> int:
    """Cores of a CPU set of ``cores`` (of ``online`` in the machine) that ``others`` runnable tasks leave
    free; a core is taken from half a task on (``others`` may be an average).

    The system count covers every CPU; when this process may use only some of them (taskset, a container's
    cpuset) the others are taken to be spread evenly, so a pinned process on a big busy host is not starved
    by load on cores it cannot use.
    """
    if cores < online:
        others = others * cores / online
    return max(0, cores - int(others + 0.5))


# ---------------------------------------------------------------------------------------------- one look


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _online(cores: int) -> int:
    return max(cores, os.cpu_count() or cores)


def _read(path: str, dir_fd: int | None = None) -> str:
    # os.open/os.read: 3 us a file against 9 us through open() (a look reads each own thread's file twice)
    fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return os.read(fd, 4096).decode("latin-1")
    finally:
        os.close(fd)


def _own_stats(tasks: int) -> dict[str, str]:
    stats = {}
    for tid in os.listdir(tasks):
        with contextlib.suppress(FileNotFoundError):  # a thread that ended since the listing
            stats[tid] = _read(f"{tid}/stat", tasks)
    return stats


def look() -> int | None:
    """Other processes' runnable tasks now, or ``None`` where ``/proc`` cannot tell (not Linux)."""
    try:
        tasks = os.open("/proc/self/task", os.O_RDONLY)
        try:
            for _ in range(3):  # a thread changes state about once a look at most: the next look agrees
                before = _own_stats(tasks)
                loadavg = _read("/proc/loadavg")
                others = other_runnable(loadavg, before, _own_stats(tasks))
                if others is not None:
                    return others
        finally:
            os.close(tasks)
    except (OSError, ValueError, IndexError):  # no /proc, or a format this parser does not know: do not adapt
        pass
    return None


def free_cores() -> int:
    """Cores of this process's CPU set that other processes' runnable tasks leave free now (may be 0)."""
    cores = _cores()
    others = look()
    return cores if others is None else free_from(cores, _online(cores), others)


class _Load:
    """The looks of the last ``WINDOW_S`` (process-wide: every decoding call and thread adds to them)."""

    def __init__(self) -> None:
        self._looks: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._lock = threading.Lock()

    def others(self, now: float) -> float | None:
        """Take a look and average it with those of the window; ``None`` where looks cannot be taken."""
        seen = look()
        if seen is None:
            return None
        with self._lock:
            self._looks.append((now, seen))
            while self._looks[0][0] < now - WINDOW_S:
                self._looks.popleft()
            return sum(n for _, n in self._looks) / len(self._looks)


_load = _Load()


# ---------------------------------------------------------------------------------------------- the policy


class _Policy:
    """One decoding call's thread count: fixed, or adapted to the load under a ceiling."""

    def __init__(self, fixed: int | None, ceiling: int) -> None:
        self.fixed, self.ceiling = fixed, ceiling
        self.count = fixed if fixed is not None else ceiling
        self.next_look = float("-inf")
        self.look()

    def look(self) -> bool:
        """Follow the load if ``LOOK_S`` has passed since the last look; True when the count changed."""
        if self.fixed is not None or self.ceiling == 1:
            return False
        now = time.monotonic()
        if now < self.next_look:
            return False
        others = _load.others(now)
        self.next_look = now + max(LOOK_S, (time.monotonic() - now) / LOOK_SHARE)
        if others is None:
            return False
        cores = _cores()
        count = max(1, min(self.ceiling, free_from(cores, _online(cores), others)))
        changed, self.count = count != self.count, count
        return changed


class _Active(threading.local):
    policy: _Policy | None = None  # the decoding call running on this thread, for tick()


_active = _Active()


class _Caller:
    """The count the program has outside decoding. torch's count is one for the whole process (set on one
    thread, read on all), so while a decoding call runs on one thread another thread's call would read the
    decoding count as its caller's, and whichever ended last would restore the wrong one; instead the count
    is kept from when the first call began and restored when the last one ends."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.count = 0

    def enter(self) -> int:
        with self.lock:
            if self.calls == 0:
                self.count = torch.get_num_threads()
            self.calls += 1
            return self.count

    def leave(self, outer: _Policy | None) -> None:
        with self.lock:
            self.calls -= 1
            if self.calls == 0:
                _set(self.count)
            elif outer is not None:  # a call nested in another on this thread: back to the outer one's count
                _set(outer.count)


_caller = _Caller()


def _set(count: int) -> None:
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


@contextlib.contextmanager
def _applied(policy: _Policy | None) -> Iterator[_Policy]:
    """The block under ``policy`` (a new one, with the caller's count as its ceiling, when ``None``)."""
    ceiling = _caller.enter()
    outer = _active.policy
    try:
        policy = policy or _Policy(setting(), ceiling)
        _active.policy = policy
        _set(policy.count)
        yield policy
    finally:
        _active.policy = outer
        _caller.leave(outer)


@contextlib.contextmanager
def decoding_threads() -> Iterator[int]:
    """Run the block with the decoding thread count (``T5KIT_THREADS``) and restore the caller's after.

    Yields the count chosen at entry; :func:`tick` inside the block follows the load from there.
    """
    with _applied(None) as policy:
        yield policy.count


def tick() -> None:
    """Called once per decoding step: every ``LOOK_S`` the count follows the load (~0.2 us otherwise;
    nothing outside a :func:`decoding_threads` block)."""
    policy = _active.policy
    if policy is not None and policy.look():
        torch.set_num_threads(policy.count)


def each_step(steps: Iterator[_T]) -> Iterator[_T]:
    """``steps`` with every ``next`` run under the decoding thread count and the caller's count restored
    before each item is handed out: a generator that held the count across its yields would hand the
    caller's code the decoding count, and two interleaved streams would restore each other's values."""
    policy: _Policy | None = None  # decided at the first step
    done = object()
    try:
        while True:
            with _applied(policy) as policy:
                item = next(steps, done)
            if item is done:
                return
            yield item
    finally:
        close = getattr(steps, "close", None)
        if close is not None:
            close()
