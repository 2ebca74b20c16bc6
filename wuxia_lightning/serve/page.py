"""The Gradio page: a prompt box, the style / instruct scale sliders and sampling settings, the editable
system prompt, one reply box per column (each can be switched off) and a button that saves the session.

Gradio is imported here and only here (``pip install wuxia_lightning[chat]``): the rest of the package and
its tests never need it. Element ids (``#prompt``, ``#reply_stacked``…) are what the browser test drives.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.generation import GenerationSettings
from wuxia_lightning.modeling.stacking import INSTRUCT, STYLE
from wuxia_lightning.serve.columns import COLUMNS, ChatModel, ColumnReply, conversation
from wuxia_lightning.serve.session import default_session_path, save_session, turn_record


def import_gradio():
    """gradio, with its usage analytics off (the page must never call out); a one-line error when absent."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError:
        raise UserInputError("the chat page needs gradio: pip install 'wuxia_lightning[chat]' "
                             "(or pip install gradio)") from None
    return gradio


@dataclass
class PageSetup:
    """What the page starts with: the system prompt (from the preset), the presets to choose from, the
    decoding settings, and where sessions are saved by default."""

    system: str
    preset: str | None
    presets: dict[str, str]
    settings: GenerationSettings
    sessions_dir: Path
    seed: int = 0


def status_line(reply: ColumnReply | None, final: bool) -> str:
    if reply is None:
        return "waiting…"
    ending = ("ended at the end-of-turn token" if reply.stopped else "cut at max new tokens") if final \
        else "streaming…"
    return f"{reply.new_tokens} tokens, {reply.seconds:.1f} s — {ending}"


def build_page(chat: ChatModel, setup: PageSetup):
    """The Blocks app; ``launch`` it (``app.serve`` does)."""
    gr = import_gradio()
    base = chat.manifest.get("base_model")
    with gr.Blocks(title="wuxia_lightning chat") as page:
        gr.Markdown(f"**Model** `{chat.folder}` — base `{base}`, adapters {' + '.join(chat.manifest['adapters'])}. "
                    "One base, loaded once: each column switches its adapters, and the columns answer one "
                    "after another.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, scale=5, elem_id="prompt", autofocus=True)
            send = gr.Button("Send", variant="primary", scale=1, elem_id="send")
        run_status = gr.Markdown("", elem_id="run_status")
        shown = gr.CheckboxGroup([(c.label, c.key) for c in COLUMNS], value=[c.key for c in COLUMNS],
                                 label="Columns", elem_id="columns")
        boxes, statuses, panels = [], [], []
        with gr.Row():
            for column in COLUMNS:
                with gr.Column(elem_id=f"column_{column.key}") as panel:
                    boxes.append(gr.Textbox(label=column.label, lines=10, max_lines=30, interactive=False,
                                            elem_id=f"reply_{column.key}"))
                    statuses.append(gr.Markdown("", elem_id=f"status_{column.key}"))
                panels.append(panel)
        controls = _controls(gr, setup)
        with gr.Row():
            save_path = gr.Textbox(str(default_session_path(setup.sessions_dir)), label="Save the session to",
                                   scale=4, elem_id="save_path")
            save = gr.Button("Save session (JSONL)", scale=1, elem_id="save")
        save_status = gr.Markdown("", elem_id="save_status")
        turns = gr.State([])

        respond = _responder(chat)
        inputs = [prompt, *controls, shown, turns]
        outputs = [*boxes, *statuses, run_status, turns]
        send.click(respond, inputs, outputs, show_progress="hidden")
        prompt.submit(respond, inputs, outputs, show_progress="hidden")
        shown.change(lambda keys: [gr.Column(visible=c.key in keys) for c in COLUMNS], shown, panels)
        save.click(lambda path, done: _save(gr, path, done, setup.sessions_dir), [save_path, turns],
                   [save_status, save_path])
    return page


def _controls(gr, setup: PageSetup) -> list:
    """Scale sliders, sampling settings and the system prompt, in the order ``_responder`` takes them."""
    s = setup.settings
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            style = gr.Slider(0, 2, value=1.0, step=0.05, label="style_scale (1 = as trained)", elem_id="style_scale")
            instruct = gr.Slider(0, 2, value=1.0, step=0.05, label="instruct_scale (1 = as trained)",
                                 elem_id="instruct_scale")
        with gr.Row():
            greedy = gr.Checkbox(not s.do_sample, label="greedy", elem_id="greedy")
            max_new = gr.Slider(1, 1024, value=s.max_new_tokens, step=1, label="max new tokens",
                                elem_id="max_new_tokens")
            temperature = gr.Slider(0.05, 2, value=s.temperature, step=0.05, label="temperature",
                                    elem_id="temperature")
            top_p = gr.Slider(0.05, 1, value=s.top_p, step=0.05, label="top_p", elem_id="top_p")
            penalty = gr.Slider(1, 2, value=s.repetition_penalty, step=0.01, label="repetition penalty",
                                elem_id="repetition_penalty")
            seed = gr.Number(setup.seed, precision=0, label="seed (each column starts from it)", elem_id="seed")
        preset = gr.Dropdown(sorted(setup.presets), value=setup.preset, label="Preset (fills the system prompt)",
                             elem_id="preset")
        system = gr.Textbox(setup.system, lines=3, label="System prompt", elem_id="system")
        preset.change(lambda name: setup.presets.get(name, ""), preset, system)
    return [system, style, instruct, greedy, max_new, temperature, top_p, penalty, seed]


def _responder(chat: ChatModel):
    """The Send handler: streams every shown column, then adds the turn to the session."""
    def respond(prompt, system, style, instruct, greedy, max_new, temperature, top_p, penalty, seed, keys, done):
        columns = [c for c in COLUMNS if c.key in keys]
        number = len(done) + 1
        if not prompt or not prompt.strip() or not columns:
            why = "type a prompt" if columns else "switch at least one column on"
            yield *([""] * len(COLUMNS)), *([""] * len(COLUMNS)), f"#{number}: {why}", done
            return
        settings = GenerationSettings(max_new_tokens=int(max_new), do_sample=not greedy, temperature=temperature,
                                      top_p=top_p, repetition_penalty=penalty)
        scales, seed = {STYLE: float(style), INSTRUCT: float(instruct)}, int(seed or 0)
        start, replies = time.perf_counter(), {}
        for replies in chat.stream_columns(columns, conversation(system, prompt), settings, scales, seed):
            current = next(c.label for c in COLUMNS if c.key == list(replies)[-1])
            yield *_shown(replies, final=False), f"#{number}: {current} is answering…", done
        record = turn_record(prompt, system, settings, scales, seed, replies, chat.folder,
                             str(chat.manifest.get("base_model")))
        elapsed = time.perf_counter() - start
        yield *_shown(replies, final=True), f"#{number} done: {len(replies)} replies in {elapsed:.1f} s", \
            [*done, record]
    return respond


def _shown(replies: dict[str, ColumnReply], final: bool) -> list[str]:
    """Reply texts, then status lines, for every column (an empty box for a column that is off)."""
    texts = [replies[c.key].text if c.key in replies else "" for c in COLUMNS]
    return texts + [status_line(replies.get(c.key), final or c.key != list(replies)[-1]) if c.key in replies
                    else "" for c in COLUMNS]


def _save(gr, path: str, turns: list[dict], sessions_dir: Path) -> tuple[str, str]:
    """(status line, next path): a fresh default name after a save, the same path after a refusal."""
    try:
        saved = save_session(path, turns)
    except UserInputError as error:
        return f"not saved — {error}", path
    return f"saved {len(turns)} prompt(s) to `{saved}`", str(default_session_path(sessions_dir))
