"""Who does a passage read like? An author classifier and Burrows's Delta over the style corpus's authors.

P(style) (style_classifier.py) says "novel or not"; a scorecard for per-author adapters must say *which*
novelist. Both judges here learn from training chapters only and are measured on held-out chapters at
the length of a reply, so a reader can weigh a verdict on generations by the judge's record on real text:

- a linear SVM over character 1–3-gram TF-IDF of fixed-length passages, one class per author plus
  ``general`` (modern text), classes capped to the same number of passages;
- Burrows's Delta: z-scored relative frequencies of the most frequent characters (function characters
  such as 之 也 了 的 are among them), distance = mean absolute z difference to each author's centroid.

All text is converted to Simplified first and its quotation marks folded (the novels are Traditional
with 「」, Wikipedia Simplified with “”): the judges must learn the voice, not the script or the editor.
The fitted judges and their held-out record are cached under the project's cache root, keyed by the
corpus files' bytes and names and by the settings (:meth:`AuthorshipModel.load_or_fit`).
"""

from __future__ import annotations

import hashlib
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from wuxia_lightning.metrics._cache import atomic_write, default_cache_dir
from wuxia_lightning.metrics.style_classifier import char_ngram_vectorizer, chunk_texts

GENERAL = "general"
# The shared corpus's files (../shared/data/README.md) → one class per author. 小五義 is attributed to
# 石玉昆 like 三俠五義; 施公案 is anonymous, so the work names the class. A file not listed here is its
# own class, named by its stem, so a user's corpus works without editing this table.
AUTHOR_OF_FILE: dict[str, str] = {
    "sanxia_wuyi": "shi_yukun", "xiao_wuyi": "shi_yukun", "ernu_yingxiong_zhuan": "wen_kang",
    "shi_gong_an": "shi_gong_an_anon", "peng_gong_an": "tanmeng_daoren", "shuihu_zhuan": "shi_naian",
}
AUTHOR_NAMES: dict[str, str] = {
    "shi_yukun": "石玉昆", "wen_kang": "文康", "shi_gong_an_anon": "施公案 (anonymous)",
    "tanmeng_daoren": "貪夢道人 (彭公案)", "shi_naian": "施耐庵", GENERAL: "modern general text",
}
# Other spellings a generations file may use for target_author (names in either script, works, files).
_ALIASES: dict[str, str] = {
    "石玉昆": "shi_yukun", "三侠五义": "shi_yukun", "三俠五義": "shi_yukun", "小五义": "shi_yukun",
    "小五義": "shi_yukun", "文康": "wen_kang", "儿女英雄传": "wen_kang", "兒女英雄傳": "wen_kang",
    "施公案": "shi_gong_an_anon", "贪梦道人": "tanmeng_daoren", "貪夢道人": "tanmeng_daoren",
    "彭公案": "tanmeng_daoren", "施耐庵": "shi_naian", "水浒传": "shi_naian", "水滸傳": "shi_naian",
}
_QUOTES = str.maketrans({"「": "“", "」": "”", "『": "‘", "』": "’"})


def author_of(path: str | Path) -> str:
    stem = Path(path).stem
    return AUTHOR_OF_FILE.get(stem, stem)


def corpus_classes(style_sources: str | Sequence[str]) -> list[str]:
    """The classes a corpus gives, from its file names alone (checking input needs no fitting)."""
    from wuxia_lightning.data.corpus import resolve_sources

    return sorted({author_of(path) for path in resolve_sources(style_sources)} | {GENERAL})


def resolve_author(name: str, classes: Sequence[str]) -> str | None:
    """The class a target-author spelling means (class id, Chinese name, work or file stem), or None."""
    for candidate in (name, _ALIASES.get(name), AUTHOR_OF_FILE.get(name)):
        if candidate in classes:
            return candidate
    return None


def normalise(text: str) -> str:
    """One script and one quotation style, whitespace removed: what both judges see."""
    from wuxia_lightning.sources import to_simplified_chinese

    return "".join(to_simplified_chinese(text).translate(_QUOTES).split())


@dataclass(frozen=True)
class AuthorshipSettings:
    passage_length: int = 200      # characters per training / held-out passage: the length of a reply
    max_passages: int = 2000       # per class, sampled from training chapters (classes made comparable)
    delta_features: int = 300      # most frequent characters in Delta's profile
    delta_segment: int = 1000      # characters per segment when estimating Delta's means and spreads
    val_fraction: float = 0.05     # held-out chapters, the same split the data module and replication use
    seed: int = 0


@dataclass
class AuthorTexts:
    """Normalised texts per class: training chapters / paragraphs and held-out ones."""

    train: dict[str, list[str]] = field(default_factory=dict)
    heldout: dict[str, list[str]] = field(default_factory=dict)


def load_author_texts(style_sources: str | Sequence[str], general_sources: str | Sequence[str],
                      val_fraction: float = 0.05, seed: int = 0) -> AuthorTexts:
    """Novels split by chapter (as stage 1 and the replication split them), general text by paragraph."""
    from wuxia_lightning.data.corpus import held_out_by_hash, read_corpus, split_train_val

    texts = AuthorTexts()
    documents, _ = read_corpus(style_sources, to_simplified=True)
    train, heldout = split_train_val(documents, val_fraction, seed=seed)
    for into, split in ((texts.train, train), (texts.heldout, heldout)):
        for document in split:
            into.setdefault(author_of(document.source), []).append(normalise(document.text))
    general, _ = read_corpus(general_sources, to_simplified=True)
    # The replication's rule (benchmarks/replication/data_splits.py): paragraphs of ≥ 20 characters.
    paragraphs = [line for d in general for line in d.text.split("\n") if len(line) >= 20]
    texts.train[GENERAL] = [normalise(p) for p in paragraphs if not held_out_by_hash(p, val_fraction)]
    texts.heldout[GENERAL] = [normalise(p) for p in paragraphs if held_out_by_hash(p, val_fraction)]
    return texts


def passages(texts: Mapping[str, Sequence[str]], length: int, cap: int | None,
             seed: int) -> tuple[list[str], list[str]]:
    """(passages, labels): consecutive ``length``-character chunks per class, at most ``cap`` per class
    (a seeded sample spread over the whole class, not its first chapters)."""
    rng = np.random.default_rng(seed)
    chunks, labels = [], []
    for label in sorted(texts):
        pieces = chunk_texts(["".join(texts[label])], length)  # chunks may cross paragraphs: fine
        if cap is not None and len(pieces) > cap:
            pieces = [pieces[i] for i in sorted(rng.choice(len(pieces), cap, replace=False))]
        chunks += pieces
        labels += [label] * len(pieces)
    return chunks, labels


class AuthorClassifier:
    """Character n-gram TF-IDF + linear SVM: the standard stylometry baseline, fast to fit."""

    def __init__(self) -> None:
        from sklearn.svm import LinearSVC

        self.vectorizer = char_ngram_vectorizer()
        self.model = LinearSVC(C=0.5)

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> AuthorClassifier:
        self.model.fit(self.vectorizer.fit_transform(texts), np.asarray(labels))
        return self

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.model.classes_]

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The class of each (normalised) text; callers leave empty texts out."""
        return [str(c) for c in self.model.predict(self.vectorizer.transform(list(texts)))] if texts else []


class BurrowsDelta:
    """Burrows's Delta over the ``n`` most frequent characters (CJK ideographs only: punctuation is the
    modern editors', not the authors'). Means and spreads come from equal numbers of segments per class."""

    def __init__(self, features: list[str], mean: np.ndarray, std: np.ndarray,
                 centroids: dict[str, np.ndarray]) -> None:
        self.features, self.mean, self.std, self.centroids = features, mean, std, centroids
        self._index = {c: i for i, c in enumerate(features)}

    @classmethod
    def fit(cls, texts: Mapping[str, Sequence[str]], n_features: int, segment: int, seed: int) -> BurrowsDelta:
        counts = {label: Counter(c for t in texts[label] for c in t if _is_ideograph(c)) for label in texts}
        # Each class weighs the same in the feature choice, whatever its size.
        pooled: Counter = Counter()
        for counter in counts.values():
            total = sum(counter.values()) or 1
            pooled.update({c: n / total for c, n in counter.items()})
        features = [c for c, _ in pooled.most_common(n_features)]
        delta = cls(features, np.zeros(len(features)), np.ones(len(features)), {})
        # A small corpus (the shipped sample) may have a class shorter than one segment: shorten them all.
        segment = max(1, min(segment, min(sum(len(t) for t in group) for group in texts.values())))
        segments, labels = passages(texts, segment, _segments_per_class(texts, segment), seed)
        rows = np.stack([delta.frequencies(s) for s in segments])
        delta.mean, delta.std = rows.mean(axis=0), rows.std(axis=0) + 1e-12
        z = (rows - delta.mean) / delta.std
        label_array = np.asarray(labels)
        delta.centroids = {label: z[label_array == label].mean(axis=0) for label in sorted(set(labels))}
        return delta

    def frequencies(self, text: str) -> np.ndarray:
        """Relative frequency of each feature among the text's ideographs."""
        vector = np.zeros(len(self.features))
        total = 0
        for character in text:
            if _is_ideograph(character):
                total += 1
                index = self._index.get(character)
                if index is not None:
                    vector[index] += 1
        return vector / max(total, 1)

    def distances(self, text: str) -> dict[str, float]:
        z = (self.frequencies(text) - self.mean) / self.std
        return {label: float(np.abs(z - centroid).mean()) for label, centroid in self.centroids.items()}

    def nearest(self, text: str) -> str:
        distances = self.distances(text)
        return min(distances, key=distances.get)


def _segments_per_class(texts: Mapping[str, Sequence[str]], segment: int) -> int:
    """The smallest class's segment count, so every class weighs the same in mean and spread."""
    return max(1, min(sum(len(t) for t in group) // segment for group in texts.values()))


def _is_ideograph(character: str) -> bool:
    return "\u4e00" <= character <= "\u9fff" or "\u3400" <= character <= "\u4dbf"


@dataclass
class HeldOutRecord:
    """How the classifier and Delta do on held-out real chapters (the figure to trust before generations)."""

    classes: list[str]
    passage_length: int
    accuracy: float
    n_test: int
    n_train: int
    confusion: list[list[int]]          # rows: true class, columns: predicted, in ``classes`` order
    recall: dict[str, float]
    accuracy_by_length: dict[str, float]  # the same held-out text cut at other lengths
    delta_nearest: dict[str, str]         # true class → nearest centroid of its pooled held-out text


class AuthorshipModel:
    """The fitted classifier and Delta, their settings and their held-out record."""

    def __init__(self, settings: AuthorshipSettings, classifier: AuthorClassifier, delta: BurrowsDelta,
                 heldout: HeldOutRecord, corpus_key: str) -> None:
        self.settings, self.classifier, self.delta = settings, classifier, delta
        self.heldout, self.corpus_key = heldout, corpus_key

    @property
    def classes(self) -> list[str]:
        return self.classifier.classes

    @classmethod
    def fit(cls, texts: AuthorTexts, settings: AuthorshipSettings, corpus_key: str = "") -> AuthorshipModel:
        train, labels = passages(texts.train, settings.passage_length, settings.max_passages, settings.seed)
        classifier = AuthorClassifier().fit(train, labels)
        delta = BurrowsDelta.fit(texts.train, settings.delta_features, settings.delta_segment, settings.seed)
        heldout = evaluate(classifier, delta, texts.heldout, settings.passage_length, len(train))
        return cls(settings, classifier, delta, heldout, corpus_key)

    @classmethod
    def load_or_fit(cls, style_sources: str | Sequence[str], general_sources: str | Sequence[str],
                    settings: AuthorshipSettings | None = None, cache_dir: str | Path | None = None,
                    ) -> AuthorshipModel:
        """Fit once per (corpus files, settings); later calls load the pickle without reading the corpus."""
        settings = settings or AuthorshipSettings()
        key = corpus_files_key(style_sources, general_sources, settings)
        path = Path(cache_dir or default_cache_dir("authorship")) / f"authorship_{key[:16]}.pkl"
        if path.exists():
            with open(path, "rb") as handle:  # our own cache file, written below
                return pickle.load(handle)  # noqa: S301
        texts = load_author_texts(style_sources, general_sources, settings.val_fraction, settings.seed)
        model = cls.fit(texts, settings, key)
        data = pickle.dumps(model)
        atomic_write(path, lambda temporary: temporary.write_bytes(data))
        return model


def corpus_files_key(style_sources: str | Sequence[str], general_sources: str | Sequence[str],
                     settings: AuthorshipSettings) -> str:
    """sha256 over each file's name (it decides the class) and bytes, the settings and a format version."""
    from wuxia_lightning.data.corpus import resolve_sources

    digest = hashlib.sha256(repr(("authorship_v1", sorted(asdict(settings).items()))).encode())
    for role, sources in (("style", style_sources), ("general", general_sources)):
        for path in sorted(resolve_sources(sources), key=lambda p: p.name):
            digest.update(f"\0{role}\0{path.name}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def evaluate(classifier: AuthorClassifier, delta: BurrowsDelta, heldout: Mapping[str, Sequence[str]],
             length: int, n_train: int) -> HeldOutRecord:
    """Accuracy and confusion matrix on every ``length``-character passage of the held-out text."""
    classes = classifier.classes
    # A class whose every chapter was held out (a one-chapter file) was never learnt: nothing to measure.
    heldout = {label: group for label, group in heldout.items() if label in classes}
    texts, labels = passages(heldout, length, None, 0)
    predicted = classifier.predict(texts)
    index = {c: i for i, c in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), dtype=int)
    for truth, guess in zip(labels, predicted, strict=True):
        confusion[index[truth], index[guess]] += 1
    rows = confusion.sum(axis=1)
    by_length = {}
    for other in sorted({max(20, length // 2), length, 2 * length}):
        cut, truth = passages(heldout, other, None, 0)
        by_length[str(other)] = float(np.mean(np.asarray(classifier.predict(cut)) == np.asarray(truth)))
    return HeldOutRecord(
        classes=classes, passage_length=length, accuracy=float(np.trace(confusion) / max(1, confusion.sum())),
        n_test=len(texts), n_train=n_train, confusion=confusion.tolist(),
        recall={c: float(confusion[i, i] / rows[i]) for i, c in enumerate(classes) if rows[i]},
        accuracy_by_length=by_length,
        delta_nearest={label: delta.nearest("".join(heldout[label])) for label in sorted(heldout)})
