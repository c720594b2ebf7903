"""SFT on plain samples: the masked NLL falls on the demonstrations, and the saved policy loads."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from configs.schema import SFTConfig
from trainers.batching import TrainSample
from trainers.sft import batch_nll, sft_process_env, train_sft


def demo(token_ids: list[int], loss_mask: list[int]) -> TrainSample:
    return TrainSample(token_ids, loss_mask, [0.0] * len(token_ids), 0.0)


def test_sft_learns_the_demonstrations_and_saves_a_policy(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    demos = [demo([11, 12, 13, 14, 15, 16], [0, 0, 1, 1, 1, 1]), demo([21, 22, 23, 24], [0, 1, 1, 1])]

    def nll(model_dir: str) -> float:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        with torch.no_grad():
            return batch_nll(model, demos, pad_token_id=0).item()

    out = tmp_path / "sft"
    metrics = train_sft(tiny_model_dir, out, demos, SFTConfig(steps=20, batch_size=2, lr=3e-3), seed=0,
                        pad_token_id=0, progress_bar=False)
    assert metrics["sft/num_demos"] == 2.0 and metrics["sft/final_loss"] < nll(tiny_model_dir)
    assert nll(str(out)) < nll(tiny_model_dir)
    assert (out / "config.json").is_file() and any(out.glob("tokenizer*"))


def test_a_long_shared_system_prompt_runs_once_with_the_padded_loss(tiny_model_dir, monkeypatch):
    """Chat demonstrations share a long system prompt (tool schemas): the batch runs it once, packed,
    on cached keys and values, and the loss is the padded batch's loss, gradients included."""
    from transformers import AutoModelForCausalLM

    import trainers.prompt_cache as prompt_cache

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    system = [(7 * i) % 90 + 5 for i in range(60)]
    demos = [demo(system + [40 + k, 41, 42 + k] + [50 + k] * (3 + k), [0] * 63 + [1] * (3 + k)) for k in range(6)]
    ran: list[int] = []
    model.register_forward_pre_hook(lambda _, args, kwargs: ran.append(kwargs["input_ids"].numel()), with_kwargs=True)

    def loss_and_grad() -> tuple[float, torch.Tensor]:
        model.zero_grad()
        loss = batch_nll(model, demos, pad_token_id=0)
        loss.backward()
        return loss.item(), model.get_input_embeddings().weight.grad.clone()

    shared, shared_grad = loss_and_grad()
    monkeypatch.setattr(prompt_cache, "MIN_PREFIX_GAIN", 1e9)
    padded, padded_grad = loss_and_grad()
    assert ran == [60, 6 * 11, 6 * len(demos[-1].token_ids)]  # prompt, suffixes; then the padded batch
    assert shared == pytest.approx(padded, rel=1e-5)
    assert torch.allclose(shared_grad, padded_grad, atol=1e-6) and padded_grad[system].abs().sum() > 0


def test_sft_needs_a_demonstration(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        train_sft("unused", tmp_path, [], SFTConfig(), seed=0, pad_token_id=0, progress_bar=False)


def test_the_sft_process_gets_its_threads_with_or_without_pinned_kernels():
    """Ray starts a task that reserves no CPU with one thread; SFT asks for `num_threads` either way."""
    assert sft_process_env(SFTConfig(numerics="this_machine", num_threads=3)) == {
        "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    pinned = sft_process_env(SFTConfig(numerics="any_x86", num_threads=2))
    assert pinned["ATEN_CPU_CAPABILITY"] == "avx2" and pinned["OMP_NUM_THREADS"] == "2"
    assert pinned["MKL_CBWR"] == "COMPATIBLE"  # the one MKL branch honoured on AMD CPUs too


_SFT_IN_A_FRESH_PROCESS = """
import hashlib, sys
from pathlib import Path
from configs.schema import SFTConfig
from tests.trainers.conftest import make_samples
from trainers.sft import train_sft
sft = SFTConfig(steps=15, batch_size=8, lr=3e-3, numerics=sys.argv[3], num_threads=2)
train_sft(sys.argv[1], sys.argv[2], make_samples(0, 32, vocab=100, min_len=20, max_len=120), sft, seed=0,
          pad_token_id=0, progress_bar=False)
print(hashlib.sha256((Path(sys.argv[2]) / "model.safetensors").read_bytes()).hexdigest())
"""


def _sft_checkpoint_hash(model_dir: str, out: Path, numerics: str, cores: str, machine: dict[str, str]) -> str:
    """SFT in a fresh process that sees only `cores` and whose environment has `machine` (a stand-in
    for another CPU), then `sft_process_env` on top, as `launch.components.run_sft` starts it."""
    env = {**os.environ, **machine, **sft_process_env(SFTConfig(numerics=numerics, num_threads=2))}
    cmd = ["taskset", "-c", cores, sys.executable, "-c", _SFT_IN_A_FRESH_PROCESS, model_dir, str(out), numerics]
    done = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split()[-1]


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2
                    or torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="needs taskset, 2 CPUs and an AVX2 or AVX-512 CPU (pinned kernels) to stand in for two machines")
def test_sft_numerics_decide_which_other_machines_train_the_same_checkpoint(tiny_model_dir, tmp_path):
    """Machine A: this CPU, 2 cores. Another Intel CPU: 1 core and torch's scalar kernels (other
    vector units run other code paths). An AMD CPU: that, and MKL allowed no more than SSE4.2
    (`MKL_ENABLE_INSTRUCTIONS`), so it cannot run its AVX2 branch: what MKL does on AMD, where it
    honours no reproducibility branch but COMPATIBLE and falls back to its automatic dispatch."""
    machines = {"A": ("0,1", {}), "intel": ("0", {"ATEN_CPU_CAPABILITY": "default"}),
                "amd": ("0", {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"})}
    wanted = {"this_machine": "A intel", "intel_x86": "A intel amd", "any_x86": "A intel amd"}
    runs = {(n, m): _sft_checkpoint_hash(tiny_model_dir, tmp_path / f"{n}-{m}", n, *machines[m])
            for n, ms in wanted.items() for m in ms.split()}
    assert runs["this_machine", "A"] != runs["this_machine", "intel"]
    if "GenuineIntel" in Path("/proc/cpuinfo").read_text():
        assert runs["intel_x86", "A"] == runs["intel_x86", "intel"] != runs["intel_x86", "amd"]
    else:  # an AMD host ignores MKL's AVX2 branch, so no process here can stand in for an Intel CPU;
        # it trains what the stand-in for an AMD CPU trains (which checks that stand-in on a real one)
        assert runs["intel_x86", "A"] == runs["intel_x86", "amd"]
    assert runs["any_x86", "A"] == runs["any_x86", "intel"] == runs["any_x86", "amd"]
    assert len({runs[n, "A"] for n in wanted}) == 3  # three kinds of rounding
