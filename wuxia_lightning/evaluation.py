"""Style scores of generated text against a source corpus: n-gram overlap, function words, repetition.

One object bundles the three torchmetrics so both stages (validation, predict) score the same way. The
corpus n-gram index and function-word profile are built once per corpus and cached by content hash.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from wuxia_lightning.metrics import (
    CorpusNgramIndex,
    DistinctN,
    FunctionWordDistribution,
    NgramOverlap,
    corpus_function_word_profile,
)
from wuxia_lightning.metrics.function_words import count_characters


class StyleScorer(torch.nn.Module):
    """``update(texts)`` then ``compute()`` → flat dict of floats (DDP-reduced by torchmetrics)."""

    def __init__(self, corpus_texts: Sequence[str], cache_dir: str | None = None) -> None:
        super().__init__()
        texts = list(corpus_texts)
        self.index = CorpusNgramIndex.build(texts, cache_dir=cache_dir)
        self.profile = corpus_function_word_profile(texts, cache_dir=cache_dir)
        self.corpus_characters = sum(count_characters(text) for text in texts)
        self.ngram, self.function_words, self.distinct = self._fresh_metrics()

    def _fresh_metrics(self) -> tuple[NgramOverlap, FunctionWordDistribution, DistinctN]:
        return NgramOverlap(self.index), FunctionWordDistribution(self.profile), DistinctN()

    def update(self, texts: Sequence[str]) -> None:
        for metric in (self.ngram, self.function_words, self.distinct):
            metric.update(list(texts))

    def compute(self) -> dict[str, float]:
        return _scores(self.ngram, self.function_words, self.distinct)

    def reset(self) -> None:
        for metric in (self.ngram, self.function_words, self.distinct):
            metric.reset()

    def rates(self) -> list[float]:
        """Function-word rates of the generations per 1,000 characters, aligned with FEATURE_NAMES."""
        return [float(v) for v in self.function_words.compute()["rates"]]

    def corpus_rates(self) -> list[float]:
        return [float(v) * 1000.0 / max(1, self.corpus_characters) for v in self.profile]

    def score_one(self, text: str) -> dict[str, float]:
        """Per-sample figures: fresh metric states over the same corpus index."""
        metrics = self._fresh_metrics()
        for metric in metrics:
            metric.update([text])
        return _scores(*metrics)


def _scores(ngram: NgramOverlap, function_words: FunctionWordDistribution, distinct: DistinctN) -> dict[str, float]:
    scores = {f"ngram_{kind}": float(value) for kind, value in ngram.compute().items()}
    scores["fw_js"] = float(function_words.compute()["js_divergence"])
    scores.update({name: float(value) for name, value in distinct.compute().items()})
    return scores


class StyleEvaluation:
    """Stage-1 validation extra: continue a few prompts with the styled model (and once with the base,
    adapter disabled), score both against the training corpus, log them and write ``style_eval.json``."""

    def __init__(self, prompts_file: str | None, samples: int, max_new_tokens: int, seed: int = 0) -> None:
        self.prompts_file, self.samples, self.max_new_tokens, self.seed = prompts_file, samples, max_new_tokens, seed
        self.scorer: StyleScorer | None = None
        self.base: dict | None = None

    def run(self, module) -> dict:
        from wuxia_lightning.modeling.adapters import restore_trainable, trainable_names

        trainer = module.trainer
        if self.scorer is None:
            self.scorer = StyleScorer(trainer.datamodule.corpus_texts("train"))
        prompts = self._prompts()[trainer.global_rank::trainer.world_size]
        styled = self._evaluate(module, prompts)
        if self.base is None:
            trainable = trainable_names(module.peft_model)
            with module.peft_model.disable_adapter():
                self.base = self._evaluate(module, prompts)
            restore_trainable(module.peft_model, trainable)  # leaving disable_adapter() re-enables grads
        for prefix, result in (("val_style", styled), ("base", self.base)):
            for name, value in result["scores"].items():
                module.log(f"{prefix}/{name}", value, on_epoch=True, rank_zero_only=True)
        log_dir = trainer.log_dir  # a collective under DDP: every rank must ask, not only rank 0
        # Without a logger log_dir falls back to default_root_dir: the file would land where nobody asked.
        if trainer.is_global_zero and log_dir and trainer.loggers:
            self._write(Path(log_dir) / "style_eval.json", prompts, styled)
        return styled

    def _prompts(self) -> list[str]:
        lines = Path(self.prompts_file).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()][: self.samples]

    def _evaluate(self, module, prompts: list[str]) -> dict:
        from wuxia_lightning.generation import GenerationSettings, generate_replies

        torch.manual_seed(self.seed)  # the same sampling noise for base and styled, every epoch
        settings = GenerationSettings(max_new_tokens=self.max_new_tokens, do_sample=True, temperature=0.8,
                                      top_p=0.95, repetition_penalty=1.0)
        conversations = [[{"role": "user", "content": prompt}] for prompt in prompts]
        replies = generate_replies(module.peft_model, module.trainer.datamodule.tokenizer, conversations,
                                   settings, raw_prompts=True)
        texts = [reply.generation for reply in replies]
        self.scorer.reset()
        self.scorer.update(texts)
        return {"texts": texts, "scores": self.scorer.compute(), "rates": self.scorer.rates()}

    def _write(self, path: Path, prompts: list[str], styled: dict) -> None:
        from wuxia_lightning.io import strict_json
        from wuxia_lightning.metrics import FEATURE_NAMES

        report = {
            "feature_names": list(FEATURE_NAMES),
            "rates": {"corpus": self.scorer.corpus_rates(), "base": self.base["rates"], "styled": styled["rates"]},
            "js_divergence": {"base": self.base["scores"]["fw_js"], "styled": styled["scores"]["fw_js"]},
            "scores": {"base": self.base["scores"], "styled": styled["scores"]},
            "samples": [{"prompt": p, "base": b, "styled": s}
                        for p, b, s in zip(prompts, self.base["texts"], styled["texts"], strict=True)],
        }
        path.write_text(strict_json(report, indent=2), encoding="utf-8")
