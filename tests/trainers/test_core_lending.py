"""A CPU trainer rank computes on idle engines' cores (trainers/core_lending.py, actors/core_board.py).

The board is a directory of small records; here the engine entries are written by this process,
as GenerationWorker writes its own (tests/actors/test_generation_worker.py checks that side).
"""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from actors.core_board import BoardEntry, IdleEngineCpus, read_entry
from trainers.core_lending import CoreLending


@pytest.fixture
def own_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield 1
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from models.tiny import save_tiny_model

    path = save_tiny_model(tmp_path_factory.mktemp("lending_model"))
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)


def threads_seen(model: torch.nn.Module) -> tuple[list[int], list[int]]:
    """Intra-op threads inside every decoder layer's forward and backward of one training pass."""
    forward, backward = [], []
    handles = []
    for layer in model.model.layers:
        handles.append(layer.register_forward_pre_hook(lambda *_: forward.append(torch.get_num_threads())))
        handles.append(layer.mlp.register_full_backward_hook(lambda *_: backward.append(torch.get_num_threads())))
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    model(input_ids=ids).logits.sum().backward()
    for h in handles:
        h.remove()
    return forward, backward


def test_the_board_reports_idle_engines_cpus_and_ignores_dead_writers(tmp_path):
    engine = BoardEntry(tmp_path, "engine", "gen0", 1.0)
    other = BoardEntry(tmp_path, "engine", "gen1", 2.0)
    board = IdleEngineCpus(tmp_path)
    assert board.refresh() == 2
    assert board.idle_cpus() == 3.0
    other.set(busy=True)
    assert board.idle_cpus() == 1.0
    engine.set(busy=True)
    assert board.idle_cpus() == 0.0

    stale = tmp_path / "engine-gen9-1"
    stale.write_text(f"0 {4.0:>6.2f} {_finished_pid():>10d}\n")
    torn = tmp_path / "engine-gen8-2"
    torn.write_text("0 ")
    assert board.refresh() == 2  # the dead writer's entry is dropped (and removed), the torn one read as unknown
    assert not stale.exists() and torn.exists()
    other.close()
    assert board.refresh() == 1 and not other.path.exists()
    engine.close()
    board.close()


def _finished_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


def test_a_rank_computes_on_an_idle_engines_core_and_gives_it_back(tmp_path, model, own_threads):
    engine = BoardEntry(tmp_path, "engine", "gen0", 1.0)
    lending = CoreLending(IdleEngineCpus(tmp_path), BoardEntry(tmp_path, "rank", "0", own_threads), own_threads)
    assert lending.attach(model) == model.config.num_hidden_layers

    lending.begin_step()  # the engine is idle: every layer runs on both cores
    forward, backward = threads_seen(model)
    assert forward == [2] * model.config.num_hidden_layers and backward == [2] * model.config.num_hidden_layers
    metrics = lending.end_step()
    assert torch.get_num_threads() == own_threads
    assert metrics["train/lent_cores_frac"] > 0 and metrics["train/threads_mean"] > 1

    engine.set(busy=True)  # generating: the rank keeps to its own core
    lending.begin_step()
    forward, backward = threads_seen(model)
    assert set(forward) == set(backward) == {1}
    assert lending.end_step()["train/lent_cores_frac"] == 0.0

    engine.set(busy=False)  # two ranks on the node share one idle CPU: neither takes it
    second_rank = BoardEntry(tmp_path, "rank", "1", 1.0)
    lending.begin_step()
    assert set(threads_seen(model)[0]) == {1}
    lending.end_step()
    assert read_entry(second_rank.path)[0] is True  # a rank's entry always reads busy
    second_rank.close()
    lending.close()
    engine.close()
    assert not os.listdir(tmp_path)
