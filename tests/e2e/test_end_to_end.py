"""The real stack end to end: Ray + vLLM (CPU) generation workers + env workers + DeepSpeed trainer.

No mocks: episodes are played by vLLM through env-worker actors, GRPO steps run in DeepSpeed, and
the weights are pushed to every generation worker after every step. The native GRPO run and the
agent-program run (an OpenAI-client agent through labrl's endpoint) share one Ray cluster, two
engines and one trainer, built once for the module.
"""

import asyncio
import json
from collections import Counter

import pytest
import ray
import torch

from cluster.ray_cluster import connect
from configs.loading import load_config
from envs.registry import get_env_spec
from launch import components as C
from launch.fleet import EngineFleet, FleetPublisher, TrainerStep
from launch.train import train
from models.loading import load_tokenizer
from models.tiny import save_tiny_model
from monitor.rollout_metrics import rollout_metrics
from rollout.env_worker import EnvWorkerSpec
from rollout.openai_api.assembly import assemble_segments
from rollout.openai_api.server import AgentEndpoint
from rollout.openai_api.session import EpisodeSession
from rollout.pipeline import GRPOPipeline, TaskStream
from tests.rollout.pipeline_fakes import Reports

SMALL = ["sft.num_demos=48", "sft.steps=10", "grpo.num_steps=2", "grpo.batch_size=16",
         "grpo.group_size=4", "eval.num_tasks=8", "env.num_train_tasks=64", "env.num_heldout_tasks=8",
         "logging.progress_bar=false", "generation.max_model_len=512", "trainer.zero_stage=1",
         # An untrained policy earns reward 0 everywhere, so group advantages are all zero; the
         # entropy bonus keeps the optimizer steps real (weights must move for the sync checks),
         # and dynamic sampling, which drops zero-variance groups, must not throw them away.
         "grpo.entropy_coef=0.01", "grpo.dynamic_sampling=false",
         # vLLM prompt logprobs are those of the raw model (temperature 1); compare like with like.
         "generation.temperature=1.0"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return load_config(None, SMALL + [f"logging.runs_root={root}", "run_name=e2e"])


@pytest.fixture(scope="module")
def cluster(cfg):
    if ray.is_initialized():  # a Ray left by another test module: size our own
        ray.shutdown()
    # Logical CPUs: the shared stack's two engines and trainer stay up while the colocated run and
    # the exported-weights engine start beside them (mostly idle actors on 2 real cores).
    connect(None, 2 * C.cpus_requested(cfg) + 2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def stack(cfg, cluster, tmp_path_factory):
    """Two engines and one trainer on a policy that calls a tool every turn, for the module."""
    model_dir = _policy_that_calls_a_tool(tmp_path_factory.mktemp("caller"))
    two_engines = cfg.model_copy(update={"generation": cfg.generation.model_copy(update={"num_workers": 2})})
    fleet = EngineFleet(two_engines, model_dir)
    trainer = C.make_trainer(cfg, model_dir)
    fleet.wait_ready()
    yield two_engines, model_dir, fleet, trainer
    fleet.stop()
    trainer.shutdown()


def _probe_tokens(cfg, model_dir):
    from models.loading import load_tokenizer

    tok = load_tokenizer(model_dir)
    text = "<|im_start|>user\nMolar mass of NaCl in g/mol?<|im_end|>\n<|im_start|>assistant\n"
    return tok.encode(text, add_special_tokens=False)


def test_grpo_steps_sync_weights_to_generation_workers(cfg, stack, tmp_path):
    two_engines, model_dir, fleet, trainer = stack
    spec = get_env_spec(cfg.env.name)
    dataset = spec.make_dataset(64, 8, cfg.env.difficulties, 0)
    gen = fleet.workers
    pool = C.make_env_pool(cfg, model_dir, fleet.router())
    pool.wait_ready()
    probe = _probe_tokens(cfg, model_dir)
    before = ray.get(gen[0].prompt_logprobs.remote(probe))

    reports = Reports()
    pipeline = GRPOPipeline(cfg.grpo.model_copy(update={"num_steps": 2, "batch_size": 16, "group_size": 4}), 1,
                            pool, TaskStream(dataset.tasks("train"), 0), TrainerStep(two_engines, trainer, fleet),
                            FleetPublisher(two_engines, trainer, fleet, pool), [reports])
    pipeline.run()
    logged = [{**rollout_metrics([t for g in r.drawn for t in g], current_version=r.trained_version), **r.metrics}
              for r in reports.reports]

    assert [ray.get(w.policy_version.remote()) for w in gen] == [2, 2]
    after = [ray.get(w.prompt_logprobs.remote(probe)) for w in gen]
    trainer_lp = trainer.compute_logprobs([probe])[0]
    assert max(abs(a - b) for a, b in zip(before[1:], after[0][1:])) > 1e-4, "served weights did not change"
    for served in after:  # both engines serve the trainer's weights
        assert max(abs(a - b) for a, b in zip(served[1:], trainer_lp[1:])) <= 1e-3
    for m in logged:
        assert m["rollout/num_trajectories"] == 16
        assert m["rollout/staleness_max"] <= 1
        assert m["sync/bytes"] > 0 and "train/loss" in m
    assert logged[-1]["policy_version"] == 2
    acc = pipeline.buffer.accounting
    assert acc.produced == acc.trained == 32 and not acc.dropped
    pool.shutdown()

    # The exported HF checkpoint is the trained policy: a fresh vLLM engine loading it from disk
    # serves the trainer's logprobs (names, shapes and tied weights all survive the export).
    exported = trainer.export_hf(str(tmp_path / "exported"))
    fresh = EngineFleet(cfg, exported)
    fresh.wait_ready("engine on the exported weights")
    served = ray.get(fresh.workers[0].prompt_logprobs.remote(probe))
    assert max(abs(a - b) for a, b in zip(served[1:], trainer_lp[1:])) <= 1e-3
    fresh.stop()


AGENT = "examples.openai_agent_lab.agent:SPEC"
# The stack's policy calls `mass` every turn, so every reward is 0 (SMALL's entropy bonus keeps the
# steps real); three turns at most, so episodes end on the endpoint's turn budget.
AGENT_RUN = ["sft.enabled=false", f"env.name={AGENT}", "grpo.batch_size=8", "env.num_train_tasks=32",
             "env.num_heldout_tasks=4", "eval.num_tasks=4", "env.max_turns=3", "generation.max_new_tokens=64"]
CALL = '<tool_call>{"name": "mass", "arguments": {"el": "Na"}}</tool_call>'


def _policy_that_calls_a_tool(path) -> str:
    """The tiny policy, taught by a few hundred plain-torch steps to answer every turn with one
    well-formed `mass` call (an untrained policy never emits a parseable call)."""
    from transformers import AutoModelForCausalLM

    save_tiny_model(path)
    tok = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    prefixes = ["<|im_start|>user\nMolar mass of Na2S in g/mol?<|im_end|>\n",
                "<|im_start|>user\n<tool_response>22.99</tool_response><|im_end|>\n",
                "<|im_start|>user\nMolar mass of KCl in g/mol?<|im_end|>\n"]
    reply = tok.encode(CALL + "<|im_end|>", add_special_tokens=False)
    batch = []
    for prefix in prefixes:
        context = tok.encode(prefix + "<|im_start|>assistant\n", add_special_tokens=False)
        batch.append((torch.tensor(context + reply), len(context)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(300):
        loss = sum(torch.nn.functional.cross_entropy(model(ids[None]).logits[0, start - 1:-1], ids[start:])
                   for ids, start in batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


async def _two_turns_across_an_update(cfg, model_dir, fleet, publisher, version):
    """A tool-using agent written with the openai client; the weights change between its turns."""
    import openai

    from envs.chat import ChatCodec

    spec = EnvWorkerSpec.from_config(cfg, model_dir)
    session = EpisodeSession(ChatCodec(load_tokenizer(model_dir)), fleet.router(), spec.sampling,
                             cfg.generation.max_model_len, max_turns=3)
    endpoint = AgentEndpoint()
    await endpoint.start()
    client = openai.AsyncOpenAI(base_url=endpoint.open_episode(session), api_key="unused", max_retries=0)
    tools = [{"type": "function", "function": {"name": "mass", "description": "Atomic mass in g/mol.",
                                               "parameters": {"type": "object", "properties": {
                                                   "el": {"type": "string"}}, "required": ["el"]}}}]
    messages = [{"role": "user", "content": "Molar mass of Na2S in g/mol?"}]
    model = (await client.models.list()).data[0].id
    # Four choices: the taught call is likely (~0.95 each at temperature 1), not certain; the agent
    # continues from one that made it.
    first = await client.chat.completions.create(model=model, messages=messages, tools=tools, logprobs=True, n=4)
    assert sum(len(c.logprobs.content) for c in first.choices) == first.usage.completion_tokens
    chosen = next(c for c in first.choices if c.finish_reason == "tool_calls")
    reply = chosen.message
    call = reply.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("mass", {"el": "Na"})
    publisher.sync(version)  # the same weights as the next version: the episode's next turn is on it
    messages += [reply.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": call.id, "content": "22.99"}]
    stream = await client.chat.completions.create(model=model, messages=messages, tools=tools, stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason in ("tool_calls", "stop", "length")
    await client.close()
    await endpoint.stop()
    return session


def test_openai_client_agent_on_a_real_engine_then_grpo_on_an_agent_program(cfg, stack):
    """The official `openai` client drives a tool-using agent against the endpoint on the real
    engines (n=4 choices, one continued; a policy update between two turns records both versions;
    the trainer scores every recorded sampled token as the sampler did), then the example agent program (examples/openai_agent_lab)
    trains for two GRPO steps through env workers, vLLM and DeepSpeed."""
    _, model_dir, fleet, trainer = stack
    agent_cfg = load_config(None, SMALL + AGENT_RUN + [f"logging.runs_root={cfg.logging.runs_root}/agents",
                                                      "run_name=agents"])
    pool = C.make_env_pool(agent_cfg, model_dir, fleet.router())
    pool.wait_ready()
    publisher = FleetPublisher(agent_cfg, trainer, fleet, pool)
    v = ray.get(fleet.workers[0].policy_version.remote())
    session = asyncio.run(_two_turns_across_an_update(agent_cfg, model_dir, fleet, publisher, v + 1))
    built = assemble_segments(session.completions)
    # Four choices then one turn: the turn extends its choice's segment, the other three are siblings.
    assert built.versions == [v] * 4 + [v + 1] and built.forks == 0 and len(built.segments) == 4
    trainer_lps = trainer.compute_logprobs([s.token_ids for s in built.segments])
    diffs = [abs(a - b) for segment, trainer_lp in zip(built.segments, trainer_lps)
             for a, b, m in zip(trainer_lp, segment.sampler_logprobs, segment.loss_mask) if m]
    assert len(diffs) == sum(len(c.token_ids) for c in session.completions) and max(diffs) <= 1e-3

    dataset = get_env_spec(AGENT).make_dataset(32, 4, agent_cfg.env.difficulties, 0)
    reports = Reports()
    grpo = agent_cfg.grpo.model_copy(update={"num_steps": v + 3})
    pipeline = GRPOPipeline(grpo, 1, pool, TaskStream(dataset.tasks("train"), 0),
                            TrainerStep(agent_cfg, trainer, fleet), publisher, [reports], start_version=v + 1)
    pipeline.run()
    pool.shutdown()
    trajs = [t for r in reports.reports for g in r.drawn for t in g]
    logged = rollout_metrics(trajs, current_version=v + 3)
    assert len(trajs) == 16 and logged["rollout/fork_rate"] == 0.0
    assert max(t.num_turns for t in trajs) >= 2, "the agent continues after a tool call: multi-turn episodes"
    finishes = Counter(t.finish_reason for t in trajs)
    assert set(finishes) <= {"budget", "env_done", "length"}, finishes  # no agent or infrastructure error
    acc = pipeline.buffer.accounting
    assert acc.produced == acc.trained == 16 and not acc.dropped
    assert [ray.get(w.policy_version.remote()) for w in fleet.workers] == [v + 3] * 2


def test_colocated_engines_sleep_through_each_trainer_step(cfg, cluster):
    """placement.mode=colocated with generation.sleep_level=1: every step puts the engine to
    sleep before the trainer runs, wakes its weights for the sync, then its KV cache. (On CPU vLLM
    keeps its memory; the protocol and its ordering are what runs here.)"""
    colocated = load_config(None, SMALL + [f"logging.runs_root={cfg.logging.runs_root}/colocated",
                                           "run_name=e2e-colocated", "sft.enabled=false",
                                           "placement.mode=colocated", "generation.sleep_level=1",
                                           "rollout.max_staleness=0"])
    train(colocated)
    run_dir = next(p for p in __import__("pathlib").Path(colocated.logging.runs_root).iterdir())
    steps = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if "timing/step_s" in r]
    assert [r["policy_version"] for r in steps] == [1.0, 2.0]
    for r in steps:
        assert "train/loss" in r and r["sync/version"] == r["policy_version"]
        assert r["colocate/sleep_s"] >= 0 and r["colocate/wake_weights_s"] >= 0
        # generation stayed closed from the sleep until the KV cache woke: through the whole step
        assert r["colocate/generation_paused_s"] >= r["train/wall_time_s"]
        assert r["rollout/staleness_max"] == 0
