"""Bad input gets one clear UserInputError naming the file (and line / field), never a traceback or a
silent acceptance (issue 10, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import REPO

from wuxia_lightning.data.chat_formats import load_chat_file
from wuxia_lightning.data.instruct_datamodule import InstructDataModule
from wuxia_lightning.data.style_datamodule import StyleDataModule
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.modeling.loading import load_base_model
from wuxia_lightning.modeling.stacking import MANIFEST, attach_style, read_manifest
from wuxia_lightning.pretrained.tokenizer import check_max_length, load_tokenizer
from wuxia_lightning.sources import decode_file

DIALOGUES = REPO / "data" / "sample" / "instruct" / "train.jsonl"
NOVEL = "第一章 风起\n\n江湖夜雨十年灯，桃李春风一杯酒。\n\n"


# ------------------------------------------------------------------------ 1. stacked folder manifest
def write_manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(text, encoding="utf-8")
    return folder


def test_missing_manifest_names_the_folder(tmp_path):
    with pytest.raises(UserInputError, match=f"{tmp_path}: no {MANIFEST}"):
        read_manifest(tmp_path)


def test_manifest_that_is_not_json_names_file_and_line(tmp_path):
    folder = write_manifest(tmp_path / "out", '{\n  "adapters": ["style"],\n  oops\n}')
    with pytest.raises(UserInputError, match=rf"{MANIFEST}:3: not valid JSON") as error:
        read_manifest(folder)
    assert error.value.path == str(folder / MANIFEST)


@pytest.mark.parametrize("manifest, field", [
    ({"adapters": ["style", "instruct"]}, "base_model"),
    ({"base_model": "tiny-qwen2"}, "adapters"),
    ({"base_model": "tiny-qwen2", "adapters": "style"}, "adapters"),
])
def test_hand_edited_manifest_names_the_field(tmp_path, manifest, field):
    folder = write_manifest(tmp_path / "out", json.dumps(manifest))
    with pytest.raises(UserInputError, match=f"field '{field}'") as error:
        read_manifest(folder)
    assert error.value.path == str(folder / MANIFEST) and error.value.field == field


def test_manifest_listing_a_missing_adapter_folder(tmp_path):
    folder = write_manifest(tmp_path / "out", json.dumps({"base_model": "x", "adapters": ["style", "instruct"]}))
    (folder / "style").mkdir()
    (folder / "style" / "adapter_config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UserInputError, match="lists adapter 'instruct'") as error:
        read_manifest(folder)
    assert error.value.field == "adapters"


def test_valid_manifest_is_returned(tmp_path):
    manifest = {"base_model": "x", "adapters": ["style"]}
    folder = write_manifest(tmp_path / "out", json.dumps(manifest))
    (folder / "adapter_config.json").write_text("{}", encoding="utf-8")  # a stage-1 folder
    assert read_manifest(folder) == manifest


# ------------------------------------------------------------------------ 2. adapter of another base
@pytest.fixture(scope="module")
def style_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    from peft import get_peft_model

    from wuxia_lightning.modeling.adapters import lora_config, save_adapter_atomically

    model = get_peft_model(load_base_model(str(tiny_model_dir)), lora_config(8, 16, 0.0), adapter_name="style")
    out = tmp_path_factory.mktemp("stage1") / "style"
    save_adapter_atomically(model, "style", out, load_tokenizer(str(tiny_model_dir)),
                            {"stage": "style", "adapters": ["style"], "base_model": str(tiny_model_dir)})
    return out


def test_style_adapter_on_its_own_base_attaches(tiny_model_dir, style_adapter):
    model = attach_style(load_base_model(str(tiny_model_dir)), style_adapter)
    assert "style" in model.peft_config


def test_tiny_name_and_resolved_folder_count_as_the_same_base(style_adapter):
    model = attach_style(load_base_model("tiny-qwen2"), style_adapter)
    assert "style" in model.peft_config


def test_style_adapter_of_another_base_names_both(tiny_model_dir, style_adapter, tmp_path):
    import shutil

    other = tmp_path / "style"
    shutil.copytree(style_adapter, other)
    config_path = other / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = "Qwen/Qwen2.5-7B"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UserInputError, match=r"trained on base model .*Qwen/Qwen2\.5-7B") as error:
        attach_style(load_base_model(str(tiny_model_dir)), other)
    assert str(tiny_model_dir) in str(error.value) and error.value.path == str(config_path)


# ------------------------------------------------------------------------ 3. corpus smaller than a window
def test_corpus_smaller_than_one_window(tiny_model_dir, tmp_path):
    (tmp_path / "novels").mkdir()
    (tmp_path / "novels" / "short.txt").write_text(NOVEL * 2, encoding="utf-8")
    data = StyleDataModule(corpus=str(tmp_path / "novels"), max_length=512, model_name_or_path=str(tiny_model_dir),
                           cache_dir=str(tmp_path / "cache"), val_fraction=0.5)
    with pytest.raises(UserInputError, match="less than one training window") as error:
        data.setup("fit")
    assert error.value.path == str(tmp_path / "novels") and error.value.field == "corpus"


# ------------------------------------------------------------------------ 4. UTF-16 without BOM
@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_decoded(tmp_path, encoding):
    text = "Chapter one\n\nThe sword fell.\n" + NOVEL
    path = tmp_path / "novel.txt"
    path.write_bytes(text.encode(encoding))
    assert decode_file(path) == (text, encoding)


def test_broken_utf16_without_bom_names_the_file(tmp_path):
    path = tmp_path / "novel.txt"
    path.write_bytes("Chapter one\n\nThe sword fell.\n".encode("utf-16-le") + b"\x00\xd8A\x00")  # lone surrogate
    with pytest.raises(UserInputError, match="UTF-16 without a byte-order mark") as error:
        decode_file(path)
    assert error.value.path == str(path)


# ------------------------------------------------------------------------ 5. / 6. chat JSONL records
@pytest.mark.parametrize("record, field", [
    ({"instruction": 5, "output": "ok"}, "instruction"),
    ({"instruction": "hi", "output": ["ok"]}, "output"),
    ({"messages": [{"role": "user", "content": ["hi"]}, {"role": "assistant", "content": "ok"}]},
     "messages[0].content"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 3}]}, "conversations[1].value"),
])
def test_non_string_content_names_file_line_field(tmp_path, record, field):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(_valid_like(record)), json.dumps(record)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="must be a string") as error:
        load_chat_file(str(path))
    assert (error.value.path, error.value.line, error.value.field) == (str(path), 2, field)


def _valid_like(record: dict) -> dict:
    """The same format as ``record`` with string contents, so the file's first record is valid."""
    if "instruction" in record:
        return {"instruction": "hi", "output": "ok"}
    key = "messages" if "messages" in record else "conversations"
    content = "content" if key == "messages" else "value"
    return {key: [{**turn, content: "text"} for turn in record[key]]}


def test_dialogue_ending_with_the_user_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                           {"role": "user", "content": "c"}]}
    path.write_text(json.dumps(record) + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="must end with an assistant reply") as error:
        load_chat_file(str(path))
    assert (error.value.path, error.value.line) == (str(path), 1)


# ------------------------------------------------------------------------ 7. max_length beyond the context
def test_max_length_beyond_the_model_context(tiny_model_dir):
    check_max_length(str(tiny_model_dir), 4096)  # exactly the context is fine
    with pytest.raises(UserInputError, match=r"max_length=4097 is larger than .*max_position_embeddings=4096"):
        check_max_length(str(tiny_model_dir), 4097)


def test_instruct_datamodule_refuses_max_length_beyond_the_context(tiny_model_dir):
    data = InstructDataModule(train_files=str(DIALOGUES), max_length=100_000, model_name_or_path=str(tiny_model_dir))
    with pytest.raises(UserInputError, match="max_length=100000") as error:
        data.setup("fit")
    assert error.value.field == "max_length"


def test_unreadable_config_is_left_to_model_loading(tmp_path):
    check_max_length(str(tmp_path / "no-such-model"), 10**6)  # no config: model loading reports it


def test_deeply_nested_json_is_one_clear_line(tmp_path):
    from wuxia_lightning.data.chat_formats import load_chat_file

    path = tmp_path / "deep.jsonl"
    path.write_text("[" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="nested too deeply") as caught:
        load_chat_file(str(path))
    assert "deep.jsonl" in str(caught.value)


def test_mask_rate_that_leaves_no_window_is_refused(tmp_path):
    from wuxia_lightning.data.style_datamodule import StyleDataModule

    data = StyleDataModule(corpus="data/sample/style", max_length=32, mask_rate=0.9, cache_dir=str(tmp_path))
    with pytest.raises(UserInputError, match="mask_rate"):
        data.setup("fit")


# ------------------------------------------------------------------------ unreadable files
UNREADABLE = Path("/proc/self/mem")  # a regular file that fails to read even for root (chmod 000 would not)


@pytest.mark.skipif(not UNREADABLE.is_file(), reason="needs Linux /proc to produce a read error as any user")
def test_unreadable_corpus_file_names_the_file():
    with pytest.raises(UserInputError, match="cannot read file") as error:
        decode_file(UNREADABLE)
    assert str(UNREADABLE) in str(error.value)
