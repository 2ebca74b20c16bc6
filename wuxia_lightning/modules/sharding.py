"""FSDP2 for the adapter modules: which strategy may shard what, how the peft model is sharded, and how
its adapter tensors are gathered whole again for saving.

Lightning's ``FSDPStrategy`` (FSDP1) insists on CUDA. ``ModelParallelStrategy`` builds a DeviceMesh on any
device (gloo on CPU) and leaves the parallelisation to the module's ``configure_model``: there we apply
torch's ``fully_shard`` (FSDP2) ourselves. Choices, and why:

* **Sharding units.** One unit per decoder layer (all-gathered just before its forward, freed after it,
  gathered again in backward), then the decoder (``causal_lm.get_decoder()``) as the root unit for what is
  left: embeddings and the final norm. FSDP2 shards every parameter as its own DTensor, so a layer that
  mixes frozen base weights with trainable LoRA tensors is fine (FSDP1 needed ``use_orig_params``).
* **The LM head stays whole.** The objectives run the decoder, not the causal LM's forward, and apply
  the head themselves chunk by chunk; the fused loss reads ``lm_head.weight`` directly. FSDP gathers a
  unit's parameters only inside that unit's forward, so a sharded head would reach the loss as one
  rank's shard. It is passed as ``ignored_params``: every rank holds all of it (V×d; Qwen2.5-7B in bf16:
  1.0 GiB), and under LoRA it is frozen, so there is no gradient to reduce. With tied embeddings (tiny
  models, Qwen2.5 ≤ 3B) that matrix is also the embedding, which then stays whole too.
* **Every unit reshards after forward, the root included** (FSDP2's default keeps the root gathered).
  peft switches adapters off for the KL reference pass by flipping ``requires_grad``, and FSDP2 copies
  ``requires_grad`` from the sharded parameter when it gathers; if a unit were still gathered between
  forwards, the flip would land on the gathered copy and be lost at the next gather. Costs one more
  all-gather of the root unit (embeddings, final norm) per backward.
* **Outputs.** ``full_adapter_state`` gathers only the adapter tensors (never the base) on every rank;
  rank 0 hands them to peft's ``save_pretrained(state_dict=…)``, so the folder is the same plain peft
  folder as from one process or DDP.
* **Checkpoints: one file, adapter only, as under DDP.** ModelParallelStrategy's default writes a torch
  distributed-checkpoint folder of every rank's shards; since ``AdapterModule`` keeps only the trainable
  tensors, resuming from it fails ("Missing key in checkpoint state_dict: …embed_tokens.weight": the
  loader asks for the whole model). Its other mode gathers the *whole* model, frozen base included, onto
  rank 0's CPU at every checkpoint and then drops all but the adapter. :class:`AdapterFSDP2Strategy`
  gathers only the trainable tensors and writes one file through the strategy's checkpoint IO, i.e.
  ``AtomicCheckpointIO``: atomic, with the truncated-file fallback. It resumes under FSDP2, and under DDP
  too; a DDP checkpoint does not resume under FSDP2 (Lightning re-keys its optimizer state by position
  among *all* parameters, frozen ones included: "size of tensor a (64) must match … b (16)").
* **4-bit is refused.** ``fully_shard`` turns bitsandbytes' ``Params4bit`` into plain DTensors: the
  quant state is lost and the forward silently computes garbage (bitsandbytes#1945, accelerate#3983).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from wuxia_lightning.errors import UserInputError

FSDP2_CPU_OVERLAY = "configs/fsdp2_cpu.yaml"


class AdapterFSDP2Strategy(ModelParallelStrategy):
    """Lightning's ``ModelParallelStrategy`` with adapter-sized checkpoints (module docstring): the state
    dict holds only the trainable tensors, gathered whole on rank 0, saved as one file."""

    def __init__(self, data_parallel_size: int | Literal["auto"] = "auto",
                 tensor_parallel_size: int | Literal["auto"] = "auto", process_group_backend: str | None = None,
                 timeout: timedelta | None = default_pg_timeout) -> None:
        super().__init__(data_parallel_size, tensor_parallel_size, save_distributed_checkpoint=False,
                         process_group_backend=process_group_backend, timeout=timeout)

    def lightning_module_state_dict(self) -> dict[str, Any]:
        trainable = [name for name, p in self.model.named_parameters() if p.requires_grad]
        state = self.model.state_dict()  # shards: no copy, no communication yet
        gathered = {name: whole(state[name]).detach().cpu() for name in trainable}  # a collective, every rank
        return gathered if self.global_rank == 0 else {}


def is_fsdp2(strategy: Any) -> bool:
    """True for Lightning's ``ModelParallelStrategy`` (the FSDP2 path) — an instance, not a config."""
    return isinstance(strategy, ModelParallelStrategy)


def refuse_unresumable_checkpoints(strategy: Any) -> None:
    """ModelParallelStrategy's default distributed checkpoints of an adapter-only state cannot be resumed."""
    if is_fsdp2(strategy) and getattr(strategy, "_save_distributed_checkpoint", False):
        raise UserInputError(
            "ModelParallelStrategy with save_distributed_checkpoint true writes checkpoints that cannot be "
            "resumed here (they hold only the adapter; its loader asks for the whole model): use "
            "wuxia_lightning.modules.sharding.AdapterFSDP2Strategy as in configs/fsdp2_cpu.yaml, or set "
            "save_distributed_checkpoint: false", field="trainer.strategy")


def check_strategy_choice(strategy: Any, accelerator: Any, quantization: str | None) -> None:
    """The CLI's early check, from the parsed config, before any process starts or model loads."""
    refuse_fsdp1_on_cpu(strategy, accelerator)
    refuse_fsdp_with_4bit(strategy, quantization or "none")


def _strategy_name(strategy: Any) -> str:
    """'fsdp', 'ddp', a class path from the YAML (a dict or jsonargparse Namespace), or a strategy object
    → one lower-case name: the alias, or the class's own name without its module."""
    if isinstance(strategy, str):
        return strategy.lower()
    class_path = (strategy.get("class_path") if isinstance(strategy, dict)
                  else getattr(strategy, "class_path", None))
    return (class_path or type(strategy).__name__).rsplit(".", 1)[-1].lower()


def refuse_fsdp_with_4bit(strategy: Any, quantization: str) -> None:
    """FSDP (1 or 2, i.e. FSDPStrategy or ModelParallelStrategy) with a bitsandbytes 4-bit base: refused
    before the model loads."""
    name = _strategy_name(strategy)
    if quantization == "4bit" and ("fsdp" in name or "modelparallel" in name):
        raise UserInputError(
            "FSDP with a 4-bit (bitsandbytes) base is not supported: sharding turns the 4-bit weights into "
            "plain tensors and drops their quantisation state, so training would run on garbage "
            "(bitsandbytes#1945). Use DDP for QLoRA (--trainer.strategy ddp: each rank holds its own 4-bit "
            "copy), or FSDP with a bf16 base (--model.quantization none --model.dtype bfloat16)",
            field="model.quantization")


def refuse_fsdp1_on_cpu(strategy: Any, accelerator: Any) -> None:
    """Lightning's FSDPStrategy only runs on CUDA; say what to use instead, before Lightning's own error."""
    from lightning.pytorch.strategies import FSDPStrategy

    name = _strategy_name(strategy)
    wants_fsdp1 = (name in FSDPStrategy.get_registered_strategies() or name == "fsdpstrategy"
                   or isinstance(strategy, FSDPStrategy))
    accelerator = str(accelerator).lower()
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if wants_fsdp1 and on_cpu:
        raise UserInputError(
            "Lightning's FSDPStrategy needs CUDA GPUs; on CPU use ModelParallelStrategy, which runs FSDP2 "
            f"(fully_shard) over gloo: --config {FSDP2_CPU_OVERLAY}", field="trainer.strategy")


def shard_for_fsdp2(peft_model: torch.nn.Module, mesh) -> None:
    """Apply ``fully_shard`` to each decoder layer, then to the decoder as the root (module docstring)."""
    from torch.distributed.fsdp import fully_shard

    causal_lm = peft_model.get_base_model()
    decoder = causal_lm.get_decoder()
    head = causal_lm.get_output_embeddings()
    keep_whole = set(head.parameters()) if head is not None else set()
    for layer in decoder.layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    fully_shard(decoder, mesh=mesh, reshard_after_forward=True, ignored_params=keep_whole)
    # FSDP reduces the gradients of the tensors it shards, and only those: a trainable tensor left whole
    # (new-token rows of a head tied to the embedding) would drift apart on every rank.
    unreduced = [name for name, p in peft_model.named_parameters() if p.requires_grad and not is_sharded(p)]
    if unreduced:
        raise UserInputError(f"FSDP2 here keeps the LM head whole and reduces no gradient for it, but "
                             f"{unreduced[:3]} are trained: use DDP (--trainer.strategy ddp) for this model",
                             field="trainer.strategy")
    # transformers' generate keeps every rank stepping until all have finished (synced_gpus) only when
    # it sees an FSDP-managed model; it looks at the module generate runs on, not at the decoder inside.
    causal_lm._is_fsdp_managed_module = True


def is_sharded(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full tensor of a DTensor shard (a collective: every rank must call it), or ``tensor`` itself."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def full_adapter_state(peft_model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The adapter tensors of every adapter, gathered whole, keyed as in ``peft_model.state_dict()``;
    None when nothing is sharded (then peft reads the model itself). Every rank must call this."""
    state = peft_model.state_dict()
    if not any(is_sharded(t) for t in state.values()):
        return None
    adapters = set(peft_model.peft_config)
    # peft names each adapter tensor with the adapter's name as one dotted component; the base never is.
    return {key: whole(t).detach().cpu() for key, t in state.items() if adapters & set(key.split("."))}
