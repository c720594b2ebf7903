"""Held-out statistics from k samples per task: pass@1, pass@k, majority vote over submitted answers."""

from __future__ import annotations

import pytest

from monitor.eval_stats import heldout_metrics, majority_vote
from monitor.samples import submitted_answer
from tests.monitor.synthetic import submit_messages, traj


def test_submitted_answer_is_last_submit_call():
    msgs = submit_messages(3.5, extra_calls=2)
    assert submitted_answer(msgs) == '{"answer": 3.5}'
    assert submitted_answer(submit_messages(None, extra_calls=2)) is None
    assert submitted_answer(msgs + submit_messages(4.0)[2:]) == '{"answer": 4.0}'


def test_majority_vote_correct_and_wrong():
    right = [traj(1.0, answer=2.0), traj(1.0, answer=2.0), traj(0.0, answer=3.0)]
    assert majority_vote(right) == (1.0, '{"answer": 2.0}')
    wrong = [traj(1.0, answer=2.0), traj(0.0, answer=3.0), traj(0.0, answer=3.0)]
    assert majority_vote(wrong)[0] == 0.0


def test_majority_vote_tie_and_no_answers():
    tie = [traj(1.0, answer=2.0), traj(0.0, answer=3.0)]
    assert majority_vote(tie)[0] == pytest.approx(0.5)
    assert majority_vote([traj(0.0), traj(0.0)]) == (0.0, None)  # nobody submitted


def test_majority_ignores_episodes_without_submit():
    trajs = [traj(1.0, answer=2.0), traj(0.0), traj(0.0), traj(0.0)]
    assert majority_vote(trajs)[0] == 1.0


def test_heldout_metrics_hand_computed():
    a = [traj(1.0, task_id="a", answer=1), traj(0.0, task_id="a", answer=2), traj(0.0, task_id="a", answer=2),
         traj(0.0, task_id="a", answer=3)]
    b = [traj(1.0, task_id="b", answer=7)] * 3 + [traj(0.0, task_id="b")]
    metrics, rows = heldout_metrics(a + b, k=4)
    assert metrics["eval/num_tasks"] == 2
    assert metrics["eval/pass@1"] == pytest.approx((0.25 + 0.75) / 2)
    assert metrics["eval/pass@4"] == pytest.approx(1.0)
    assert metrics["eval/maj@4"] == pytest.approx(0.5)  # a: majority "2" wrong; b: "7" right
    assert metrics["eval/submit_rate"] == pytest.approx(7 / 8)
    assert [r.task_id for r in rows] == ["a", "b"] and rows[0].majority_answer == '{"answer": 2}'
