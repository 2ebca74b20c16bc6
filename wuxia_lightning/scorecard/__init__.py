"""The style scorecard of generations: attribution, Burrows's Delta, author-LM cross-entropy, reply
statistics and a blind pairwise sheet (``scripts/score_style.py`` is its command line)."""

from wuxia_lightning.scorecard.records import MIN_REPLIES, Generation, parse_record, read_generations
from wuxia_lightning.scorecard.score import score_generations

__all__ = ["MIN_REPLIES", "Generation", "parse_record", "read_generations", "score_generations"]
