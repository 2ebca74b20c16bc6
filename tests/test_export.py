"""scripts/export.py: one concatenated LoRA adapter and a merged model, both equal to the stacked model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import load_script

from wuxia_lightning.modeling.adapters import activate, lora_config, save_adapter_atomically
from wuxia_lightning.modeling.export import VLLM_LORA_RANKS, LoraPart, concatenate, pad_rank, padded_rank
from wuxia_lightning.modeling.loading import load_base_model
from wuxia_lightning.modeling.stacking import load_stacked, save_stacked
from wuxia_lightning.pretrained.tokenizer import load_tokenizer

ATTENTION = ["q_proj", "v_proj"]
IDS = torch.randint(10, 300, (2, 24), generator=torch.Generator().manual_seed(0))


def run_export(folder: Path, out: Path, *extra: str) -> int:
    return load_script("export").main(["--model", str(folder), "--out", str(out), "--dtype", "float32", *extra])


def randomise_lora_b(model, adapter: str) -> None:
    """peft starts B at zero (a no-op adapter): a random B makes every adapter change the outputs."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and f".{adapter}." in name:
                param.normal_(std=0.2)


def build_style(tiny_model_dir: Path, out: Path, **config) -> Path:
    """A stage-1 folder (r 8, alpha 16 unless ``config`` says otherwise), saved like StyleAlignmentModule."""
    from peft import get_peft_model

    torch.manual_seed(0)
    settings = {"r": 8, "alpha": 16, "dropout": 0.0, **config}
    model = get_peft_model(load_base_model(str(tiny_model_dir)), lora_config(**settings), adapter_name="style")
    randomise_lora_b(model, "style")
    save_adapter_atomically(model, "style", out, load_tokenizer(str(tiny_model_dir)),
                            {"stage": "style", "adapters": ["style"], "base_model": str(tiny_model_dir)})
    return out


def build_stacked(tiny_model_dir: Path, style: Path, out: Path, instruct_targets="all-linear") -> Path:
    """A stage-2 folder: the style adapter plus an instruct adapter of another rank and alpha."""
    from peft import PeftModel

    from wuxia_lightning.pretrained.tokenizer import ensure_chat_template

    torch.manual_seed(1)
    model = PeftModel.from_pretrained(load_base_model(str(tiny_model_dir)), str(style), adapter_name="style")
    model.add_adapter("instruct", lora_config(4, 12, 0.0, target_modules=instruct_targets))
    randomise_lora_b(model, "instruct")
    activate(model, ["style", "instruct"])
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ensure_chat_template(tokenizer)
    save_stacked(model, out, tokenizer, {"stage": "instruct", "base_model": str(tiny_model_dir),
                                         "adapters": ["style", "instruct"], "adapter_mode": "stacked"})
    return out


@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """style: stage 1; stacked: style + instruct; partial: instruct only on q/v (other modules: style only)."""
    root = tmp_path_factory.mktemp("trained")
    style = build_style(tiny_model_dir, root / "style")
    return {"style": style, "stacked": build_stacked(tiny_model_dir, style, root / "stacked"),
            "partial": build_stacked(tiny_model_dir, style, root / "partial", instruct_targets=ATTENTION)}


def stacked_logits(folder: Path, style: float, instruct: float) -> torch.Tensor:
    model, _ = load_stacked(folder, style_scale=style, instruct_scale=instruct)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def assert_same_logits(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to fp32 rounding: 1e-5 per unit of logit scale (max |logit|, at least 1). Concatenating
    adapters or merging them into W reorders fp32 sums, and that rounding grows with the weights and the
    logits (2.2e-5 seen at max |logit| 5 on the pre-trained tiny base); a wrong scale or a dropped adapter
    is off by more than 1e-2 (checked against the bare base below)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)


def plain_adapter_model(base: Path, adapter: Path):
    """How a user (or a server) loads the export: the unmodified base plus ONE peft adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(adapter)).eval()


def merged_model(out: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(out)).eval()


def assert_serving_files(out: Path) -> dict:
    """Tokenizer with a chat template, generation config stopping at <|im_end|>; returns the manifest."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    generation = json.loads((out / "generation_config.json").read_text())
    assert tokenizer.chat_template and tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    assert not list(out.parent.glob(f".{out.name}.*"))  # no staging folder left behind
    return json.loads((out / "wuxia_export.json").read_text())


# ------------------------------------------------------------------------------------ adapter format

@pytest.mark.parametrize(("kind", "style", "instruct", "pad"), [
    ("stacked", 1.0, 1.0, False), ("stacked", 1.5, 0.5, True), ("style", 1.0, 1.0, True),
    ("partial", 1.5, 0.5, False)])
def test_exported_adapter_equals_the_stacked_model(folders, tiny_model_dir, tmp_path, kind, style, instruct, pad):
    out = tmp_path / "lora"
    extra = ["--pad-rank-for", "vllm"] if pad else []
    assert run_export(folders[kind], out, "--format", "adapter", "--style-scale", str(style),
                      "--instruct-scale", str(instruct), *extra) == 0
    expected = stacked_logits(folders[kind], style, instruct)
    with torch.no_grad():
        got = plain_adapter_model(tiny_model_dir, out)(input_ids=IDS).logits
        base = merged_model(tiny_model_dir)(input_ids=IDS).logits
    assert_same_logits(got, expected)
    assert (base - expected).abs().max() > 1e-2  # the adapters do change the outputs

    config = json.loads((out / "adapter_config.json").read_text())
    rank = 8 if kind == "style" else 12
    assert config["lora_alpha"] == config["r"] == (padded_rank(rank) if pad else rank)
    assert not pad or config["r"] in VLLM_LORA_RANKS
    manifest = assert_serving_files(out)
    assert [(a["name"], a["scale"]) for a in manifest["adapters"]] == \
        [("style", style), ("instruct", instruct)][: 1 if kind == "style" else 2]
    assert manifest["base_model"] == str(tiny_model_dir) and manifest["rank"] == rank


def test_a_module_only_one_adapter_targets_gets_zero_rows(folders, tmp_path):
    assert run_export(folders["partial"], tmp_path / "lora", "--format", "adapter") == 0
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "lora" / "adapter_model.safetensors"))
    mlp = weights["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"]
    attention = weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    assert mlp.shape[0] == attention.shape[0] == 12
    assert torch.all(mlp[8:] == 0) and torch.any(attention[8:] != 0)  # rows 8..11 are the instruct adapter's


def test_concatenation_is_the_scaled_sum_and_padding_changes_nothing():
    torch.manual_seed(0)

    def part(name: str, r: int, alpha: int, scale: float, modules: list[str]) -> LoraPart:
        weights = {}
        for module in modules:
            weights[f"{module}.lora_A.weight"] = torch.randn(r, 6)
            weights[f"{module}.lora_B.weight"] = torch.randn(5, r)
        return LoraPart(name, {"r": r, "lora_alpha": alpha}, weights, scale)

    one, two = part("style", 4, 8, 1.5, ["m1", "m2"]), part("instruct", 2, 6, -0.5, ["m1"])
    state, rank = concatenate([one, two])
    assert rank == 6

    def delta(p: LoraPart, module: str) -> torch.Tensor:
        key = f"{module}.lora_"
        if f"{key}A.weight" not in p.weights:
            return torch.zeros(5, 6)
        return p.weights[f"{key}B.weight"] @ p.weights[f"{key}A.weight"] * p.scaling

    padded = pad_rank(state, rank, padded_rank(rank))
    for module in ("m1", "m2"):
        expected = delta(one, module) + delta(two, module)
        for weights in (state, padded):
            product = weights[f"{module}.lora_B.weight"] @ weights[f"{module}.lora_A.weight"]
            torch.testing.assert_close(product, expected)
    assert padded["m1.lora_A.weight"].shape == (8, 6) and padded["m1.lora_B.weight"].shape == (5, 8)
    assert [padded_rank(r) for r in (1, 2, 8, 12, 300, 512)] == [1, 8, 8, 16, 320, 512]


# ------------------------------------------------------------------------------------- merged format

@pytest.mark.parametrize(("kind", "style", "instruct"), [("stacked", 1.0, 1.0), ("stacked", 1.5, 0.5),
                                                         ("style", 1.0, 1.0)])
def test_merged_export_equals_the_stacked_model(folders, tmp_path, kind, style, instruct):
    out = tmp_path / "merged"
    assert run_export(folders[kind], out, "--format", "merged", "--style-scale", str(style),
                      "--instruct-scale", str(instruct)) == 0
    assert not (out / "adapter_config.json").exists() and (out / "config.json").exists()
    with torch.no_grad():
        got = merged_model(out)(input_ids=IDS).logits
    assert_same_logits(got, stacked_logits(folders[kind], style, instruct))
    assert assert_serving_files(out)["format"] == "merged"


def test_greedy_generation_is_the_same_token_for_token(folders, tiny_model_dir, tmp_path):
    folder = folders["stacked"]
    assert run_export(folder, tmp_path / "lora", "--format", "adapter", "--pad-rank-for", "vllm") == 0
    assert run_export(folder, tmp_path / "merged", "--format", "merged") == 0
    prompt = IDS[:1, :8]
    stacked, _ = load_stacked(folder)
    settings = {"max_new_tokens": 16, "do_sample": False, "eos_token_id": None, "pad_token_id": 0}
    with torch.no_grad():
        expected = stacked.generate(input_ids=prompt, **settings)
        for model in (plain_adapter_model(tiny_model_dir, tmp_path / "lora"), merged_model(tmp_path / "merged")):
            assert torch.equal(model.generate(input_ids=prompt, **settings), expected)
        base = merged_model(tiny_model_dir).generate(input_ids=prompt, **settings)
    assert expected.shape[1] == 24 and not torch.equal(base, expected)  # the adapters change the reply


# ------------------------------------------------------------------------------------------- refusals

def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_refuses_a_non_empty_output_folder_unless_overwrite(folders, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    assert run_export(folders["stacked"], taken, "--format", "adapter") == 2
    assert "already exists" in one_error_line(capsys.readouterr().err)
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    assert run_export(folders["stacked"], taken, "--format", "adapter", "--overwrite") == 0
    assert (taken / "adapter_config.json").exists() and not (taken / "keep.txt").exists()
    (tmp_path / "empty").mkdir()
    assert run_export(folders["stacked"], tmp_path / "empty", "--format", "adapter") == 0
    # replacing --out must never delete the folder being exported
    assert run_export(folders["stacked"], folders["stacked"].parent, "--format", "adapter", "--overwrite") == 2
    assert "must not be the --model folder" in one_error_line(capsys.readouterr().err)
    assert (folders["stacked"] / "wuxia_manifest.json").exists()


@pytest.mark.parametrize(("setting", "value", "words"), [("use_rslora", True, "rsLoRA"), ("use_dora", True, "DoRA"),
                                                          ("trainable_token_indices", {"embed_tokens": [3]},
                                                           "embedding rows")])
def test_refuses_adapters_a_plain_lora_cannot_express(folders, tmp_path, capsys, setting, value, words):
    folder = shutil.copytree(folders["stacked"], tmp_path / "variant")
    config_path = folder / "instruct" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config[setting] = value
    config_path.write_text(json.dumps(config))
    assert run_export(folder, tmp_path / "out", "--format", "adapter") == 2
    line = one_error_line(capsys.readouterr().err)
    assert words in line and setting in line and "--format merged" in line and not (tmp_path / "out").exists()


def test_rslora_still_merges_exactly(tiny_model_dir, tmp_path):
    """The merged format goes through peft's own merge, which knows rsLoRA's alpha / √r scaling."""
    from peft import get_peft_model

    from wuxia_lightning.modeling.adapters import lora_config as plain_config

    torch.manual_seed(0)
    config = plain_config(8, 16, 0.0)
    config.use_rslora = True
    model = get_peft_model(load_base_model(str(tiny_model_dir)), config, adapter_name="style")
    randomise_lora_b(model, "style")
    folder = save_adapter_atomically(model, "style", tmp_path / "rs", load_tokenizer(str(tiny_model_dir)),
                                     {"stage": "style", "adapters": ["style"], "base_model": str(tiny_model_dir)})
    assert run_export(folder, tmp_path / "merged", "--format", "merged", "--style-scale", "1.5") == 0
    with torch.no_grad():
        got = merged_model(tmp_path / "merged")(input_ids=IDS).logits
    expected = stacked_logits(folder, 1.5, 1.0)
    # rsLoRA's scaling 1.5·16/√8 = 8.5 (plain LoRA: 1.5·16/8 = 3) makes the delta ~3x larger, and the fp32
    # rounding of the merged weights grows with it (1.8e-5 seen); a wrong scaling would be off by > 1e-1.
    torch.testing.assert_close(got, expected, rtol=0, atol=5e-5)
    assert (got - stacked_logits(build_style(tiny_model_dir, tmp_path / "plain"), 1.5, 1.0)).abs().max() > 1e-2


def test_a_folder_trained_on_a_4bit_base_merges_into_the_full_precision_base(folders, tiny_model_dir, tmp_path):
    """--format merged never merges into 4-bit weights (the result would be rounded, peft issue 2321): the
    export equals the adapters on the full-precision base exactly. It differs from the 4-bit model the
    adapters ran on in training by the nf4 rounding of the base, which is large on this 64-wide tiny model
    (about 1 logit for the bare base) and is not an export error: it is bounded by the base's own."""
    pytest.importorskip("bitsandbytes")
    folder = shutil.copytree(folders["stacked"], tmp_path / "qlora")
    manifest = json.loads((folder / "wuxia_manifest.json").read_text())
    manifest["training"] = {"quantization": "4bit"}
    (folder / "wuxia_manifest.json").write_text(json.dumps(manifest))
    assert run_export(folder, tmp_path / "merged", "--format", "merged") == 0
    assert assert_serving_files(tmp_path / "merged")["trained_quantization"] == "4bit"
    merged = merged_model(tmp_path / "merged")
    assert not any("4bit" in type(module).__name__ for module in merged.modules())
    with torch.no_grad():
        got = merged(input_ids=IDS).logits
        assert_same_logits(got, stacked_logits(folder, 1.0, 1.0))
        quantised, _ = load_stacked(folder, quantization="4bit")
        base_error = (load_base_model(str(tiny_model_dir)).eval()(input_ids=IDS).logits
                      - load_base_model(str(tiny_model_dir), quantization="4bit").eval()(input_ids=IDS).logits)
        assert (got - quantised(input_ids=IDS).logits).abs().max() <= 1.5 * base_error.abs().max()
