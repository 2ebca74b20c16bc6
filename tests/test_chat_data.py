"""Stage-2 data: instruction formats, system-prompt presets, chat template and loss labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import QWEN_TOKENIZER, SHARED

from wuxia_lightning.data.chat_encoding import encode_dialogue, encode_dialogues
from wuxia_lightning.data.chat_formats import detect_format, load_conversations
from wuxia_lightning.data.presets import load_presets, resolve_system_prompt
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.pretrained.tokenizer import ChatTemplateError, ensure_chat_template
from wuxia_lightning.tokens import CHATML_TEMPLATE, IGNORE_INDEX

TOKENIZER_DIR = QWEN_TOKENIZER
REAL_DATA = SHARED / "data" / "instruct" / "alpaca_zh_hikariming.jsonl"
IM_END_ID = 151645
NEWLINE_ID = 198

needs_tokenizer = pytest.mark.skipif(
    not (TOKENIZER_DIR / "vocab.json").is_file(),
    reason=f"Qwen2.5 tokenizer fixture not found at {TOKENIZER_DIR}")

SYSTEM = "你是一位说书先生。"
REPLIES = ["剑光一闪，那人已然倒地。", "Hello, 江湖 is wide.\n第二行。", "他笑道：“后会有期！”"]
USERS = ["讲一个故事。", "Say it in English too.", "结局呢？"]


def three_turns(system: str | None = SYSTEM) -> list[dict]:
    messages = [{"role": "system", "content": system}] if system is not None else []
    for user, reply in zip(USERS, REPLIES, strict=True):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


def labelled_runs(encoded) -> list[list[int]]:
    """Contiguous runs of labelled token ids (labels must equal input ids where set)."""
    runs: list[list[int]] = []
    previous = False
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if not previous:
                runs.append([])
            runs[-1].append(label)
        previous = label != IGNORE_INDEX
    return runs


@pytest.fixture(scope="module")
def qwen_tokenizer():
    if not (TOKENIZER_DIR / "vocab.json").is_file():
        pytest.skip(f"Qwen2.5 tokenizer fixture not found at {TOKENIZER_DIR}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    assert len(tokenizer) == 151665
    assert tokenizer.chat_template
    return tokenizer


def assert_three_replies_labelled(tokenizer, encoded, messages):
    runs = labelled_runs(encoded)
    assert [tokenizer.decode(run) for run in runs] == [reply + "<|im_end|>" for reply in REPLIES]
    assert all(run[-1] == IM_END_ID for run in runs)
    labelled_text = "".join(tokenizer.decode(run) for run in runs)
    for message in messages:
        if message["role"] != "assistant":
            assert message["content"] not in labelled_text
    # the newline after every <|im_end|> and every role header are unlabelled
    for t, token in enumerate(encoded.input_ids):
        if token == NEWLINE_ID and t > 0 and encoded.input_ids[t - 1] == IM_END_ID:
            assert encoded.labels[t] == IGNORE_INDEX
        if token == 151644:  # <|im_start|>
            assert encoded.labels[t] == IGNORE_INDEX and encoded.labels[t + 1] == IGNORE_INDEX


# ------------------------------------------------------------------------------------------ labels
@needs_tokenizer
def test_real_qwen_template_labels_each_reply_and_its_im_end(qwen_tokenizer):
    tok = qwen_tokenizer
    messages = three_turns()
    encoded = encode_dialogue(tok, messages, max_length=4096)
    assert encoded is not None and not encoded.truncated
    full = tok.apply_chat_template(messages, tokenize=False)
    assert encoded.input_ids == tok(full, add_special_tokens=False)["input_ids"]
    assert len(encoded.labels) == len(encoded.input_ids)
    assert_three_replies_labelled(tok, encoded, messages)
    assert tok.decode(encoded.input_ids).startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n")


@needs_tokenizer
def test_qwen_default_system_prompt_is_unlabelled(qwen_tokenizer):
    tok = qwen_tokenizer
    messages = three_turns(system=None)
    encoded = encode_dialogue(tok, messages, max_length=4096)
    assert "You are Qwen" in tok.decode(encoded.input_ids)  # injected by the Qwen2.5 template
    assert_three_replies_labelled(tok, encoded, messages)
    assert "Qwen" not in "".join(tok.decode(run) for run in labelled_runs(encoded))


@needs_tokenizer
def test_chatml_fallback_when_tokenizer_has_no_template(tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "base-tokenizer"
    shutil.copytree(TOKENIZER_DIR, folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    del config["chat_template"]
    config_path.write_text(json.dumps(config), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert not tok.chat_template

    messages = three_turns()
    encoded = encode_dialogue(tok, messages, max_length=4096)
    expected_text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    assert tok.decode(encoded.input_ids) == expected_text
    assert_three_replies_labelled(tok, encoded, messages)
    # no system turn -> nothing injected by the fallback
    plain = encode_dialogue(tok, three_turns(system=None), max_length=4096)
    assert tok.decode(plain.input_ids).startswith("<|im_start|>user\n")

    ensure_chat_template(tok)
    assert tok.chat_template == CHATML_TEMPLATE
    prompt = tok.apply_chat_template(messages[:2], tokenize=False, add_generation_prompt=True)
    assert prompt == expected_text.split("<|im_start|>assistant\n")[0] + "<|im_start|>assistant\n"


@needs_tokenizer
def test_ensure_chat_template_keeps_an_existing_template(qwen_tokenizer):
    before = qwen_tokenizer.chat_template
    ensure_chat_template(qwen_tokenizer)
    assert qwen_tokenizer.chat_template == before != CHATML_TEMPLATE


@needs_tokenizer
def test_template_that_rewrites_history_is_refused(qwen_tokenizer, monkeypatch):
    # like Qwen3 thinking templates: the last assistant turn is rendered differently from earlier ones
    rewriting = ("{%- for m in messages %}<|im_start|>{{ m.role }}\n"
                 "{%- if m.role == 'assistant' and loop.last %}<think>\n\n</think>\n\n{%- endif %}"
                 "{{ m.content }}<|im_end|>\n{%- endfor %}"
                 "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")
    monkeypatch.setattr(qwen_tokenizer, "chat_template", rewriting)
    with pytest.raises(ChatTemplateError, match="rewrites the history"):
        encode_dialogue(qwen_tokenizer, three_turns(), max_length=4096)


def test_tokenizer_without_chatml_tokens_is_refused():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    with pytest.raises(ChatTemplateError, match=r"<\|im_start\|>"):
        encode_dialogue(tok, three_turns(), max_length=128)
    with pytest.raises(ChatTemplateError):
        ensure_chat_template(tok)


# ------------------------------------------------------------------------------------------ truncation
@needs_tokenizer
def test_truncation_and_drop_counts_are_exact(qwen_tokenizer):
    tok = qwen_tokenizer
    short, long = "好。", "剑光一闪，" * 80  # long: well over 150 tokens on its own

    def dialogue(*pairs):
        messages = []
        for user, reply in pairs:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        return messages

    max_length = 150
    dialogues = [
        dialogue(("问", short)),                               # fits
        dialogue(("问", short), ("再问", short)),              # fits
        dialogue(("问", short), ("再问", long)),               # truncated after reply 1
        dialogue(("问", short), ("再问", short), ("三问", long)),  # truncated after reply 2
        dialogue(("问", long)),                                # dropped: first reply too long
        dialogue(("问", long), ("再问", short)),               # dropped
        dialogue((long, short)),                               # dropped: the prompt alone is too long
    ]
    encoded, stats = encode_dialogues(tok, dialogues, max_length)
    assert (stats.examples, stats.truncated, stats.dropped) == (4, 2, 3)
    assert stats.to_dict() == {"examples": 4, "truncated": 2, "dropped": 3,
                               "label_tokens": sum(sum(x != IGNORE_INDEX for x in e.labels) for e in encoded)}
    assert [len(labelled_runs(e)) for e in encoded] == [1, 2, 1, 2]
    assert [e.truncated for e in encoded] == [False, False, True, True]
    for item, messages in zip(encoded, dialogues[:4], strict=True):
        assert len(item.input_ids) <= max_length
        runs = labelled_runs(item)
        assert all(run[-1] == IM_END_ID for run in runs)
        replies = [m["content"] for m in messages if m["role"] == "assistant"]
        assert [tok.decode(run) for run in runs] == [r + "<|im_end|>" for r in replies[: len(runs)]]
        full = encode_dialogue(tok, messages, max_length=10**6)
        assert full.input_ids[: len(item.input_ids)] == item.input_ids  # whole turns kept from the start
        if item.truncated:
            assert item.input_ids[-1] == IM_END_ID


@needs_tokenizer
def test_truncation_boundary_is_exact(qwen_tokenizer):
    tok = qwen_tokenizer
    messages = three_turns()
    full = encode_dialogue(tok, messages, max_length=10**6)
    first_end = full.labels.index(IM_END_ID) + 1  # just after reply 1's <|im_end|>
    exact = encode_dialogue(tok, messages, max_length=first_end)
    assert exact is not None and exact.truncated and len(exact.input_ids) == first_end
    assert len(labelled_runs(exact)) == 1 and exact.input_ids[-1] == IM_END_ID
    assert encode_dialogue(tok, messages, max_length=first_end - 1) is None
    whole = encode_dialogue(tok, messages, max_length=len(full.input_ids))
    assert not whole.truncated and whole.input_ids == full.input_ids
    cut = encode_dialogue(tok, messages, max_length=len(full.input_ids) - 1)  # loses only the final "\n"
    assert cut.truncated and len(labelled_runs(cut)) == 3 and cut.input_ids == full.input_ids[:-1]


# ------------------------------------------------------------------------------------------ formats
EXPECTED = [
    [{"role": "system", "content": "你是侠客。"}, {"role": "user", "content": "讲个故事\n\n关于剑"},
     {"role": "assistant", "content": "从前有一位剑客。"}],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "少侠好。"}],
]

RECORDS = {
    "conversations": [
        {"conversations": [{"role": "system", "content": "你是侠客。"},
                           {"role": "user", "content": "讲个故事\n\n关于剑"},
                           {"role": "assistant", "content": "从前有一位剑客。"}]},
        {"conversations": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "少侠好。"}]},
    ],
    "sharegpt": [
        {"conversations": [{"from": "system", "value": "你是侠客。"},
                           {"from": "human", "value": "讲个故事\n\n关于剑"},
                           {"from": "gpt", "value": "从前有一位剑客。"}]},
        {"conversations": [{"from": "user", "value": "你好"}, {"from": "chatgpt", "value": "少侠好。"}]},
    ],
    "messages": [
        {"messages": [{"role": "system", "content": "你是侠客。"},
                      {"role": "user", "content": "讲个故事\n\n关于剑"},
                      {"role": "assistant", "content": "从前有一位剑客。"}]},
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "少侠好。"}]},
    ],
    "alpaca": [
        {"instruction": "讲个故事", "input": "关于剑", "output": "从前有一位剑客。", "system": "你是侠客。"},
        {"instruction": "你好", "input": "", "output": "少侠好。"},
    ],
}


def write_jsonl(path: Path, records, blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", list(RECORDS))
@pytest.mark.parametrize("container", ["jsonl", "json"])
def test_each_format_is_detected_and_mapped_identically(tmp_path, fmt, container):
    path = tmp_path / f"data.{container}"
    if container == "json":
        path.write_text(json.dumps(RECORDS[fmt], ensure_ascii=False, indent=2), encoding="utf-8")
    else:
        write_jsonl(path, RECORDS[fmt], blank_lines=True)
    dialogues, reports = load_conversations(str(path))
    assert dialogues == EXPECTED
    assert [(r.path, r.format, r.examples) for r in reports] == [(str(path), fmt, 2)]
    assert detect_format(RECORDS[fmt][0], str(path), 1) == fmt


def test_mixed_formats_across_files_are_reported_per_file(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    names = {"a_conv.jsonl": "conversations", "b_share.json": "sharegpt", "c_msgs.jsonl": "messages",
             "d_alpaca.json": "alpaca"}
    for name, fmt in names.items():
        if name.endswith(".json"):
            (folder / name).write_text(json.dumps(RECORDS[fmt], ensure_ascii=False), encoding="utf-8")
        else:
            write_jsonl(folder / name, RECORDS[fmt])
    (folder / "notes.txt").write_text("not data", encoding="utf-8")

    dialogues, reports = load_conversations(str(folder))
    assert [(Path(r.path).name, r.format, r.examples) for r in reports] == [
        (name, fmt, 2) for name, fmt in names.items()]
    assert dialogues == EXPECTED * 4

    by_glob, glob_reports = load_conversations(str(folder / "*.jsonl"))
    assert [r.format for r in glob_reports] == ["conversations", "messages"] and len(by_glob) == 4
    listed, list_reports = load_conversations([str(folder / "d_alpaca.json"), str(folder / "a_conv.jsonl")])
    assert [r.format for r in list_reports] == ["alpaca", "conversations"] and listed == EXPECTED * 2


def test_default_system_only_where_missing(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", RECORDS["messages"])
    dialogues, _ = load_conversations(str(path), default_system="默认系统")
    assert dialogues[0] == EXPECTED[0]
    assert dialogues[1] == [{"role": "system", "content": "默认系统"}] + EXPECTED[1]


GOOD = json.dumps(RECORDS["conversations"][1], ensure_ascii=False)


@pytest.mark.parametrize("name, lines, line, field", [
    ("bad_json.jsonl", [GOOD, '{"conversations": [{"role": "user"'], 2, None),
    ("no_output.jsonl", [json.dumps(RECORDS["alpaca"][0]), "", '{"instruction": "问", "input": ""}'], 3, "output"),
    ("unknown_role.jsonl", [GOOD, '{"conversations": [{"role": "user", "content": "问"}, '
                                  '{"role": "bot", "content": "答"}]}'], 2, "conversations[1].role"),
    ("empty_reply.jsonl", ['{"conversations": [{"role": "user", "content": "问"}, '
                           '{"role": "assistant", "content": "  "}]}'], 1, "conversations[1].content"),
    ("empty_value.jsonl", [json.dumps(RECORDS["sharegpt"][1]), '{"conversations": [{"from": "human", '
                           '"value": "问"}, {"from": "gpt", "value": ""}]}'], 2, "conversations[1].value"),
    ("unknown_from.jsonl", ['{"conversations": [{"from": "human", "value": "问"}, {"from": "bot", '
                            '"value": "答"}]}'], 1, "conversations[1].from"),
    ("not_last.jsonl", [json.dumps(RECORDS["messages"][1])] * 2 + [
        '{"messages": [{"role": "user", "content": "问"}, {"role": "assistant", "content": "答"}, '
        '{"role": "user", "content": "再问"}]}'], 3, "messages[2].role"),
    ("no_assistant.jsonl", ['{"messages": [{"role": "user", "content": "问"}]}'], 1, "messages"),
    ("wrong_type.jsonl", ['{"messages": [{"role": "user", "content": 3}, {"role": "assistant", '
                          '"content": "答"}]}'], 1, "messages[0].content"),
    ("missing_content.jsonl", [GOOD, '{"conversations": [{"role": "user"}, {"role": "assistant", '
                               '"content": "答"}]}'], 2, "conversations[0].content"),
    ("mixed_in_file.jsonl", [GOOD, json.dumps(RECORDS["alpaca"][1])], 2, "conversations"),
])
def test_malformed_jsonl_names_file_line_and_field(tmp_path, name, lines, line, field):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError) as info:
        load_conversations(str(path))
    message = str(info.value)
    assert name in message and f":{line}" in message
    assert (info.value.path, info.value.line, info.value.field) == (str(path), line, field)
    if field is not None:
        assert f"'{field}'" in message


def test_malformed_json_array_names_the_element_index(tmp_path):
    path = tmp_path / "array.json"
    path.write_text(json.dumps([RECORDS["alpaca"][0], {"instruction": "问", "output": 5}]), encoding="utf-8")
    with pytest.raises(UserInputError) as info:
        load_conversations(str(path))
    message = str(info.value)
    assert "array.json:1" in message and "'output'" in message and "JSON array" in message
    assert info.value.line == 1 and info.value.field == "output"


@pytest.mark.parametrize("target", ["missing.jsonl", "empty_folder", "nothing*.jsonl"])
def test_missing_inputs_raise_user_errors(tmp_path, target):
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(UserInputError, match=target.replace("*", r"\*")):
        load_conversations(str(tmp_path / target))


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="empty.jsonl"):
        load_conversations(str(path))


# ------------------------------------------------------------------------------------------ real data
@needs_tokenizer
@pytest.mark.skipif(not REAL_DATA.is_file(), reason=f"real instruction data not found at {REAL_DATA}")
def test_real_instruction_data_loads_and_every_reply_ends_with_im_end(qwen_tokenizer):
    dialogues, reports = load_conversations(str(REAL_DATA))
    assert len(dialogues) == 8318
    assert [(r.format, r.examples) for r in reports] == [("conversations", 8318)]
    encoded, stats = encode_dialogues(qwen_tokenizer, dialogues[:200], max_length=512)
    assert stats.examples == len(encoded) and stats.examples + stats.dropped == 200
    assert stats.examples > 150
    for item in encoded:
        runs = labelled_runs(item)
        assert runs and all(run[-1] == IM_END_ID for run in runs)
        assert len(item.input_ids) <= 512
    assert stats.label_tokens == sum(len(run) for item in encoded for run in labelled_runs(item))


# ------------------------------------------------------------------------------------------ presets
def test_packaged_presets():
    presets = load_presets()
    assert {"elegant_style", "wuxia", "plain"} <= set(presets)
    assert all(isinstance(v, str) and v for v in presets.values())
    assert "江湖" in resolve_system_prompt("wuxia")
    assert "典雅" in resolve_system_prompt("elegant_style")
    assert resolve_system_prompt(None) is None


def test_unknown_preset_lists_available_names():
    with pytest.raises(UserInputError) as info:
        resolve_system_prompt("no_such_preset")
    message = str(info.value)
    assert "no_such_preset" in message
    assert all(name in message for name in ("elegant_style", "wuxia", "plain"))


def test_user_presets_file_adds_and_overrides(tmp_path):
    path = tmp_path / "my_presets.yaml"
    path.write_text("mine: 你是我的助手。\nwuxia:\n  system: 覆盖的江湖提示。\n", encoding="utf-8")
    assert load_presets(str(path)) == {"mine": "你是我的助手。", "wuxia": "覆盖的江湖提示。"}
    assert resolve_system_prompt("mine", str(path)) == "你是我的助手。"
    assert resolve_system_prompt("wuxia", str(path)) == "覆盖的江湖提示。"
    assert resolve_system_prompt("elegant_style", str(path)) == load_presets()["elegant_style"]

    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\nb: [unclosed\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="bad.yaml"):
        load_presets(str(bad))
    with pytest.raises(UserInputError, match="not found"):
        load_presets(str(tmp_path / "absent.yaml"))
