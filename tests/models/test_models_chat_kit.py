"""Kit model specs, parameter counts without allocation, and the saved Hugging Face directory."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
)

from models.chat_kit import (
    CHAT_KIT_MARKER,
    PRESETS,
    ChatModelSpec,
    build_chat_model,
    count_parameters,
    meta_parameter_count,
    qwen2_config,
)
from models.chat_tokenizer import ENDOFTEXT, IM_END
from models.loading import TINY_MARKER, is_tiny_model, load_tokenizer

QWEN_VOCAB = 151_936  # Qwen2.5's embedding rows


def test_qwen25_05b_preset_has_the_real_shape():
    spec = PRESETS["qwen2.5-0.5b"]
    config = qwen2_config(spec, 16_384)
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (24, 896, 4864)
    assert (config.num_attention_heads, config.num_key_value_heads, spec.head_dim) == (14, 2, 64)
    assert config.tie_word_embeddings is True
    assert config.rope_parameters["rope_theta"] == 1e6
    assert config.max_position_embeddings == 32_768 and config.vocab_size == 16_384
    # The published count of Qwen2.5-0.5B, from the shape alone.
    assert count_parameters(spec, QWEN_VOCAB) == 494_032_768


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("vocab", [2_000, 16_384])
def test_analytic_count_matches_the_meta_device_module(name, vocab):
    spec = PRESETS[name]
    assert meta_parameter_count(spec, vocab) == count_parameters(spec, vocab)


def test_untied_head_is_counted_twice():
    spec = dataclasses.replace(PRESETS["test"], tie_word_embeddings=False)
    tied = count_parameters(PRESETS["test"], 2_000)
    assert count_parameters(spec, 2_000) == meta_parameter_count(spec, 2_000) == tied + 2_000 * 64


def test_chat_cpu_preset_is_in_the_10_to_30m_range():
    assert 10e6 < count_parameters(PRESETS["chat-cpu"], 16_384) < 30e6


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="num_heads"):
        ChatModelSpec(hidden_size=100, intermediate_size=64, num_layers=1, num_heads=3, num_kv_heads=1)
    with pytest.raises(ValueError, match="num_kv_heads"):
        ChatModelSpec(hidden_size=128, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim 16 .* vLLM's CPU attention"):
        ChatModelSpec(hidden_size=64, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2)


def test_weights_follow_the_seed(kit_tokenizer):
    a, b = (build_chat_model(PRESETS["test"], kit_tokenizer) for _ in range(2))
    c = build_chat_model(dataclasses.replace(PRESETS["test"], seed=1), kit_tokenizer)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_saved_directory_loads_with_auto_classes(kit_dir):
    tok = AutoTokenizer.from_pretrained(kit_dir)
    model = AutoModelForCausalLM.from_pretrained(kit_dir)
    assert model.config.vocab_size == len(tok)
    assert model.config.eos_token_id == tok.convert_tokens_to_ids(IM_END) == tok.eos_token_id
    assert model.config.pad_token_id == tok.convert_tokens_to_ids(ENDOFTEXT) == tok.pad_token_id
    ids = tok.apply_chat_template([{"role": "user", "content": "Molar mass of NaCl?"}], tokenize=True,
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert torch.isfinite(logits).all()


def test_saved_directory_records_the_build(kit_dir):
    marker = json.loads((kit_dir / CHAT_KIT_MARKER).read_text())
    config = AutoConfig.from_pretrained(kit_dir)
    assert marker["spec"] == dataclasses.asdict(PRESETS["test"])
    assert marker["vocab_size"] == config.vocab_size and marker["vocab_size_requested"] == 2000
    assert marker["parameters"] == count_parameters(PRESETS["test"], config.vocab_size)
    assert marker["episodes"] > 0
    generation = GenerationConfig.from_pretrained(kit_dir)
    assert generation.eos_token_id == [config.eos_token_id, config.pad_token_id]
    # Token ids only: no sampling defaults for vLLM to pick up from the directory.
    raw = json.loads((kit_dir / "generation_config.json").read_text())
    assert set(raw) <= {"eos_token_id", "pad_token_id", "bos_token_id", "transformers_version"}
    # Not the tiny model: the project loader takes the ordinary AutoTokenizer path.
    assert not (kit_dir / TINY_MARKER).exists() and not is_tiny_model(str(kit_dir))
    assert type(load_tokenizer(str(kit_dir))).__name__ == type(AutoTokenizer.from_pretrained(kit_dir)).__name__


def test_a_run_config_builds_the_kit_preset_and_refuses_an_unknown_one(tmp_path):
    """`model.build=chat` (no model.path): prepare_model writes a kit directory that loads like any
    HF checkpoint; a preset name that does not exist fails in preflight, before Ray."""
    from configs.loading import ConfigError, load_config
    from launch.components import prepare_model
    from launch.preflight import preflight
    from models.chat_kit import CHAT_KIT_MARKER
    from models.loading import is_tiny_model, load_tokenizer

    cfg = load_config(None, ["model.build=chat", "model.chat_preset=test", "model.vocab_size=600"])
    preflight(cfg)
    model_dir = prepare_model(cfg, tmp_path)
    assert (tmp_path / "init_model" / CHAT_KIT_MARKER).is_file() and not is_tiny_model(model_dir)
    tok = load_tokenizer(model_dir)
    assert tok.convert_tokens_to_ids("<tool_call>") == 3 and len(tok) <= 600
    with pytest.raises(ConfigError, match="model.chat_preset='nope' is not a model-kit preset"):
        preflight(load_config(None, ["model.build=chat", "model.chat_preset=nope"]))
