"""Waiting on Ray actors: one deadline for a set of calls, and errors that name who hung or failed.

Every wait in labrl that could hang (engine start-up, trainer collectives, weight-sync phases,
env-worker pings) goes through `wait_all`, so a stuck actor is always reported with its label and
the phase it was in instead of stalling the run silently.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: the trainer rank (free_port) also runs without Ray
    import ray


def wait_all(refs: Mapping[str, ray.ObjectRef], timeout_s: float, what: str, *,
             error: type[Exception] = RuntimeError, hang_error: type[Exception] = TimeoutError,
             fail_fast: bool = False) -> dict[str, Any]:
    """Results of `refs` (keyed by a label naming each actor) under one deadline of `timeout_s`.

    Raises `error` naming every actor that died, raised, or had not answered by the deadline
    (`hang_error` when nothing but the deadline went wrong). `fail_fast`: raise at the first
    failure instead of waiting for the others (peers of a collective are stuck with the one that
    failed, so waiting for them only delays the message).
    """
    import ray

    deadline = time.monotonic() + timeout_s
    pending = {ref: label for label, ref in refs.items()}
    results: dict[str, Any] = {}
    errors: list[str] = []
    while pending and not (errors and fail_fast):
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        label = pending.pop(ready[0])
        try:
            results[label] = ray.get(ready[0])
        except ray.exceptions.RayActorError as err:
            errors.append(f"{label}: actor died during {what}: {type(err).__name__}: {_first_line(err)}")
        except Exception as err:  # noqa: BLE001 - every actor's failure goes into one message
            errors.append(f"{label}: {what} failed: {root_message(err)}")
    hung = [] if (errors and fail_fast) else list(pending.values())
    errors += [f"{label}: no answer within {timeout_s:.1f} s during {what} (hung or overloaded)" for label in hung]
    if errors:
        kind = hang_error if len(hung) == len(errors) else error
        raise kind(f"{what} failed on {len(errors)} of {len(refs)}:\n  " + "\n  ".join(errors))
    return {label: results[label] for label in refs}


def alive(actor: Any, timeout_s: float = 10.0) -> bool:
    """Whether an actor still answers `ping()` (a dead, restarting or wedged one does not)."""
    import ray

    try:
        ray.get(actor.ping.remote(), timeout=timeout_s)
        return True
    except Exception:  # noqa: BLE001 - any failure to answer means the actor is gone
        return False


def dead_actors(actors: list[Any], timeout_s: float = 5.0) -> list[int]:
    """Indices of the actors Ray reports dead. Unlike `alive`, an actor too busy to answer in time
    (e.g. stuck in a collective with a failed peer) is not counted: only Ray's actor-died error is."""
    import ray

    refs = [actor.ping.remote() for actor in actors]
    dead = []
    for i, ref in enumerate(refs):
        try:
            ray.get(ref, timeout=timeout_s)
        except ray.exceptions.RayActorError:
            dead.append(i)
        except ray.exceptions.GetTimeoutError:
            pass
    return dead


def root_message(err: BaseException) -> str:
    """Ray wraps remote exceptions (RayTaskError(...)); show the innermost cause's message."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(err).__name__}: {_first_line(err)}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else ""


def free_port() -> int:
    """A TCP port free on this node right now (for a rendezvous the caller opens next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])
