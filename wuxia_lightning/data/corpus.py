"""Reading and cleaning raw novel text files into documents (chapters), with a per-file report.

One job: files → decoded, optionally Traditional→Simplified, cleaned text → chapter documents, plus a
deterministic train/validation split *by document*. Nothing here is dropped silently: every removed
line is counted under the rule that removed it, per file (:class:`FileReport`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.sources import PathArg, decode_file, resolve_paths, to_simplified_chinese

# Words that cannot occur in classical / Qing-era fiction. Both scripts are listed because the modern
# filter may run on unconverted Traditional text (to_simplified=False). Checked against the six shared
# novels: none of these occurs there, so the filter only removes what it is meant to.
DEFAULT_MODERN_WORDS: tuple[str, ...] = (
    "手机", "手機", "电脑", "電腦", "互联网", "互聯網", "网络", "網絡", "網路", "网站", "網站",
    "微信", "短信", "电话", "電話", "电视", "電視", "汽车", "汽車", "飞机", "飛機", "地铁", "地鐵",
    "公司", "信用卡", "咖啡", "沙发", "沙發",
)

# Rule names, in the order a line is tested (a removed line is counted under the first rule that matches).
RULES: tuple[str, ...] = ("blank", "boilerplate", "model_token", "decoration", "modern_vocabulary")
WHITESPACE = "whitespace"  # normalisation only: reported, but it is not content

# Download-site furniture. Matched on the lower-cased line with full-width ASCII folded to ASCII, so
# ｗｗｗ．ＸＸ．ｃｏｍ counts too. Folding only lines that have full-width letters, digits or ．／＠ keeps
# this cheap: NFKC on every line was 60% of the ingest time (Chinese prose is full of ，！？： forms).
_FOLD_FULL_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)}
_FULL_WIDTH_ALNUM = re.compile("[\uff0e\uff0f\uff10-\uff19\uff20-\uff3a\uff41-\uff5a]")
_URL = re.compile(
    r"https?://|www\s*[.。]|w\s+w\s+w\s*[.。]|@[a-z0-9-]+\.|"
    r"[a-z0-9-]+\s*\.\s*(?:com|net|org|cn|cc|tw|hk|info|top|xyz|la|biz)(?![a-z])"
)
_AD_PHRASES: tuple[str, ...] = (
    "本书来自", "本書來自", "更多精彩", "免费下载", "免費下載", "手机阅读", "手機閱讀", "手机用户", "手機用戶",
    "txt下载", "txt下載", "电子书下载", "電子書下載", "txt电子书", "txt電子書", "全集下载", "全集下載",
    "最新章节", "最新章節", "全文阅读", "全文閱讀", "在线阅读", "在線閱讀", "线上阅读", "線上閱讀",
    "请记住本站", "請記住本站", "本站网址", "本站網址", "本站地址", "本站域名", "小说网", "小說網",
    "书友群", "書友群", "求收藏", "求推荐", "求推薦", "推荐票", "推薦票", "求月票", "起点中文", "起點中文",
    "请支持正版", "請支持正版", "下载地址", "下載地址", "整理制作", "整理製作", "版权归作者", "版權歸作者",
)
_AD = re.compile("|".join(re.escape(p) for p in _AD_PHRASES))

# A literal model control token (<|fim_suffix|>, <|endoftext|>, <|im_start|> …) in a "novel" is scraped
# model output, never prose; kept, the tokenizer would turn it into the real control token, which the
# infill layout and the stop logic give a meaning of their own.
_MODEL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")

# A line with no letter or digit (``[^\W_]``) and no quotation mark or bracket is decoration
# (☆★◆═—*~ rules, "……" separators). Quotes/brackets are kept out so 「……」 (a silent reply) survives.
_WORD_CHAR = re.compile(r"[^\W_]")
_QUOTE_OR_BRACKET = re.compile(r"[「」『』“”‘’\"'()（）《》〈〉【】\[\]{}]")

_INVISIBLE = "\u200b\ufeff"  # zero-width space and stray BOMs: not whitespace to str.strip()
_INNER_SPACE = re.compile(r"[ \t]{2,}|\t")

# Chapter headings: 第一回 / 第12回 / 第三章 / 第十一卷 / 第５６回 / 第五十六  回…, plus a few named openings.
_NUMERAL = r"[0-9０-９零〇一二三四五六七八九十百千万萬两兩壹贰貳叁參肆伍陆陸柒捌玖拾佰仟]{1,9}"
_HEADING = re.compile(rf"^第\s?{_NUMERAL}\s?[回章节節卷話话](?P<rest>.*)$")
_NAMED_HEADING = re.compile(r"^(?:楔子|引子|序章|尾声|尾聲|缘起首回|緣起首回)(?P<rest>(?:[\s:：].*)?)$")
_HEADING_SEPARATORS = " \u3000:：、.．"
_MAX_HEADING_CHARS = 80


@dataclass(frozen=True)
class Document:
    source: str   # file path as given/resolved
    index: int    # chapter index within the file (0-based); 0 if the file is one document
    title: str    # chapter heading line, or file stem
    text: str     # cleaned text, paragraphs joined by "\n" (heading line included as first paragraph)


@dataclass
class FileReport:
    path: str
    encoding: str
    chars_in: int
    chars_out: int
    documents: int
    removed: dict[str, dict[str, int]] = field(default_factory=dict)  # rule -> {"lines": n, "chars": n}
    converted_t2s: bool = False


@dataclass
class IngestReport:
    files: list[FileReport]

    def format(self) -> str:
        """A fixed-width table, one row per file plus a total row; removed cells are ``lines/chars``."""
        rules = [WHITESPACE, *RULES]
        header = ["file", "encoding", "t2s", "chars in", "chars out", "docs", *rules]
        rows = [header] + [self._row(f.path, f.encoding, f.converted_t2s, [f], rules) for f in self.files]
        if len(self.files) > 1:
            rows.append(self._row("total", "", any(f.converted_t2s for f in self.files), self.files, rules))
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in
                           enumerate(zip(row, widths, strict=True))) for row in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)

    @staticmethod
    def _row(name: str, encoding: str, t2s: bool, files: list[FileReport], rules: list[str]) -> list[str]:
        cells = [name, encoding, "yes" if t2s else "no", f"{sum(f.chars_in for f in files):,}",
                 f"{sum(f.chars_out for f in files):,}", str(sum(f.documents for f in files))]
        for rule in rules:
            lines = sum(f.removed.get(rule, {}).get("lines", 0) for f in files)
            chars = sum(f.removed.get(rule, {}).get("chars", 0) for f in files)
            cells.append(f"{lines}/{chars}")
        return cells

    def to_dict(self) -> dict:
        totals = {"files": len(self.files), "chars_in": sum(f.chars_in for f in self.files),
                  "chars_out": sum(f.chars_out for f in self.files),
                  "documents": sum(f.documents for f in self.files), "removed": {}}
        for report in self.files:
            for rule, counts in report.removed.items():
                into = totals["removed"].setdefault(rule, {"lines": 0, "chars": 0})
                into["lines"] += counts["lines"]
                into["chars"] += counts["chars"]
        return {"files": [asdict(f) for f in self.files], "totals": totals}


def resolve_sources(sources: PathArg) -> list[Path]:
    """The corpus's ``*.txt`` files: files, folders (recursive), globs (see :func:`resolve_paths`)."""
    return resolve_paths(sources, (".txt",), "corpus source", field="corpus")


# ------------------------------------------------------------------------------------------- cleaning

def clean_text(text: str, *, modern_words: Sequence[str] = (),
               drop_modern: bool = False) -> tuple[str, dict[str, dict[str, int]]]:
    """Normalise whitespace and drop non-content lines; return (text, rule -> {"lines", "chars"}).

    A line is a paragraph. Each dropped line counts its raw characters under the first matching rule;
    ``whitespace`` counts characters removed by normalisation (edges, runs of spaces, CR of CRLF, line
    breaks of dropped lines), so ``len(text) == len(cleaned) + sum of all chars``: nothing is unaccounted.
    """
    removed = {rule: {"lines": 0, "chars": 0} for rule in (WHITESPACE, *RULES)}
    crlf = text.count("\r\n")
    raw_lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    modern = _word_pattern(modern_words) if drop_modern else None
    kept: list[str] = []
    for raw in raw_lines:
        line = _normalise_line(raw)
        rule = _removal_rule(line, modern)
        if rule is not None:
            removed[rule]["lines"] += 1
            removed[rule]["chars"] += len(raw)
            continue
        if len(line) != len(raw):
            removed[WHITESPACE]["lines"] += 1
            removed[WHITESPACE]["chars"] += len(raw) - len(line)
        kept.append(line)
    # Line breaks: the input had len(raw_lines) - 1 (+ one extra char per CRLF); the output has len(kept) - 1.
    removed[WHITESPACE]["chars"] += crlf + (len(raw_lines) - 1) - max(len(kept) - 1, 0)
    return "\n".join(kept), removed


def _normalise_line(line: str) -> str:
    # str.strip() already covers U+3000 (ideographic space) and NBSP.
    line = line.strip().strip(_INVISIBLE).strip()
    return _INNER_SPACE.sub(" ", line) if "  " in line or "\t" in line else line


def _removal_rule(line: str, modern: re.Pattern | None) -> str | None:
    if not line:
        return "blank"
    if _is_boilerplate(line):
        return "boilerplate"
    if "<|" in line and _MODEL_TOKEN.search(line):
        return "model_token"
    if not _WORD_CHAR.search(line) and not _QUOTE_OR_BRACKET.search(line):
        return "decoration"
    if modern is not None and modern.search(line):
        return "modern_vocabulary"
    return None


def _is_boilerplate(line: str) -> bool:
    folded = (line.translate(_FOLD_FULL_WIDTH) if _FULL_WIDTH_ALNUM.search(line) else line).lower()
    return bool(_URL.search(folded) or _AD.search(folded))


def _word_pattern(words: Sequence[str]) -> re.Pattern | None:
    words = sorted({w.strip() for w in words if w and w.strip()}, key=len, reverse=True)
    return re.compile("|".join(re.escape(w) for w in words)) if words else None


# ------------------------------------------------------------------------------------------ documents

def is_heading(line: str) -> bool:
    """True for a chapter heading line (第一回　…, 第12回 …, 第三章, 第十一卷, 楔子 …).

    A body paragraph can start with 第二節，… or 第三回合, so: a heading is short, and one without a
    separator after 回/章 (第三十回一個英雄中計…) must contain no sentence punctuation at all.
    """
    if len(line) > _MAX_HEADING_CHARS:
        return False
    match = _HEADING.match(line) or _NAMED_HEADING.match(line)
    if match is None:
        return False
    rest = match.group("rest")
    if not rest or rest[0] in _HEADING_SEPARATORS:
        return not re.search(r"[。！？!?「」“”]", rest)
    return len(line) <= 40 and not re.search(r"[，,。！？!?；;：:「」“”]", rest)


def split_into_documents(text: str, source: str) -> list[Document]:
    """Split cleaned text into chapters at heading lines; the pieces, in order, rebuild the whole text.

    - Text before the first heading (title, preface) is document 0, if there is any.
    - Headings with no body paragraph are not documents of their own. Two or more of them before the
      first real chapter are a table of contents and join the front matter (document 0); any other is
      merged forward into the next chapter (a volume heading 第二卷 before 第十一回), or, at the end of
      the file, back into the previous document.
    - A file without headings is one document titled by the file stem.
    """
    paragraphs = text.split("\n") if text else []
    stem = Path(source).stem
    sections = _sections(paragraphs)  # [(heading or None, lines)] with lines[0] == heading
    front, chapters = _fold_headings_without_body(sections)
    pieces = ([(stem, front)] if front else []) + chapters
    return [Document(source=source, index=i, title=title, text="\n".join(lines))
            for i, (title, lines) in enumerate(pieces)]


def _sections(paragraphs: list[str]) -> list[tuple[str | None, list[str]]]:
    sections: list[tuple[str | None, list[str]]] = [(None, [])]
    for paragraph in paragraphs:
        if is_heading(paragraph):
            sections.append((paragraph, [paragraph]))
        else:
            sections[-1][1].append(paragraph)
    return sections


def _fold_headings_without_body(
        sections: list[tuple[str | None, list[str]]]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(front-matter lines, [(title, lines)] chapters), after placing headings that have no body."""
    front = list(sections[0][1])
    chapters = [(title, lines) for title, lines in sections[1:]]
    first_body = next((i for i, (_, lines) in enumerate(chapters) if len(lines) > 1), None)
    if first_body is None:  # only headings: one document, nothing to split on
        return front + [line for _, lines in chapters for line in lines], []
    if first_body >= 2:  # a table of contents
        front += [line for _, lines in chapters[:first_body] for line in lines]
        chapters = chapters[first_body:]
    merged: list[tuple[str, list[str]]] = []
    pending: list[str] = []
    for title, lines in chapters:
        if len(lines) == 1:
            pending += lines
            continue
        merged.append((title, pending + lines))
        pending = []
    if pending:  # trailing headings with nothing after them stay with the last chapter
        merged[-1][1].extend(pending)
    return front, merged


# --------------------------------------------------------------------------------------------- corpus

def read_corpus(sources: str | os.PathLike | Sequence[str | os.PathLike], *, to_simplified: bool = False,
                drop_modern: bool = False,
                modern_words: Sequence[str] | None = None) -> tuple[list[Document], IngestReport]:
    """Read, (convert,) clean and split every source file; raise if nothing is left."""
    words = tuple(DEFAULT_MODERN_WORDS if modern_words is None else modern_words)
    if to_simplified and drop_modern:  # user-given Traditional words must still match converted text
        words = tuple(dict.fromkeys(words + tuple(to_simplified_chinese(w) for w in words)))
    documents: list[Document] = []
    reports: list[FileReport] = []
    for path in resolve_sources(sources):
        docs, report = _read_file(path, to_simplified, drop_modern, words)
        documents += docs
        reports.append(report)
    if not documents:
        names = ", ".join(str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources))
        raise UserInputError(f"the corpus is empty after cleaning (sources: {names})", field="corpus")
    return documents, IngestReport(reports)


def _read_file(path: Path, to_simplified: bool, drop_modern: bool,
               words: Sequence[str]) -> tuple[list[Document], FileReport]:
    raw, encoding = decode_file(path)
    # Convert before cleaning so the modern-vocabulary rule sees the same script as its word list.
    text = to_simplified_chinese(raw) if to_simplified else raw
    cleaned, removed = clean_text(text, modern_words=words, drop_modern=drop_modern)
    docs = split_into_documents(cleaned, str(path))
    report = FileReport(path=str(path), encoding=encoding, chars_in=len(raw), chars_out=len(cleaned),
                        documents=len(docs), removed=removed, converted_t2s=to_simplified)
    return docs, report


# ---------------------------------------------------------------------------------------------- split

def split_train_val(documents: Sequence[Document], val_fraction: float = 0.05,
                    seed: int = 0) -> tuple[list[Document], list[Document]]:
    """Deterministic split by document identity, so no validation text is ever trained on.

    Each document draws u in [0, 1) from blake2b(basename, index, seed) and goes to validation when
    u < val_fraction: adding files never moves other documents across, and moving the data folder
    does not change the split. With two or more documents each side gets at least one. Both lists are
    sorted by (source, index), so the result does not depend on input order.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UserInputError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}",
                             field="val_fraction")
    if not documents:
        raise UserInputError("no documents to split into train and validation", field="corpus")
    ranked = sorted(documents, key=lambda d: (_draw(d, seed), d.source, d.index))
    n_val = sum(1 for d in ranked if _draw(d, seed) < val_fraction)
    if len(ranked) >= 2:
        n_val = min(max(n_val, 1), len(ranked) - 1)
    val, train = ranked[:n_val], ranked[n_val:]
    return _by_identity(train), _by_identity(val)


def _draw(document: Document, seed: int) -> float:
    key = f"{Path(document.source).name}\0{document.index}\0{seed}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0 ** 64


def _by_identity(documents: list[Document]) -> list[Document]:
    return sorted(documents, key=lambda d: (d.source, d.index))


def held_out_by_hash(key: str, fraction: float) -> bool:
    """True for about ``fraction`` of keys, by blake2b of the key: the split of documents that have no
    chapters (general-text paragraphs, conversations). A pure function of the key, so the replication's
    splits and the authorship classifier (metrics/authorship.py) hold out the same paragraphs."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64 < fraction
