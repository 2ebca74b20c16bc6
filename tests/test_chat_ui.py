"""The chat page (``wuxia-chat``): driven in a real browser (Playwright on the system Chromium) against a
stacked folder on the tiny model, plus its bad input and the pieces that need no browser."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.modeling.stacking import INSTRUCT, STYLE, load_stacked
from wuxia_lightning.serve.app import main, serve
from wuxia_lightning.serve.columns import column_adapters
from wuxia_lightning.serve.session import default_session_path, save_session

CHROMIUM = Path("/usr/bin/chromium")
# Keep Chromium off the network (no updates, sync or phoning home); it runs headless as root because
# Playwright adds --no-sandbox itself.
CHROMIUM_ARGS = ["--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEYS = ("base", "style", "stacked")
PROMPT = "剑光一闪"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def as_browser_shows(text: str) -> str:
    """A textarea's value has its line ends normalised to LF (HTML spec); the tiny model writes CRLF too."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


# ------------------------------------------------------------------------------------------ in a browser

@pytest.fixture
def browser_page():
    """A headless page of the system Chromium; skipped with the reason when it or Playwright is missing."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install -e .[chat])")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[chat])")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not present: apt-get install -y chromium (never `playwright install`)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


def ask(page, number: int, style_scale: float, keys: tuple[str, ...] = KEYS) -> dict[str, str]:
    """Move the style slider, send the prompt, wait for the turn to end; the shown boxes' texts (a column
    switched off is not on the page at all)."""
    from playwright.sync_api import expect

    page.locator("#style_scale input[type=range]").fill(str(style_scale))
    page.locator("#send").click()
    expect(page.locator("#run_status")).to_contain_text(f"#{number} done", timeout=30_000)
    return {key: page.locator(f"#reply_{key} textarea").input_value() for key in keys}


def test_page_streams_three_columns_scales_the_style_and_saves_what_it_showed(stacked_folder, browser_page,
                                                                              tmp_path):
    from playwright.sync_api import expect

    sessions = tmp_path / "sessions"
    port = free_port()
    app = serve(["--model", str(stacked_folder), "--port", str(port), "--sessions-dir", str(sessions),
                 "--max-new-tokens", "24"], block=False)
    page = browser_page
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        page.locator("#prompt textarea").fill(PROMPT)
        shown = {}
        for number, scale in enumerate((0, 1, 2), start=1):
            shown[scale] = ask(page, number, scale)
            page.screenshot(path=str(tmp_path / f"style_{scale}.png"), full_page=True)
        page.locator("#columns").get_by_label("base", exact=True).uncheck()  # switch the base column off
        expect(page.locator("#column_base")).to_be_hidden()
        only_two = ask(page, 4, 1, keys=("style", "stacked"))
        save_path = page.locator("#save_path textarea").input_value()
        page.locator("#save").click()
        expect(page.locator("#save_status")).to_contain_text("saved 4 prompt(s)")
        page.screenshot(path=str(tmp_path / "saved.png"), full_page=True)
        print(f"screenshots: {tmp_path}/style_{{0,1,2}}.png, saved.png")
    finally:
        app.close()

    for scale, replies in shown.items():
        assert all(replies[key].strip() for key in KEYS), (scale, replies)  # three replies appear
    assert shown[0]["stacked"] != shown[2]["stacked"]                      # the slider reaches the stacked model
    assert shown[0]["base"] == shown[1]["base"] == shown[2]["base"]         # the base has every adapter off
    assert shown[0]["style"] == shown[0]["base"] != shown[2]["style"]       # style × 0 is the bare base
    assert only_two == {"style": shown[1]["style"], "stacked": shown[1]["stacked"]}
    assert str(sessions) in save_path

    turns = [json.loads(line) for line in Path(save_path).read_text(encoding="utf-8").splitlines()]
    assert [t["settings"]["style_scale"] for t in turns] == [0, 1, 2, 1]
    assert all(t["prompt"] == PROMPT and t["settings"]["max_new_tokens"] == 24 for t in turns)
    for turn, replies in zip(turns, [shown[0], shown[1], shown[2], only_two], strict=True):
        saved = {k: as_browser_shows(r["text"]) for k, r in turn["replies"].items()}
        assert saved == {k: v for k, v in replies.items() if v}
    assert "base" not in turns[3]["replies"]
    assert not any(p.name != "stacked" and p.is_relative_to(stacked_folder) for p in sessions.rglob("*"))


def test_the_stacked_column_is_the_library_s_stacked_model(stacked_folder):
    """What the stacked column streams equals ``generate_replies`` on ``load_stacked`` (same seed): the
    column switching leaves the model exactly as trained."""
    from wuxia_lightning.generation import GenerationSettings, generate_replies
    from wuxia_lightning.modeling.stacking import read_manifest
    from wuxia_lightning.serve.columns import COLUMNS, ChatModel, conversation

    model, tokenizer = load_stacked(stacked_folder)
    chat = ChatModel(model, tokenizer, stacked_folder, read_manifest(stacked_folder))
    messages, settings = conversation("你是说书人。", PROMPT), GenerationSettings(max_new_tokens=16)
    *_, streamed = chat.stream_columns(COLUMNS, messages, settings, {STYLE: 1.0, INSTRUCT: 1.0}, seed=3)
    torch.manual_seed(3)
    expected = generate_replies(model, tokenizer, [messages], settings)[0]
    assert streamed["stacked"].text == expected.generation and expected.generation
    assert streamed["stacked"].new_tokens == expected.new_tokens
    assert streamed["stacked"].stopped == expected.stopped


# ------------------------------------------------------------------------------------------ no browser

def test_column_adapters_restore_the_model_even_when_generation_fails(stacked_folder):
    model, _ = load_stacked(stacked_folder)
    layer = next(m for m in model.modules() if hasattr(m, "lora_A") and STYLE in m.scaling)
    before = dict(layer.scaling)
    ids = torch.randint(10, 300, (1, 12))
    with torch.no_grad():
        trained = model(input_ids=ids).logits
        with pytest.raises(RuntimeError, match="boom"), column_adapters(model, (STYLE,), {STYLE: 2.0}):
            assert model.base_model.active_adapters == [STYLE] and layer.scaling[STYLE] == 2 * before[STYLE]
            raise RuntimeError("boom")
        with column_adapters(model, (), {STYLE: 2.0}):
            with model.disable_adapter():
                bare = model(input_ids=ids).logits
            assert torch.equal(model(input_ids=ids).logits, bare)  # the base column: every adapter off
        after = model(input_ids=ids).logits
    assert model.base_model.active_adapters == [STYLE, INSTRUCT] and layer.scaling == before
    assert not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(after, trained, rtol=0, atol=0)


def test_saving_a_session_never_replaces_a_file(tmp_path):
    turn = {"prompt": "p", "replies": {"stacked": {"text": "答"}}}
    first = default_session_path(tmp_path / "sessions")
    assert save_session(first, [turn]) == first.resolve()
    assert json.loads(first.read_text(encoding="utf-8")) == turn
    with pytest.raises(UserInputError, match="not overwriting") as refused:
        save_session(first, [turn, turn])
    assert str(first) in str(refused.value)
    assert first.read_text(encoding="utf-8").count("\n") == 1        # untouched
    assert default_session_path(tmp_path / "sessions") != first       # the next default is a new name
    with pytest.raises(UserInputError, match="nothing to save"):
        save_session(tmp_path / "empty.jsonl", [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sessions"]
    assert [p.name for p in (tmp_path / "sessions").iterdir()] == [first.name]  # no temporary file left


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("case", ["no manifest", "stage-1 folder"])
def test_a_folder_that_is_not_a_stage_2_output_is_one_line_exit_2(case, style_folder, tmp_path, capsys,
                                                                   monkeypatch):
    folder = tmp_path / "empty" if case == "no manifest" else style_folder
    folder.mkdir(exist_ok=True)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    before = files_under(folder)
    assert main(["--model", str(folder), "--port", str(free_port())]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(folder) in line
    assert ("wuxia_manifest.json" if case == "no manifest" else "not a stage-2") in line
    assert files_under(folder) == before and not any(workdir.iterdir())


def test_a_stacked_folder_whose_base_is_missing_is_one_line_exit_2(stacked_folder, tmp_path, capsys,
                                                                   monkeypatch):
    pytest.importorskip("gradio", reason="gradio is not installed: the page checks for it before loading")
    folder = tmp_path / "stacked"
    shutil.copytree(stacked_folder, folder)
    manifest = json.loads((folder / "wuxia_manifest.json").read_text(encoding="utf-8"))
    manifest["base_model"] = str(tmp_path / "moved-away-base")
    (folder / "wuxia_manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    before = files_under(folder)
    assert main(["--model", str(folder), "--port", str(free_port())]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(folder) in line and "moved-away-base" in line and "--base" in line
    assert files_under(folder) == before and not any(workdir.iterdir())
