"""The chat and tool markup tokens every labrl tokenizer keeps as single ids (the character-level
tiny one and the model kit's BPE), as real Qwen tokenizers do: one definition for both."""

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
MARKUP_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
