#!/usr/bin/env python
"""Download a model from the Hugging Face hub (or a mirror) into a local folder; re-run to resume.

    python scripts/download_model.py --model Qwen/Qwen2.5-7B --out models/Qwen2.5-7B
    python scripts/download_model.py --model Qwen/Qwen2.5-7B --out models/Qwen2.5-7B --use-mirror
    python scripts/download_model.py --model Qwen/Qwen2.5-7B --out models/Qwen2.5-7B \\
        --allow-patterns "*.json" "*.safetensors" "merges.txt" "vocab.json"

--use-mirror sets HF_ENDPOINT=https://hf-mirror.com (for networks where huggingface.co is slow or
blocked); --endpoint URL names any other mirror. Files go to --out (not the hub cache), so the folder can
be passed as --model.model_name_or_path or --base. An interrupted download resumes where it stopped when
the same command is run again (huggingface_hub.snapshot_download keeps partial files in OUT/.cache).

Offline (HF_HUB_OFFLINE=1) or with the endpoint unreachable, the script says so in one line and exits
with code 2; copy the model folder from another machine by hand in that case.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from wuxia_lightning.errors import report_user_error

MIRROR_ENDPOINT = "https://hf-mirror.com"
DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUE = ("1", "true", "yes", "on")


class DownloadError(Exception):
    """The download cannot happen: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="Qwen/Qwen2.5-7B", help="hub id (default: %(default)s)")
    parser.add_argument("--out", required=True, help="local folder to download into")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--use-mirror", action="store_true", help=f"download from {MIRROR_ENDPOINT}")
    source.add_argument("--endpoint", default=None, help="download from this hub endpoint (a mirror URL)")
    parser.add_argument("--allow-patterns", nargs="+", default=None, metavar="GLOB",
                        help="only files matching these globs")
    parser.add_argument("--ignore-patterns", nargs="+", default=None, metavar="GLOB",
                        help="skip files matching these globs")
    return parser


def hub_environment(use_mirror: bool, endpoint: str | None = None,
                    environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for huggingface_hub: ``environ`` (default os.environ) with HF_ENDPOINT set for
    --endpoint (first) or --use-mirror; an HF_ENDPOINT already set is kept otherwise."""
    env = dict(os.environ if environ is None else environ)
    if endpoint:
        env["HF_ENDPOINT"] = endpoint.rstrip("/")
    elif use_mirror:
        env["HF_ENDPOINT"] = MIRROR_ENDPOINT
    return env


def is_offline(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    env = hub_environment(args.use_mirror, args.endpoint)
    # huggingface_hub reads HF_ENDPOINT when it is first imported, so set it before that import
    # (download() also passes the endpoint explicitly, for when it was imported already).
    os.environ.update(env)
    endpoint = env.get("HF_ENDPOINT", DEFAULT_ENDPOINT)
    try:
        path = download(args, endpoint, offline=is_offline(env))
    except DownloadError as error:
        return report_user_error(error)
    print(f"{args.model} downloaded to {path}")
    return 0


def download(args: argparse.Namespace, endpoint: str, offline: bool) -> str:
    where = f"cannot download {args.model} from {endpoint}"
    other = "another --endpoint" if endpoint == MIRROR_ENDPOINT else f"--use-mirror ({MIRROR_ENDPOINT})"
    advice = f"retry with {other}, or copy the model folder by hand into {args.out}"
    if offline:  # snapshot_download would only look in the local cache, which never fills --out
        raise DownloadError(f"{where}: offline mode is on (HF_HUB_OFFLINE=1); unset it, then {advice}")
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

    try:
        # Ask the endpoint first: when it is unreachable, snapshot_download returns a non-empty --out as
        # if it were complete, so a half-finished download would pass silently.
        HfApi(endpoint=endpoint).repo_info(args.model, revision=args.revision)
        return snapshot_download(args.model, revision=args.revision, local_dir=args.out, endpoint=endpoint,
                                 allow_patterns=args.allow_patterns, ignore_patterns=args.ignore_patterns)
    except GatedRepoError as error:
        raise DownloadError(f"{where}: the model is gated; accept its licence on the model page and log in "
                            f"(`hf auth login`) or set HF_TOKEN") from error
    except RepositoryNotFoundError as error:
        raise DownloadError(f"{where}: no such model (check the id, or log in for a private one)") from error
    except OfflineModeIsEnabled as error:
        raise DownloadError(f"{where}: offline mode is on (HF_HUB_OFFLINE=1); unset it, then {advice}") from error
    except network_errors() as error:
        raise DownloadError(f"{where}: the endpoint is unreachable ({summary(error)}); {advice}") from error


def network_errors() -> tuple[type[BaseException], ...]:
    """OSError covers hub HTTP errors and socket errors; the hub's HTTP client has its own transport
    errors (``httpx2`` in huggingface_hub 2.x, ``httpx`` before), which are not OSErrors."""
    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def summary(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
