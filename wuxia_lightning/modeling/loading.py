"""Loading a base model for adapters: hub id, local folder or a tiny offline model; optional 4-bit."""

from __future__ import annotations

from typing import Literal

import torch

from wuxia_lightning.pretrained.tiny import resolve_model_path
from wuxia_lightning.pretrained.tokenizer import load_tokenizer

Precision = Literal["float32", "bfloat16", "float16"]
Quantization = Literal["none", "4bit"]


def load_base_model(model_name_or_path: str, *, tokenizer_name_or_path: str | None = None,
                    dtype: Precision = "float32", quantization: Quantization = "none",
                    gradient_checkpointing: bool = False, attn_implementation: str | None = None,
                    trust_remote_code: bool = False):
    """A causal LM ready for adapters: frozen, optionally nf4-quantised, checkpointing on request.

    ``trust_remote_code`` (model and tokenizer): run code shipped with the checkpoint; off unless asked.

    4-bit goes through transformers' ``BitsAndBytesConfig`` (Lightning's bnb plugin skips models that
    already hold bnb layers). We deliberately avoid ``prepare_model_for_kbit_training``: it upcasts every
    non-quantised weight to fp32 and can make QLoRA use more memory than bf16 LoRA.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    path = resolve_model_path(model_name_or_path, tokenizer_name_or_path)
    torch_dtype = getattr(torch, dtype)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch_dtype if torch_dtype != torch.float32 else torch.float32,
        )
        kwargs["device_map"] = _quantized_device_map()
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    vocabulary = len(load_tokenizer(model_name_or_path, tokenizer_name_or_path, trust_remote_code=trust_remote_code))
    if vocabulary > model.get_input_embeddings().num_embeddings:  # infill tokens were added
        # The new rows are drawn at random (mean and covariance of the old ones): from a fixed seed, so every
        # load of the base has the same rows and the caller's random stream does not move.
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model.resize_token_embeddings(vocabulary, pad_to_multiple_of=64)
    model.requires_grad_(False)
    if quantization == "4bit":
        disable_cpu_4bit_repacking(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    model.config.use_cache = False
    return model


def serving_dtype(dtype: str) -> str:
    """``auto`` → bfloat16 on a CUDA device that supports it, float32 otherwise; anything else unchanged."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"


def disable_cpu_4bit_repacking(model: torch.nn.Module) -> None:
    """bnb on AVX512-BF16 CPUs repacks 4-bit weights in eval mode and never unpacks them, which breaks
    the next training forward (PITFALLS.md); switching that path off keeps train/eval interleaving safe."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def _quantized_device_map() -> dict[str, int | str]:
    """bnb layers must be created on their rank's device (DDP + QLoRA, TRL 921). Lightning makes that
    device current (``torch.cuda.set_device``) before ``configure_model`` under every launcher; LOCAL_RANK
    is not enough: SLURM's srun does not set it, which would put every rank of a node on GPU 0."""
    if torch.cuda.is_available():
        return {"": torch.cuda.current_device()}
    return {"": "cpu"}
