"""Stage 1's validation extra, as a callback: continue a few prompts with the styled model (and once
with the base, adapter off), score both against the training corpus, log the scores and write
``style_eval.json`` beside the logs.

Perplexity says how well the model predicts held-out novels; this says what the model *writes*. The
same sampling noise (a fixed seed) is used for the base and for every epoch, so the scores move only
because the adapter did.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch

from wuxia_lightning.evaluation import StyleScorer
from wuxia_lightning.generation import GenerationSettings, generate_replies, rank_share
from wuxia_lightning.io import strict_json
from wuxia_lightning.metrics import FEATURE_NAMES
from wuxia_lightning.metrics.registry import score_key
from wuxia_lightning.modeling.adapters import frozen_reference

# Prefixes of the logged scores (registered in metrics.registry.SCORE_PREFIXES).
STYLED_PREFIX, BASE_PREFIX = "val_style", "base"


class StyleSampleEvaluation(L.Callback):
    """Needs a LightningModule with ``peft_model`` and a DataModule with ``tokenizer`` and
    ``corpus_texts("train")`` (the stage-1 pair)."""

    def __init__(self, prompts_file: str, samples: int = 8, max_new_tokens: int = 64, temperature: float = 0.8,
                 top_p: float = 0.95, seed: int = 0) -> None:
        self.prompts_file, self.samples, self.seed = prompts_file, samples, seed
        self.settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                           top_p=top_p, repetition_penalty=1.0)
        self.scorer: StyleScorer | None = None
        self.base: dict | None = None

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        if self.scorer is None:  # with a general corpus, P(style) from a classifier of style vs general text
            data = trainer.datamodule
            self.scorer = StyleScorer(data.corpus_texts("train"), other_texts=data.general_texts() or None)
        prompts, counted = rank_share(self._prompts(), trainer.global_rank, trainer.world_size)
        styled = self._evaluate(pl_module.peft_model, trainer.datamodule.tokenizer, prompts, counted)
        if self.base is None:  # the base does not change: sample it once
            with frozen_reference(pl_module.peft_model) as base:
                self.base = self._evaluate(base, trainer.datamodule.tokenizer, prompts, counted)
        for prefix, result in ((STYLED_PREFIX, styled), (BASE_PREFIX, self.base)):
            for name, value in result["scores"].items():
                pl_module.log(score_key(prefix, name), value, on_epoch=True, rank_zero_only=True)
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask, not only rank 0
        # Without a logger log_dir falls back to default_root_dir: the file would land where nobody asked.
        if trainer.is_global_zero and log_dir and trainer.loggers:
            self.write(Path(log_dir) / "style_eval.json", prompts, styled)
        return styled

    def _prompts(self) -> list[str]:
        lines = Path(self.prompts_file).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()][: self.samples]

    def _evaluate(self, model, tokenizer, prompts: list[str], counted: bool = True) -> dict:
        torch.manual_seed(self.seed)  # the same sampling noise for base and styled, every epoch
        conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
        replies = generate_replies(model, tokenizer, conversations, self.settings, raw_prompts=True)
        texts = [reply.generation for reply in replies]
        self.scorer.reset()
        if counted:
            self.scorer.update(texts)
        return {"texts": texts, "scores": self.scorer.compute(), "rates": self.scorer.rates()}

    def write(self, path: Path, prompts: list[str], styled: dict) -> None:
        report = {
            "feature_names": list(FEATURE_NAMES),
            "rates": {"corpus": self.scorer.corpus_rates(), "base": self.base["rates"], "styled": styled["rates"]},
            "js_divergence": {"base": self.base["scores"]["fw_js"], "styled": styled["scores"]["fw_js"]},
            "scores": {"base": self.base["scores"], "styled": styled["scores"]},
            "samples": [{"prompt": p, "base": b, "styled": s}
                        for p, b, s in zip(prompts, self.base["texts"], styled["texts"], strict=True)],
        }
        path.write_text(strict_json(report, indent=2), encoding="utf-8")
