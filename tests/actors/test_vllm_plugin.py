"""The plain-weight vLLM plugin (actors/vllm_plugin.py) and its start-up check, without an engine.

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


def test_check_names_repacked_layers():
    model = torch.nn.Module()
    model.plain = linear_layer()
    model.plain.cpu_linear, model.plain.labrl_plain_weight = torch.nn.functional.linear, True
    assert check_plain_weights(model) == 1
    model.packed = linear_layer()
    model.packed.cpu_linear = torch.nn.functional.linear  # dispatched by vLLM without the plugin
    with pytest.raises(RuntimeError, match=r"\['packed'\].*LABRL_CPU_PLAIN_WEIGHTS=1"):
        check_plain_weights(model)
