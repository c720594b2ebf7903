"""Checkpoint bookkeeping on disk: which folders a commit keeps, and how a run's step logs are
rewound to a checkpoint (a SIGKILLed run left rows for steps that will run again)."""

from __future__ import annotations

import json

from launch.run_state import (RunState, STATE_FILE, checkpoint_tag, committed_run_state, rewind_run_files,
                              save_run_state, stale_checkpoints)


def test_a_commit_keeps_itself_and_the_newest_older_ones_and_deletes_orphans(tmp_path):
    for v in (2, 4, 6, 8, 10):
        (tmp_path / checkpoint_tag(v)).mkdir()
    (tmp_path / "step_3").mkdir()  # not ours (another naming): never touched
    # v8 is committed; v10 is the folder of a save killed before its commit.
    stale = stale_checkpoints(tmp_path, "v8", keep_last=2)
    assert sorted(p.name for p in stale) == ["v10", "v2", "v4"]
    assert sorted(p.name for p in stale_checkpoints(tmp_path, "v8", keep_last=1)) == ["v10", "v2", "v4", "v6"]
    assert stale_checkpoints(tmp_path, "v8", keep_last=9) == [tmp_path / "v10"]


def test_run_state_is_only_what_was_committed(tmp_path):
    assert committed_run_state(tmp_path) is None
    state = RunState(policy_version=4, trainer_tag="v4", policy_dir="/p", summary={"eval_sft/pass@1": 0.1})
    save_run_state(tmp_path, state)
    # A save killed after writing the temporary file but before the rename changes nothing.
    (tmp_path / (STATE_FILE + ".tmp")).write_text('{"policy_version": 8, "trainer_')
    assert committed_run_state(tmp_path) == state


def test_rewind_drops_step_rows_from_the_restored_version_on_and_keeps_the_rest(tmp_path):
    metrics = [{"step": 0, "eval_sft/pass@1": 0.1}] + [{"step": s, "accounting/produced": 8 * (s + 1)} for s in range(4)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics) + '{"step": 4, "acc')
    (tmp_path / "batches.jsonl").write_text("".join(json.dumps({"step": s, "task_ids": [f"t{s}"]}) + "\n"
                                                    for s in range(4)))
    with open(tmp_path / "metrics.jsonl", "a") as held_open:  # the run's logger keeps appending
        assert rewind_run_files(tmp_path, version=2) == 2 + 2 + 1
        held_open.write(json.dumps({"step": 2, "accounting/produced": 24}) + "\n")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == metrics[:3] + [{"step": 2, "accounting/produced": 24}]
    assert [json.loads(line)["step"] for line in (tmp_path / "batches.jsonl").read_text().splitlines()] == [0, 1]
