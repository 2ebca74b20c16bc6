"""The peak-memory estimate (``wuxia_lightning.memory_estimate``, ``scripts/check_gpu.py --config``) against
what transformers, peft, bitsandbytes and torch really allocate, on tiny models on the CPU.

CPU RSS is too noisy to compare with, so memory is counted with torch's own tools:
  * ``torch.autograd.graph.saved_tensors_hooks`` sees every tensor autograd saves for backward — exactly
    the activation memory — and we sum the distinct storages (views share one) that are not weights;
  * a ``TorchDispatchMode`` sees every tensor an operator returns and, through a weakref on its storage,
    when it is freed: the peak of live tensors of a step, like ``torch.cuda.max_memory_allocated``
    (scratch memory inside one kernel, e.g. logsumexp's temporary, is invisible to it).
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Iterable
from dataclasses import replace

import pytest
import torch
from conftest import REPO, load_script, strict_loads
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from wuxia_lightning.memory_estimate import (
    ModelDims,
    Pass,
    TrainSettings,
    base_weight_bytes,
    estimate,
    known_model_configs,
    nf4_bytes,
    trainable_parameter_count,
)
from wuxia_lightning.modeling.adapters import lora_config, restore_trainable, trainable_names
from wuxia_lightning.objectives.losses import chunked_ce_kl, select_loss_positions

# Small, but every dimension distinct, grouped-query attention, and a vocabulary much larger than d.
TINY = dict(vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
QWEN_7B_CONFIG = REPO / "configs" / "qwen2.5-7b_style_qlora.yaml"
# Published on the model cards (billions): total and non-embedding parameters.
MODEL_CARDS = {"Qwen/Qwen2.5-0.5B": (0.49, 0.36), "Qwen/Qwen2.5-1.5B": (1.54, 1.31),
               "Qwen/Qwen2.5-3B": (3.09, 2.77), "Qwen/Qwen2.5-7B": (7.61, 6.53), "Qwen/Qwen2.5-14B": (14.7, 13.1),
               "Qwen/Qwen3-0.6B": (0.6, 0.44), "Qwen/Qwen3-1.7B": (1.7, 1.4), "Qwen/Qwen3-4B": (4.0, 3.6),
               "Qwen/Qwen3-8B": (8.2, 6.95), "Qwen/Qwen3-14B": (14.8, 13.2)}
# The saved-for-backward count is exact up to the first layer, whose input needs no gradient without
# checkpointing (its input norm and q/k/v dropout masks are not saved): the estimate keeps them, so it
# errs high by about a layer's norm and masks. The step peak also misses in-kernel scratch.
SAVED_TOLERANCE, PEAK_TOLERANCE = 0.10, 0.15


def tiny_config(arch: str = "qwen2", **overrides):
    from transformers import Qwen2Config, Qwen3Config

    values = {**TINY, "tie_word_embeddings": True, **overrides}
    return Qwen3Config(head_dim=32, **values) if arch == "qwen3" else Qwen2Config(**values)


def tiny_model(config, dtype: torch.dtype = torch.float32, checkpointing: bool = False) -> torch.nn.Module:
    """A frozen causal LM prepared as ``modeling.loading.load_base_model`` prepares one."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.requires_grad_(False)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    return model


def make_batch(batch_size: int, length: int, padded: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY["vocab_size"], (batch_size, length), generator=generator)
    mask = torch.ones(batch_size, length, dtype=torch.long)
    if padded:
        mask[0, length // 2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def hidden_states(peft_model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    decoder = peft_model.get_base_model().get_decoder()
    return decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def token_sums(peft_model, batch: dict[str, torch.Tensor], ref_hidden: torch.Tensor | None = None):
    """The training loss path: labelled positions of the final hidden states, chunked CE (+ KL) through
    the LM head, 256 positions per chunk."""
    selected, targets, weights, mask = select_loss_positions(hidden_states(peft_model, batch), batch["labels"])
    ref = ref_hidden[:, :-1][mask] if ref_hidden is not None else None
    return chunked_ce_kl(selected, targets, weights, peft_model.get_base_model().get_output_embeddings(), ref)


def reference(peft_model, batch: dict[str, torch.Tensor], adapters: list[str] | None) -> torch.Tensor:
    """The KL reference, no gradient: every adapter off (stage 1) or only ``adapters`` on (stage 2)."""
    trainable = trainable_names(peft_model)
    with torch.no_grad():
        if adapters:
            active = list(peft_model.base_model.active_adapters)
            peft_model.base_model.set_adapter(adapters)
            ref = hidden_states(peft_model, batch)
            peft_model.base_model.set_adapter(active)
        else:
            with peft_model.disable_adapter():
                ref = hidden_states(peft_model, batch)
    restore_trainable(peft_model, trainable)
    return ref


# ---- the runs measured ---------------------------------------------------------------------------
class Run:
    """One configuration of a training step on a tiny model, and the settings that describe it."""

    def __init__(self, arch: str = "qwen2", dtype: str = "float32", autocast: bool = False,
                 checkpointing: bool = False, stage2: bool = False) -> None:
        from peft import get_peft_model

        self.config, self.dtype, self.stage2 = tiny_config(arch), dtype, stage2
        self.autocast = autocast
        base = tiny_model(self.config, getattr(torch, dtype), checkpointing)
        self.model = get_peft_model(base, lora_config(4 if stage2 else 8, 16, 0.05), adapter_name="style")
        if stage2:  # a frozen style adapter under a trainable instruct adapter, both active
            self.model.add_adapter("instruct", lora_config(8, 16, 0.05))
            self.model.base_model.set_adapter(["style", "instruct"])
            restore_trainable(self.model, {n for n, _ in self.model.named_parameters() if ".instruct." in n})
        self.model.train()
        self.chat = make_batch(4, 96, padded=True) if stage2 else make_batch(4, 128, padded=False)
        self.replay = make_batch(2, 64, padded=True, seed=1)
        self.settings = TrainSettings(
            passes=(Pass(4, 96), Pass(2, 64, reference=True)) if stage2 else (Pass(4, 128, reference=True),),
            dtype=dtype, autocast="bfloat16" if autocast else None, adapter_dtype="float32", lora_r=8,
            lora_dropout=0.05, frozen_adapter_r=4 if stage2 else 0, frozen_adapter_dropout=0.05,
            gradient_checkpointing=checkpointing, padded=stage2, device="cpu")

    def loss(self) -> torch.Tensor:
        """Stage 1: CE + 0.1·KL(policy ‖ adapters off). Stage 2: chat CE + KL(both ‖ style only) on replay."""
        precision = torch.autocast("cpu", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with precision:
            if not self.stage2:
                sums = token_sums(self.model, self.chat, reference(self.model, self.chat, None))
                return sums.mean_ce() + 0.1 * sums.mean_kl()
            chat = token_sums(self.model, self.chat).mean_ce()
            replay = token_sums(self.model, self.replay, reference(self.model, self.replay, ["style"]))
            return chat + replay.mean_kl()

    def weights(self) -> list[torch.Tensor]:
        return [*self.model.parameters(), *self.model.buffers()]

    def estimate(self):
        return estimate(ModelDims.from_config(self.config), self.settings)


def saved_for_backward_bytes(run: Run) -> tuple[int, torch.Tensor]:
    """Bytes of the distinct storages autograd saves during the forward, weights excluded."""
    weights = {t.untyped_storage().data_ptr() for t in run.weights()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = run.loss()
    return sum(saved.values()), loss


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of the tensors created while active. Storages that existed before (``existing``: weights,
    gradients, optimizer state, the batch) are not counted."""

    def __init__(self, existing: Iterable[torch.Tensor]) -> None:
        super().__init__()
        self.sizes = {t.untyped_storage().data_ptr(): 0 for t in existing}
        self.now = self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self.sizes:  # a view, an in-place result, or a tensor from before
            return
        self.sizes[key] = size
        self.now += size
        self.peak = max(self.peak, self.now)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.now -= self.sizes.pop(key, 0)


def step_peak_bytes(run: Run) -> tuple[int, torch.optim.Optimizer]:
    """Peak of one step (forward, backward, AdamW step) after a warm-up step, so the gradients and the
    optimizer state exist beforehand, as they do from the second micro-batch of an accumulated step."""
    optimizer = torch.optim.AdamW([p for p in run.model.parameters() if p.requires_grad])
    run.loss().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=False)
    state = [t for values in optimizer.state.values() for t in values.values() if isinstance(t, torch.Tensor)]
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    with LiveTensorBytes([*run.weights(), *state, *grads, *run.chat.values(), *run.replay.values()]) as live:
        loss = run.loss()
        loss.backward()
        optimizer.step()
    return live.peak, optimizer


RUNS = {"stage1-fp32": dict(), "stage1-fp32-checkpointing": dict(checkpointing=True),
        "stage1-bf16-autocast": dict(dtype="bfloat16", autocast=True), "stage1-qwen3": dict(arch="qwen3"),
        "stage2-replay-padded": dict(stage2=True)}


# ---- (a) arithmetic ------------------------------------------------------------------------------
@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("qwen2", False), ("qwen3", False)])
def test_base_weight_bytes_are_the_bytes_of_a_real_model(arch, tied):
    config = tiny_config(arch, tie_word_embeddings=tied)
    dims = ModelDims.from_config(config)
    assert dims == ModelDims.from_config(config.to_dict())  # a PretrainedConfig or the dict of config.json
    model = tiny_model(config, torch.bfloat16)
    count = sum(p.numel() for p in model.parameters())  # tied weights are one parameter
    assert dims.parameter_count() == count
    assert base_weight_bytes(dims, "bfloat16", "none") == 2 * count
    assert base_weight_bytes(dims, "float32", "none") == 4 * count


def test_4bit_base_weights_are_what_bitsandbytes_keeps(tmp_path):
    """nf4 linears with their quantisation state; embeddings and the LM head stay in the compute dtype."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = tiny_config(tie_word_embeddings=False)
    tiny_model(config, torch.bfloat16).save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16, device_map={"": "cpu"},
                                                 quantization_config=BitsAndBytesConfig(
                                                     load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                     bnb_4bit_use_double_quant=True,
                                                     bnb_4bit_compute_dtype=torch.bfloat16))
    assert model.get_input_embeddings().weight.dtype == model.get_output_embeddings().weight.dtype == torch.bfloat16
    storages = {}
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        extra = [state.absmax, state.offset, state.code, state.state2.absmax, state.state2.code] if state else []
        for tensor in [param, *extra]:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    assert sum(storages.values()) == base_weight_bytes(ModelDims.from_config(config), "bfloat16", "4bit")
    weights = 3584 * 18944  # Qwen2.5-7B's gate_proj: 4 bits + 1/64 byte of absmax + 4/(64·256) per weight
    assert nf4_bytes(weights) / weights == pytest.approx(0.5 + 1 / 64 + 4 / (64 * 256), rel=1e-4)


@pytest.mark.parametrize("targets,new_tokens", [("all-linear", ()), (["q_proj", "v_proj"], ()),
                                                ("all-linear", (5, 9, 11))])
def test_trainable_parameters_are_peft_s_count(targets, new_tokens):
    from peft import get_peft_model

    config = tiny_config()
    model = get_peft_model(tiny_model(config), lora_config(8, 16, 0.05, targets, new_tokens))
    settings = TrainSettings(passes=(Pass(1, 8),), lora_r=8, lora_target_modules=targets,
                             new_token_rows=len(new_tokens))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable_parameter_count(ModelDims.from_config(config), settings) == trainable


@pytest.mark.parametrize("name", sorted(MODEL_CARDS))
def test_the_shipped_dimensions_give_the_model_card_parameter_counts(name):
    dims = ModelDims.from_config(known_model_configs()[name.lower()])
    total, non_embedding = MODEL_CARDS[name]
    embeddings = dims.vocab_size * dims.hidden_size * (1 if dims.tie_word_embeddings else 2)
    assert dims.parameter_count() / 1e9 == pytest.approx(total, rel=0.015)
    assert (dims.parameter_count() - embeddings) / 1e9 == pytest.approx(non_embedding, rel=0.015)


# ---- (b) against a measurement -----------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(RUNS))
def test_activations_saved_for_backward_match_the_estimate(name):
    run = Run(**RUNS[name])
    measured, _ = saved_for_backward_bytes(run)
    estimated = run.estimate().activations
    assert estimated == pytest.approx(measured, rel=SAVED_TOLERANCE), f"{name}: {estimated=} {measured=}"


@pytest.mark.parametrize("name", ["stage1-fp32", "stage1-fp32-checkpointing", "stage1-bf16-autocast-checkpointing"])
def test_peak_of_a_training_step_matches_the_estimate(name):
    run = Run(**{**RUNS, "stage1-bf16-autocast-checkpointing": dict(dtype="bfloat16", autocast=True,
                                                                    checkpointing=True)}[name])
    peak, optimizer = step_peak_bytes(run)
    e = run.estimate()
    assert e.activations + e.working_set == pytest.approx(peak, rel=PEAK_TOLERANCE), (name, e.as_dict(), peak)
    trainable = [p for p in run.model.parameters() if p.requires_grad]
    assert e.gradients == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    moments = [optimizer.state[p][key] for p in trainable for key in ("exp_avg", "exp_avg_sq")]
    assert e.optimizer == sum(t.numel() * t.element_size() for t in moments)
    assert e.adapters == sum(p.numel() * p.element_size() for p in trainable)  # fp32 LoRA


def test_checkpointing_keeps_only_the_layer_inputs_and_the_bf16_adapters_stay_fp32():
    run = Run(dtype="bfloat16", autocast=True)
    assert {p.dtype for p in run.model.parameters() if p.requires_grad} == {torch.float32}
    e = run.estimate()
    with_checkpointing = estimate(ModelDims.from_config(run.config), replace(run.settings, gradient_checkpointing=True))
    assert with_checkpointing.activations < e.activations / 5
    assert with_checkpointing.backward["recomputed_layer"] > 0 == e.backward["recomputed_layer"]


# ---- (c) the command line ----------------------------------------------------------------------
def test_check_gpu_config_prints_a_table_and_a_verdict_for_the_7b_config(capsys):
    assert load_script("check_gpu").main(["--config", str(QWEN_7B_CONFIG), "--gpu-memory-gb", "24"]) == 0
    table = capsys.readouterr().out
    for row in ("base weights (nf4 linears + bfloat16)", "LoRA adapters (float32)", "AdamW moments",
                "activations kept for backward", "loss chunk logits", "CUDA context", "total (estimated peak)"):
        assert row in table
    assert "Qwen/Qwen2.5-7B" in table and "budget: 24 GiB (--gpu-memory-gb)" in table
    assert "verdict with gradient checkpointing (as configured): fits" in table


def test_check_gpu_config_json_is_strict_and_adds_up(capsys):
    assert load_script("check_gpu").main(["--config", str(QWEN_7B_CONFIG), "--gpu-memory-gb", "24", "--json"]) == 0
    report = strict_loads(capsys.readouterr().out)
    assert report["model"] == "Qwen/Qwen2.5-7B" and report["dims"]["vocab_size"] == 152064
    assert report["configured"] == "with_checkpointing" and report["budget"]["gib"] == 24
    with_ckpt, without = report["estimates"]["with_checkpointing"], report["estimates"]["without_checkpointing"]
    for e in (with_ckpt, without):
        parts = ("base_weights", "adapters", "gradients", "optimizer", "activations", "working_set", "gpu_overhead")
        assert e["total"] == sum(e[key] for key in parts)
        assert e["working_set"] == max(sum(e["forward_end"].values()), sum(e["backward"].values()))
    assert with_ckpt["activations"] < without["activations"]
    assert with_ckpt["base_weights"] == without["base_weights"] and 5 * 2**30 < with_ckpt["base_weights"] < 6 * 2**30
    assert report["verdict"]["with_checkpointing"] == "fits"


def test_check_gpu_config_overlays_merge_like_wuxia_fit(capsys):
    """The FSDP overlay turns off 4-bit and checkpointing and trains in bf16-true (bf16 adapters)."""
    overlay = REPO / "configs" / "fsdp_style.yaml"
    assert load_script("check_gpu").main(["--config", str(QWEN_7B_CONFIG), "--config", str(overlay), "--json",
                             "--gpu-memory-gb", "80"]) == 0
    report = strict_loads(capsys.readouterr().out)
    settings = report["settings"]
    assert (settings["quantization"], settings["gradient_checkpointing"]) == ("none", False)
    assert (settings["autocast"], settings["adapter_dtype"]) == (None, "bfloat16")
    assert settings["lora_r"] == 16 and report["configured"] == "without_checkpointing"


def test_check_gpu_config_reads_a_local_model_folder_and_tiny_names(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(tiny_config().to_dict()), encoding="utf-8")
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  class_path: wuxia_lightning.modules.style.StyleAlignmentModule\n"
                      f"  init_args: {{model_name_or_path: {folder}}}\n"
                      "data:\n  class_path: wuxia_lightning.data.style_datamodule.StyleDataModule\n", encoding="utf-8")
    assert load_script("check_gpu").main(["--config", str(config), "--json"]) == 0
    report = strict_loads(capsys.readouterr().out)
    assert report["model_config"] == str(folder / "config.json") and report["dims"]["hidden_size"] == 128
    assert report["settings"]["passes"] == [{"batch_size": 4, "length": 512, "reference": True}]  # class defaults

    import wuxia_lightning.pretrained.tiny as tiny

    monkeypatch.setattr(tiny, "resolve_model_path", lambda name, tokenizer=None: str(folder))
    config.write_text(config.read_text(encoding="utf-8").replace(str(folder), "tiny-qwen2"), encoding="utf-8")
    assert load_script("check_gpu").main(["--config", str(config), "--json"]) == 0
    assert strict_loads(capsys.readouterr().out)["model_config"] == str(folder / "config.json")


def test_check_gpu_config_names_an_unknown_model_in_one_line(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model:\n  class_path: wuxia_lightning.modules.style.StyleAlignmentModule\n"
                      "  init_args: {model_name_or_path: nobody/not-a-model}\n", encoding="utf-8")
    assert load_script("check_gpu").main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model 'nobody/not-a-model'" in err and "--model-config" in err
