"""Will it fit? The peak GPU memory of one training step, from the model's dimensions and the run's settings.

Why this exists: a run that does not fit fails only after the weights have loaded and the first step has
begun, and the first question about ``configs/qwen2.5-7b_style_qlora.yaml`` is whether it fits a 24 GB card.
Every number here is counted from what the training code keeps alive (the comments name the tensors and
the code that makes them), so it can be checked: ``tests/test_memory_estimate.py`` counts the bytes
autograd saves for backward, and the peak of all tensors of a step, on a tiny model on the CPU.

Peak of one step =
      static       base weights + adapters + their gradients + AdamW moments
    + held         activations autograd keeps for backward: every layer's, or with gradient
                   checkpointing only each layer's input
    + working set  the larger of
                     forward end: the loss chunk's logits, the fp32 copy of the LM head, the hidden
                                  states the loss reads (and the reference pass's), gradient pieces
                     backward:    the recomputed layer (checkpointing), gradient temporaries, one
                                  dequantised 4-bit weight
    + on a GPU     the CUDA context and allocator slack.

Assumed: SDPA attention (transformers' default) on a padded batch (the mask is materialised and
grouped-query k/v are repeated to every head, as ``sdpa_attention_forward`` does whenever a mask is
passed), every position a loss position, torch's AdamW, gradients kept across accumulated micro-batches.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.modeling.adapters import ALL_LINEAR
from wuxia_lightning.pretrained.gguf import is_gguf_spec

GIB = 1024 ** 3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ATTENTION_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
# Linears that read the same tensor: without dropout or a cast their LoRAs save that one tensor, shared.
INPUT_GROUPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))
# bitsandbytes nf4 (bitsandbytes.functional.quantize_4bit): one absmax per 64 weights; with double
# quantisation (QLoRA, our BitsAndBytesConfig) the absmaxes become 8-bit, with an fp32 absmax per 256.
NF4_BLOCK, NESTED_BLOCK = 64, 256
# The CUDA context plus cuBLAS/cuDNN workspaces: ~0.8 GB measured for an empty process (pytorch/pytorch
# issue 34323; lazy module loading since CUDA 11.7 needs less, we keep the larger). The caching allocator
# rounds and splits blocks: a margin on top of the tensors, not a measured constant.
CUDA_CONTEXT_BYTES = int(0.75 * GIB)
ALLOCATOR_SLACK = 0.05
MODEL_DIMS_RESOURCE = "model_dims.json"


# ---- the model --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelDims:
    """The dimensions that decide memory, read from a model's ``config.json``."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = True  # q/k/v biases: Qwen2 always has them, Qwen3 has none
    qk_norm: bool = False        # Qwen3: an RMSNorm on every query and key head

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Any) -> ModelDims:
        """From a ``transformers`` ``PretrainedConfig`` or the dict of a ``config.json``."""
        values = dict(config) if isinstance(config, Mapping) else config.to_dict()
        model_type = str(values.get("model_type", ""))
        heads = int(values["num_attention_heads"])
        qwen2 = model_type.startswith("qwen2")  # Qwen2Attention hard-codes bias=True on q/k/v
        return cls(hidden_size=int(values["hidden_size"]), intermediate_size=int(values["intermediate_size"]),
                   num_hidden_layers=int(values["num_hidden_layers"]), num_attention_heads=heads,
                   num_key_value_heads=int(values.get("num_key_value_heads") or heads),
                   head_dim=int(values.get("head_dim") or values["hidden_size"] // heads),
                   vocab_size=int(values["vocab_size"]),
                   tie_word_embeddings=bool(values.get("tie_word_embeddings", False)),
                   attention_bias=qwen2 or bool(values.get("attention_bias", False)),
                   qk_norm=model_type.startswith(("qwen3", "gemma3")))

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        d, i, q, kv = self.hidden_size, self.intermediate_size, self.q_dim, self.kv_dim
        return {"q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
                "gate_proj": (d, i), "up_proj": (d, i), "down_proj": (i, d)}

    def layer_small_parameters(self) -> int:
        """Per layer, what is not a linear weight: q/k/v biases, the two RMSNorms, Qwen3's q/k norms."""
        biases = self.q_dim + 2 * self.kv_dim if self.attention_bias else 0
        return biases + 2 * self.hidden_size + (2 * self.head_dim if self.qk_norm else 0)

    def parameter_count(self) -> int:
        linear = sum(i * o for i, o in self.linear_shapes().values())
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return self.num_hidden_layers * (linear + self.layer_small_parameters()) + embeddings + self.hidden_size


# ---- the run ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One forward whose activations are alive at the backward (stage 2 with replay has two)."""

    batch_size: int
    length: int
    reference: bool = False  # a no-grad reference forward precedes it, and the loss has a KL term

    @property
    def tokens(self) -> int:
        return self.batch_size * self.length


@dataclass(frozen=True)
class TrainSettings:
    """What a config decides. ``autocast`` is Lightning's ``*-mixed`` precision (None for ``*-true``);
    adapters are fp32 unless the precision is ``bf16-true``/``16-true`` (peft upcasts LoRA weights of a
    bf16/fp16 base to fp32, ``autocast_adapter_dtype=True``; an nf4 base is not a float dtype at all)."""

    passes: tuple[Pass, ...]
    dtype: str = "bfloat16"
    quantization: str = "none"
    autocast: str | None = "bfloat16"
    adapter_dtype: str = "float32"
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_target_modules: str | tuple[str, ...] = ALL_LINEAR
    new_token_rows: int = 0          # embedding rows of added tokens, trained (peft trainable_token_indices)
    frozen_adapter_r: int = 0        # stage 2: the frozen stage-1 adapter (0 = none)
    frozen_adapter_dropout: float = 0.0
    frozen_adapter_active: bool = True
    snapshot_style: bool = False     # stage 2 keeps a copy of the style weights to prove they never change
    gradient_checkpointing: bool = False
    loss_chunk_size: int = 256
    padded: bool = True
    device: str = "cuda"


def dtype_bytes(name: str) -> int:
    return DTYPE_BYTES[name]


def compute_bytes(s: TrainSettings) -> int:
    """Bytes of the activations the linears make: autocast's dtype if on, else the weights' dtype."""
    return dtype_bytes(s.autocast or s.dtype)


def targeted_linears(targets: str | Sequence[str]) -> tuple[str, ...]:
    """peft's "all-linear" is every nn.Linear of the blocks (never the output layer); a list names them."""
    every = ATTENTION_LINEARS + MLP_LINEARS
    if isinstance(targets, str):
        return every if targets == ALL_LINEAR else tuple(name for name in every if name == targets)
    return tuple(name for name in every if name in set(targets))


# ---- static memory ----------------------------------------------------------------------------------
def nf4_bytes(weights: int) -> int:
    """One 4-bit linear weight with double quantisation: 4 bits per weight, an 8-bit absmax per 64
    weights, an fp32 absmax per 256 of those, an fp32 offset, and the layer's own copies of the code
    books (256 fp32 for the absmaxes, 16 for nf4)."""
    blocks = math.ceil(weights / NF4_BLOCK)
    return math.ceil(weights / 2) + blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 + 4 * (256 + 16)


def base_weight_bytes(dims: ModelDims, dtype: str, quantization: str) -> int:
    """The frozen base. With 4-bit, transformers swaps only the blocks' nn.Linear for bnb Linear4bit
    (``replace_with_bnb_linear``; the output embedding is on its do-not-convert list): embeddings, the LM
    head, norms and biases stay in ``dtype``."""
    c = dtype_bytes(dtype)
    linear_sizes = [i * o for i, o in dims.linear_shapes().values()]
    linears = sum(nf4_bytes(n) if quantization == "4bit" else n * c for n in linear_sizes)
    embeddings = dims.vocab_size * dims.hidden_size * (1 if dims.tie_word_embeddings else 2)
    return dims.num_hidden_layers * (linears + dims.layer_small_parameters() * c) + (embeddings + dims.hidden_size) * c


def lora_parameter_count(dims: ModelDims, r: int, targets: str | Sequence[str] = ALL_LINEAR) -> int:
    """A (r × in) and B (out × r) per targeted linear and layer (peft ``LoraLayer.update_layer``)."""
    shapes = dims.linear_shapes()
    return dims.num_hidden_layers * sum(r * sum(shapes[name]) for name in targeted_linears(targets))


def trainable_parameter_count(dims: ModelDims, s: TrainSettings) -> int:
    """LoRA plus the trained rows of new tokens (peft keeps them as a rows × d delta)."""
    return lora_parameter_count(dims, s.lora_r, s.lora_target_modules) + s.new_token_rows * dims.hidden_size


def adapter_bytes(dims: ModelDims, s: TrainSettings) -> int:
    """Trainable adapter, frozen stage-1 adapter, and stage 2's snapshot of the style weights."""
    a = dtype_bytes(s.adapter_dtype)
    frozen = lora_parameter_count(dims, s.frozen_adapter_r, s.lora_target_modules) * a
    style = frozen if s.frozen_adapter_r else trainable_parameter_count(dims, s) * a
    return trainable_parameter_count(dims, s) * a + frozen + (style if s.snapshot_style else 0)


# ---- activations ------------------------------------------------------------------------------------
def layer_activation_bytes(dims: ModelDims, s: TrainSettings) -> dict[str, int]:
    """Bytes autograd saves per token in one decoder layer, by part. Counted from each op's backward
    formula (torch ``derivatives.yaml``) over transformers' Qwen2/Qwen3 decoder layer: a frozen linear
    saves only its weight, so the base projections (16- or 4-bit) save no activation of their own."""
    c, d, q = compute_bytes(s), dims.hidden_size, dims.q_dim
    kv_saved = q if s.padded else dims.kv_dim  # repeat_kv when a mask is passed, else SDPA's enable_gqa
    parts = {
        # input_layernorm and post_attention_layernorm each keep their input upcast to fp32 and 1/rms.
        "rmsnorm": 2 * (4 * d + 4),
        # SDPA (flash / memory-efficient) keeps q, k, v, its output and an fp32 logsumexp per head;
        # RoPE keeps only cos/sin, shared (see pass_shared_bytes).
        "attention": (2 * q + 2 * kv_saved) * c + 4 * dims.num_attention_heads,
        # SwiGLU: SiLU keeps its input (gate_proj's output); the product keeps SiLU's output and up_proj's.
        "mlp": 3 * dims.intermediate_size * c,
        "lora": lora_activation_bytes(dims, s),
    }
    if dims.qk_norm:  # Qwen3: q_norm/k_norm keep every q and k head in fp32 and 1/rms per head
        parts["qk_norm"] = 4 * (q + dims.kv_dim) + 4 * (dims.num_attention_heads + dims.num_key_value_heads)
    return parts


def lora_input_is_copied(s: TrainSettings) -> bool:
    """Without dropout, is the input lora_A saves a private copy (a dtype cast) or the layer's tensor?
    peft casts x to the adapter's dtype (lora.Linear; its bnb Linear4bit skips that under CUDA autocast),
    then autocast casts it to the autocast dtype."""
    skip_cast = s.quantization == "4bit" and s.autocast is not None and s.device == "cuda"
    cast = s.adapter_dtype != s.dtype and not skip_cast
    return cast or (s.autocast is not None and (s.adapter_dtype if cast else s.dtype) != s.autocast)


def lora_activation_bytes(dims: ModelDims, s: TrainSettings) -> int:
    """Per token and layer. The trainable lora_A saves its input, lora_B saves lora_A's output (r values);
    dropout saves a mask (bool on CUDA; on the CPU a noise tensor of the input's dtype). Each linear has its
    own copy of the input when dropout or a cast makes one, else a group reading one tensor shares it. A
    frozen (stage-1) adapter saves only its dropout mask."""
    a = dtype_bytes(s.autocast or s.adapter_dtype)
    mask = 1 if s.device == "cuda" else dtype_bytes(s.adapter_dtype)
    private = s.lora_dropout > 0 or lora_input_is_copied(s)
    frozen_mask = s.frozen_adapter_r > 0 and s.frozen_adapter_active and s.frozen_adapter_dropout > 0
    targets, shapes, total = targeted_linears(s.lora_target_modules), dims.linear_shapes(), 0
    for group in INPUT_GROUPS:
        hit = [name for name in group if name in targets]
        if not hit:
            continue
        width = shapes[hit[0]][0]
        total += (len(hit) if private else 1) * width * a + len(hit) * s.lora_r * a
        total += len(hit) * width * mask * (int(s.lora_dropout > 0) + int(frozen_mask))
    return total


def pass_shared_bytes(dims: ModelDims, s: TrainSettings, p: Pass) -> int:
    """Saved once per forward, not per layer: the final RMSNorm's fp32 input and 1/rms, RoPE's cos and sin
    (one row per position, shared by the batch and every layer), the bool padding mask SDPA reads
    (batch × length²), the loss-position mask and the loss weights."""
    r = dtype_bytes(s.dtype)  # the residual stream, cos/sin and the loss weights keep the weights' dtype
    mask = p.batch_size * p.length ** 2 if s.padded else 0
    return p.tokens * (4 * dims.hidden_size + 4 + 1 + r) + 2 * p.length * dims.head_dim * r + mask


def held_activation_bytes(dims: ModelDims, s: TrainSettings) -> int:
    """Activations alive at the start of backward, summed over the passes of the step. Checkpointing
    (transformers' GradientCheckpointingLayer, non-reentrant torch.utils.checkpoint) keeps only each
    layer's input hidden states."""
    if s.gradient_checkpointing:  # the residual stream, in the weights' dtype even under autocast
        per_layer = dims.hidden_size * dtype_bytes(s.dtype)
    else:
        per_layer = sum(layer_activation_bytes(dims, s).values())
    return sum(p.tokens * dims.num_hidden_layers * per_layer + pass_shared_bytes(dims, s, p) for p in s.passes)


# ---- working sets -----------------------------------------------------------------------------------
def loss_bytes(dims: ModelDims, s: TrainSettings) -> dict[str, int]:
    """Forward end, inside the fused CE+KL (objectives/fused_loss.py): the LM head upcast to fp32 once per
    call (none if already fp32); one chunk's logits, three chunk × V fp32 buffers with a reference (log q,
    log p, logsumexp's temporary), two without; the gradient pieces kept for backward, N × d fp32 for CE
    and one more for KL, for every pass so far; the hidden states the loss reads (the decoder output and
    its selected rows, and the same from the reference forward)."""
    d, v, r = dims.hidden_size, dims.vocab_size, dtype_bytes(s.dtype)
    head = v * d * 4 if s.dtype != "float32" else 0
    chunk = max((3 if p.reference else 2) * min(s.loss_chunk_size, p.tokens) * v * 4 for p in s.passes)
    hidden = max(2 * p.tokens * d * r * (2 if p.reference else 1) for p in s.passes)
    return {"lm_head_fp32": head, "chunk_logits": chunk, "hidden_states": hidden,
            "gradient_pieces": stored_loss_bytes(dims, s)}


def stored_loss_bytes(dims: ModelDims, s: TrainSettings) -> int:
    """The fused loss's gradients w.r.t. the hidden states, kept on its autograd node (fp32, N × d each)."""
    return sum(p.tokens * dims.hidden_size * 4 * (2 if p.reference else 1) for p in s.passes)


def backward_bytes(dims: ModelDims, s: TrainSettings) -> dict[str, int]:
    """During backward: with checkpointing one layer's activations rebuilt for its backward; gradient
    temporaries (an intermediate-wide gradient in the SwiGLU backward and three d-wide fp32 ones in
    RMSNorm's, fitted to the CPU measurement); one 4-bit weight dequantised to the compute dtype for the
    input-gradient matmul; with new-token rows, peft's merged embedding and its dense gradient."""
    c, tokens = compute_bytes(s), max(p.tokens for p in s.passes)
    layer = sum(layer_activation_bytes(dims, s).values())
    largest_linear = max(i * o for i, o in dims.linear_shapes().values())
    return {"recomputed_layer": tokens * layer if s.gradient_checkpointing else 0,
            "gradient_temporaries": tokens * (dims.intermediate_size * c + 3 * dims.hidden_size * 4),
            "dequantised_weight": largest_linear * c if s.quantization == "4bit" else 0,
            "new_token_embeddings": 2 * dims.vocab_size * dims.hidden_size * c if s.new_token_rows else 0,
            "gradient_pieces": stored_loss_bytes(dims, s)}


# ---- the estimate -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per component; ``total`` is the estimated peak of one training step."""

    base_weights: int
    adapters: int
    gradients: int
    optimizer: int
    activations: int
    forward_end: dict[str, int]
    backward: dict[str, int]
    gpu_overhead: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def working_set(self) -> int:
        return max(sum(self.forward_end.values()), sum(self.backward.values()))

    @property
    def tensors(self) -> int:
        return self.base_weights + self.adapters + self.gradients + self.optimizer + self.activations + self.working_set

    @property
    def total(self) -> int:
        return self.tensors + self.gpu_overhead

    def as_dict(self) -> dict[str, Any]:
        return {"base_weights": self.base_weights, "adapters": self.adapters, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations,
                "forward_end": dict(self.forward_end), "backward": dict(self.backward),
                "working_set": self.working_set, "gpu_overhead": self.gpu_overhead, "total": self.total,
                "details": dict(self.details)}


def estimate(dims: ModelDims, s: TrainSettings) -> MemoryEstimate:
    """The peak of one training step (see the module docstring for how the parts combine)."""
    trainable = trainable_parameter_count(dims, s)
    a = dtype_bytes(s.adapter_dtype)
    parts = dict(base_weights=base_weight_bytes(dims, s.dtype, s.quantization), adapters=adapter_bytes(dims, s),
                 gradients=trainable * a,    # gradients have their parameter's dtype
                 optimizer=2 * trainable * a,  # AdamW's exp_avg and exp_avg_sq, zeros_like(param)
                 activations=held_activation_bytes(dims, s),
                 forward_end=loss_bytes(dims, s), backward=backward_bytes(dims, s))
    layer = layer_activation_bytes(dims, s)
    details = {"trainable_parameters": trainable, "base_parameters": dims.parameter_count(),
               "layer_activation_bytes_per_token": layer,
               "tokens_per_step": sum(p.tokens for p in s.passes)}
    partial = MemoryEstimate(**parts, gpu_overhead=0, details=details)
    overhead = CUDA_CONTEXT_BYTES + round(ALLOCATOR_SLACK * partial.tensors) if s.device == "cuda" else 0
    return MemoryEstimate(**parts, gpu_overhead=overhead, details=details)


# ---- what a LightningCLI config trains -------------------------------------------------------------
STAGE_CLASSES = {"StyleAlignmentModule": "style", "InstructModule": "instruct"}
# The data module a stage's config uses when its data section names none (only its defaults matter here).
STAGE_DATA = {"style": "wuxia_lightning.data.style_datamodule.StyleDataModule",
              "instruct": "wuxia_lightning.data.instruct_datamodule.InstructDataModule"}
# Lightning precision -> (autocast dtype, adapter dtype): "-mixed" autocasts and leaves the fp32 adapters;
# "-true" casts the whole module, adapters included, and autocasts nothing.
PRECISIONS = {"bf16-mixed": ("bfloat16", "float32"), "bf16": ("bfloat16", "float32"),
              "16-mixed": ("float16", "float32"), "16": ("float16", "float32"),
              "bf16-true": (None, "bfloat16"), "16-true": (None, "float16")}
STAGE1_DEFAULT_R, STAGE1_DEFAULT_DROPOUT = 16, 0.05


@dataclass(frozen=True)
class RunPlan:
    """A config in the estimator's terms: the model to size and the settings of its training step."""

    model_name_or_path: str
    stage: str
    settings: TrainSettings
    notes: tuple[str, ...] = ()


def section_args(section: Any) -> dict[str, Any]:
    """The init arguments of a ``model:``/``data:`` section (``init_args`` or given flat)."""
    if not isinstance(section, Mapping):
        return {}
    flat = {k: v for k, v in section.items() if k not in ("class_path", "init_args", "dict_kwargs")}
    return {**flat, **(section.get("init_args") or {})}


def class_defaults(class_path: str) -> dict[str, Any]:
    """The ``__init__`` defaults of the class a section names: what LightningCLI fills in for keys the
    YAML leaves out."""
    import importlib
    import inspect

    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise UserInputError(f"cannot import '{class_path}': {error}", field="class_path") from error
    return {key: p.default for key, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def plan_from_config(config: Mapping[str, Any]) -> RunPlan:
    """Read the settings that decide memory from a merged LightningCLI config (``model``/``data``/``trainer``)."""
    model_section, data_section = config.get("model") or {}, config.get("data") or {}
    class_path = model_section.get("class_path") if isinstance(model_section, Mapping) else None
    stage = STAGE_CLASSES.get(str(class_path).rpartition(".")[2])
    if stage is None:
        raise UserInputError(f"model.class_path is {class_path!r}: only the adapter stages "
                             f"({', '.join(STAGE_CLASSES)}) are estimated", field="model.class_path")
    model = {**class_defaults(class_path), **section_args(model_section)}
    data_path = data_section.get("class_path") if isinstance(data_section, Mapping) else None
    data = {**class_defaults(data_path or STAGE_DATA[stage]), **section_args(data_section)}
    trainer = config.get("trainer") or {}
    autocast, adapter_dtype = PRECISIONS.get(str(trainer.get("precision", "32-true")), (None, "float32"))
    targets = model["lora_target_modules"]
    common = dict(dtype=model["dtype"], quantization=model["quantization"], autocast=autocast,
                  adapter_dtype=adapter_dtype, lora_r=int(model["lora_r"]), lora_dropout=float(model["lora_dropout"]),
                  lora_target_modules=targets if isinstance(targets, str) else tuple(targets),
                  gradient_checkpointing=bool(model["gradient_checkpointing"]),
                  loss_chunk_size=int(model["loss_chunk_size"]))
    if stage == "style":
        passes = (Pass(int(data["batch_size"]), int(data["max_length"]), reference=float(model["kl_beta"]) > 0),)
        settings, notes = TrainSettings(passes=passes, **common), ()
    else:
        settings, notes = instruct_settings(model, data, common)
    return RunPlan(model["model_name_or_path"], stage, settings, notes + strategy_notes(trainer))


def strategy_notes(trainer: Mapping[str, Any]) -> tuple[str, ...]:
    """What the estimate leaves out for a multi-GPU strategy (it sizes one GPU of a plain run)."""
    strategy = trainer.get("strategy")
    name = str(strategy.get("class_path", "") if isinstance(strategy, Mapping) else strategy or "").lower()
    if "fsdp2" in name or "modelparallel" in name:  # configs/fsdp2_cpu.yaml: modules/sharding.py
        return ("FSDP2 sharding is not modelled: the figures are one unsharded replica per GPU, an upper bound",)
    if "fsdp" in name:
        return ("FSDP sharding is not modelled: the figures are one unsharded replica per GPU, an upper bound; "
                "its activation_checkpointing_policy checkpoints the decoder layers (the 'with ckpt' column)",)
    if "ddp" in name:
        return ("DDP: every GPU holds all of this, plus gradient buckets about the size of the gradients",)
    return ()


def instruct_settings(model: Mapping[str, Any], data: Mapping[str, Any], common: dict[str, Any]
                      ) -> tuple[TrainSettings, tuple[str, ...]]:
    """Stage 2: the chat batch, the replayed style windows (KL to style-only) if on, and the stage-1
    adapter: frozen under the new one ("stacked"), frozen and off ("composed"), or trained on."""
    passes = [Pass(int(data["batch_size"]), int(data["max_length"]))]
    if float(model.get("replay_beta") or 0) > 0 and data.get("replay_corpus"):
        passes.append(Pass(int(data["replay_batch_size"]), int(data["replay_max_length"]), reference=True))
    style_r, style_dropout, notes = style_adapter_shape(model.get("style_adapter"))
    if model.get("adapter_mode") == "continue_style":
        common = {**common, "lora_r": style_r, "lora_dropout": style_dropout}
        return TrainSettings(passes=tuple(passes), snapshot_style=True, **common), notes
    return TrainSettings(passes=tuple(passes), frozen_adapter_r=style_r, frozen_adapter_dropout=style_dropout,
                         frozen_adapter_active=model.get("adapter_mode") != "composed", snapshot_style=True,
                         **common), notes


def style_adapter_shape(folder: str | None) -> tuple[int, float, tuple[str, ...]]:
    """(r, dropout) of the stage-1 adapter, from its adapter_config.json when the folder exists."""
    path = Path(folder or "") / "adapter_config.json"
    if folder and path.is_file():
        config = json.loads(path.read_text(encoding="utf-8"))
        return int(config["r"]), float(config.get("lora_dropout") or 0), ()
    return STAGE1_DEFAULT_R, STAGE1_DEFAULT_DROPOUT, (
        f"style adapter {folder!r} not found: assumed stage 1's defaults (r={STAGE1_DEFAULT_R}, "
        f"dropout {STAGE1_DEFAULT_DROPOUT})",)


# ---- where the dimensions come from ------------------------------------------------------------------
def known_model_configs() -> dict[str, dict[str, Any]]:
    """The shipped table of published configs, by lower-case hub id (aliases included)."""
    text = resources.files("wuxia_lightning.resources").joinpath(MODEL_DIMS_RESOURCE).read_text(encoding="utf-8")
    table: dict[str, dict[str, Any]] = {}
    for name, entry in json.loads(text)["models"].items():
        config = {k: v for k, v in entry.items() if k != "aliases"}
        for alias in [name, *entry.get("aliases", [])]:
            table[alias.lower()] = config
    return table


def read_model_config(name_or_path: str) -> tuple[dict[str, Any], str]:
    """(config.json as a dict, where it was read): a local folder, a tiny model (built offline), a hub id
    already in the Hugging Face cache, or the shipped table of known models."""
    if name_or_path.startswith("tiny-") or is_gguf_spec(name_or_path):  # built / converted on first use
        name_or_path = _resolve_tiny(name_or_path)
    local = Path(name_or_path).expanduser() / "config.json"
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8")), str(local)
    cached = _hub_cache_config(name_or_path)
    if cached is not None:
        return json.loads(Path(cached).read_text(encoding="utf-8")), cached
    known = known_model_configs().get(name_or_path.lower())
    if known is not None:
        return known, f"the published config.json, as shipped in wuxia_lightning/resources/{MODEL_DIMS_RESOURCE}"
    raise UserInputError(f"unknown model '{name_or_path}': no local folder with a config.json, not in the Hugging "
                         f"Face cache, and not one of the known models ({', '.join(sorted(_known_names()))}); "
                         "pass --model-config path/to/config.json", field="model.model_name_or_path")


def _known_names() -> list[str]:
    text = resources.files("wuxia_lightning.resources").joinpath(MODEL_DIMS_RESOURCE).read_text(encoding="utf-8")
    return list(json.loads(text)["models"])


def _resolve_tiny(name: str) -> str:
    from wuxia_lightning.pretrained.tiny import resolve_model_path

    return resolve_model_path(name)


def _hub_cache_config(repo_id: str) -> str | None:
    """The config.json of a downloaded hub model, offline; None if it is not in the cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # not a valid repo id (a path that does not exist, say): not in the cache
        return None
    return found if isinstance(found, str) else None
