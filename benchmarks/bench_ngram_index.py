"""Time the corpus n-gram index on the shared style corpus: cold build, then cached load.

Usage: python benchmarks/bench_ngram_index.py [STYLE_DIR] [--cache-dir DIR]
A fresh temporary cache directory is used unless --cache-dir is given, so the first build is cold.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from wuxia_lightning.metrics.ngram import CorpusNgramIndex, NgramOverlap

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("style_dir", nargs="?", type=Path, default=ROOT.parent / "shared" / "data" / "style")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()

    files = sorted(args.style_dir.glob("*.txt"))
    texts = [path.read_text(encoding="utf-8") for path in files]
    megabytes = sum(path.stat().st_size for path in files) / 1e6
    print(f"corpus: {len(files)} files, {megabytes:.1f} MB, {sum(map(len, texts)):,} characters")

    import jieba

    jieba.initialize()  # dictionary load (~1 s) is a one-off per process: keep it out of the timings

    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        start = time.perf_counter()
        cold = CorpusNgramIndex.build(texts, cache_dir=cache_dir)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = CorpusNgramIndex.build(texts, cache_dir=cache_dir)
        warm_s = time.perf_counter() - start
        assert all(np.array_equal(cold.tables[k], warm.tables[k]) for k in cold.tables)
        file_mb = warm.path.stat().st_size / 1e6
        sample = texts[0][:20_000]
        start = time.perf_counter()
        metric = NgramOverlap(warm)
        metric.update([sample])
        overlap_s = time.perf_counter() - start

    print(f"cold build: {cold_s:.2f} s   cached load: {warm_s:.3f} s")
    print(f"index: {file_mb:.1f} MB on disk, {warm.nbytes / 1e6:.1f} MB in memory")
    print("entries: " + ", ".join(f"{kind}={size:,}" for kind, size in warm.sizes().items()))
    print(f"NgramOverlap.update on 20,000 characters: {overlap_s:.2f} s")


if __name__ == "__main__":
    main()
