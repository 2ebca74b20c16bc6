"""Which way does β push? Stage 1 on the quickstart setup at several β, same seed, same steps.

    .venv/bin/python benchmarks/bench_kl_beta.py [--betas 0.02 0.2 2.0] [--epochs 8]

For each β: final training KL(policy‖base), validation perplexity on the style split and on general text,
and the style scores of sampled continuations (n-gram overlap with the corpus, function-word JS).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = ("train/kl", "val_style/ppl", "val_general/ppl", "val_style/ngram_char3", "val_style/fw_js")


def last_values(metrics_csv: Path) -> dict[str, float]:
    values: dict[str, float] = {}
    with metrics_csv.open() as handle:
        for row in csv.DictReader(handle):
            values.update({k: float(v) for k, v in row.items() if v and k in COLUMNS})
    return values


def run(beta: float, epochs: int, folder: Path) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "wuxia_lightning", "fit", "--config", "configs/quickstart_style.yaml",
                    f"--model.kl_beta={beta}", f"--trainer.max_epochs={epochs}", f"--model.output_dir={folder / 'style'}",
                    "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
                    f"--trainer.logger.init_args.save_dir={folder}", "--trainer.enable_progress_bar=false"],
                   cwd=REPO, check=True, capture_output=True)
    return last_values(next(folder.rglob("metrics.csv")))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--betas", type=float, nargs="+", default=[0.02, 0.2, 2.0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    print("| β | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for beta in args.betas:
            values = run(beta, args.epochs, Path(tmp) / f"beta{beta}")
            print(f"| {beta} | " + " | ".join(f"{values.get(c, float('nan')):.4g}" for c in COLUMNS) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
