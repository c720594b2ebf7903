"""`benchmarks.decode_gemm`: one layer's decode GEMMs timed through every kernel it compares."""

from __future__ import annotations

from benchmarks.decode_gemm import layer_shapes, time_layer


def test_layer_shapes_are_the_qwen2_layer_of_each_size():
    # 30M: hidden 512, 8 heads of 64, 2 KV heads -> q/k/v 512 + 2 x 2 x 64; gate/up 2 x 2048.
    assert layer_shapes("30M") == [(768, 512), (512, 512), (4096, 512), (512, 2048)]


def test_every_kernel_is_timed_per_layer():
    for layers in (1, 2):  # one layer's weights, or several layers' in turn (--whole-model)
        secs = time_layer("tiny", rows=8, layers=layers)
        assert set(secs) == {"F.linear", "oneDNN", "MKL packed"}
        assert all(0 < s < 1.0 for s in secs.values())
