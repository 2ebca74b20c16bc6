#!/usr/bin/env python
"""Chat with a trained model: streaming replies, multi-turn history, system-prompt presets.

    python scripts/inference.py --model outputs/quickstart/stacked              # interactive chat
    python scripts/inference.py --model outputs/quickstart/stacked --prompt "你好"   # one reply, then exit
    python scripts/inference.py --model outputs/qwen2.5-7b/stacked --quantization 4bit --preset wuxia
    python scripts/inference.py --list-presets

--model is a stacked stage-2 folder (style + instruct adapters) or a stage-1 style adapter folder; both
hold a wuxia_manifest.json naming the base model (--base overrides it, e.g. a local copy of the hub
model). Both adapters are active, prompts use the chat template, and a reply stops at <|im_end|>.
The system prompt is the preset the folder was trained with when its manifest records it, otherwise
elegant_style; --preset overrides it. The banner (on stderr) says which one is used.

A stage-1 folder is a continuation model, not a chat model: what you type is continued as raw text
(no chat template, no system prompt, no history).

Interactive commands: /reset clears the history, /exit (or Ctrl-D) quits.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from typing import TextIO

from wuxia_lightning.console import add_verbose_argument, quiet_third_party
from wuxia_lightning.errors import UserInputError, report_user_error

DEFAULT_PRESET = "elegant_style"
USER_TAG, MODEL_TAG = "你> ", "答> "
EXIT_COMMANDS = ("/exit", "/quit")
RESET_COMMAND = "/reset"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="stacked stage-2 folder or stage-1 adapter folder (wuxia_manifest.json)")
    parser.add_argument("--base", default=None, help="base model to load instead of the manifest's one")
    parser.add_argument("--preset", default=None,
                        help=f"system-prompt preset (default: the training preset, else {DEFAULT_PRESET})")
    parser.add_argument("--presets-file", default=None, help="YAML file with more presets")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")
    parser.add_argument("--prompt", default=None, help="reply to this one prompt and exit (no chat loop)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--repetition-penalty", type=float, default=1.05)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--quantization", choices=("none", "4bit"), default="none",
                        help="load the base model in 4-bit nf4 (bitsandbytes)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                        help="auto: bfloat16 on a GPU that supports it, float32 otherwise")
    parser.add_argument("--style-scale", type=float, default=1.0,
                        help="style strength: multiply the style adapter's delta (1 = as trained; >1 stronger)")
    parser.add_argument("--instruct-scale", type=float, default=1.0,
                        help="multiply the instruct adapter's delta (1 = as trained)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code shipped with the base model (off unless asked)")
    add_verbose_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party(args.verbose)
    try:
        if args.list_presets:
            return list_presets(args.presets_file)
        return run(args)
    except UserInputError as error:
        return report_user_error(error)


def list_presets(presets_file: str | None) -> int:
    from wuxia_lightning.data.presets import available_presets

    for name, prompt in sorted(available_presets(presets_file).items()):
        print(f"{name}: {prompt}")
    return 0


def run(args: argparse.Namespace) -> int:
    from wuxia_lightning.data.presets import resolve_system_prompt
    from wuxia_lightning.modeling.stacking import is_style_only, read_manifest

    if not args.model:
        raise UserInputError("--model is required (a stacked stage-2 folder or a stage-1 adapter folder)")
    settings = generation_settings(args)
    manifest = read_manifest(args.model)
    continuation = is_style_only(manifest)
    preset, presets_file, source = choose_preset(args, manifest)
    # Resolve the preset before the (slow) model load so a typo fails at once.
    system = None if continuation else resolve_system_prompt(preset, presets_file)
    model, tokenizer = load(args, manifest)
    print(banner(args, manifest, continuation, f"{preset or 'none'} ({source})"), file=sys.stderr)
    if args.prompt is not None:
        return one_shot(model, tokenizer, args.prompt, system, settings, continuation)
    if continuation:
        continuation_loop(model, tokenizer, settings, sys.stdin, sys.stdout)
    else:
        chat_loop(model, tokenizer, system, settings, sys.stdin, sys.stdout)
    return 0


def generation_settings(args: argparse.Namespace):
    from wuxia_lightning.generation import GenerationSettings

    # Checked here: generate() would raise deep inside the streaming thread instead.
    if args.max_new_tokens < 1:
        raise UserInputError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if not args.greedy and args.temperature <= 0:
        raise UserInputError(f"--temperature must be > 0 when sampling (or pass --greedy), got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise UserInputError(f"--top-p must be in (0, 1], got {args.top_p}")
    return GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                              temperature=args.temperature, top_p=args.top_p,
                              repetition_penalty=args.repetition_penalty)


def load(args: argparse.Namespace, manifest: dict):
    """(model, tokenizer) with every adapter of the folder active, on the best device."""
    import torch

    from wuxia_lightning.modeling.loading import serving_dtype
    from wuxia_lightning.modeling.stacking import load_stacked

    cuda = torch.cuda.is_available()
    model, tokenizer = load_stacked(args.model, model_name_or_path=args.base, dtype=serving_dtype(args.dtype),
                                    quantization=args.quantization, style_scale=args.style_scale,
                                    instruct_scale=args.instruct_scale, trust_remote_code=args.trust_remote_code)
    if cuda and args.quantization == "none":  # 4-bit models are already placed by their device_map
        model.to("cuda")
    return model, tokenizer


def choose_preset(args: argparse.Namespace, manifest: dict) -> tuple[str | None, str | None, str]:
    """(preset, presets file, where it came from): --preset, else the one recorded at training, else the default.

    The training preset is a data-module setting: it is read from the manifest's ``data`` section (or
    ``training``, should the module record it) when present. An explicit null there means training used
    no system prompt, and so does inference.
    """
    if args.preset is not None:
        return args.preset, args.presets_file, "--preset"
    for section in ("data", "training"):
        recorded = manifest.get(section) or {}
        if "preset" in recorded:
            return (recorded["preset"], args.presets_file or recorded.get("presets_file"),
                    "as in training, from wuxia_manifest.json")
    return DEFAULT_PRESET, args.presets_file, "default: the manifest does not record the training preset"


def banner(args: argparse.Namespace, manifest: dict, continuation: bool, preset: str) -> str:
    """Which model and system prompt; the chat commands only when there is a chat loop (no --prompt)."""
    adapters = " + ".join(manifest.get("adapters", []))
    head = f"model: {args.model} (adapters: {adapters}; base: {args.base or manifest.get('base_model')})"
    interactive = args.prompt is None
    if continuation:
        return (f"{head}\nstage-1 style model: a continuation model, not a chat model. Your text is "
                "continued as raw text (no chat template, no system prompt, no history)."
                + (" /exit quits." if interactive else ""))
    return f"{head}\npreset: {preset}" + (". /reset clears the history, /exit or Ctrl-D quits."
                                          if interactive else "")


def one_shot(model, tokenizer, prompt: str, system: str | None, settings, continuation: bool) -> int:
    from wuxia_lightning.generation import generate_replies

    messages = with_system(system, [{"role": "user", "content": prompt}])
    reply = generate_replies(model, tokenizer, [messages], settings, raw_prompts=continuation)[0]
    print(reply.generation)
    if not reply.stopped:
        print(f"(stopped at --max-new-tokens={settings.max_new_tokens})", file=sys.stderr)
    return 0


def with_system(system: str | None, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + messages


def read_line(stdin: TextIO, stdout: TextIO) -> str | None:
    """The next user line (None at EOF). Piped input is echoed so the transcript reads like a chat."""
    interactive = stdin.isatty()
    if interactive:
        stdout.write(USER_TAG)
        stdout.flush()
    line = stdin.readline()
    if not line:
        return None
    line = line.strip()
    if not interactive:
        stdout.write(f"{USER_TAG}{line}\n")
    return line


def chat_loop(model, tokenizer, system: str | None, settings, stdin: TextIO, stdout: TextIO) -> None:
    from wuxia_lightning.generation import stream_reply

    history: list[dict[str, str]] = []
    while (line := read_line(stdin, stdout)) is not None:
        if line in EXIT_COMMANDS:
            break
        if line == RESET_COMMAND:
            history.clear()
            stdout.write("(history cleared)\n")
            continue
        if not line:
            continue
        history.append({"role": "user", "content": line})
        reply = show_stream(stream_reply(model, tokenizer, with_system(system, history), settings), stdout)
        history.append({"role": "assistant", "content": reply})


def continuation_loop(model, tokenizer, settings, stdin: TextIO, stdout: TextIO) -> None:
    from wuxia_lightning.generation import stream_reply

    while (line := read_line(stdin, stdout)) is not None:
        if line in EXIT_COMMANDS:
            break
        if line == RESET_COMMAND:  # nothing to clear: every line is continued on its own
            stdout.write("(a continuation model keeps no history)\n")
            continue
        if line:
            messages = [{"role": "user", "content": line}]
            show_stream(stream_reply(model, tokenizer, messages, settings, raw_prompt=True), stdout)


def show_stream(pieces: Iterator[str], stdout: TextIO) -> str:
    """Print the pieces as they arrive; return the whole reply."""
    stdout.write(MODEL_TAG)
    parts = []
    for piece in pieces:
        parts.append(piece)
        stdout.write(piece)
        stdout.flush()
    stdout.write("\n")
    return "".join(parts).strip()


if __name__ == "__main__":
    sys.exit(main())
