"""Stage-1 data throughput: tokenizing + segmenting vs reloading the token cache, and masking draws/s.

    .venv/bin/python benchmarks/bench_stage1_data.py [CORPUS]     (default ../shared/data/style/sanxia_wuyi.txt,
                                                                   else data/sample/style)
Prints seconds and ratios measured in this process; nothing is asserted.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from wuxia_lightning.data.corpus import resolve_sources
from wuxia_lightning.data.masking import DynamicMasker, InfillTokens, MaskingConfig
from wuxia_lightning.data.token_cache import IngestSettings, load_or_build_many
from wuxia_lightning.data.windows import build_stream
from wuxia_lightning.pretrained.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_NOVEL = REPO.parent / "shared" / "data" / "style" / "sanxia_wuyi.txt"
QWEN_TOKENIZER = REPO.parent / "shared" / "fixtures" / "qwen2.5-tokenizer"


def main() -> None:
    corpus = sys.argv[1] if len(sys.argv) > 1 else str(SHARED_NOVEL if SHARED_NOVEL.exists() else REPO / "data/sample/style")
    tokenizer = load_tokenizer("tiny-qwen2", str(QWEN_TOKENIZER) if QWEN_TOKENIZER.exists() else None)
    settings = IngestSettings(to_simplified=True)
    paths = resolve_sources(corpus)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        documents, _ = load_or_build_many(paths, tokenizer, settings, Path(cache), workers=1)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        load_or_build_many(paths, tokenizer, settings, Path(cache), workers=1)
        warm = time.perf_counter() - start
    tokens = sum(len(d.ids) for d in documents)
    print(f"corpus {corpus}: {len(documents)} documents, {tokens:,} tokens (tokenizer vocab {len(tokenizer):,})")
    print(f"build (read + t2s + clean + jieba POS + tokenize): {cold:.2f} s")
    print(f"reload from cache:                                 {warm:.3f} s  -> {cold / warm:.0f}x faster")

    max_length = 512
    config = MaskingConfig()
    stream = build_stream(documents, tokenizer.convert_tokens_to_ids("<|endoftext|>"), config.window_length(max_length))
    masker = DynamicMasker(config, InfillTokens.from_tokenizer(tokenizer), max_length)
    draws = min(20_000, 5 * len(stream))
    start = time.perf_counter()
    for i in range(draws):
        masker(*stream.window(i % len(stream)), epoch=0, index=i)
    elapsed = time.perf_counter() - start
    print(f"masking: {draws:,} samples of {config.window_length(max_length)} tokens in {elapsed:.2f} s "
          f"-> {draws / elapsed:,.0f} samples/s on one core")


if __name__ == "__main__":
    main()
