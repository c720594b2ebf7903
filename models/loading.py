"""Load a policy's tokenizer and weights from a local path or a hub id, with clear errors."""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

# Marks a directory holding labrl's tiny character-level policy (see models/tiny.py). Defined here,
# not in models.tiny, so that loading a tokenizer never imports torch (env workers stay small).
TINY_MARKER = "labrl_tiny.json"


class ModelNotFoundError(FileNotFoundError):
    pass


def resolve_model_path(path_or_id: str) -> str:
    """Return a local directory for `path_or_id`; never downloads.

    A local directory must hold a `config.json`. A hub id is accepted only if it is already in the
    local Hugging Face cache (runs never download weights).
    """
    local = Path(path_or_id).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"model.path={path_or_id!r} exists but has no config.json")
        return str(local.resolve())
    if path_or_id.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model.path={path_or_id!r}: no such directory")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path_or_id, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - any cache miss becomes one clear message
        raise ModelNotFoundError(
            f"model.path={path_or_id!r} is neither a local directory nor a hub id in the local "
            f"cache (runs never download weights; download it first): {err}") from err


def load_tokenizer(model_dir: str) -> PreTrainedTokenizerBase:
    """Load the tokenizer; the tiny character-level one bypasses AutoTokenizer.

    transformers 5 maps any `model_type: qwen2` checkpoint to its byte-level Qwen2Tokenizer, which
    would silently drop spaces and newlines of a character-level vocabulary.
    """
    if (Path(model_dir) / TINY_MARKER).exists():
        return PreTrainedTokenizerFast.from_pretrained(model_dir)
    from transformers import AutoTokenizer  # imports torch (via generation config): only when needed

    return AutoTokenizer.from_pretrained(model_dir)


def is_tiny_model(model_dir: str) -> bool:
    return (Path(model_dir) / TINY_MARKER).exists()
