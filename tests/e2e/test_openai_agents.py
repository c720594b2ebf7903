"""Agent programs through labrl's OpenAI-compatible endpoint, on the real stack.

The official `openai` client drives a multi-turn tool-using agent against the endpoint on a real
vLLM engine (a policy update between two turns records both versions, and the trainer scores the
recorded tokens as the sampler did), then the example agent program (examples/openai_agent_lab)
trains for two GRPO steps through Ray env workers, vLLM and DeepSpeed.
"""

import asyncio
import json

import pytest
import ray
import torch

from cluster.ray_cluster import connect
from configs.loading import load_config
from envs.registry import get_env_spec
from launch import components as C
from launch.fleet import EngineFleet, FleetPublisher, TrainerStep
from models.loading import load_tokenizer
from models.tiny import save_tiny_model
from monitor.rollout_metrics import rollout_metrics
from rollout.openai_api.assembly import assemble_segments
from rollout.openai_api.server import AgentEndpoint
from rollout.openai_api.session import EpisodeSession
from rollout.env_worker import EnvWorkerSpec
from rollout.pipeline import GRPOPipeline, TaskStream
from tests.rollout.pipeline_fakes import Reports

AGENT = "examples.openai_agent_lab.agent:SPEC"
CALL = '<tool_call>{"name": "mass", "arguments": {"el": "Na"}}</tool_call>'
CONFIG = ["sft.enabled=false", f"env.name={AGENT}", "grpo.num_steps=3", "grpo.batch_size=8",
          "grpo.group_size=4", "eval.num_tasks=4", "env.num_train_tasks=32", "env.num_heldout_tasks=4",
          "env.max_turns=3", "logging.progress_bar=false", "generation.max_model_len=512",
          "generation.max_new_tokens=64", "trainer.zero_stage=1", "generation.temperature=1.0",
          # The policy below always calls a tool, so every reward is 0: the entropy bonus keeps the
          # steps real and dynamic sampling must not drop the flat groups.
          "grpo.entropy_coef=0.01", "grpo.dynamic_sampling=false"]


def _policy_that_calls_a_tool(path) -> str:
    """The tiny policy, taught by a few hundred plain-torch steps to answer every turn with one
    well-formed `mass` call: an untrained policy never emits a parseable call."""
    from transformers import AutoModelForCausalLM

    save_tiny_model(path)
    tok = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(path)
    prefixes = ["<|im_start|>user\nMolar mass of Na2S in g/mol?<|im_end|>\n",
                "<|im_start|>user\n<tool_response>22.99</tool_response><|im_end|>\n",
                "<|im_start|>user\nMolar mass of KCl in g/mol?<|im_end|>\n"]
    batch = []
    for prefix in prefixes:
        context = tok.encode(prefix + "<|im_start|>assistant\n", add_special_tokens=False)
        reply = tok.encode(CALL + "<|im_end|>", add_special_tokens=False)
        batch.append((torch.tensor(context + reply), len(context)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(300):
        loss = 0.0
        for ids, start in batch:
            logits = model(ids[None]).logits[0, start - 1:-1]
            loss = loss + torch.nn.functional.cross_entropy(logits, ids[start:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model_dir = _policy_that_calls_a_tool(tmp_path_factory.mktemp("caller"))
    root = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, CONFIG + [f"model.path={model_dir}", f"logging.runs_root={root}", "run_name=agents"])
    if ray.is_initialized():
        ray.shutdown()
    connect(None, C.cpus_requested(cfg))
    fleet = EngineFleet(cfg, model_dir)
    trainer = C.make_trainer(cfg, model_dir)
    fleet.wait_ready()
    pool = C.make_env_pool(cfg, model_dir, fleet.router())
    pool.wait_ready()
    yield cfg, model_dir, fleet, trainer, pool
    pool.shutdown()
    fleet.stop()
    trainer.shutdown()
    ray.shutdown()


async def _two_turns_across_an_update(cfg, model_dir, fleet, publisher):
    """A tool-using agent written with the openai client; the weights change between its turns."""
    import openai

    spec = EnvWorkerSpec.from_config(cfg, model_dir)
    from envs.chat import ChatCodec

    session = EpisodeSession(ChatCodec(load_tokenizer(model_dir)), fleet.router(), spec.sampling,
                             cfg.generation.max_model_len, max_turns=3)
    endpoint = AgentEndpoint()
    await endpoint.start()
    client = openai.AsyncOpenAI(base_url=endpoint.open_episode(session), api_key="unused", max_retries=0)
    tools = [{"type": "function", "function": {"name": "mass", "description": "Atomic mass in g/mol.",
                                               "parameters": {"type": "object", "properties": {
                                                   "el": {"type": "string"}}, "required": ["el"]}}}]
    messages = [{"role": "user", "content": "Molar mass of Na2S in g/mol?"}]
    models = await client.models.list()
    first = await client.chat.completions.create(model=models.data[0].id, messages=messages, tools=tools,
                                                 logprobs=True)
    reply = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls", reply
    call = reply.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("mass", {"el": "Na"})
    publisher.sync(1)  # the same weights, served as version 1: the episode's next turn is v1
    messages += [reply.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "22.99"}]
    stream = await client.chat.completions.create(model=models.data[0].id, messages=messages, tools=tools,
                                                  stream=True)
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason in ("tool_calls", "stop", "length")
    await client.close()
    await endpoint.stop()
    return session


def test_openai_client_agent_on_a_real_engine_then_grpo_on_an_agent_program(setup):
    cfg, model_dir, fleet, trainer, pool = setup
    publisher = FleetPublisher(cfg, trainer, fleet, pool)
    session = asyncio.run(_two_turns_across_an_update(cfg, model_dir, fleet, publisher))
    built = assemble_segments(session.completions)
    assert built.versions == [0, 1] and built.forks == 0 and len(built.segments) == 1
    segment = built.segments[0]
    trainer_lp = trainer.compute_logprobs([segment.token_ids])[0]
    diffs = [abs(a - b) for a, b, m in zip(trainer_lp, segment.sampler_logprobs, segment.loss_mask) if m]
    assert len(diffs) == sum(len(c.token_ids) for c in session.completions) and max(diffs) <= 1e-3

    spec = get_env_spec(AGENT)
    dataset = spec.make_dataset(32, 4, cfg.env.difficulties, 0)
    reports = Reports()
    pipeline = GRPOPipeline(cfg.grpo, 1, pool, TaskStream(dataset.tasks("train"), 0),
                            TrainerStep(cfg, trainer, fleet), publisher, [reports], start_version=1)
    pipeline.run()
    trajs = [t for r in reports.reports for g in r.drawn for t in g]
    logged = rollout_metrics(trajs, current_version=3)
    assert len(trajs) == 16 and logged["rollout/fork_rate"] == 0.0
    assert min(t.num_turns for t in trajs) >= 2, "the policy calls a tool every turn: episodes are multi-turn"
    assert all(t.finish_reason in ("budget", "env_done") for t in trajs)
    acc = pipeline.buffer.accounting
    assert acc.produced == acc.trained == 16 and not acc.dropped
    assert [ray.get(w.policy_version.remote()) for w in fleet.workers] == [3]
