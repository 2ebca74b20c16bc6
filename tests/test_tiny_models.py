"""Offline tiny models: saved with save_pretrained, loaded with plain from_pretrained, Qwen2 and Qwen3."""

from __future__ import annotations

import pytest
import torch
from conftest import QWEN_TOKENIZER, require_shared
from transformers import AutoModelForCausalLM, AutoTokenizer

from wuxia_lightning.modules.style import StyleAlignmentModule
from wuxia_lightning.pretrained.tiny import make_tiny_model, resolve_model_path

SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
           "<|fim_pad|>")


def test_trained_tokenizer_keeps_characters_whole_and_has_qwen_specials(tiny_model_dir):
    """One token per character: seen text round-trips; characters the sample text never had become
    <|unk|>, never byte pieces that decode to U+FFFD. (transformers 5's AutoTokenizer rebuilds any
    qwen2-config tokenizer as byte-level BPE; the package loads the file as saved: load_saved_tokenizer.)"""
    from wuxia_lightning.pretrained.tokenizer import load_saved_tokenizer

    tokenizer = load_saved_tokenizer(tiny_model_dir)
    for token in SPECIAL:
        assert tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(token)) == token
    seen = "剑光一闪，naive 第一回　寒江夜雨\n"
    assert tokenizer.decode(tokenizer(seen)["input_ids"]) == seen
    unseen = "劍😀½"  # characters the (Simplified) sample text never had
    assert tokenizer.convert_ids_to_tokens(tokenizer(unseen, add_special_tokens=False)["input_ids"]) == ["<|unk|>"] * 3
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                         add_generation_prompt=True)
    assert chat.endswith("<|im_start|>assistant\n")
    config = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).config
    assert config.model_type == "qwen2" and config.vocab_size >= len(tokenizer)
    # a base model's config ends text with <|endoftext|>, exactly like Qwen2.5 base
    assert config.eos_token_id == tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_tiny_qwen3_with_the_real_qwen_tokenizer_loads_offline_and_trains(tmp_path):
    tokenizer_dir = require_shared(QWEN_TOKENIZER)
    folder = make_tiny_model(tmp_path / "qwen3", arch="qwen3", tokenizer_path=tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    assert model.config.model_type == "qwen3" and len(tokenizer) == 151_665
    assert model.config.vocab_size == 151_680 and model.get_input_embeddings().num_embeddings == 151_680
    module = StyleAlignmentModule(model_name_or_path=str(folder), loss_chunk_size=64)
    module.configure_model()
    ids = torch.tensor([tokenizer("剑光一闪，那人已然倒地。")["input_ids"]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    out = module.step_losses(batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.kl.item() == pytest.approx(0.0, abs=1e-6)  # LoRA B = 0


def test_make_tiny_model_never_overwrites(tmp_path, tiny_model_dir):
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        make_tiny_model(tmp_path / "exists", texts=["剑光一闪"] * 20)
    assert (tmp_path / "exists" / "keep.txt").read_text() == "x"
    assert resolve_model_path("Qwen/Qwen2.5-7B") == "Qwen/Qwen2.5-7B"  # hub ids pass through untouched


def test_char_tokenizer_never_splits_a_character_and_knows_qwen_tokens():
    from wuxia_lightning.pretrained.tiny import train_char_tokenizer
    from wuxia_lightning.tokens import QWEN_SPECIAL_TOKENS

    text = "剑光一闪，那人已然倒地。He said: 好!\n第二行"
    tokenizer = train_char_tokenizer([text, text], min_count=2)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character, newline and spaces included
    assert tokenizer.decode(ids) == text and "\ufffd" not in tokenizer.decode(ids)
    assert all(tokenizer.convert_ids_to_tokens(tokenizer.convert_tokens_to_ids(t)) == t for t in QWEN_SPECIAL_TOKENS)
    assert tokenizer.decode(tokenizer("罕见字")["input_ids"]) == "<|unk|>" * 3  # unseen: unk, never bytes
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "剑"}], tokenize=False)
    assert chat.startswith("<|im_start|>user\n剑<|im_end|>")


def test_char_tokenizer_beside_a_qwen2_config_loads_as_saved(tmp_path):
    """transformers 5 maps a qwen2 folder to Qwen2Tokenizer, which rebuilds a byte-level BPE from the
    vocabulary and encodes Chinese to nothing with a character vocabulary; our loaders keep the file's."""
    from wuxia_lightning.pretrained.tiny import tiny_config, train_char_tokenizer
    from wuxia_lightning.pretrained.tokenizer import load_saved_tokenizer, load_tokenizer

    text = "剑光一闪，那人已然倒地。"
    tokenizer = train_char_tokenizer([text], min_count=1)
    tiny_config("qwen2", tokenizer).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for loaded in (load_saved_tokenizer(tmp_path), load_tokenizer(str(tmp_path))):
        ids = loaded(text, add_special_tokens=False)["input_ids"]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"] and len(ids) == len(text)
        assert loaded.decode(ids) == text


# ---- whole characters ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["character", "bpe"])
def test_tiny_tokenizers_keep_every_character_whole(kind):
    """Characters, not bytes, are the alphabet: no token decodes to half a character (U+FFFD), the sample
    text round-trips, and a character never seen becomes <|unk|> rather than byte pieces."""
    import string

    from wuxia_lightning.pretrained.tiny import sample_texts, train_bpe_tokenizer, train_char_tokenizer

    texts = sample_texts()
    tokenizer = (train_char_tokenizer([*texts, string.printable], min_count=1) if kind == "character"
                 else train_bpe_tokenizer(texts))
    assert not [i for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])]
    assert all(tokenizer.decode(tokenizer(text)["input_ids"]) == text for text in texts)
    assert tokenizer.convert_ids_to_tokens(tokenizer("龘", add_special_tokens=False)["input_ids"]) == ["<|unk|>"]
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "你好"}], tokenize=False,
                                         add_generation_prompt=True)
    assert "<|unk|>" not in tokenizer.decode(tokenizer(chat)["input_ids"])  # roles spelled in ASCII survive


def test_tiny_base_is_pretrained_on_text_converted_like_the_stage1_corpus():
    """The shipped configs convert the corpus to Simplified: a base pre-trained on other forms answers in them."""
    from wuxia_lightning.pretrained.tiny import sample_texts
    from wuxia_lightning.sources import to_simplified_chinese

    texts = sample_texts()
    assert texts and all(to_simplified_chinese(text) == text for text in texts)
    assert not any(char in "".join(texts) for char in "這雙俠麼")


def test_decoding_drops_half_characters_of_a_byte_level_tokenizer(qwen_tokenizer):
    """A reply cut off by max_new_tokens inside a character: Qwen's byte-level pieces of it decode to U+FFFD
    with plain decode, and to nothing with decode_complete."""
    from wuxia_lightning.generation import decode_complete

    tokenizer = qwen_tokenizer
    ids = tokenizer("江湖𠀾", add_special_tokens=False)["input_ids"]  # a rare character: several byte pieces
    cut = ids[:-1]
    assert "\ufffd" in tokenizer.decode(cut)  # the check can fail: the cut really splits a character
    assert decode_complete(tokenizer, cut) == "江湖"
    assert decode_complete(tokenizer, ids) == "江湖𠀾"
