"""Stage 2: InstructModule — a trainable ``instruct`` adapter stacked on the frozen, active ``style``.

The seed's diagnosis: training the stage-1 adapter further on instructions fights the style it learnt.
Here both adapters are active in every forward (their LoRA deltas add up) and only ``instruct`` gets
gradients. ``adapter_mode: continue_style`` keeps the seed's old approach (one adapter, trained on) so
the two can be compared.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from wuxia_lightning.evaluation import StyleScorer
from wuxia_lightning.generation import GenerationSettings, generate_replies, rank_share
from wuxia_lightning.io import atomic_write, strict_json
from wuxia_lightning.metrics import registry as names
from wuxia_lightning.metrics.perplexity import TokenPerplexity
from wuxia_lightning.metrics.stopping import StopRate
from wuxia_lightning.modeling.adapters import (
    ALL_LINEAR,
    activate,
    adapter_parameter_names,
    frozen_reference,
    lora_config,
    restore_trainable,
)
from wuxia_lightning.modeling.loading import Precision, Quantization, load_base_model
from wuxia_lightning.modeling.stacking import (
    INSTRUCT,
    MANIFEST,
    STYLE,
    attach_style,
    load_stacked,
    read_manifest,
    save_stacked,
)
from wuxia_lightning.modeling.token_rows import copy_free_token_rows
from wuxia_lightning.modeling.untrained_rows import TWIN_COSINE, twin_rows
from wuxia_lightning.modules.common import AdapterModule
from wuxia_lightning.modules.sharding import whole
from wuxia_lightning.pretrained.gguf import gguf_provenance
from wuxia_lightning.pretrained.tokenizer import chat_format, ensure_chat_template

AdapterMode = Literal["stacked", "continue_style", "composed"]
log = logging.getLogger(__name__)


class InstructModule(AdapterModule):
    """Instruction tuning on chat data; loss only on assistant replies and their <|im_end|>.

    Args:
        model_name_or_path: the base model the style adapter was trained on.
        tokenizer_name_or_path: tokenizer folder if not the model's.
        style_adapter: the stage-1 output folder (a peft adapter).
        adapter_mode: "stacked" (new instruct adapter trained on the frozen, active style), "composed" (the
            instruct adapter trained on the bare base with style switched off, both active when serving:
            it never learns to undo the style), or "continue_style" (the seed's old approach: keep
            training the style adapter itself). docs/replication compares them.
        lora_r / lora_alpha / lora_dropout / lora_target_modules: the new instruct adapter (seed: 64/128).
        dtype / quantization / gradient_checkpointing: as in stage 1.
        learning_rate / weight_decay / warmup_steps: AdamW with cosine decay after linear warmup.
        loss_chunk_size: positions per chunk of the LM head in the loss (peak ≈ chunk × vocab floats).
        output_dir: the stacked folder (both adapters, tokenizer, generation config, manifest); predict
            loads the model from here and writes predictions.jsonl into it.
        overwrite_output: allow replacing an existing, non-empty output_dir / predictions file.
        max_new_tokens / do_sample / temperature / top_p: generation in predict and validation.
        eval_style_corpus: the style corpus (file, folder, glob) that replies are scored against
            (n-gram overlap, function words, distinct-n) in validation and predict; None skips style scores.
        eval_to_simplified: convert that corpus to Simplified characters first, as the shipped stage-1
            configs convert the training corpus (``data.to_simplified``); set it the same way as there.
        eval_general_corpus: general modern text (file, folder, glob) to contrast the style corpus with: a
            classifier of the two scores each reply's P(style) (``p_style``); None skips it.
        eval_samples: validation replies generated per epoch (from the val dialogues' prompts) to measure
            the stop rate and style; 0 disables.
        replay_beta: weight of KL(style+instruct ‖ style only) on style-corpus windows served beside each
            chat batch (``--data.replay_corpus``). The instruct adapter then learns the chat format while
            being pulled back wherever it would change how the model writes the novels. 0 disables.
        style_scale / instruct_scale: multiply each adapter's delta when serving a trained folder
            (validate / test / predict): the style-strength knob. 1 = as trained.
        max_bad_steps: consecutive non-finite (NaN/Inf) steps skipped before training stops with an error.
        trust_remote_code: run code shipped with the base model; off unless asked.
        train_turn_end_row: also train the embedding row of the token that ends a reply (``<end_of_turn>``,
            ``<|im_end|>``) with the instruct adapter. None (default): only where the base never trained it —
            its row has twins at cosine ≥ 0.99 (Gemma 3 270M base: 4,665), so no reply could end on it
            (``modeling/untrained_rows.py``). True / False: always / never. Served and merged like the rest
            of the adapter; the one-LoRA ``--format adapter`` export cannot carry rows (use merged).
    """

    def __init__(self, model_name_or_path: str = "tiny-qwen2", tokenizer_name_or_path: str | None = None,
                 style_adapter: str | None = None, adapter_mode: AdapterMode = "stacked", lora_r: int = 64,
                 lora_alpha: int = 128, lora_dropout: float = 0.05,
                 lora_target_modules: str | list[str] = ALL_LINEAR, dtype: Precision = "float32",
                 quantization: Quantization = "none", gradient_checkpointing: bool = False,
                 learning_rate: float = 1e-4, weight_decay: float = 0.0, warmup_steps: int = 10,
                 loss_chunk_size: int = 256, output_dir: str | None = None, overwrite_output: bool = False,
                 max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 0.7,
                 top_p: float = 0.9, eval_style_corpus: str | list[str] | None = None,
                 eval_to_simplified: bool = True, eval_general_corpus: str | list[str] | None = None,
                 eval_samples: int = 8, replay_beta: float = 0.0, style_scale: float = 1.0,
                 instruct_scale: float = 1.0, max_bad_steps: int = 10, trust_remote_code: bool = False,
                 train_turn_end_row: bool | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.peft_model = None
        self.val_ppl = TokenPerplexity()
        self.stop_rate = StopRate()
        self.predictions: list[dict] = []
        self._scorer: StyleScorer | None = None

    # ---- model ----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.peft_model is not None:
            return
        hp = self.hparams
        self.refuse_unsupported_sharding()
        if self._serving():
            self.peft_model, _ = load_stacked(hp.output_dir, model_name_or_path=hp.model_name_or_path,
                                              dtype=hp.dtype, quantization=hp.quantization,
                                              style_scale=hp.style_scale, instruct_scale=hp.instruct_scale,
                                              trust_remote_code=hp.trust_remote_code)
            self.adapters = self.training_adapters = read_manifest(hp.output_dir)["adapters"]
            self.shard_if_fsdp2()
            return
        if not hp.style_adapter:
            raise ValueError("--model.style_adapter is required: a stage-1 output folder")
        if hp.adapter_mode == "composed" and hp.replay_beta > 0:
            raise ValueError("--model.replay_beta needs the style active while training: use adapter_mode stacked")
        base = load_base_model(hp.model_name_or_path, tokenizer_name_or_path=hp.tokenizer_name_or_path,
                               dtype=hp.dtype, quantization=hp.quantization,
                               gradient_checkpointing=hp.gradient_checkpointing,
                               trust_remote_code=hp.trust_remote_code)
        continue_style = hp.adapter_mode == "continue_style"
        self.peft_model = attach_style(base, hp.style_adapter, trainable=continue_style)
        if continue_style:
            self.adapters = [STYLE]
        else:
            self.peft_model.add_adapter(INSTRUCT, lora_config(hp.lora_r, hp.lora_alpha, hp.lora_dropout,
                                                              hp.lora_target_modules, self._turn_end_rows(base)))
            copy_free_token_rows(self.peft_model)
            self.adapters = [STYLE, INSTRUCT]
        # What the training forward sees; serving (generation, the saved folder) always uses self.adapters.
        self.training_adapters = [INSTRUCT] if hp.adapter_mode == "composed" else self.adapters
        trained = self.adapters[-1]
        self._activate(self.training_adapters)
        self.style_snapshot = {n: p.detach().clone() for n, p in self.peft_model.named_parameters()
                               if f".{STYLE}." in n}
        assert_trainable_only(self.peft_model, trained)
        self.shard_if_fsdp2()

    def _turn_end_rows(self, base: torch.nn.Module) -> list[int]:
        """[the reply-ending token's id] when its row is to be trained (``train_turn_end_row``), else []."""
        tokenizer, choice = self.tokenizer(), self.hparams.train_turn_end_row
        token = chat_format(tokenizer).turn_end
        untrained = warn_if_turn_end_untrained(base, tokenizer, trained_here=choice is not False) > 0
        return [tokenizer.convert_tokens_to_ids(token)] if choice or (choice is None and untrained) else []

    def _activate(self, adapters: list[str]) -> None:
        """Activate ``adapters``; set_adapter marks active adapters trainable, so re-assert "only the
        trained one"."""
        activate(self.peft_model, adapters)
        restore_trainable(self.peft_model, adapter_parameter_names(self.peft_model, self.adapters[-1]))

    def _serving(self) -> bool:
        """validate/test/predict without a checkpoint: use the trained stacked folder as it is on disk."""
        stage = self._trainer.state.fn if self._trainer is not None else None
        folder = self.hparams.output_dir
        return (stage in ("predict", "validate", "test") and folder is not None
                and (Path(folder) / MANIFEST).exists() and self._trainer.ckpt_path is None)

    # ---- training -------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        chat, replay = (batch["chat"], batch["replay"]) if "chat" in batch else (batch, None)
        sums = self.token_losses(chat)
        loss = sums.mean_ce()
        logs = {names.TRAIN_CE: loss, names.TRAIN_PPL: torch.exp(sums.nll / sums.tokens.clamp_min(1))}
        if self.hparams.replay_beta > 0:
            if replay is None:
                raise ValueError("--model.replay_beta > 0 needs style windows: set --data.replay_corpus")
            logs[names.TRAIN_REPLAY_KL] = self.replay_kl(replay)
            loss = loss + self.hparams.replay_beta * logs[names.TRAIN_REPLAY_KL]
        logs[names.TRAIN_LOSS] = loss
        self.log_dict(logs, on_step=True, prog_bar=True, batch_size=chat["input_ids"].shape[0])
        return loss

    def replay_kl(self, replay: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean KL(style+instruct ‖ style only) over style-corpus windows: zero while instruct is zero."""
        with frozen_reference(self.peft_model, [STYLE]):
            reference = self.hidden_states(replay)
        return self.token_losses(replay, reference).mean_kl()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        sums = self.token_losses(batch)
        size = batch["input_ids"].shape[0]
        self.val_ppl.update(sums.nll.detach().double(), sums.tokens)
        self.log(names.VAL_LOSS, sums.mean_ce(), on_epoch=True, batch_size=size, sync_dist=True)
        self.log(names.VAL_PPL, self.val_ppl, on_epoch=True, batch_size=size)

    def on_fit_end(self) -> None:
        if self.hparams.adapter_mode != "continue_style":
            verify_unchanged(self.peft_model, self.style_snapshot)
        super().on_fit_end()

    def save_outputs(self) -> None:
        hp = self.hparams
        if hp.output_dir is None:
            return
        state = self.adapter_state_for_saving()  # every rank: a collective under FSDP2
        if self.trainer.global_rank != 0:
            return
        tokenizer = self.tokenizer()
        ensure_chat_template(tokenizer)
        manifest = {"stage": "instruct", "base_model": hp.model_name_or_path,
                    "base_source": gguf_provenance(hp.model_name_or_path), "tokenizer": hp.tokenizer_name_or_path, "adapters": self.adapters,
                    "adapter_origin": {STYLE: str(Path(hp.style_adapter).resolve()),
                                       **({INSTRUCT: "trained here"} if INSTRUCT in self.adapters else {})},
                    "adapter_mode": hp.adapter_mode, "chat_template": tokenizer.chat_template,
                    "data": self._data_settings(), "training": dict(hp)}
        save_stacked(self.peft_model, hp.output_dir, tokenizer, manifest, state_dict=state)

    def _data_settings(self) -> dict:
        """The system-prompt preset the model was trained with: inference and predict use it by default."""
        data = getattr(self.trainer, "datamodule", None)
        settings = getattr(data, "hparams", {})
        return {key: settings.get(key) for key in ("preset", "presets_file")}

    def on_validation_epoch_end(self) -> None:
        """Generate replies to the first validation prompts: stop rate and, with a corpus, style."""
        prompts = getattr(self.trainer.datamodule, "val_prompts", [])[: self.hparams.eval_samples]
        if not prompts or self.trainer.sanity_checking:
            return
        share, counted = rank_share(prompts, self.trainer.global_rank, self.trainer.world_size)
        rows = self.reply_to(share, count=counted)
        self.log_dict({names.score_key(names.STAGE2_PREFIX, k): v for k, v in self.summarise(rows).items()
                       if k != "prompts"},
                      rank_zero_only=True)

    # ---- prediction -----------------------------------------------------------------------------
    def predict_step(self, batch: list[list[dict[str, str]]], batch_idx: int) -> list[dict]:
        rows = self.reply_to(batch, per_sample_style=True)
        self.predictions.extend(rows)
        return rows

    def on_predict_epoch_end(self) -> None:
        summary = self.summarise(self.predictions)
        if self.hparams.output_dir and self.trainer.global_rank == 0:
            write_predictions(Path(self.hparams.output_dir), self.predictions, summary,
                              self.hparams.overwrite_output)

    def reply_to(self, conversations: list[list[dict[str, str]]], per_sample_style: bool = False,
                 count: bool = True) -> list[dict]:
        """Generate one reply per conversation; update the stop-rate and style metrics (unless ``count`` is
        False: a rank generating only to keep step with the others under FSDP)."""
        settings = GenerationSettings(self.hparams.max_new_tokens, self.hparams.do_sample,
                                      self.hparams.temperature, self.hparams.top_p)
        serving_differs = self.training_adapters != self.adapters
        if serving_differs:  # composed: replies come from both adapters, as the saved folder serves them
            self._activate(self.adapters)
        try:
            replies = generate_replies(self.peft_model, self.trainer.datamodule.tokenizer, conversations, settings)
        finally:
            if serving_differs:
                self._activate(self.training_adapters)
        scorer = self.style_scorer()
        if count:
            self.stop_rate.update(torch.tensor([r.stopped for r in replies]),
                                  torch.tensor([r.continues_dialogue for r in replies]))
            if scorer is not None:
                scorer.update([r.generation for r in replies])
        return [{"prompt": conv[-1]["content"], "messages": conv, "generation": r.generation,
                 "new_tokens": r.new_tokens, "stopped": r.stopped, "continues_dialogue": r.continues_dialogue,
                 **(scorer.score_one(r.generation) if scorer is not None and per_sample_style else {})}
                for conv, r in zip(conversations, replies, strict=True)]

    def summarise(self, rows: list[dict]) -> dict[str, float]:
        """Aggregate figures (reduced across ranks) and reset the metrics for the next round."""
        summary = {k: float(v) for k, v in self.stop_rate.compute().items()}
        self.stop_rate.reset()
        if self._scorer is not None:
            summary.update(self._scorer.compute())
            self._scorer.reset()
        summary["prompts"] = len(rows)
        return summary

    def style_scorer(self) -> StyleScorer | None:
        if self._scorer is None and self.hparams.eval_style_corpus:
            self._scorer = StyleScorer.from_corpus(self.hparams.eval_style_corpus,
                                                   to_simplified=self.hparams.eval_to_simplified,
                                                   other_sources=self.hparams.eval_general_corpus)
        return self._scorer


def warn_if_turn_end_untrained(base: torch.nn.Module, tokenizer, trained_here: bool = False) -> int:
    """Say so when the base never trained the token that ends a reply (``modeling/untrained_rows.py``): its
    row has twins, so replies cannot stop unless the row is trained. Returns the twin count."""
    token = chat_format(tokenizer).turn_end
    twins = twin_rows(base.get_input_embeddings().weight, tokenizer.convert_tokens_to_ids(token))
    if twins:
        then = ("stage 2 trains that row with the instruct adapter" if trained_here else
                "replies may not stop (train_turn_end_row is false: the row stays frozen)")
        log.warning("the base never trained %s: its embedding row has %d twin rows (cosine ≥ %.2f), so the "
                    "model can hardly put it apart; %s", token, twins, TWIN_COSINE, then)
    return twins


def assert_trainable_only(peft_model: torch.nn.Module, adapter: str) -> None:
    """Exactly the LoRA tensors of ``adapter`` are trainable (peft has flipped this before: PITFALLS.md)."""
    expected = adapter_parameter_names(peft_model, adapter)
    wrong = [n for n, p in peft_model.named_parameters() if p.requires_grad != (n in expected)]
    if wrong:
        raise RuntimeError(f"trainable set is not exactly the '{adapter}' LoRA weights: {wrong[:5]} …")


def verify_unchanged(peft_model: torch.nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    """Fail loudly if any frozen style tensor changed by even one bit during training."""
    current = dict(peft_model.named_parameters())
    changed = [n for n, before in snapshot.items()  # whole(): FSDP2 shards, gathered on every rank
               if not torch.equal(whole(current[n]).detach().cpu(), before.cpu())]
    if changed or not snapshot:
        raise RuntimeError(f"frozen '{STYLE}' adapter changed during training: {changed[:5]}")


def write_predictions(folder: Path, rows: list[dict], summary: dict, overwrite: bool) -> None:
    from wuxia_lightning.errors import UserInputError

    target = folder / "predictions.jsonl"
    if target.exists() and not overwrite:
        raise UserInputError("predictions file exists; pass --model.overwrite_output true to replace it",
                             path=str(target))
    lines = "".join(strict_json(row) + "\n" for row in rows)
    atomic_write(target, lambda temporary: temporary.write_text(lines, encoding="utf-8"))
    atomic_write(folder / "summary.json",
                 lambda temporary: temporary.write_text(strict_json(summary, indent=2), encoding="utf-8"))
