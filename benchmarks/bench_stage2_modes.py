"""The seed's question: does instruction tuning keep the style? Stacked adapter vs training the style adapter on.

    .venv/bin/python benchmarks/bench_stage2_modes.py

Runs the quickstart stage 1 once, then stage 2 twice on the same data and seed — `adapter_mode: stacked` (new
`instruct` adapter on the frozen `style`) and `continue_style` (the seed's old approach) — and reports for each final
model: perplexity on the held-out style chapters (plain LM: does it still write the style?), and the stop rate and style
scores of its replies to `scripts/example_prompts.txt`.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from wuxia_lightning.data.collate import collate_right_padded
from wuxia_lightning.data.style_datamodule import MaskedWindowDataset, StyleDataModule
from wuxia_lightning.modeling.stacking import load_stacked
from wuxia_lightning.objectives.causal_lm import token_loss_sums

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "wuxia_lightning", *args, "--trainer.logger=false",
                    "--trainer.enable_progress_bar=false"], cwd=REPO, check=True, capture_output=True)


@torch.no_grad()
def style_perplexity(folder: Path, data: StyleDataModule) -> float:
    """Plain-LM perplexity of the restored model on the held-out style chapters (no masking)."""
    model, tokenizer = load_stacked(folder)
    dataset = MaskedWindowDataset(data.streams["val"], masker=None)
    nll, tokens = 0.0, 0
    for start in range(0, len(dataset), 4):
        batch = collate_right_padded([dataset[i] for i in range(start, min(start + 4, len(dataset)))],
                                     tokenizer.pad_token_id)
        sums = token_loss_sums(model.get_base_model(), batch)
        nll, tokens = nll + sums.nll.item(), tokens + int(sums.tokens)
    return math.exp(nll / tokens)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cli("fit", "--config", "configs/quickstart_style.yaml", f"--model.output_dir={root / 'style'}")
        data = StyleDataModule(corpus=str(REPO / "data/sample/style"), max_length=256, val_fraction=0.1)
        data.prepare_data()
        data.setup("fit")
        rows = {"stage 1 only": {"style_ppl": style_perplexity(root / "style", data)}}
        for mode in ("stacked", "continue_style"):
            out = root / mode
            common = ["--config", "configs/quickstart_instruct.yaml", f"--model.style_adapter={root / 'style'}",
                      f"--model.output_dir={out}", f"--model.adapter_mode={mode}"]
            cli("fit", *common)
            cli("predict", *common, "--data.prompts=scripts/example_prompts.txt")
            summary = json.loads((out / "summary.json").read_text())
            rows[mode] = {"style_ppl": style_perplexity(out, data), **summary}
    columns = ("style_ppl", "stop_rate", "continues_dialogue_rate", "ngram_char3", "fw_js", "distinct_2")
    print("| model | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values[c]:.4g}" if c in values else "—" for c in columns) + " |")


if __name__ == "__main__":
    main()
