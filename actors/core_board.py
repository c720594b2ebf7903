"""A node-local board of which generation engines are busy, so a CPU trainer rank can compute on an
idle engine's cores (`trainers.core_lending`).

On a CPU node the engine and the trainer each own some cores, and in an asynchronous run one of
them usually finishes its part of the step first and waits: with `rollout.max_staleness >= 1` the
engine has generated the next batch while the trainer is still in its backward pass. Those cores
then sit idle. Each engine writes one small file in shared memory (`/dev/shm`, so only ranks on the
same node see it) saying whether a request is in flight and how many CPUs it holds; trainer ranks
read the files between layers and raise their intra-op threads by the idle engines' CPUs.

The board of a run is keyed by its Ray job id: the driver creates every engine and rank of the
run, and nothing else shares the id. A file names its writer's pid, so one left by a killed
engine is ignored once that process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

SHM_ROOT = Path("/dev/shm")
_RECORD = "{busy:d} {cpus:>6.2f} {pid:>10d}\n"  # fixed width: rewritten in place with one pwrite
RECORD_BYTES = len(_RECORD.format(busy=0, cpus=0.0, pid=0))


def board_dir(job_id: str) -> Path:
    return SHM_ROOT / f"labrl-cores-{job_id}"


def current_board_dir() -> Path | None:
    """This Ray job's board, or None outside Ray or where /dev/shm is missing."""
    if not SHM_ROOT.is_dir():
        return None
    try:
        import ray

        if not ray.is_initialized():
            return None
        return board_dir(ray.get_runtime_context().get_job_id())
    except Exception:  # noqa: BLE001 - no board is a valid state: nothing is lent
        return None


def engine_entry(name: str) -> BoardEntry | None:
    """The calling engine actor's entry on its node's board (CPU engines in a Ray job only)."""
    directory = current_board_dir()
    if directory is None:
        return None
    import ray

    resources = ray.get_runtime_context().get_assigned_resources()
    if resources.get("GPU", 0.0) > 0 or resources.get("CPU", 0.0) <= 0:
        return None
    return open_entry(directory, "engine", name, resources["CPU"])


def open_entry(directory: Path, kind: str, name: str, cpus: float) -> BoardEntry | None:
    """A board entry, or None (logged) where /dev/shm cannot take it: nothing is lent then."""
    try:
        return BoardEntry(directory, kind, name, cpus)
    except OSError as err:
        logger.warning("core board %s unavailable (%s): no CPUs will be lent on this node", directory, err)
        return None


def remove_board() -> None:
    """Delete this job's board on this node (the driver, once the run's actors are stopped; an
    actor killed elsewhere leaves a few bytes in its node's /dev/shm, ignored by later readers)."""
    directory = current_board_dir()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


class BoardEntry:
    """One process's entry: an engine (busy while at least one request is in flight) or a trainer
    rank (always busy: it only counts how many ranks share the lent CPUs)."""

    def __init__(self, directory: Path, kind: str, name: str, cpus: float) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{kind}-{name}-{os.getpid()}"
        self.cpus = cpus
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.set(busy=kind != "engine")

    def set(self, busy: bool) -> None:
        os.pwrite(self._fd, _RECORD.format(busy=busy, cpus=self.cpus, pid=os.getpid()).encode(), 0)

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


@dataclass
class _Entry:
    fd: int
    cpus: float


def read_entry(path: Path) -> tuple[bool, float, int] | None:
    """(busy, cpus, pid) of one entry; None if it is gone or unreadable."""
    try:
        return _parse(path.read_bytes()[:RECORD_BYTES])
    except FileNotFoundError:
        return None


def _live(path: Path) -> bool:
    record = read_entry(path)
    return record is not None and _alive(record[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class IdleEngineCpus:
    """Reads the board: the CPUs of the engines on this node with nothing in flight."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._entries: dict[str, _Entry] = {}
        self.local_ranks = 1

    def refresh(self) -> int:
        """Re-scan the board for live engines and ranks (cheap; once per train step); returns the
        number of engines."""
        for entry in self._entries.values():
            os.close(entry.fd)
        self._entries = {}
        if not self.directory.is_dir():
            return 0
        self.local_ranks = max(1, sum(_live(path) for path in self.directory.glob("rank-*")))
        for path in self.directory.glob("engine-*"):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            record = _parse(os.pread(fd, RECORD_BYTES, 0))
            if record is None or not _alive(record[2]):
                os.close(fd)
                if record is not None:  # its engine was killed before it could remove the file
                    path.unlink(missing_ok=True)
                continue
            self._entries[path.name] = _Entry(fd, record[1])
        return len(self._entries)

    def idle_cpus(self) -> float:
        """CPUs of the live engines that are idle right now (one pread per engine)."""
        total = 0.0
        for entry in self._entries.values():
            record = _parse(os.pread(entry.fd, RECORD_BYTES, 0))
            if record is not None and not record[0]:
                total += entry.cpus
        return total

    def close(self) -> None:
        for entry in self._entries.values():
            os.close(entry.fd)
        self._entries = {}


def _parse(raw: bytes) -> tuple[bool, float, int] | None:
    parts = raw.split()
    if len(parts) != 3:
        return None  # a torn or empty record reads as "unknown": nothing is lent
    try:
        return parts[0] == b"1", float(parts[1]), int(parts[2])
    except ValueError:
        return None
