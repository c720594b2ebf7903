"""Connect to Ray: start labrl's own local instance, or join a cluster named explicitly.

Without `cluster.address` and `RAY_ADDRESS` labrl always starts a fresh local instance
(`address="local"`): Ray's default (`ray.init()`) would attach to whatever `ray start` cluster this
machine last recorded in `/tmp/ray/ray_current_cluster`, live or dead, and for a dead one it retries
the GCS 20 times at ~40 s each. Joining is explicit (`cluster.address=auto|host:port`, or `RAY_ADDRESS`,
which every `ray job submit` driver has); its GCS port is probed first, so a dead address fails in
seconds, and the whole start or join is bounded by `cluster.connect_timeout_s`.

A local cluster is sized to what the config asks for, even beyond the physical cores (a laptop
over-subscribes; the actors mostly wait on each other). Before any actor is created the request is
checked against the cluster's resources, so an impossible layout fails at once with a message
instead of actors pending forever.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray

from cluster.resources import RoleDemand, fit_problems

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONNECT_TIMEOUT_S = 180.0
GCS_PROBE_TIMEOUT_S = 10.0  # a TCP connect to a live GCS takes milliseconds, even across a region


class ResourceError(RuntimeError):
    """The cluster cannot hold (or did not reserve in time) what the run asks for."""


class ClusterConnectError(ConnectionError):
    """Ray could not be started, or the named cluster joined, within the time allowed."""


class _DeadlinePassed(BaseException):
    """Raised by the alarm inside ray.init; a BaseException so Ray's `except Exception` retry
    loops (e.g. its GCS connect loop) cannot swallow it."""


def connect(address: str | None, num_cpus_needed: float, num_cpus: int | None = None, *,
            timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> None:
    """Start a local Ray instance (`address` None or "local" and no RAY_ADDRESS) or join the
    cluster at `address` ("auto" or host:port; RAY_ADDRESS replaces None/"auto" as in Ray).

    Raises ClusterConnectError naming the address, the timeout and what to do when the start or
    join does not finish within `timeout_s`, the cluster's GCS port does not answer, or Ray gives
    up joining. A SIGTERM or SIGINT during ray.init reaches the caller's handler once ray.init has
    returned (see `_init_within`); ray.init's own SIGTERM handler is never left installed.
    """
    if ray.is_initialized():
        return
    env_address = os.environ.get("RAY_ADDRESS") or None
    target = env_address if address in (None, "auto") and env_address else address
    if target in (None, "local"):
        cpus = num_cpus or max(os.cpu_count() or 1, math.ceil(num_cpus_needed))
        env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                    "TOKENIZERS_PARALLELISM": "false"}
        _init_within(timeout_s, f"starting a local Ray instance ({cpus} CPUs)",
                     "the machine may be overloaded; raise cluster.connect_timeout_s",
                     address="local", num_cpus=cpus, runtime_env={"env_vars": env_vars},
                     include_dashboard=False, log_to_driver=True)
        logger.info("started a local Ray instance with %d CPUs", cpus)
        return
    source = f"{'RAY_ADDRESS' if target == env_address else 'cluster.address'}={target!r}"
    if "://" not in target:  # ray:// (Ray Client) has no GCS port to probe
        _probe_gcs(_resolve(target, source), source, timeout_s)
    try:
        _init_within(timeout_s, f"joining the Ray cluster ({source})",
                     "check the cluster is up (`ray status --address ...`) and reachable",
                     address=target, runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    except ClusterConnectError:
        raise
    except ConnectionError as err:  # Ray's own, after its retries; the cause says why
        cause = f"{err}: {err.__cause__}" if err.__cause__ else str(err)
        hint = _AUTH_HINT if "AuthenticationError" in cause or "InvalidAuthToken" in cause else ""
        raise ClusterConnectError(f"could not join the Ray cluster ({source}): {cause.strip().splitlines()[-1]}"
                                  f"{hint}") from err
    logger.info("joined the Ray cluster at %s (%s)", target, source)


# Ray turns token auth on by itself only for a cluster it finds (address auto), never for a named one.
_AUTH_HINT = ("; the cluster uses token authentication: set RAY_AUTH_MODE=token, with the cluster's token in "
              "~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN")


_NOT_RUNNING = ("start one (`ray start --head`), fix the address, or unset cluster.address and RAY_ADDRESS "
                "to run on labrl's own local instance")


def _resolve(target: str, source: str) -> str:
    """host:port of the GCS that ray.init would dial ("auto" reads Ray's record of the last
    `ray start`, which may point at a cluster that has since died)."""
    from ray._private.services import canonicalize_bootstrap_address

    try:
        resolved = canonicalize_bootstrap_address(target)
    except (ConnectionError, ValueError) as err:
        raise ClusterConnectError(f"no Ray cluster to join ({source}): {err}; {_NOT_RUNNING}") from None
    return resolved or target


def _probe_gcs(gcs: str, source: str, timeout_s: float) -> None:
    """Fail in seconds when nothing listens at the GCS address (ray.init would retry for minutes)."""
    host, _, port = gcs.rpartition(":")
    wait = min(timeout_s, GCS_PROBE_TIMEOUT_S)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=wait):
            return
    except (OSError, ValueError) as err:
        recorded = (" (the last `ray start` this machine recorded: a cluster that died without `ray stop` "
                    "leaves its address behind)") if source.endswith("'auto'") else ""
        raise ClusterConnectError(f"no Ray cluster answers at {gcs} ({source}{recorded}; TCP connect within "
                                  f"{wait:g} s: {err}); {_NOT_RUNNING}") from None


def _init_within(timeout_s: float, what: str, advice: str, **init_kwargs: Any) -> None:
    """ray.init(**init_kwargs) under a deadline, with SIGTERM and SIGINT held until it returns.

    ray.init would install its own SIGTERM handler (sys.exit(15)) for good, and an exception raised
    inside its native start-up leaves a half-built core worker that can crash the process at exit
    (measured: SIGSEGV after 3 of ~25 SIGTERMs sent during a local start). So a first SIGTERM or
    SIGINT is held, Ray is kept from replacing the caller's handlers, and the held signal is handed
    to the caller's handler once ray.init has returned (within `timeout_s`); a second one is handed
    on at once. The deadline is a SIGALRM. All of this needs the main thread; elsewhere ray.init
    runs unguarded. Ray blocks in native GCS calls for up to ~40 s: the deadline acts after them.
    """
    if threading.current_thread() is not threading.main_thread():
        ray.init(**init_kwargs)
        return
    callers = {sig: signal.getsignal(sig) for sig in _HELD_SIGNALS}
    held: list[int] = []

    def hold(signum, frame) -> None:
        if held:  # asked twice: stop now, inside ray.init
            _hand_on(signum, callers[signum], frame)
        held.append(signum)

    for sig in _HELD_SIGNALS:
        signal.signal(sig, hold)
    previous_alarm = signal.signal(signal.SIGALRM, _raise_deadline)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        with _ray_keeps_handlers():
            ray.init(**init_kwargs)
    except _DeadlinePassed:
        _shutdown_partial()
        raise ClusterConnectError(f"{what} did not finish within {timeout_s:g} s "
                                  f"(cluster.connect_timeout_s); {advice}") from None
    except SystemExit as exc:  # Ray's own SIGTERM handler, should a Ray version bypass the hook
        _shutdown_partial()
        if exc.code != signal.SIGTERM:
            raise
        held.append(signal.SIGTERM)
    except BaseException:
        _shutdown_partial()
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)
        for sig, handler in callers.items():  # also re-installs Python's C-level handler, which
            signal.signal(sig, handler)        # Ray's core worker replaces with its crash reporter
    if held:
        signum = held[0]
        logger.warning("%s during %s: handing it on now that ray.init has returned",
                       signal.Signals(signum).name, what)
        _hand_on(signum, callers[signum], None)


_HELD_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _hand_on(signum: int, handler: Any, frame: Any) -> None:
    """Do what `signum` would have done under `handler` (the caller's, installed again by now
    unless ray.init is still running)."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # e.g. terminate: put the default back and let it act
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)


@contextlib.contextmanager
def _ray_keeps_handlers() -> Iterator[None]:
    """Stop ray.init from installing its SIGTERM handler (it calls this private hook first thing).
    If a Ray version renames the hook, its handler goes in and is replaced when init returns."""
    import ray._private.utils as ray_utils

    original = getattr(ray_utils, "set_sigterm_handler", None)
    if original is None:
        yield
        return
    ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original


def _raise_deadline(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    raise _DeadlinePassed()


def _shutdown_partial() -> None:
    """Stop whatever a failed ray.init had started (a half-started local instance's daemons)."""
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - best effort: the original error is the one to report
        logger.debug("ray.shutdown after a failed ray.init", exc_info=True)


def ephemeral_run_dir_warning(run_dir: Path, runs_root_explicit: bool) -> str | None:
    """A warning when `run_dir` lies inside a Ray session's temporary files (a `ray job submit
    --working-dir` job runs in `<ray temp>/session_*/runtime_resources/...`, which Ray deletes with
    the session), unless the user chose `logging.runs_root`; None otherwise."""
    if runs_root_explicit:
        return None
    parts = Path(os.path.abspath(run_dir)).parts
    for i, part in enumerate(parts):
        if part.startswith("session_") and "runtime_resources" in parts[i + 1:]:
            ray_dir = Path(*parts[:parts.index("runtime_resources", i) + 1])
            return (f"the run directory {run_dir} is inside Ray's temporary working directory ({ray_dir}), "
                    "which Ray deletes with the session: checkpoints, metrics and the final model would be "
                    "lost. Set logging.runs_root to storage that outlives the job, e.g. "
                    "logging.runs_root=/shared/runs")
    return None


def alive_node_resources() -> list[dict[str, float]]:
    """Total resources of every live node (what placement groups are reserved from)."""
    return [dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")]


def check_resources(requested: Mapping[str, float] | None = None,
                    demands: Sequence[RoleDemand] = (), joint: Sequence[RoleDemand] = ()) -> None:
    """Fail fast when the cluster cannot ever hold what the run asks for.

    `requested`: plain totals (e.g. {"CPU": 6, "GPU": 0}). `demands`: per-role placement requests
    (`cluster.placement.role_demands(cfg)`), checked per role, all together, per single-node group
    and per bundle against the live nodes, so the message names the role and the fields to change.
    `joint`: groups shared by several roles (e.g. trainer + engines on one node), whose
    single-node constraint is checked once the per-role checks pass.
    """
    total = ray.cluster_resources()
    problems: list[str] = []
    for k, v in (requested or {}).items():
        if v > total.get(k, 0.0) + 1e-9:
            problems.append(f"{k}: need {v:g}, cluster has {total.get(k, 0.0):g}")
    if demands:
        problems.extend(fit_problems(demands, alive_node_resources(), joint))
    if problems:
        raise ResourceError("the cluster cannot fit this run:\n  - " + "\n  - ".join(problems)
                            + "\nlower the counts in the generation / trainer / rollout sections or add nodes")
