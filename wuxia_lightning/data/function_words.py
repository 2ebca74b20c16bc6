"""Function words (虚词): the one definition shared by masking (stage 1) and metrics (evaluation).

A word counts as a function word when jieba tags it with a function-word part of speech, or when it is
one of the curated classical function characters / adverbs that give wuxia prose its flavour (jieba tags
many of those as plain adverbs or verbs, so POS alone would miss them).
"""

from __future__ import annotations

# jieba POS tag prefixes: u* particles (的 了 着 之 所), p prepositions, c conjunctions,
# y modal particles (吗 呢 矣 哉), e interjections.
FUNCTION_POS_PREFIXES: tuple[str, ...] = ("u", "p", "c", "y", "e")

# Classical function characters named by the seed document plus the usual 文言虚词 set.
CLASSICAL_FUNCTION_CHARS: frozenset[str] = frozenset("之乎者也矣焉哉兮耳尔其而以于於乃则且若所为與与亦")

# Adverbs and connectives characteristic of 白话 wuxia narration (竟、便、却、已然 …); jieba tags them d/v.
STYLE_ADVERBS: frozenset[str] = frozenset(
    {
        "竟", "竟然", "竟是", "便", "乃", "却", "卻", "已", "已然", "早已", "方", "方才", "才", "又", "尚", "犹", "猶",
        "皆", "遂", "亦", "仍", "仍旧", "径", "徑", "忽", "忽然", "陡然", "蓦地", "驀地", "霎时", "霎時",
        "登时", "登時", "顿时", "頓時", "俱", "甚", "甚是", "只", "只得", "只见", "只見", "果然", "果真",
        "岂", "豈", "莫非", "难道", "難道", "倘若", "倘", "纵", "縱", "虽", "雖", "然而", "于是", "於是",
    }
)


def is_function_word(word: str, pos: str) -> bool:
    """True when a jieba (word, POS) pair is a function word by tag or by the curated lists."""
    if not word.strip():
        return False
    if word in STYLE_ADVERBS or (len(word) == 1 and word in CLASSICAL_FUNCTION_CHARS):
        return True
    return pos.startswith(FUNCTION_POS_PREFIXES)


def function_word_spans(text: str, hmm: bool = False) -> list[tuple[int, int, str]]:
    """Character spans ``(start, end, word)`` of every function word in ``text``.

    ``hmm=False`` is ~10x faster and loses little on function words, which are all in jieba's dictionary.
    """
    import jieba.posseg as posseg  # local import: jieba builds its dictionary lazily and prints on load

    spans: list[tuple[int, int, str]] = []
    position = 0
    for pair in posseg.cut(text, HMM=hmm):
        word, pos = pair.word, pair.flag
        if is_function_word(word, pos):
            spans.append((position, position + len(word), word))
        position += len(word)
    return spans
