"""A trained folder as one GGUF file that llama.cpp (llama-server, Ollama, LM Studio) serves as is.

The adapters are merged exactly as ``--format merged`` does (in float32, so the file's precision is the
only rounding), then llama.cpp's own ``convert_hf_to_gguf.py`` writes the GGUF with the tokenizer, the
chat template and the end-of-turn token; llama.cpp marks <|im_end|> and <end_of_turn> as end of
generation by itself. Everything is written in a hidden folder beside OUT and renamed at the end: a
failure leaves nothing behind, and an existing OUT is never touched.

Two tokenizer facts decide what can be exported (docs/GGUF-AND-UI.md §2):

- llama.cpp knows byte-level BPE (Qwen) and SentencePiece (Gemma) vocabularies. A WordLevel or WordPiece
  tokenizer (the project's character-level tiny one) has no GGUF form: it is refused before any work.
- The converter reads a Gemma vocabulary only from ``tokenizer.model``. A Gemma base made from a GGUF has
  none, and without it the converter "succeeds" through a path whose byte-fallback tokens detokenize as
  literal ``<0xF0>``. It is rebuilt from the source GGUF's vocabulary (GGUF token types are
  SentencePiece's enum), into the temporary merged folder only.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from wuxia_lightning.errors import UserInputError
from wuxia_lightning.io import staged_directory, strict_json
from wuxia_lightning.modeling.export import EXPORT_MANIFEST, ExportResult, export_merged, export_tokenizer
from wuxia_lightning.modeling.stacking import INSTRUCT, STYLE, read_manifest
from wuxia_lightning.pretrained.llama_cpp import GGUF_TYPES, converter_dir, run_converter
from wuxia_lightning.pretrained.tokenizer import GEMMA, chat_format

LLAMA_CPP_TOKENIZERS = ("BPE", "Unigram")  # tokenizers.models types that have a GGUF (llama.cpp) form
SENTENCEPIECE_USER_DEFINED = 4  # SentencePiece's ModelProto.SentencePiece.Type: the added/control pieces

# Ollama's template language is Go's text/template, not Jinja, so the Modelfile carries its own copy of
# each turn format (Ollama only maps a GGUF's Jinja template to one of its own when it recognises it).
OLLAMA_TEMPLATES = {
    "chatml": ('{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}'
               '<|im_start|>assistant\n'),
    # No "{{-" after a newline: it would trim the newline that ends a turn.
    "gemma": ('{{- range .Messages }}{{ if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}'
              '<end_of_turn>\n{{ else }}<start_of_turn>user\n{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}'
              '<start_of_turn>model\n'),
}


def export_gguf(folder: str | Path, out: str | Path, *, gguf_type: str = "f16", converter: str | None = None,
                style_scale: float = 1.0, instruct_scale: float = 1.0, base: str | None = None) -> ExportResult:
    """Merge ``folder``'s adapters and write ``out/<out name>-<gguf_type>.gguf`` plus an Ollama Modelfile."""
    folder, out = Path(folder), Path(out)
    check_request(folder, out, gguf_type)
    manifest = read_manifest(folder)
    tokenizer = export_tokenizer(folder)
    check_gguf_tokenizer(tokenizer, folder)
    tool = converter_dir(converter)  # may download the sdist: before the merge, which is the slow part
    format_ = chat_format(tokenizer)
    name = f"{out.name}-{gguf_type}.gguf"
    info = {"format": "gguf", "gguf_type": gguf_type, "file": name, "chat_format": format_.name,
            "source": str(folder.resolve()), "stage": manifest.get("stage"),
            "base_model": base or manifest["base_model"], "base_source": manifest.get("base_source"),
            "dtype": "float32", "converter": str(tool)}
    with staged_directory(out) as staging:
        merged = staging / "merged-hf"
        progress(f"merging the adapters of {folder} into {info['base_model']} (float32)")
        export_merged(folder, merged, manifest, info, {STYLE: style_scale, INSTRUCT: instruct_scale}, False)
        if format_ is GEMMA:
            stage_sentencepiece(merged, info)
        progress(f"converting to GGUF {gguf_type} with llama.cpp's converter ({tool})")
        run_converter(tool, merged, staging / name, gguf_type, out.name)
        shutil.rmtree(merged)
        (staging / "Modelfile").write_text(modelfile(name, format_.name, format_.turn_end), encoding="utf-8")
        (staging / EXPORT_MANIFEST).write_text(strict_json(info, indent=2), encoding="utf-8")
    return ExportResult(out, info)


def progress(message: str) -> None:
    """Export steps take seconds to minutes: say what is happening (stderr, so stdout stays the summary)."""
    print(message, file=sys.stderr, flush=True)


def check_request(folder: Path, out: Path, gguf_type: str) -> None:
    """Refusals that need no model: a GGUF type the converter cannot write, an OUT that exists."""
    if gguf_type not in GGUF_TYPES:
        raise UserInputError(f"GGUF type {gguf_type!r} is not one llama.cpp's converter writes; choose "
                             f"{', '.join(GGUF_TYPES)} (smaller types: run llama-quantize on the f16 file)",
                             path=str(out), field="gguf-type")
    if out.exists() or out.is_symlink():
        raise UserInputError("already exists; a GGUF export never overwrites, choose another --out", path=str(out))
    if out.resolve() in folder.resolve().parents:
        raise UserInputError("--out must not contain the --model folder", path=str(out))


def check_gguf_tokenizer(tokenizer, folder: Path) -> None:
    """Refuse a tokenizer llama.cpp has no form for (the converter would fail after the merge, or write a
    file llama.cpp cannot load: "cannot find tokenizer merges")."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    kind = json.loads(backend.to_str())["model"]["type"] if backend is not None else type(tokenizer).__name__
    if kind not in LLAMA_CPP_TOKENIZERS:
        raise UserInputError(f"the tokenizer is {kind} (e.g. the character-level tiny one), which has no GGUF "
                             "form in llama.cpp (BPE or SentencePiece only); export --format merged instead",
                             path=str(folder))


def stage_sentencepiece(merged: Path, info: dict) -> None:
    """Give the merged Gemma folder the ``tokenizer.model`` the converter reads: the base folder's own, or
    one rebuilt from the source GGUF's vocabulary."""
    from wuxia_lightning.pretrained.tiny import resolve_model_path

    own = Path(resolve_model_path(info["base_model"])) / "tokenizer.model"
    if own.is_file():
        shutil.copyfile(own, merged / "tokenizer.model")
        return
    source = Path((info.get("base_source") or {}).get("file", ""))
    if not source.is_file():
        raise UserInputError("a Gemma export needs the base's tokenizer.model or the GGUF it was converted from "
                             f"(the manifest names {str(source) or 'none'}); neither is here",
                             path=info["source"])
    progress(f"rebuilding tokenizer.model from {source}")
    write_sentencepiece(source, merged)


def write_sentencepiece(source_gguf: Path, merged: Path) -> None:
    """``tokenizer.model`` (BPE with byte fallback, as Gemma's) and ``added_tokens.json`` from the GGUF's
    tokens, scores and types. Tokens training added after the GGUF's vocabulary (infill) need nothing here:
    the converter takes them from tokenizer_config.json's added_tokens_decoder."""
    try:
        from gguf import GGUFReader
        from sentencepiece import sentencepiece_model_pb2 as pb
    except ImportError as error:
        raise UserInputError(f"a Gemma GGUF export needs the 'gguf', 'sentencepiece' and 'protobuf' packages "
                             f"({error})", path=str(source_gguf)) from error
    fields = GGUFReader(str(source_gguf)).fields
    tokens, scores, types = (fields[f"tokenizer.ggml.{key}"].contents() for key in ("tokens", "scores", "token_type"))
    proto = pb.ModelProto()
    proto.trainer_spec.model_type = pb.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(tokens)
    for ours, theirs in (("unk", "unknown"), ("bos", "bos"), ("eos", "eos"), ("pad", "padding")):
        setattr(proto.trainer_spec, f"{ours}_id", int(fields[f"tokenizer.ggml.{theirs}_token_id"].contents()))
    # Gemma normalises nothing: spaces become ▁ and runs of them are kept.
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.escape_whitespaces = True
    proto.normalizer_spec.remove_extra_whitespaces = False
    for token, score, kind in zip(tokens, scores, types, strict=True):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, float(score), int(kind)
    (merged / "tokenizer.model").write_bytes(proto.SerializeToString())
    added = {token: i for i, (token, kind) in enumerate(zip(tokens, types, strict=True))
             if int(kind) == SENTENCEPIECE_USER_DEFINED}
    (merged / "added_tokens.json").write_text(json.dumps(added, ensure_ascii=False), encoding="utf-8")


def modelfile(gguf_name: str, format_name: str, turn_end: str) -> str:
    """An Ollama Modelfile for the file beside it: the turn template and the end-of-turn stop."""
    return (f"FROM ./{gguf_name}\nTEMPLATE \"\"\"{OLLAMA_TEMPLATES[format_name]}\"\"\"\n"
            f"PARAMETER stop {turn_end}\nPARAMETER temperature 0.7\n")
