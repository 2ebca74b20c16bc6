"""P(style) of a passage: a classifier trained only on real text (style corpus vs general modern text).

n-gram overlap and function-word JS say how a passage resembles the corpus; a reader trusts a verdict more
when it comes from a classifier whose held-out accuracy on real text is known. Character 1–3-gram TF-IDF
and logistic regression, on equal-length chunks with balanced classes: stylometry's standard baseline.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from wuxia_lightning.metrics._cache import atomic_write, content_key, default_cache_dir


def chunk_texts(texts: Sequence[str], length: int = 100) -> list[str]:
    """Consecutive ``length``-character chunks of each text (whitespace removed); only each text's final
    shorter remainder is dropped, so both classes are judged on passages of the same length."""
    chunks = []
    for text in texts:
        compact = "".join(text.split())
        chunks.extend(compact[i:i + length] for i in range(0, len(compact) - length + 1, length))
    return chunks


def char_ngram_vectorizer(max_features: int = 200_000):
    """Sublinear TF-IDF over character 1–3-grams: the features of both the P(style) and the authorship
    classifier (metrics/authorship.py), so the two verdicts rest on the same view of a passage."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True, min_df=2,
                           max_features=max_features)


class StyleClassifier:
    """``fit(style_texts, other_texts)`` then ``predict_proba(texts)`` → P(style) per text."""

    def __init__(self, chunk_length: int = 100, seed: int = 0) -> None:
        from sklearn.linear_model import LogisticRegression

        self.chunk_length, self.seed = chunk_length, seed
        self.vectorizer = char_ngram_vectorizer()
        self.model = LogisticRegression(max_iter=1000, C=4.0)
        self.n_train = 0

    @classmethod
    def fit(cls, style_texts: Sequence[str], other_texts: Sequence[str], chunk_length: int = 100,
            seed: int = 0) -> StyleClassifier:
        classifier = cls(chunk_length, seed)
        style, other = _balanced(chunk_texts(style_texts, chunk_length), chunk_texts(other_texts, chunk_length), seed)
        if not style or not other:
            raise ValueError(f"need text of both classes at least {chunk_length} characters long")
        features = classifier.vectorizer.fit_transform(style + other)
        classifier.model.fit(features, np.array([1] * len(style) + [0] * len(other)))
        classifier.n_train = len(style) + len(other)
        return classifier

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """P(style) per text; an empty text gets 0 (a model that writes nothing shows no style)."""
        texts = ["".join(t.split()) for t in texts]
        probabilities = np.zeros(len(texts))
        filled = [i for i, t in enumerate(texts) if t]
        if filled:
            features = self.vectorizer.transform([texts[i] for i in filled])
            probabilities[filled] = self.model.predict_proba(features)[:, 1]
        return probabilities

    def accuracy(self, style_texts: Sequence[str], other_texts: Sequence[str]) -> dict:
        """Accuracy on chunks of held-out real text, per class too (the classes need not be balanced here)."""
        style = chunk_texts(style_texts, self.chunk_length)
        other = chunk_texts(other_texts, self.chunk_length)
        style_hits = (self.predict_proba(style) >= 0.5).sum() if style else 0
        other_hits = (self.predict_proba(other) < 0.5).sum() if other else 0
        n_test = len(style) + len(other)
        return {"accuracy": float(style_hits + other_hits) / max(1, n_test), "n_test": n_test,
                "n_train": self.n_train, "style_recall": float(style_hits) / max(1, len(style)),
                "other_recall": float(other_hits) / max(1, len(other))}

    def save(self, path: str | Path) -> None:
        data = pickle.dumps(self)
        atomic_write(Path(path), lambda temporary: temporary.write_bytes(data))

    @staticmethod
    def load(path: str | Path) -> StyleClassifier:
        with open(path, "rb") as handle:  # our own cache file, written by save()
            return pickle.load(handle)  # noqa: S301

    @classmethod
    def load_or_fit(cls, style_texts: Sequence[str], other_texts: Sequence[str], cache_dir: str | Path | None = None,
                    chunk_length: int = 100, seed: int = 0) -> StyleClassifier:
        """Fit once per (texts, settings); later calls load the cached classifier."""
        key = content_key([*style_texts, "\0other\0", *other_texts],
                          {"kind": "style_classifier_v1", "chunk": chunk_length, "seed": seed})
        path = Path(cache_dir or default_cache_dir("style_classifier")) / f"style_classifier_{key[:16]}.pkl"
        if path.exists():
            return cls.load(path)
        classifier = cls.fit(style_texts, other_texts, chunk_length, seed)
        classifier.save(path)
        return classifier


def _balanced(style: list[str], other: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Subsample the larger class to the smaller one's size (deterministic)."""
    n = min(len(style), len(other))
    rng = np.random.default_rng(seed)

    def pick(chunks: list[str]) -> list[str]:
        return [chunks[i] for i in sorted(rng.choice(len(chunks), n, replace=False))] if len(chunks) > n else chunks

    return pick(style), pick(other)


class StyleProbability(Metric):
    """Mean P(style) of generated passages under a fitted ``StyleClassifier`` (sums reduced across ranks)."""

    full_state_update = False

    def __init__(self, classifier: StyleClassifier, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.classifier = classifier
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, texts: str | Sequence[str]) -> None:
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.total += float(self.classifier.predict_proba(texts).sum())
        self.count += len(texts)

    def compute(self) -> Tensor:
        return self.total / self.count.clamp_min(1)

    def __deepcopy__(self, memo: dict) -> StyleProbability:
        # torchmetrics deep-copies metrics (e.g. for forward); the fitted classifier is read-only: share it.
        copy = StyleProbability.__new__(StyleProbability)
        memo[id(self)] = copy
        for key, value in self.__dict__.items():
            copy.__dict__[key] = value if key == "classifier" else __import__("copy").deepcopy(value, memo)
        return copy
