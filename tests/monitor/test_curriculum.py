"""Training task selection from a reward profile: zero-variance tasks dropped, curriculum order kept."""

from __future__ import annotations

import pytest

from envs.dataset import Task, round_robin_by_difficulty
from configs.loading import ConfigError, load_config
from launch.curriculum import CurriculumStream, select_tasks, training_stream
from monitor.profiling import profile_tasks, read_profiles, write_profiles
from rollout.pipeline import TaskStream
from tests.monitor.synthetic import traj


def tasks(*ids: str, difficulty: int = 1) -> list[Task]:
    return [Task(id=i, env_name="stoich", split="train", difficulty=difficulty, seed=0) for i in ids]


@pytest.fixture
def profile_path(tmp_path):
    rewards = {"easy": [1, 1, 1, 0], "solved": [1, 1, 1, 1], "hard": [0, 0, 0, 1], "mid": [1, 0, 1, 0],
               "dead": [0, 0, 0, 0]}
    trajs = [traj(float(r), task_id=t) for t, rs in rewards.items() for r in rs]
    path = tmp_path / "profile.jsonl"
    write_profiles(path, profile_tasks(trajs))
    return path


def test_drops_zero_variance_and_keeps_unprofiled(profile_path):
    kept = select_tasks(tasks("easy", "solved", "hard", "new", "mid", "dead"), read_profiles(profile_path))
    assert [t.id for t in kept] == ["easy", "hard", "new", "mid"]


def test_curriculum_orders(profile_path):
    profiles = read_profiles(profile_path)
    all_tasks = tasks("hard", "new", "mid", "easy")
    assert [t.id for t in select_tasks(all_tasks, profiles, "easy_first")] == ["easy", "mid", "hard", "new"]
    assert [t.id for t in select_tasks(all_tasks, profiles, "hard_first")] == ["hard", "mid", "easy", "new"]


def test_no_task_left_is_an_error(profile_path):
    with pytest.raises(ValueError, match="no training task"):
        select_tasks(tasks("solved", "dead"), read_profiles(profile_path))


def test_training_stream_from_config(profile_path):
    base = load_config(None, [])
    assert type(training_stream(tasks("a", "b"), base)) is TaskStream
    cfg = load_config(None, [f"env.task_filter_profile={profile_path}", "env.curriculum=easy_first"])
    stream = training_stream(tasks("hard", "mid", "easy", "dead"), cfg)
    assert isinstance(stream, CurriculumStream)
    assert [stream.next().id for _ in range(4)] == ["easy", "mid", "hard", "easy"]
    shuffled = training_stream(tasks("hard", "mid", "easy", "dead"),
                               load_config(None, [f"env.task_filter_profile={profile_path}"]))
    assert sorted(shuffled.next().id for _ in range(3)) == ["easy", "hard", "mid"]


def test_training_stream_from_the_runs_own_profile(profile_path):
    """env.profile_train_tasks: the run hands its start-policy profile in; no file is read."""
    cfg = load_config(None, ["env.profile_train_tasks=5", "env.curriculum=hard_first"])
    stream = training_stream(tasks("easy", "new", "dead", "hard"), cfg, read_profiles(profile_path))
    assert [stream.next().id for _ in range(4)] == ["hard", "easy", "new", "hard"]


def test_curriculum_needs_a_profile():
    with pytest.raises(ConfigError, match="task_filter_profile or env.profile_train_tasks"):
        load_config(None, ["env.curriculum=easy_first"])
    with pytest.raises(ConfigError, match="two sources of one profile"):
        load_config(None, ["env.profile_train_tasks=8", "env.task_filter_profile=p.jsonl"])


def test_round_robin_spreads_every_prefix_over_the_difficulties():
    levels = tasks("a1", "a2", "a3") + tasks("b1", "b2", difficulty=2) + tasks("c1", difficulty=3)
    assert [t.id for t in round_robin_by_difficulty(levels)] == ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert round_robin_by_difficulty([]) == []


def test_sft_difficulties_must_be_trained_on():
    assert load_config(None, ["env.difficulties=[1,2,3]", "sft.difficulties=[1]"]).sft.difficulties == [1]
    with pytest.raises(ConfigError, match=r"sft.difficulties \[2\] are not in env.difficulties"):
        load_config(None, ["sft.difficulties=[2]"])
