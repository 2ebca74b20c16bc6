"""Corpus ingest: encodings, Traditional→Simplified, cleaning rules and counts, chapters, train/val split."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from wuxia_lightning.data.corpus import (
    DEFAULT_MODERN_WORDS,
    Document,
    IngestReport,
    clean_text,
    is_heading,
    read_corpus,
    resolve_sources,
    split_into_documents,
    split_train_val,
)
from wuxia_lightning.errors import UserInputError
from wuxia_lightning.sources import decode_file

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SANXIA = SHARED / "data" / "style" / "sanxia_wuyi.txt"

# Written for these tests (~300 characters each); the Traditional one also goes through Big5.
PROSE_TRAD = (
    "臘月將盡，寒江之上朔風如刀，江面浮著一層薄冰，被渡船一撞，便碎成千萬片，往兩岸散去。"
    "船頭坐著一個青衫少年，懷中抱著一柄舊劍，劍鞘乃是烏木所製，已然磨得發亮。"
    "他面容清瘦，眉宇間卻有一股說不出的倔強之氣，彷彿這漫天風雪，也壓他不彎。"
    "撐船的老艄公咳了兩聲，說道：「小哥，這般天氣還要過江，莫非家中有甚急事？」"
    "少年搖了搖頭，只道：「我去對岸尋一個人，十年前他欠我家一條命。」"
    "老艄公聽了，手中竹篙一頓，半晌不語，良久方嘆道：「江湖上的恩怨，何時是個了局？"
    "你年紀輕輕，何苦把一生都押在一個仇字上頭。」少年不答，只將那柄舊劍抱得更緊了些。"
    "遠處山寺鐘聲隱隱傳來，一下一下，敲在冰冷的江面上，竟似敲在人心頭一般。"
)
PROSE_SIMP = (
    "腊月将尽，寒江之上朔风如刀，江面浮着一层薄冰，被渡船一撞，便碎成千万片，往两岸散去。"
    "船头坐着一个青衫少年，怀中抱着一柄旧剑，剑鞘乃是乌木所制，已然磨得发亮。"
    "他面容清瘦，眉宇间却有一股说不出的倔强之气，仿佛这漫天风雪，也压他不弯。"
    "撑船的老艄公咳了两声，说道：「小哥，这般天气还要过江，莫非家中有甚急事？」"
    "少年摇了摇头，只道：「我去对岸寻一个人，十年前他欠我家一条命。」"
    "老艄公听了，手中竹篙一顿，半晌不语，良久方叹道：「江湖上的恩怨，何时是个了局？"
    "你年纪轻轻，何苦把一生都押在一个仇字上头。」少年不答，只将那柄旧剑抱得更紧了些。"
    "远处山寺钟声隐隐传来，一下一下，敲在冰冷的江面上，竟似敲在人心头一般。"
)
# OpenCC t2s keeps 著 (also a Simplified character, as in 著名), so 浮著 stays 浮著.
T2S_OF_PROSE_TRAD = PROSE_SIMP.replace("着", "著")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------ encodings

@pytest.mark.parametrize(("label", "prose", "encode", "expected"), [
    ("utf8", PROSE_SIMP, lambda t: t.encode("utf-8"), "utf-8"),
    ("utf8_bom", PROSE_SIMP, lambda t: t.encode("utf-8-sig"), "utf-8-sig"),
    ("gb18030", PROSE_SIMP, lambda t: t.encode("gb18030"), "gb18030"),
    ("gbk", PROSE_SIMP, lambda t: t.encode("gbk"), "gb18030"),
    ("big5", PROSE_TRAD, lambda t: t.encode("big5"), "cp950"),
    ("utf16le_bom", PROSE_TRAD, lambda t: b"\xff\xfe" + t.encode("utf-16-le"), "utf-16-le"),
    ("utf16be_bom", PROSE_SIMP, lambda t: b"\xfe\xff" + t.encode("utf-16-be"), "utf-16-be"),
])
def test_each_encoding_round_trips_and_is_reported(tmp_path, label, prose, encode, expected):
    assert len(prose) > 280
    text = f"第一回　寒江夜渡\n{prose}\n{prose[::-1]}\n"  # several paragraphs, non-ASCII throughout
    path = _write(tmp_path / f"{label}.txt", encode(text))
    decoded, encoding = decode_file(path)
    assert decoded == text
    assert encoding == expected
    documents, report = read_corpus(str(path))
    assert report.files[0].encoding == expected
    assert documents[0].text == text.strip()


@pytest.mark.parametrize(("detected", "expected"), [("gb2312", "gb18030"), ("gbk", "gb18030"),
                                                    ("big5", "cp950"), ("big5hkscs", "cp950")])
def test_detector_answers_map_to_superset_codecs(tmp_path, monkeypatch, detected, expected):
    """GB2312/GBK are read as GB18030 and Big5 as cp950, so characters outside the narrow set survive."""
    import charset_normalizer

    class Matches:  # stands in for charset_normalizer's CharsetMatches: only .best().encoding is read
        encoding = detected

        def best(self):
            return self

    monkeypatch.setattr(charset_normalizer, "from_bytes", lambda data: Matches())
    # 镕 is in GBK/GB18030 but not GB2312; 碁 is in cp950 but not in Python's big5 table.
    text = PROSE_SIMP + "朱镕" if expected == "gb18030" else PROSE_TRAD + "圍碁"
    path = _write(tmp_path / "guess.txt", text.encode(expected))
    assert decode_file(path) == (text, expected)


def test_undecodable_file_names_the_file(tmp_path):
    rng = random.Random(0)
    path = _write(tmp_path / "binary.txt", bytes(rng.randrange(256) for _ in range(4000)))
    with pytest.raises(UserInputError, match="binary.txt"):
        decode_file(path)


def test_broken_bom_file_names_the_file(tmp_path):
    path = _write(tmp_path / "bad_bom.txt", b"\xef\xbb\xbf" + PROSE_SIMP.encode()[:-1] + b"\xff\xfe\xfd")
    with pytest.raises(UserInputError, match="bad_bom.txt"):
        decode_file(path)


# ------------------------------------------------------------------------------------------ t2s

def test_traditional_to_simplified(tmp_path):
    path = _write(tmp_path / "trad.txt", (PROSE_TRAD + "\n他拔劍說道：「來者何人？」\n").encode("big5"))
    docs, report = read_corpus(path, to_simplified=True)
    text = docs[0].text
    assert "剑" in text and "说" in text and "劍" not in text and "說" not in text
    assert text.split("\n")[0] == T2S_OF_PROSE_TRAD
    assert report.files[0].converted_t2s and report.files[0].encoding == "cp950"
    kept, report = read_corpus(path)
    assert "劍" in kept[0].text and not report.files[0].converted_t2s


def test_conversion_happens_before_the_modern_vocabulary_rule(tmp_path):
    path = _write(tmp_path / "modern.txt", f"{PROSE_TRAD}\n他打開電腦，看了一眼。\n".encode())
    docs, report = read_corpus(path, to_simplified=True, drop_modern=True, modern_words=["电脑"])
    assert report.files[0].removed["modern_vocabulary"] == {"lines": 1, "chars": len("他打開電腦，看了一眼。")}
    assert docs[0].text == T2S_OF_PROSE_TRAD
    # Without drop_modern nothing is dropped, whatever the words.
    docs, report = read_corpus(path, to_simplified=True, modern_words=["电脑"])
    assert report.files[0].removed["modern_vocabulary"]["lines"] == 0 and "电脑" in docs[0].text


def test_traditional_modern_words_still_match_converted_text(tmp_path):
    path = _write(tmp_path / "modern.txt", f"{PROSE_TRAD}\n他打開電腦，看了一眼。\n".encode())
    docs, report = read_corpus(path, to_simplified=True, drop_modern=True, modern_words=["電腦"])
    assert report.files[0].removed["modern_vocabulary"]["lines"] == 1
    assert docs[0].text == T2S_OF_PROSE_TRAD


def test_default_modern_words_hit_modern_text_only():
    text = f"{PROSE_SIMP}\n他掏出手机看了一眼。\n她坐上汽车走了。\n{PROSE_TRAD}\n"
    cleaned, removed = clean_text(text, modern_words=DEFAULT_MODERN_WORDS, drop_modern=True)
    assert removed["modern_vocabulary"]["lines"] == 2
    assert cleaned == f"{PROSE_SIMP}\n{PROSE_TRAD}"


# ------------------------------------------------------------------------------------------ cleaning

AD_1 = "本书来自 www.example.com 免费下载"
AD_2 = "更多精彩，请访问ｗｗｗ．ｘｘｘ．ｃｏｍ"
AD_3 = "请收藏ＷＷＷ．ＳＨＵＺＨＡＮ．ＣＯＭ"  # caught only by the full-width URL fold
DECOR_1 = "☆☆☆☆☆"
DECOR_2 = "═══ ═══"
MODERN = "他掏出手机看了一眼，便又收起。"
HAND_MADE = [  # (raw line, what it becomes: None if dropped)
    ("　　第一回　寒江夜渡  ", "第一回　寒江夜渡"),
    ("", None),
    (AD_1, None),
    ("　　腊月将尽，寒江之上朔风如刀。", "腊月将尽，寒江之上朔风如刀。"),
    (DECOR_1, None),
    ("  \t ", None),
    (MODERN, MODERN),
    ("「……」", "「……」"),
    (AD_2, None),
    ("船头坐着一个少年，\t\t怀中抱剑。", "船头坐着一个少年， 怀中抱剑。"),
    (DECOR_2, None),
    ("老者笑道：「少侠何必如此？」\u00a0", "老者笑道：「少侠何必如此？」"),
    ("\u200b丙丁。\ufeff", "丙丁。"),
    (AD_3, None),
    ("", None),
]


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r"])
def test_cleaning_counts_are_exact(newline):
    text = newline.join(raw for raw, _ in HAND_MADE)
    cleaned, removed = clean_text(text)
    assert removed["blank"] == {"lines": 3, "chars": 4}
    assert removed["boilerplate"] == {"lines": 3, "chars": len(AD_1) + len(AD_2) + len(AD_3)}
    assert removed["decoration"] == {"lines": 2, "chars": len(DECOR_1) + len(DECOR_2)}
    assert removed["modern_vocabulary"] == {"lines": 0, "chars": 0}
    assert removed["whitespace"]["lines"] == 5  # heading, 腊月, 船头 (tabs), 老者 (NBSP), 丙丁 (zero-width)
    expected = [out for _, out in HAND_MADE if out is not None]
    assert cleaned.split("\n") == expected  # nothing else lost, order kept
    assert "\r" not in cleaned
    # Every input character is either in the output or counted under some rule.
    assert len(text) == len(cleaned) + sum(counts["chars"] for counts in removed.values())


def test_modern_rule_counts_when_enabled():
    text = "\r\n".join(raw for raw, _ in HAND_MADE)
    cleaned, removed = clean_text(text, modern_words=("手机",), drop_modern=True)
    assert removed["modern_vocabulary"] == {"lines": 1, "chars": len(MODERN)}
    assert MODERN not in cleaned
    assert len(text) == len(cleaned) + sum(counts["chars"] for counts in removed.values())


def test_no_prose_paragraph_is_lost(tmp_path):
    """Realistic prose (numbers, dashes, quotes, 第…撥 lines) goes through every rule untouched."""
    prose = [PROSE_SIMP, PROSE_TRAD, "第一拨船上，穆弘、李俊管领。", "——", "「……」", "诗曰：",
             "清晨早起一炉香，谢天谢地谢三光。", "这一日乃是三月初三，共有一百二十名兵丁。",
             "他说：“Fine.” 便走了。", "〔注〕此处原缺一字□。"]
    noise = ["☆★☆★☆", "", "本書來自 http://example.org/book.txt", "手機閱讀：m.example.la", "", "＊＊＊"]
    lines = [line for pair in zip(prose, noise + [""] * (len(prose) - len(noise)), strict=True) for line in pair]
    path = _write(tmp_path / "mixed.txt", "\r\n".join(lines).encode("gb18030"))
    docs, report = read_corpus(path)
    out = set("\n".join(d.text for d in docs).split("\n"))
    assert out == set(prose) - {"——"}  # a bare dash line is decoration
    removed = report.files[0].removed
    assert removed["decoration"]["lines"] == 3 and removed["boilerplate"]["lines"] == 2


# ------------------------------------------------------------------------------------------ chapters

@pytest.mark.parametrize("line", [
    "第一回　寒江夜渡", "第12回 血战长街", "第三章", "第十一卷", "第一百二十回　安定军山同归大道",
    "第３３９回　王媚娘喊告刘德太", "第五十六 回吴用使时迁盗甲 汤隆赚徐宁上山", "第三十回一个英雄中计遭凶险",
    "第二话：夜雨", "楔子", "缘起首回　开宗明义", "第一百十八回合欢楼叔嫂被杀",
])
def test_heading_lines(line):
    assert is_heading(line)


@pytest.mark.parametrize("line", [
    "第二节，短了一个人，必要查问。", "第一拨船上，穆弘、李俊管领。", "第三回合，二人又斗在一处。",
    "第一回他便拔剑而起，说道：「来者何人？」", "他说第一回见面便知。", "第" + "一" * 30 + "回",
])
def test_body_lines_are_not_headings(line):
    assert not is_heading(line)


def test_chapters_split_with_front_matter():
    text = "寒江剑\n作者：某某\n第一回　夜渡\n甲段。\n乙段。\n第二回　雪夜\n丙段。"
    docs = split_into_documents(text, "books/hanjiang.txt")
    assert [(d.index, d.title) for d in docs] == [(0, "hanjiang"), (1, "第一回　夜渡"), (2, "第二回　雪夜")]
    assert docs[1].text == "第一回　夜渡\n甲段。\n乙段。"
    assert all(d.source == "books/hanjiang.txt" for d in docs)
    assert "\n".join(d.text for d in docs) == text


def test_table_of_contents_joins_the_front_matter():
    toc = ["目录", "第一回　夜渡", "第二回　雪夜", "第三回　归隐"]
    body = ["第一回　夜渡", "甲段。", "第二回　雪夜", "乙段。", "丙段。", "第三回　归隐", "丁段。"]
    text = "\n".join(["寒江剑", *toc, *body])
    docs = split_into_documents(text, "hanjiang.txt")
    assert [d.title for d in docs] == ["hanjiang", "第一回　夜渡", "第二回　雪夜", "第三回　归隐"]
    assert docs[0].text == "\n".join(["寒江剑", *toc])
    assert all(len(d.text.split("\n")) >= 2 for d in docs)  # no heading-only document
    assert "\n".join(d.text for d in docs) == text


def test_table_of_contents_without_title_is_document_zero():
    text = "第一回　夜渡\n第二回　雪夜\n第一回　夜渡\n甲段。\n第二回　雪夜\n乙段。"
    docs = split_into_documents(text, "x.txt")
    assert [d.text for d in docs] == ["第一回　夜渡\n第二回　雪夜", "第一回　夜渡\n甲段。", "第二回　雪夜\n乙段。"]
    assert docs[0].title == "x"


def test_heading_without_body_merges_forward_or_back():
    text = "第一卷　风起\n第一回　夜渡\n甲段。\n第二卷　云涌\n第二回　雪夜\n乙段。\n第三回　（未完）"
    docs = split_into_documents(text, "x.txt")
    assert [d.title for d in docs] == ["第一回　夜渡", "第二回　雪夜"]
    assert docs[0].text == "第一卷　风起\n第一回　夜渡\n甲段。"
    assert docs[1].text == "第二卷　云涌\n第二回　雪夜\n乙段。\n第三回　（未完）"
    assert "\n".join(d.text for d in docs) == text


def test_file_without_headings_is_one_document(tmp_path):
    path = _write(tmp_path / "plain.txt", f"{PROSE_SIMP}\n\n{PROSE_SIMP}\n".encode())
    docs, report = read_corpus(path)
    assert [(d.index, d.title) for d in docs] == [(0, "plain")]
    assert docs[0].text == f"{PROSE_SIMP}\n{PROSE_SIMP}" and report.files[0].documents == 1
    assert split_into_documents("", "empty.txt") == []


def test_documents_of_a_file_keep_all_cleaned_text(tmp_path):
    lines = ["序", PROSE_SIMP, "目录", "第一回　甲", "第二回　乙"]
    lines += ["第一回　甲", PROSE_SIMP, "☆☆☆", PROSE_TRAD, "第二回　乙", "", PROSE_SIMP[::-1], "全书完"]
    path = _write(tmp_path / "book.txt", "\n".join(lines).encode())
    docs, report = read_corpus(path)
    cleaned, _ = clean_text("\n".join(lines))
    assert "\n".join(d.text for d in docs) == cleaned
    assert report.files[0].chars_out == len(cleaned) and report.files[0].documents == len(docs) == 3
    assert [d.index for d in docs] == [0, 1, 2]


# ------------------------------------------------------------------------------------------ split

def _docs(files: int = 3, per_file: int = 40) -> list[Document]:
    return [Document(f"/data/book{f}.txt", i, f"第{i}回", f"text {f}/{i}")
            for f in range(files) for i in range(per_file)]


def _ids(docs: list[Document]) -> set[tuple[str, int]]:
    return {(d.source, d.index) for d in docs}


def test_split_partitions_by_document_and_is_deterministic():
    docs = _docs()
    train, val = split_train_val(docs, 0.1, seed=3)
    assert not _ids(train) & _ids(val)
    assert _ids(train) | _ids(val) == _ids(docs)
    assert 0 < len(val) < 0.3 * len(docs)
    assert split_train_val(docs, 0.1, seed=3) == (train, val)
    assert all(part == sorted(part, key=lambda d: (d.source, d.index)) for part in (train, val))
    shuffled = list(docs)
    random.Random(1).shuffle(shuffled)
    assert split_train_val(shuffled, 0.1, seed=3) == (train, val)
    assert _ids(split_train_val(docs, 0.1, seed=4)[1]) != _ids(val)  # the seed matters


def test_split_is_stable_when_documents_are_added_or_moved():
    docs = _docs(files=2)
    _, val = split_train_val(docs, 0.2)
    _, val_more = split_train_val(docs + _docs(files=4)[80:], 0.2)
    assert _ids(val) <= _ids(val_more)
    moved = [Document(d.source.replace("/data/", "/elsewhere/"), d.index, d.title, d.text) for d in docs]
    assert {(Path(s).name, i) for s, i in _ids(split_train_val(moved, 0.2)[1])} == \
        {(Path(s).name, i) for s, i in _ids(val)}


@pytest.mark.parametrize("fraction", [1e-9, 0.999999999])
def test_split_keeps_one_document_on_each_side(fraction):
    train, val = split_train_val(_docs(files=1, per_file=2), fraction)
    assert len(train) == 1 and len(val) == 1


def test_split_rejects_bad_input():
    with pytest.raises(UserInputError, match="no documents"):
        split_train_val([], 0.1)
    with pytest.raises(UserInputError, match="val_fraction"):
        split_train_val(_docs(), 0.0)


# ------------------------------------------------------------------------------------------ sources

def test_resolve_sources_folders_globs_and_lists(tmp_path):
    b = _write(tmp_path / "lib" / "b.txt", b"x")
    a = _write(tmp_path / "lib" / "sub" / "a.txt", b"x")
    _write(tmp_path / "lib" / "notes.md", b"x")
    c = _write(tmp_path / "other" / "c.txt", b"x")
    assert resolve_sources(str(tmp_path / "lib")) == [b, a]  # sorted by path: lib/b.txt < lib/sub/a.txt
    assert resolve_sources(str(tmp_path / "lib" / "**" / "*.txt")) == [b, a]
    assert resolve_sources([str(c), str(tmp_path / "lib"), str(c)]) == [c, b, a]
    assert resolve_sources(tmp_path / "other" / "c.txt") == [c]


def test_resolve_sources_errors_name_the_pattern(tmp_path):
    missing = str(tmp_path / "nowhere.txt")
    with pytest.raises(UserInputError, match="nowhere.txt"):
        resolve_sources(missing)
    pattern = str(tmp_path / "*.gbk")
    with pytest.raises(UserInputError, match=r"\*\.gbk"):
        resolve_sources([pattern])
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserInputError, match="empty_dir"):
        resolve_sources(str(tmp_path / "empty_dir"))


def test_empty_corpus_names_the_sources(tmp_path):
    _write(tmp_path / "ads.txt", f"{AD_1}\n\n{DECOR_1}\n".encode())
    with pytest.raises(UserInputError, match="ads.txt"):
        read_corpus(str(tmp_path / "ads.txt"))


def test_report_table_and_dict(tmp_path):
    _write(tmp_path / "one.txt", f"{AD_1}\n第一回　甲\n{PROSE_SIMP}\n".encode("gb18030"))
    _write(tmp_path / "two.txt", f"{PROSE_TRAD}\n☆☆☆\n".encode("utf-16"))
    _, report = read_corpus(str(tmp_path))
    assert isinstance(report, IngestReport) and [Path(f.path).name for f in report.files] == ["one.txt", "two.txt"]
    table = report.format()
    for needle in ("one.txt", "two.txt", "gb18030", "utf-16-le", "boilerplate", "decoration", "total", "1/"):
        assert needle in table
    as_dict = json.loads(json.dumps(report.to_dict(), ensure_ascii=False))
    assert as_dict["totals"]["removed"]["boilerplate"] == {"lines": 1, "chars": len(AD_1)}
    assert as_dict["totals"]["documents"] == 2 and as_dict["files"][1]["encoding"] == "utf-16-le"


# ------------------------------------------------------------------------------------------ real data

def test_real_novel_sanxia_wuyi():
    if not SANXIA.exists():
        pytest.skip(f"../shared not present: {SANXIA} is needed for this test")
    docs, report = read_corpus(str(SANXIA), to_simplified=True)
    file = report.files[0]
    assert file.encoding == "utf-8" and file.converted_t2s
    assert len(docs) > 100 and sum(d.title.startswith("第") for d in docs) == 120  # 120 回
    content_rules = ("boilerplate", "decoration", "modern_vocabulary")
    assert sum(file.removed[rule]["lines"] for rule in content_rules) <= 2
    assert file.removed["blank"]["lines"] <= 5 and file.chars_out >= 0.995 * file.chars_in
    text = "".join(d.text for d in docs)
    assert text.count("剑") > 50 and "劍" not in text and "說" not in text
