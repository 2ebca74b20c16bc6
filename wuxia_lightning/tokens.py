"""The token vocabulary every layer shares: label masking, infill (FIM) tokens, ChatML, stop tokens.

It sits below data, modeling and objectives so none of them has to import another for a constant.
Only strings and ids live here: no tokenizer is loaded and nothing else of the package is imported.
"""

from __future__ import annotations

# Labels at this value carry no loss (PyTorch's cross-entropy default, which transformers uses too).
IGNORE_INDEX = -100

# Qwen's infill tokens, in the order the cloze layout uses them: begin, hole, separator, span end.
FIM_PREFIX = "<|fim_prefix|>"
FIM_SUFFIX = "<|fim_suffix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_PAD = "<|fim_pad|>"
FIM_TOKENS: tuple[str, ...] = (FIM_PREFIX, FIM_SUFFIX, FIM_MIDDLE, FIM_PAD)

# ChatML: a turn is <|im_start|>role\ncontent<|im_end|>\n. <|endoftext|> ends a document (a Qwen2.5 base
# config's eos); <|im_end|> ends a chat turn, so generation must stop on both.
END_OF_TEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Gemma's turns: <start_of_turn>user\ncontent<end_of_turn>\n, the assistant's role named "model", no system
# role (Gemma's own template puts a system prompt at the start of the first user turn).
START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
STOP_TOKENS: tuple[str, ...] = (IM_END, END_OF_TEXT, END_OF_TURN)

# Qwen's special tokens in Qwen's id order, so a tokenizer trained here mirrors the real one's layout.
QWEN_SPECIAL_TOKENS: tuple[str, ...] = (END_OF_TEXT, IM_START, IM_END, FIM_PREFIX, FIM_MIDDLE, FIM_SUFFIX, FIM_PAD)

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# Gemma 3's chat template as Google ships it for the instruction-tuned models (the base GGUF carries none),
# reduced to text content: the system prompt opens the first user turn, "assistant" is rendered "model".
GEMMA_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{%- set loop_messages = messages[1:] %}"
    "{%- else %}{%- set first_user_prefix = '' %}{%- set loop_messages = messages %}{%- endif %}"
    "{%- for message in loop_messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{{- message['content'] | trim }}"
    "{{- '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<start_of_turn>model\\n' }}"
    "{%- endif %}"
)
