"""A test-only callback for tests/test_fsdp.py (imported by the ``wuxia fit`` subprocesses via PYTHONPATH).

Each rank writes how it holds the peft model's parameters once training starts: which are DTensor shards
(and how large its shard is), whether the LM head stayed whole, and whether transformers' ``generate``
will treat the model as FSDP-managed (and so keep every rank stepping until all have finished).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L


class ShardingProbe(L.Callback):
    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from torch.distributed.tensor import DTensor
        from transformers.distributed.fsdp import is_fsdp_managed_module

        causal_lm = pl_module.peft_model.get_base_model()
        params = {}
        for name, param in pl_module.peft_model.named_parameters():
            sharded = isinstance(param, DTensor)
            params[name] = {"sharded": sharded, "local": (param.to_local() if sharded else param).numel(),
                            "full": param.numel(), "trainable": param.requires_grad}
        report = {"rank": trainer.global_rank, "world_size": trainer.world_size, "params": params,
                  "strategy": type(trainer.strategy).__name__,
                  "head_sharded": isinstance(causal_lm.get_output_embeddings().weight, DTensor),
                  "generate_syncs_ranks": is_fsdp_managed_module(causal_lm)}
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.out_dir) / f"rank{trainer.global_rank}.json").write_text(json.dumps(report), encoding="utf-8")
