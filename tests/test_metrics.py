"""Metrics: each one against a naive Python reference, the on-disk n-gram cache, and DDP (2 gloo ranks)."""

from __future__ import annotations

import math
import socket
from collections import Counter
from pathlib import Path

import jieba
import jieba.posseg as posseg
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import SHARED

from wuxia_lightning.data.function_words import FUNCTION_POS_PREFIXES, is_function_word
from wuxia_lightning.metrics import (
    FEATURE_NAMES,
    KINDS,
    CorpusNgramIndex,
    DistinctN,
    FunctionWordDistribution,
    NgramOverlap,
    StopRate,
    TokenPerplexity,
    classify_generation,
    corpus_function_word_profile,
    function_word_counts,
    js_divergence,
    text_continues_dialogue,
    text_ngram_hashes,
)
from wuxia_lightning.metrics import function_words as fw_module
from wuxia_lightning.metrics import ngram as ngram_module

STYLE_DIR = SHARED / "data" / "style"

# Original wuxia-style prose written for these tests (~3 KB), one paragraph per line.
STORY = """
暮色四合，山道上只剩一匹瘦马缓缓而行。马上那人头戴斗笠，腰悬长剑，剑鞘早已磨得发白。行到岔路口，他忽然勒住缰绳，侧耳倾听，但闻松涛阵阵，并无半点人声。
他冷笑一声，道：“既已到了，何不现身？”话音未落，林中便跃出三条黑影，各持兵刃，将他团团围住。为首一人身材魁梧，手中一柄鬼头大刀映着残阳，寒光闪闪。
那大汉喝道：“姓萧的，你盗走镖局的红货，今日还想走么？”斗笠客淡淡地道：“红货之事，与我何干？尔等受人蒙蔽，尚不自知，实在可笑。”
三人对望一眼，竟不答话，挥刀便砍。斗笠客身形一晃，已然绕到那大汉背后，剑未出鞘，只用剑柄在他肩井穴上轻轻一点，那大汉登时半身酸麻，大刀当啷落地。
其余二人大惊，一左一右抢上。斗笠客却不慌不忙，足尖一挑，地上那柄鬼头刀飞将起来，横在二人面前。二人收势不及，兵刃撞在刀背上，火星四溅，虎口俱被震裂。
斗笠客道：“三位若肯听我一言，便回去禀告你家总镖头：劫镖的乃是黑风寨的人马，与萧某无涉。若是不信，三日之后，萧某自当登门分说。”说罢拨转马头，扬长而去。
那大汉望着他的背影，半晌说不出话来。良久方道：“此人武功之高，生平仅见。倘若红货果真是他劫的，咱们便是再来十个，也只是送死而已。”
却说那斗笠客行了十余里，天色已黑，远远望见一座破庙，庙门半掩，里面隐隐透出火光。他下得马来，将马拴在庙前老槐树上，推门而入。
庙中火堆旁坐着一个老和尚，正自拨弄柴火，见他进来，也不起身，只合十道：“施主远来辛苦，何不坐下烤烤火？”斗笠客还了一礼，在火堆对面坐下，摘下斗笠，露出一张清瘦的脸来。
老和尚打量他片刻，叹道：“二十年不见，萧施主风采依旧。只是眉间杀气太重，终非佛门所喜。”萧姓客人苦笑道：“大师慧眼。江湖风波恶，不杀人，便要被人杀，弟子亦是身不由己。”
老和尚摇头道：“身不由己四字，最是害人。世人皆道身不由己，却不知一念之间，便是天堂地狱。施主此番下山，想必是为了那封书信罢？”
萧姓客人脸色微变，右手不自觉地按上剑柄，随即又松开了，低声道：“大师既已知晓，弟子也不必隐瞒。那封书信关系到数百条性命，弟子纵然粉身碎骨，也要将它取回。”
火光摇曳，映得二人脸上忽明忽暗。庙外风声渐紧，似有无数人在黑暗中低语。老和尚沉吟良久，方从怀中取出一个油布小包，放在火堆旁边，道：“你要的东西，便在这里。”
萧姓客人正要伸手去取，忽听得屋顶瓦片轻轻一响。他反手拔剑，剑光如匹练般向上卷去，只听得一声闷哼，一个黑衣人从屋顶跌落下来，胸口已然中了一剑，挣扎两下，便不动了。
老和尚低宣一声佛号，道：“阿弥陀佛，冤冤相报，何时方了。”萧姓客人还剑入鞘，俯身揭开那黑衣人的面巾，不由得倒抽一口凉气：此人竟是镖局的二当家。
""".strip().split("\n")

CORPUS = STORY[:10]
GENERATIONS = [
    STORY[10],
    STORY[11] + "\n" + STORY[3],  # a newline inside one text
    "剑光一闪，那人已然倒地。血溅三尺，惨叫之声响彻云霄。竟是江湖第一高手！",
    "剑光一闪，照亮了整个房间。他拿起手机查看消息，然后打开电脑开始工作。",
    "老和尚叹道：“施主何不坐下烤烤火？”萧姓客人却不答话，只是冷笑。",
    "",  # empty generations happen (immediate <|im_end|>) and must count nothing
]


# ---------------------------------------------------------------- naive references


def ref_char_ngrams(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(len(text) - n + 1)]


def ref_word_ngrams(text: str, n: int) -> list[tuple[str, ...]]:
    words = jieba.lcut(text, HMM=False)
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def ref_ngrams(text: str, kind: str) -> list:
    n = int(kind[-1])
    return ref_char_ngrams(text, n) if kind.startswith("char") else ref_word_ngrams(text, n)


def ref_overlap_counts(corpus: list[str], generations: list[str]) -> dict[str, tuple[int, int]]:
    """(matched, total) per kind with Python sets of n-gram strings / word tuples."""
    result = {}
    for kind in KINDS:
        seen = {gram for text in corpus for gram in ref_ngrams(text, kind)}
        grams = [gram for text in generations for gram in ref_ngrams(text, kind)]
        result[kind] = (sum(gram in seen for gram in grams), len(grams))
    return result


def ref_function_word_counts(texts: list[str]) -> tuple[dict[str, int], int]:
    """Feature-name → count with a dict, and non-whitespace characters."""
    counts: Counter[str] = Counter()
    for text in texts:
        for pair in posseg.cut(text, HMM=False):
            if not is_function_word(pair.word, pair.flag):
                continue
            if pair.word in FEATURE_NAMES:
                counts[pair.word] += 1
            else:
                prefix = next(p for p in FUNCTION_POS_PREFIXES if pair.flag.startswith(p))
                counts[f"<pos:{prefix}>"] += 1
    characters = sum(1 for text in texts for ch in text if not ch.isspace())
    return dict(counts), characters


def ref_js(p_counts: list[float], q_counts: list[float]) -> float:
    p = [x / sum(p_counts) for x in p_counts]
    q = [x / sum(q_counts) for x in q_counts]
    total = 0.0
    for pi, qi in zip(p, q, strict=True):
        mi = (pi + qi) / 2
        if pi > 0:
            total += 0.5 * pi * math.log2(pi / mi)
        if qi > 0:
            total += 0.5 * qi * math.log2(qi / mi)
    return total


def ref_distinct(texts: list[str], n: int) -> float:
    grams = [gram for text in texts for gram in ref_char_ngrams(text, n)]
    return len(set(grams)) / len(grams)


# ---------------------------------------------------------------- perplexity


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_perplexity_accumulates_summed_nll_like_math_exp() -> None:
    metric = TokenPerplexity()
    assert math.isnan(metric.compute().item())  # no tokens yet: NaN, not a fake 1.0
    batches = [(torch.tensor([3.25, 1.5]), torch.tensor([2, 3])), (torch.tensor(7.0), torch.tensor(4)),
               (torch.tensor([[0.125]], dtype=torch.float64), torch.tensor([[1]]))]
    metric.reset()
    for nll, count in batches:
        metric.update(nll, count)
    expected = math.exp((3.25 + 1.5 + 7.0 + 0.125) / (2 + 3 + 4 + 1))
    value = metric.compute()
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_perplexity_keeps_float64_precision_over_many_updates() -> None:
    metric = TokenPerplexity()
    rng = np.random.default_rng(0)
    nlls = rng.uniform(0.5, 4.0, size=2000) * 512  # per-batch sums over 512 tokens
    for nll in nlls:
        metric.update(torch.tensor(nll, dtype=torch.float64), torch.tensor(512))
    expected = math.exp(math.fsum(nlls.tolist()) / (512 * len(nlls)))
    assert metric.compute().item() == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------- n-gram index and overlap


def test_ngram_overlap_matches_string_sets_over_several_updates(tmp_path: Path) -> None:
    index = CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path)
    metric = NgramOverlap(index)
    metric.update(GENERATIONS[:3])
    metric.update(GENERATIONS[3])  # a bare string is one text
    metric.update(GENERATIONS[4:])
    expected = ref_overlap_counts(CORPUS, GENERATIONS)
    result = metric.compute()
    assert set(result) == set(KINDS)
    for i, kind in enumerate(KINDS):
        matched, total = expected[kind]
        assert (metric.matched[i].item(), metric.total[i].item()) == (matched, total), kind
        assert result[kind].item() == pytest.approx(matched / total, abs=1e-15)
    # The copied paragraph scores 1.0 everywhere, the modern sentence much lower.
    copied, modern = NgramOverlap(index), NgramOverlap(index)
    copied.update([CORPUS[2]])
    modern.update([GENERATIONS[3]])
    assert all(v.item() == 1.0 for v in copied.compute().values())
    assert modern.compute()["char4"].item() < 0.2


def test_ngram_overlap_is_nan_before_any_text(tmp_path: Path) -> None:
    metric = NgramOverlap(CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path))
    metric.update([""])
    assert all(math.isnan(v.item()) for v in metric.compute().values())


def test_hashed_overlap_equals_exact_string_overlap_on_prose(tmp_path: Path) -> None:
    # Sentences recombined across paragraphs: many n-grams seen, many unseen at the seams.
    sentences = [s + "。" for line in STORY for s in line.split("。") if s]
    generations = ["".join(sentences[i::7]) for i in range(7)] + STORY[10:]
    index = CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path)
    metric = NgramOverlap(index)
    metric.update(generations)
    expected = ref_overlap_counts(CORPUS, generations)
    got = {kind: (metric.matched[i].item(), metric.total[i].item()) for i, kind in enumerate(KINDS)}
    assert got == expected
    assert all(0 < m < t for m, t in got.values())  # the example really exercises both outcomes
    # Distinct hashes == distinct strings: no collision among the corpus's own n-grams either.
    for kind in KINDS:
        assert index.sizes()[kind] == len({g for text in CORPUS for g in ref_ngrams(text, kind)}), kind


def test_index_round_trips_through_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path)
    assert first.path is not None and first.path.exists() and first.path.parent == tmp_path

    def no_rebuild(text: str) -> dict[str, np.ndarray]:
        raise AssertionError("the cached index should have been loaded, not rebuilt")

    with monkeypatch.context() as patch:
        patch.setattr(ngram_module, "text_ngram_hashes", no_rebuild)
        second = CorpusNgramIndex.build(list(CORPUS), cache_dir=str(tmp_path))
    assert second.path == first.path and second.key == first.key
    for kind in KINDS:
        assert np.array_equal(first.tables[kind], second.tables[kind])
    probe = text_ngram_hashes(GENERATIONS[0])
    for kind in KINDS:
        assert np.array_equal(first.contains(kind, probe[kind]), second.contains(kind, probe[kind]))

    other = CorpusNgramIndex.build(CORPUS[:-1], cache_dir=tmp_path)
    assert other.key != first.key and other.path != first.path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, other.path.name])
    # Text boundaries are part of the key: the same characters split differently are another corpus.
    joined = CorpusNgramIndex.build(["".join(CORPUS[:2])] + CORPUS[2:], cache_dir=tmp_path)
    assert joined.key != first.key


def test_unreadable_cache_file_is_rebuilt(tmp_path: Path) -> None:
    good = CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path)
    good.path.write_bytes(b"truncated")
    rebuilt = CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path)
    assert all(np.array_equal(good.tables[k], rebuilt.tables[k]) for k in KINDS)
    assert np.load(rebuilt.path)["char2"].size == good.sizes()["char2"]


def test_contains_on_empty_index_and_clone_shares_index(tmp_path: Path) -> None:
    empty = CorpusNgramIndex.build([""], cache_dir=tmp_path)
    assert empty.sizes() == dict.fromkeys(KINDS, 0)
    assert not empty.contains("char2", text_ngram_hashes("剑光一闪")["char2"]).any()
    metric = NgramOverlap(CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path))
    assert metric.clone().index is metric.index  # clone() must not copy the (large) immutable index


# ---------------------------------------------------------------- function words


def test_function_word_counts_on_hand_checked_text() -> None:
    counts = dict(zip(FEATURE_NAMES, function_word_counts("竟。竟。之，也！我的剑和你的刀在桌上。"), strict=True))
    nonzero = {name: int(c) for name, c in counts.items() if c}
    assert nonzero == {"竟": 2, "之": 1, "也": 1, "<pos:u>": 2, "<pos:c>": 1, "<pos:p>": 1}
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES))


def test_function_word_distribution_matches_dict_counts_and_log2_js() -> None:
    reference = torch.zeros(len(FEATURE_NAMES), dtype=torch.int64)
    reference[FEATURE_NAMES.index("之")] = 30
    reference[FEATURE_NAMES.index("便")] = 10
    reference[FEATURE_NAMES.index("<pos:u>")] = 60  # most features stay 0 on both sides
    metric = FunctionWordDistribution(reference)
    texts = [*GENERATIONS, "  他 竟然\t来了。\u3000"]  # whitespace of all kinds is not counted
    metric.update(texts[:2])
    metric.update(texts[2])
    metric.update(texts[3:])
    counts, characters = ref_function_word_counts(texts)
    vector = [counts.get(name, 0) for name in FEATURE_NAMES]
    result = metric.compute()
    assert metric.characters.item() == characters
    assert result["rates"].tolist() == pytest.approx([c * 1000 / characters for c in vector], abs=1e-12)
    assert result["js_divergence"].item() == pytest.approx(ref_js(vector, reference.tolist()), abs=1e-12)
    assert 0 < result["js_divergence"].item() < 1


@pytest.mark.filterwarnings("ignore:The ``compute`` method")
def test_js_divergence_limits_and_zeros() -> None:
    a = torch.tensor([3, 0, 1, 0])
    assert js_divergence(a, a * 5).item() == pytest.approx(0.0, abs=1e-15)
    assert js_divergence(torch.tensor([1, 0]), torch.tensor([0, 2])).item() == pytest.approx(1.0, abs=1e-15)
    p, q = [5, 0, 2, 1], [1, 3, 0, 4]
    assert js_divergence(torch.tensor(p), torch.tensor(q)).item() == pytest.approx(ref_js(p, q), abs=1e-12)
    assert math.isnan(js_divergence(torch.zeros(4), torch.tensor(q)).item())
    assert "js_divergence" not in FunctionWordDistribution().compute()
    with pytest.raises(ValueError, match="FEATURE_NAMES"):
        FunctionWordDistribution(torch.ones(3))


def test_corpus_profile_sums_counts_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = corpus_function_word_profile(CORPUS, cache_dir=tmp_path)
    counts, _ = ref_function_word_counts(CORPUS)
    assert profile.tolist() == [counts.get(name, 0) for name in FEATURE_NAMES]
    monkeypatch.setattr(fw_module, "function_word_counts", lambda text: pytest.fail("not cached"))
    assert torch.equal(corpus_function_word_profile(CORPUS, cache_dir=tmp_path), profile)


# ---------------------------------------------------------------- distinct-n


def test_distinct_n_matches_string_sets_across_updates() -> None:
    metric = DistinctN()
    texts = ["哈哈哈哈哈", "剑光一闪，剑光一闪。", STORY[0], STORY[0][:20], "", "好"]
    metric.update(texts[:2])
    metric.update(texts[2])
    metric.update(texts[3:])
    result = metric.compute()
    assert list(result) == ["distinct_1", "distinct_2", "distinct_3", "distinct_4"]
    for n in (1, 2, 3, 4):
        assert result[f"distinct_{n}"].item() == pytest.approx(ref_distinct(texts, n), abs=1e-15), n
    # Repetition across updates counts once: a second identical batch halves every ratio.
    again = DistinctN(n_values=(2,))
    again.update(texts)
    again.update(texts)
    assert again.compute()["distinct_2"].item() == pytest.approx(ref_distinct(texts, 2) / 2, abs=1e-15)


def test_distinct_n_hashes_do_not_collide_on_prose() -> None:
    metric = DistinctN(n_values=(1, 2, 3, 4, 8))
    metric.update(STORY)
    for n in (1, 2, 3, 4, 8):
        assert metric.compute()[f"distinct_{n}"].item() == pytest.approx(ref_distinct(STORY, n), abs=1e-15)


# ---------------------------------------------------------------- stopping

IM_END, EOS, IM_START, USER, NL = 151645, 151643, 151644, 872, 198


@pytest.mark.parametrize(
    ("ids", "max_new", "expected"),
    [
        ([11, 12, IM_END], 8, (True, False)),
        ([11, 12, IM_END, EOS, EOS], 8, (True, False)),  # padding with eos after the end is fine
        ([11, 12, 13, 14], 4, (False, False)),  # hit max_new_tokens
        ([11, 12, 13, 14, IM_END], 4, (False, False)),  # the stop came after the budget
        ([11, IM_END, NL, IM_START, USER, NL, 15], 16, (True, True)),  # wrote the user's next turn
        ([11, 12, IM_START, USER, NL], 16, (False, True)),  # new turn without ever ending
        ([11, IM_END, USER, NL, 15], 16, (True, True)),  # kept writing after its end
    ],
)
def test_classify_generation(ids: list[int], max_new: int, expected: tuple[bool, bool]) -> None:
    assert classify_generation(ids, {IM_END, EOS}, IM_START, max_new) == expected


def test_classify_generation_without_im_start_id() -> None:
    assert classify_generation([11, IM_START], {IM_END}, None, 8) == (False, False)


def test_text_continues_dialogue() -> None:
    assert text_continues_dialogue("好的。<|im_end|>\n<|im_start|>user\n再来")
    assert text_continues_dialogue("好的。\nuser\n再讲一个")
    assert not text_continues_dialogue("剑光一闪，那人已然倒地。\n此乃user之剑。")


def test_stop_rate_counts_over_updates() -> None:
    metric = StopRate()
    metric.update(torch.tensor([True, False, True]), torch.tensor([False, False, True]))
    metric.update(torch.tensor([True]), torch.tensor([False]))
    metric.update([False, False], [True, False])
    result = metric.compute()
    assert result["stop_rate"].item() == pytest.approx(3 / 6, abs=1e-15)
    assert result["continues_dialogue_rate"].item() == pytest.approx(2 / 6, abs=1e-15)
    with pytest.raises(ValueError, match="differ in size"):
        metric.update(torch.tensor([True]), torch.tensor([True, False]))


# ---------------------------------------------------------------- DDP

PPL_BATCHES = [(float(x), int(n)) for x, n in zip(np.linspace(3.0, 40.0, 7), range(5, 12), strict=True)]
STOP_FLAGS = [(True, False), (False, True), (True, True), (True, False), (False, False)]


def _make_metrics(index: CorpusNgramIndex, reference: torch.Tensor) -> dict[str, torch.nn.Module]:
    return {"ppl": TokenPerplexity(), "overlap": NgramOverlap(index), "fw": FunctionWordDistribution(reference),
            "distinct": DistinctN(), "distinct_rank0_only": DistinctN(n_values=(2, 3)), "stop": StopRate()}


def _feed(metrics: dict, rank: int, world_size: int) -> None:
    """Rank ``rank``'s share of the data, one update per item (several updates per rank)."""
    for nll, count in PPL_BATCHES[rank::world_size]:
        metrics["ppl"].update(torch.tensor(nll, dtype=torch.float64), torch.tensor(count))
    for text in GENERATIONS[rank::world_size]:
        for name in ("overlap", "fw", "distinct"):
            metrics[name].update([text])
    if rank == 0:  # the other rank never updates this one: an empty list state must still sync
        metrics["distinct_rank0_only"].update(GENERATIONS)
    for stopped, continued in STOP_FLAGS[rank::world_size]:
        metrics["stop"].update(torch.tensor([stopped]), torch.tensor([continued]))


def _results(metrics: dict) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for name, metric in metrics.items():
        value = metric.compute()
        out[name] = value if isinstance(value, dict) else {"value": value}
    # Summed states after the DDP reduction: counts must match exactly.
    for name, states in (("overlap", ("matched", "total")), ("fw", ("counts", "characters")), ("stop", ("replies",))):
        metric = metrics[name]
        with metric.sync_context():  # a no-op without a process group
            out[name].update({f"state:{s}": getattr(metric, s).clone() for s in states})
    return out


def _ddp_worker(rank: int, world_size: int, port: int, index: CorpusNgramIndex, reference: torch.Tensor,
                out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        metrics = _make_metrics(index, reference)
        _feed(metrics, rank, world_size)
        torch.save(_results(metrics), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_metrics_under_ddp_equal_single_process(tmp_path: Path) -> None:
    index = CorpusNgramIndex.build(CORPUS, cache_dir=tmp_path / "cache")
    reference = corpus_function_word_profile(CORPUS, cache_dir=tmp_path / "cache")
    single = _make_metrics(index, reference)
    _feed(single, rank=0, world_size=1)
    expected = _results(single)

    mp.spawn(_ddp_worker, args=(2, _free_port(), index, reference, str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got.keys() == expected.keys()
        for name, values in expected.items():
            assert got[name].keys() == values.keys(), name
            for key, value in values.items():
                if key.startswith("state:"):
                    assert torch.equal(got[name][key], value), (rank, name, key)
                else:
                    assert torch.allclose(got[name][key], value, rtol=0, atol=1e-9), (rank, name, key)
    # Sanity: one rank's share alone gives other figures, so a missing reduction would be caught.
    half = _make_metrics(index, reference)
    _feed(half, rank=1, world_size=2)
    assert half["overlap"].compute()["char2"].item() != expected["overlap"]["char2"].item()


# ---------------------------------------------------------------- real data (optional)


@pytest.mark.skipif(not (STYLE_DIR / "xiao_wuyi.txt").exists(), reason="shared style corpus not present")
def test_index_on_one_real_novel(tmp_path: Path) -> None:
    novel = (STYLE_DIR / "xiao_wuyi.txt").read_text(encoding="utf-8")
    lines = novel.split("\n")
    index = CorpusNgramIndex.build(lines[: len(lines) // 2], cache_dir=tmp_path)
    assert index.sizes()["char4"] > 100_000
    copied = NgramOverlap(index)
    copied.update(lines[100:110])
    assert all(v.item() == 1.0 for v in copied.compute().values())
    # Hashes vs exact string sets on unseen real text from the second half: identical counts.
    outside = lines[-200:-150]
    metric = NgramOverlap(index)
    metric.update(outside)
    for i, kind in enumerate(KINDS[:3]):
        n = int(kind[-1])
        seen = {g for line in lines[: len(lines) // 2] for g in ref_char_ngrams(line, n)}
        grams = [g for line in outside for g in ref_char_ngrams(line, n)]
        assert metric.matched[i].item() == sum(g in seen for g in grams), kind
        assert metric.total[i].item() == len(grams)


def test_rank_share_gives_every_rank_something_to_generate_and_counts_each_prompt_once() -> None:
    from wuxia_lightning.generation import rank_share

    for prompts in (["a"], ["a", "b", "c"], list("abcdefg")):
        for world in (1, 2, 3, 4):
            shares = [rank_share(prompts, rank, world) for rank in range(world)]
            assert all(items for items, _ in shares)  # nobody idles while others gather shards
            assert sorted(p for items, counted in shares if counted for p in items) == sorted(prompts)
    assert rank_share([], 1, 2) == ([], True)
