"""scripts/export.py --format gguf: a file llama.cpp really serves, checked in llama.cpp itself.

The model is a tiny Qwen2 with the real Qwen2.5 tokenizer whose weights are re-drawn "sharp" (std 1
embedding and head, 0.25 elsewhere): a default-initialised tiny model repeats one token whatever it is given, so
agreeing with it would prove nothing (docs/GGUF-AND-UI.md §2). Its lm_head is untied so that one row can
make it end a turn (see ``ends_its_turn``). llama.cpp runs through llama-cpp-python, built once by
scripts/build_llama_cpp.sh; without it (or without the converter's sdist) those tests skip and say why.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from conftest import QWEN_TOKENIZER, load_script, require_shared
from test_export import build_style, one_error_line

from wuxia_lightning.io import cache_root
from wuxia_lightning.pretrained.llama_cpp import LLAMA_CPP_PYTHON_VERSION

# Read at import, before conftest points the cache at a per-session folder: the sdist lives in the user's.
SDIST = cache_root() / "wheels" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
PROMPTS = ("江湖险恶，人心难测。", "The old swordsman said", "def fibonacci(n):")
CHAT = "江湖是什么？"
GREEDY_TOKENS = 20
# Logits. Between llama.cpp (f16 weights and KV cache) and transformers (f32) a top-2 gap moved by at most
# 0.13 here (logit std 8; max |Δlogit| 0.2); twice that is where argmax may legitimately differ.
TIE = 0.25


def run_export(folder: Path, out: Path, *extra: str) -> int:
    return load_script("export").main(["--model", str(folder), "--out", str(out), *extra])


def converter_args() -> list[str]:
    if not SDIST.is_file():
        pytest.skip(f"{SDIST} not present: run scripts/build_llama_cpp.sh (it keeps the llama-cpp-python sdist, "
                    "whose convert_hf_to_gguf.py the export runs)")
    return ["--converter", str(SDIST)]


def llama(path: Path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/build_llama_cpp.sh "
                                                        "builds llama.cpp from source, ~6 min, once)")
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=2, verbose=False)


# ------------------------------------------------------------------------------------------- the model

def sharp_qwen2(out: Path) -> Path:
    """Tiny Qwen2, real Qwen2.5 vocabulary, untied head, every matrix re-drawn so outputs depend on context."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wuxia_lightning.pretrained.tiny import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(str(require_shared(QWEN_TOKENIZER)))
    config = tiny_config("qwen2", tokenizer)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                # std 1 for both vocabulary matrices gives logits of std ~8: top-2 gaps well above the
                # ~0.1-logit difference llama.cpp's f16 weights and KV cache make (at std 2 one step in
                # 120 flipped).
                param.normal_(std=1.0 if "embed_tokens" in name or "lm_head" in name else 0.25)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def greedy(model, ids: list[int], steps: int = GREEDY_TOKENS) -> list[int]:
    """Argmax decoding written out: no generation config (eos, penalties) can stop or change it."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-steps:]


def chat_ids(tokenizer) -> list[int]:
    return tokenizer.apply_chat_template([{"role": "user", "content": CHAT}], add_generation_prompt=True,
                                         tokenize=True, return_dict=False)


def ends_its_turn(base: Path, style: Path) -> list[int]:
    """Make the model's chat reply end after a few tokens; returns the reply up to <|im_end|>.

    A random model never says <|im_end|>. Its head row is set to 1.05× the row of a token the reply
    would say at step k (with a positive logit there), so <|im_end|> wins exactly where that token would
    have. Only that logit changes (the head is untied and no adapter targets it), so the reply is the
    same up to k, and the edit can go into the base after the style folder is saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from wuxia_lightning.modeling.stacking import load_stacked

    tokenizer = AutoTokenizer.from_pretrained(str(base))
    prompt, end = chat_ids(tokenizer), tokenizer.convert_tokens_to_ids("<|im_end|>")
    model, _ = load_stacked(style)
    reply = greedy(model, prompt, 12)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + reply])).logits[0, len(prompt) - 1:]
    k = next(k for k in range(3, 12) if reply[k] not in reply[:k] and logits[k, reply[k]] > 0)
    plain = AutoModelForCausalLM.from_pretrained(str(base))
    with torch.no_grad():
        plain.lm_head.weight[end] = 1.05 * plain.lm_head.weight[reply[k]]
    plain.save_pretrained(base)
    return reply[:k]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A stage-1 folder on the sharp base, its GGUF f16 export and its merged float32 export."""
    root = tmp_path_factory.mktemp("gguf")
    base = sharp_qwen2(root / "base")
    style = build_style(base, root / "style")
    reply = ends_its_turn(base, style)
    args = converter_args()
    assert run_export(style, root / "wuxia", "--format", "gguf", *args) == 0
    assert run_export(style, root / "merged", "--format", "merged", "--dtype", "float32") == 0
    return {"style": style, "gguf": root / "wuxia" / "wuxia-f16.gguf", "merged": root / "merged", "reply": reply,
            "root": root}


# ------------------------------------------------------------------------------------------- serving

def test_llama_cpp_greedy_equals_transformers_on_the_merged_model(trained):
    """llama.cpp's first 20 greedy tokens are transformers' (float32, merged export) for each prompt.

    Checked step by step on llama.cpp's own tokens: each is transformers' argmax for the same context,
    unless transformers' top two are within TIE there (a near-tie f16 may resolve either way; after it the
    contexts differ, so the step-by-step check is what keeps comparing). Measured on this model: 2 of 3
    prompts agree 20/20 outright; "The old swordsman said" meets a 0.001-logit tie at step 15."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = llama(trained["gguf"])
    tokenizer = AutoTokenizer.from_pretrained(str(trained["merged"]))
    merged = AutoModelForCausalLM.from_pretrained(str(trained["merged"])).eval()
    ties = runner_up = 0
    for prompt in PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        got = list(itertools.islice(llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0),
                                    GREEDY_TOKENS))
        with torch.no_grad():
            logits = merged(input_ids=torch.tensor([ids + got])).logits[0, len(ids) - 1:-1]
        top = logits.topk(2)
        tied = top.values[:, 0] - top.values[:, 1] < TIE
        chosen = torch.tensor(got)
        assert bool(((top.indices[:, 0] == chosen) | (tied & (top.indices[:, 1] == chosen))).all()), \
            (prompt, got, greedy(merged, ids))
        assert logits.std() > 4 and len(set(got)) > GREEDY_TOKENS // 2, got  # sharp and context-dependent
        ties += int(tied.sum())
        runner_up += int((top.indices[:, 0] != chosen).sum())
    # TIE forgives a rare flip at a near-tie (1 of 60 measured, among 12 steps within TIE), not a model
    # whose choices are all close calls.
    assert runner_up <= 2 and ties <= GREEDY_TOKENS * len(PROMPTS) // 3, (runner_up, ties)
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template
    assert llm.metadata["general.file_type"] == "1"  # LLAMA_FTYPE_MOSTLY_F16
    llm.close()


def test_a_chat_turn_stops_on_im_end(trained):
    from transformers import AutoTokenizer

    llm = llama(trained["gguf"])
    tokenizer = AutoTokenizer.from_pretrained(str(trained["merged"]))
    assert llm.tokenize(tokenizer.apply_chat_template([{"role": "user", "content": CHAT}], tokenize=False,
                                                      add_generation_prompt=True).encode(),
                        add_bos=False, special=True) == chat_ids(tokenizer)
    answer = llm.create_chat_completion([{"role": "user", "content": CHAT}], temperature=0.0, max_tokens=40)
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "stop" and answer["usage"]["completion_tokens"] < 40, answer
    assert choice["message"]["content"] == tokenizer.decode(trained["reply"])
    modelfile = (trained["gguf"].parent / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./wuxia-f16.gguf\n") and "PARAMETER stop <|im_end|>" in modelfile
    manifest = json.loads((trained["gguf"].parent / "wuxia_export.json").read_text())
    assert manifest["format"] == "gguf" and manifest["chat_format"] == "chatml"
    assert sorted(p.name for p in trained["gguf"].parent.iterdir()) == ["Modelfile", "wuxia-f16.gguf",
                                                                        "wuxia_export.json"]
    llm.close()


def test_q8_0_exports_and_loads(trained):
    out = trained["root"] / "q8"
    assert run_export(trained["style"], out, "--format", "gguf", "--gguf-type", "q8_0", *converter_args()) == 0
    path = out / "q8-q8_0.gguf"
    assert path.stat().st_size < 0.75 * trained["gguf"].stat().st_size
    llm = llama(path)
    assert llm.metadata["general.file_type"] == "7"  # LLAMA_FTYPE_MOSTLY_Q8_0
    # q8_0 rounding moves the argmax of this sharp model (doc §2: 5/40 agree), so only a reply is asked for.
    assert len(list(itertools.islice(llm.generate([1, 2, 3], temp=0.0, top_k=1), 5))) == 5
    llm.close()


# ------------------------------------------------------------------------------------------ refusals

@pytest.fixture(scope="module")
def char_style(tiny_model_dir, tmp_path_factory) -> Path:
    """A stage-1 folder on the default tiny model, whose tokenizer is character-level (WordLevel)."""
    return build_style(tiny_model_dir, tmp_path_factory.mktemp("char") / "style")


@pytest.mark.parametrize(("case", "words"), [
    ("exists-empty", "already exists"), ("exists-file", "already exists"), ("type", "'q4_k'"),
    ("wordlevel", "WordLevel"), ("type-without-gguf", "gguf-type"), ("overwrite", "overwrite")])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(char_style, tmp_path, capsys, case, words):
    out = tmp_path / "out"
    extra = {"type": ["--gguf-type", "q4_k"], "overwrite": ["--overwrite"]}.get(case, [])
    fmt = "merged" if case == "type-without-gguf" else "gguf"
    if case == "exists-empty":
        out.mkdir()
    elif case == "exists-file":
        out.write_text("mine")
    elif case == "type-without-gguf":
        extra = ["--gguf-type", "f16"]
    before = sorted(tmp_path.iterdir())
    assert run_export(char_style, out, "--format", fmt, *extra) == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line, line
    named = {"wordlevel": str(char_style), "type-without-gguf": "", "overwrite": ""}.get(case, str(out))
    assert named in line, line  # the path at fault: OUT, or the folder whose tokenizer cannot convert
    assert sorted(tmp_path.iterdir()) == before  # no OUT, no hidden staging folder beside it
    assert case != "exists-file" or out.read_text() == "mine"
