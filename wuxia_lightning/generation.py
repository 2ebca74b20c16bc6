"""Generation with the chat template: replies that stop at the end-of-turn token (<|im_end|>, Gemma's
<end_of_turn>) and never start a new turn."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from wuxia_lightning.metrics.stopping import classify_generation
from wuxia_lightning.modeling.stacking import stop_token_ids
from wuxia_lightning.pretrained.tokenizer import chat_format, ensure_chat_template

Message = dict[str, str]


@dataclass
class GenerationSettings:
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.05

    def kwargs(self) -> dict:
        sampling = {"temperature": self.temperature, "top_p": self.top_p} if self.do_sample else {}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                "repetition_penalty": self.repetition_penalty, **sampling}


@dataclass
class Reply:
    prompt: str
    generation: str
    new_tokens: int
    stopped: bool             # ended by a stop token before max_new_tokens
    continues_dialogue: bool  # produced the turn-opening token (<|im_start|>) / a new role header


def chat_prompt(tokenizer, messages: Sequence[Message]) -> str:
    ensure_chat_template(tokenizer)
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: Sequence[Sequence[Message]],
                     settings: GenerationSettings, raw_prompts: bool = False) -> list[Reply]:
    """One reply per conversation (batched, left-padded). ``raw_prompts``: plain continuation of the
    last user text, no chat template (stage-1 models)."""
    texts = [conv[-1]["content"] if raw_prompts else chat_prompt(tokenizer, conv) for conv in conversations]
    stops = stop_token_ids(tokenizer)
    turn_start = tokenizer.convert_tokens_to_ids(chat_format(tokenizer).turn_start)
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        # Raw text gets what the tokenizer puts before any text (Gemma's <bos>); a chat template has its own.
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=raw_prompts).to(model.device)
    finally:
        tokenizer.padding_side = padding_side
    output = model.generate(**batch, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id,
                            synced_gpus=is_sharded(model), **settings.kwargs())
    replies = []
    for text, row in zip(texts, output[:, batch["input_ids"].shape[1]:].tolist(), strict=True):
        tokens = _strip_padding(row, tokenizer.pad_token_id, stops)
        stopped, continued = classify_generation(tokens, set(stops), turn_start, settings.max_new_tokens)
        replies.append(Reply(text, decode_complete(tokenizer, tokens).strip(), len(tokens), stopped, continued))
    return replies


def rank_share(items: Sequence, rank: int, world_size: int) -> tuple[list, bool]:
    """This rank's items (round robin) and whether its results count. A rank left without any (fewer items
    than ranks) gets the first item to generate from but not to count: under FSDP every rank must run the
    same forward passes, since each one gathers its layers' shards from all ranks."""
    share = list(items[rank::world_size])
    return (share, True) if share or not items else (list(items[:1]), False)


def is_sharded(model: torch.nn.Module) -> bool:
    """True when ``model`` holds FSDP-sharded layers in a multi-rank run: then every rank must keep stepping
    until all ranks have finished generating (transformers' ``synced_gpus``, which transformers detects only
    for models it sharded itself), or the ranks still generating wait forever for the others' shards."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(module, (FSDPModule, FullyShardedDataParallel)) for module in model.modules())


def stream_reply(model, tokenizer, messages: Sequence[Message], settings: GenerationSettings,
                 raw_prompt: bool = False, token_ids: list[int] | None = None) -> Iterator[str]:
    """Yield the reply text piece by piece as it is generated (interactive chat). ``raw_prompt``: continue
    the last message's text without the chat template (stage-1 models). ``token_ids``: a list that receives
    the generated ids as they come (to tell a reply that ended on a stop token from one cut by the limit).

    A reader that stops early (a closed chat page, Ctrl-C) stops the generation too, and this returns only
    once the generating thread has ended: a caller that switches adapters after the loop never changes them
    under a generation still running.
    """
    from threading import Event, Thread

    from transformers import StoppingCriteria, StoppingCriteriaList

    text = messages[-1]["content"] if raw_prompt else chat_prompt(tokenizer, messages)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=raw_prompt).to(model.device)
    streamer = _recording_streamer(tokenizer, token_ids)
    errors: list[BaseException] = []
    left = Event()

    class ReaderLeft(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> bool:
            return left.is_set()

    def generate() -> None:
        try:
            model.generate(**inputs, streamer=streamer, eos_token_id=stop_token_ids(tokenizer),
                           pad_token_id=tokenizer.pad_token_id, stopping_criteria=StoppingCriteriaList([ReaderLeft()]),
                           **settings.kwargs())
        except BaseException as error:  # noqa: B036 - re-raised in the caller's thread below
            errors.append(error)
            streamer.end()  # otherwise the reader waits for text forever

    thread = Thread(target=generate, daemon=True)
    thread.start()
    try:
        for piece in streamer:
            if piece := whole_characters(piece):
                yield piece
    finally:
        left.set()
        thread.join()
    if errors:
        raise errors[0]


def _recording_streamer(tokenizer, token_ids: list[int] | None):
    """transformers' ``TextIteratorStreamer`` that also appends each generated id to ``token_ids``."""
    from transformers import TextIteratorStreamer

    class Recording(TextIteratorStreamer):
        def put(self, value) -> None:
            if token_ids is not None and not self.next_tokens_are_prompt:  # the first call is the prompt
                token_ids.extend(value.reshape(-1).tolist())
            super().put(value)

    return Recording(tokenizer, skip_prompt=True, skip_special_tokens=True)


def decode_complete(tokenizer, ids: Sequence[int]) -> str:
    """Decoded text with no half characters: a byte-level tokenizer's pieces of a character cut off by
    ``max_new_tokens`` (or never completed by the model) decode to U+FFFD, which we drop."""
    return whole_characters(tokenizer.decode(list(ids), skip_special_tokens=True))


def whole_characters(text: str) -> str:
    """``text`` without U+FFFD: the streamer holds a partial character back until it completes, so what
    is left as U+FFFD are bytes that will never form one."""
    return text.replace("\ufffd", "")


def _strip_padding(tokens: list[int], pad_id: int | None, stops: list[int]) -> list[int]:
    """Generated ids up to and including the first stop token (generate pads finished rows)."""
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1]
    return [t for t in tokens if t != pad_id] if pad_id not in stops else tokens


def replies_with_and_without_adapters(peft_model, tokenizer, conversations: Sequence[Sequence[Message]],
                                      settings: GenerationSettings) -> tuple[list[Reply], list[Reply]]:
    """The same prompts through the trained model and through its base with every adapter off: one loaded
    base, no second copy (what the user had before training, beside what they have now)."""
    trained = generate_replies(peft_model, tokenizer, conversations, settings)
    with peft_model.disable_adapter():
        base = generate_replies(peft_model, tokenizer, conversations, settings)
    return trained, base
