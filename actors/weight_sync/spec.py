"""What a GenerationWorker serves: checkpoint parameter names, shapes and dtypes, read from the
safetensors headers of its model directory (no tensor data is read).

Senders check every tensor against this before anything reaches vLLM: vLLM's loaders either crash
half-way through a reload on a misshapen tensor or silently skip an unknown name, and both would
leave a worker serving weights that are neither the old nor the new version.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from actors.weight_sync.base import WeightSpec

_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def _read_header(path: Path) -> dict:
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def read_weight_spec(model_dir: str) -> tuple[WeightSpec, list[str]]:
    """Return (spec, optional names). `lm_head.weight` is optional when embeddings are tied: the
    trainer's `named_parameters()` lists a tied tensor once, under the embedding's name."""
    root = Path(model_dir)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir} has no *.safetensors files; weight sync needs their headers "
                                f"to know which parameters the worker serves")
    spec: WeightSpec = {}
    for file in files:
        for name, meta in _read_header(file).items():
            if name == "__metadata__":
                continue
            spec[name] = (tuple(meta["shape"]), _SAFETENSORS_DTYPES.get(meta["dtype"], meta["dtype"].lower()))
    optional: list[str] = []
    config_path = root / "config.json"
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    tied = config.get("tie_word_embeddings", config.get("text_config", {}).get("tie_word_embeddings", False))
    if tied and "lm_head.weight" not in spec:
        optional.append("lm_head.weight")
    if tied and "lm_head.weight" in spec and "model.embed_tokens.weight" in spec:
        optional.append("lm_head.weight")
        spec.pop("lm_head.weight")
    return spec, optional
