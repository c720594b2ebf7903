"""Elastic capacity in a real run on a two-raylet cluster (`ray start` head + a node that joins
during the run; Ray actors, vLLM engines, DeepSpeed trainer).

The run starts on the head alone with 1 engine and 1 env worker; the head has no CPU left for a
second engine. `labrl scale-run --engines +1 --env-workers +2` is sent after step 0: the env workers
start on the head, the engine's reservation waits; then a node joins (as the Ray autoscaler would
add one) and the engine is placed there, built, and joins at a weight sync (gloo, across nodes).
The new engine is then killed inside a weight sync (it is replaced in its own reservation and the
sync repeated); later an engine is retired (`scale-run --engines -1`) and an env worker is killed.
Every trajectory
is trained on or dropped with a reason, every engine in service serves the version just trained,
and throughput is logged for each phase.

Run by `test_elastic_cluster.py` in a fresh pytest process: this driver joins a `ray start` cluster,
which a process that already ran a local Ray cannot do reliably (Ray keeps the first cluster's
token-auth mode for the process; the actors it then creates on a cluster without auth die at once).
"""

from __future__ import annotations

import logging
import shutil

import pytest
import ray

from configs.loading import load_config
from launch.elastic import read_events
from launch.run import TrainingRun
from launch.scale_run import main as scale_run
from monitor.plots import read_metrics
from tests.cluster.ray_procs import PrivateHead
from tests.e2e.test_chaos import ServedVersions
from tests.e2e.test_fault_tolerance import TINY

logger = logging.getLogger(__name__)
# Head: 3 CPUs = trainer 1 + engine 1 + env workers 3 x 0.25, with 0.25 left: no room for an engine.
ELASTIC = TINY + ["generation.num_workers=1", "rollout.num_env_workers=1", "grpo.num_steps=7",
                  "rollout.cpus_per_env_worker=0.25", "sync.transport=gloo"]


class ScaleByHand:
    """After step 0: `labrl scale-run --engines +1 --env-workers +2` (applied after step 1; the test
    then waits for the new engine to be built, so it joins at step 2's weight sync). In step 3's
    weight sync the new engine is killed. After step 4: `--engines -1`, and env worker 0 is killed."""

    def __init__(self, run: TrainingRun, head: PrivateHead):
        self.run, self.head = run, head

    def on_step(self, report) -> None:
        run, step = self.run, report.step
        if step == 0:
            assert scale_run([str(run.run_dir), "--engines", "+1", "--env-workers", "+2",
                              "--reason", "test: more capacity"]) == 0
        if step == 1:
            assert not ray.wait([run.fleet.joining[0].slot.ready()], timeout=5)[0], "placed with no room?"
            self.head.add_node(num_cpus=1)
            ray.get([j.ready for j in run.fleet.joining], timeout=300)  # built: joins at the next sync
            run.pool.wait_started(timeout_s=120)
            self.new_engine_node = ray.get(run.fleet.joining[0].actor.__ray_call__.remote(
                lambda actor: ray.get_runtime_context().get_node_id()))
        if step == 2:
            self._kill_in_next_sync(1)
        if step == 3:
            self.replacement_node = ray.get(run.fleet.workers[1].__ray_call__.remote(
                lambda actor: ray.get_runtime_context().get_node_id()))
            self.engines_after_kill = [w._actor_id for w in run.fleet.workers]
        if step == 4:
            assert scale_run([str(run.run_dir), "--engines", "-1", "--reason", "test: fewer engines"]) == 0
            self.killed_env = run.pool.workers[0]
            ray.kill(self.killed_env, no_restart=True)
        if step == 5:
            self.retired = [r.actor for r in run.fleet.retiring]
        if step == 6:  # batch 6 is collected, so nothing runs on the retired engine: it was stopped
            self.draining_at_end = len(run.fleet.retiring)
            self.env_replaced, self.groups_rerun = run.pool.replaced_workers, run.pool.rerun_groups

    def _kill_in_next_sync(self, index: int) -> None:
        trainer = self.run.publisher.trainer
        sync = trainer.sync_weights

        def sync_after_a_kill(receivers, version, cfg):
            trainer.sync_weights = sync  # once
            self.killed_in_sync = receivers[index]
            ray.kill(self.killed_in_sync, no_restart=True)
            return sync(receivers, version, cfg)

        trainer.sync_weights = sync_after_a_kill


@pytest.fixture(scope="module")
def head():
    head = PrivateHead(num_cpus=3)
    try:
        head.start()
        yield head
    finally:
        ray.shutdown()
        head.kill()  # SIGKILL: a graceful drain of both raylets takes ~30 s and nothing needs it
        shutil.rmtree(head.tmp, ignore_errors=True)


def _phase_throughput(rows: list[dict], steps: range) -> float:
    picked = [r for r in rows if r["step"] in steps]
    return sum(r["rollout/num_trajectories"] for r in picked) / sum(r["timing/step_s"] for r in picked)


def test_engines_and_env_workers_join_and_leave_a_running_run_on_a_node_added_for_them(head, tmp_path):
    run = TrainingRun(load_config(None, ELASTIC + [f"logging.runs_root={tmp_path}", "run_name=elastic",
                                                   f"cluster.address={head.gcs}"]))
    hand, served = ScaleByHand(run, head), ServedVersions(run)
    run.observers += [hand, served]
    summary = run.execute()
    assert "eval_grpo/pass@1" in summary

    rows = [{"step": i, **m} for i, m in enumerate(served.metrics)]
    engines = [r["elastic/engines"] for r in rows]
    env_workers = [r["elastic/env_workers"] for r in rows]
    # Requests queued after step 0 and after step 4 are applied after steps 1 and 5; the new engine
    # joins at the weight sync that ends step 2; the killed env worker is replaced.
    assert engines == [1, 1, 2, 2, 2, 1, 1], engines
    head_node = ray.get_runtime_context().get_node_id()
    assert hand.new_engine_node != head_node  # placed on the node that joined for it
    assert [r["elastic/engines_starting"] for r in rows] == [0, 1, 0, 0, 0, 0, 0]
    assert rows[2]["elastic/engines_joined"] == 1
    # The new engine, killed inside step 3's sync, was replaced (engine 0 too if it had begun the
    # aborted update: half-updated weights are not served) and the sync repeated.
    assert [r["fault/generation_workers_replaced"] for r in rows][:3] == [0, 0, 0]
    assert rows[3]["fault/generation_workers_replaced"] in (1, 2)
    assert hand.killed_in_sync._actor_id not in hand.engines_after_kill
    assert hand.replacement_node == hand.new_engine_node  # in the killed engine's own reservation
    assert env_workers == [1, 1, 3, 3, 3, 3, 3], env_workers
    events = read_events(run.run_dir)
    assert [(e["step"], e["engines"], e["env_workers"], e["source"]) for e in events] == [
        (1, 1, 2, "cli"), (5, -1, 0, "cli")]
    assert events[1]["outcome"] == "engines -1 draining"

    # Every engine in service after a step serves the version that step trained (the new one
    # included, from its first step in rotation); the retired one was stopped.
    assert all(v == want for want, row in served.rows for v in row), served.rows
    assert [len(row) for _, row in served.rows] == [1, 1, 2, 2, 2, 1, 1]
    assert len(hand.retired) == 1 and hand.draining_at_end == 0
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(hand.retired[0].ping.remote(), timeout=30)
    # The killed env worker is replaced when a group it was given fails; its groups run again.
    assert hand.env_replaced in (0, 1) and (hand.groups_rerun > 0) == (hand.env_replaced == 1)

    last = served.metrics[-1]
    dropped = sum(v for k, v in last.items() if k.startswith("accounting/dropped/"))
    assert last["accounting/produced"] == last["accounting/trained"] + dropped
    assert last["accounting/buffered"] == 0 and last["accounting/in_flight"] == 0
    assert last["accounting/produced"] == 7 * 8  # nothing re-run by a change; the killed worker's group once
    logger.info("killed env worker: %d replaced, %d group(s) re-run", hand.env_replaced, hand.groups_rerun)
    assert (run.run_dir / "capacity.png").is_file()
    rows = [r for r in read_metrics(run.run_dir) if "rollout/num_trajectories" in r]
    # Steps 3-4 hold the kill and two rebuilds: not a fair measure of either layout.
    for name, steps in (("1 engine, 1 env worker", range(0, 2)), ("2 engines, 3 env workers", range(2, 3)),
                        ("1 engine, 3 env workers", range(6, 7))):
        logger.info("throughput with %s: %.2f trajectories/s", name, _phase_throughput(rows, steps))
