"""``wuxia-chat --model STACKED_DIR``: the chat page on this machine (http://127.0.0.1:7860 by default).

    wuxia-chat --model outputs/quickstart/stacked
    wuxia-chat --model outputs/gemma3-270m/stacked --preset wuxia --port 7861 --sessions-dir ~/chats

Everything that can be wrong with the input (a folder that is not a stage-2 output, an unknown preset,
gradio missing, a base model that cannot be found) is one line on stderr and exit code 2, before anything
is written; the page itself writes only the session files the user saves.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from wuxia_lightning.console import add_verbose_argument, quiet_third_party
from wuxia_lightning.errors import UserInputError, report_user_error
from wuxia_lightning.generation import GenerationSettings
from wuxia_lightning.serve.session import DEFAULT_SESSIONS_DIR

DEFAULT_PRESET = "elegant_style"
DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wuxia-chat", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a stacked stage-2 output folder (wuxia_manifest.json)")
    parser.add_argument("--base", default=None, help="base model to load instead of the manifest's one")
    parser.add_argument("--preset", default=None,
                        help=f"system-prompt preset (default: the training preset, else {DEFAULT_PRESET})")
    parser.add_argument("--presets-file", default=None, help="YAML file with more presets")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the page's starting value")
    parser.add_argument("--greedy", action="store_true", help="start with greedy decoding instead of sampling")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="auto: bfloat16 on a GPU that supports it, float32 otherwise")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--sessions-dir", type=Path, default=DEFAULT_SESSIONS_DIR,
                        help="default folder of saved sessions (the page's path box can name any file)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code shipped with the base model (off unless asked)")
    add_verbose_argument(parser)
    return parser


def serve(argv: list[str] | None = None, *, block: bool = True):
    """Check the input, load the model once, launch the page; returns the Gradio app (``block=False``: the
    server runs in the background until ``app.close()``, as the browser test uses it)."""
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)
    from wuxia_lightning.modeling.stacking import read_manifest
    from wuxia_lightning.serve.columns import require_stacked
    from wuxia_lightning.serve.page import build_page, import_gradio

    if args.max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    manifest = read_manifest(args.model)
    require_stacked(manifest, args.model)
    setup = page_setup(args, manifest)  # an unknown preset fails here, before the slow load
    import_gradio()
    chat = load_chat_model(args, manifest)
    page = build_page(chat, setup)
    print(f"chat page for {args.model}: http://{args.host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    try:
        page.launch(server_name=args.host, server_port=args.port, prevent_thread_lock=not block, quiet=True,
                    show_error=True)
    except OSError as error:  # the port is taken
        raise UserInputError(f"cannot listen on {args.host}:{args.port} ({error}); pass another --port") from None
    return page


def page_setup(args: argparse.Namespace, manifest: dict):
    from wuxia_lightning.data.presets import available_presets, resolve_system_prompt
    from wuxia_lightning.serve.page import PageSetup

    preset, presets_file = training_preset(args, manifest)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy)
    return PageSetup(system=resolve_system_prompt(preset, presets_file) or "", preset=preset,
                     presets=available_presets(presets_file), settings=settings, sessions_dir=args.sessions_dir)


def training_preset(args: argparse.Namespace, manifest: dict) -> tuple[str | None, str | None]:
    """--preset, else the preset recorded at training (an explicit null: no system prompt), else the default;
    the same choice as scripts/inference.py makes."""
    if args.preset is not None:
        return args.preset, args.presets_file
    for section in ("data", "training"):
        recorded = manifest.get(section) or {}
        if "preset" in recorded:
            return recorded["preset"], args.presets_file or recorded.get("presets_file")
    return DEFAULT_PRESET, args.presets_file


def load_chat_model(args: argparse.Namespace, manifest: dict):
    """The stacked model (base + both adapters, loaded once) on the best device."""
    import torch

    from wuxia_lightning.modeling.loading import serving_dtype
    from wuxia_lightning.modeling.stacking import load_stacked
    from wuxia_lightning.serve.columns import ChatModel

    cuda = torch.cuda.is_available()
    model, tokenizer = load_stacked(args.model, model_name_or_path=args.base, dtype=serving_dtype(args.dtype),
                                    trust_remote_code=args.trust_remote_code)
    if cuda:
        model.to("cuda")
    return ChatModel(model, tokenizer, Path(args.model), manifest)


def main(argv: list[str] | None = None) -> int:
    try:
        serve(argv, block=True)
    except UserInputError as error:
        return report_user_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
