"""Third-party noise is filtered at its source, only that noise, and WUXIA_VERBOSE=1 brings it back.

Each case runs in a fresh interpreter: logging and warning filters are process-wide state, and jieba
only announces its dictionary on first use in a process.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import NOISE, REPO

# Emits every message of the noise list the way its library does (same logger / category / module),
# real jieba included, plus neighbours that must survive: another warning of the same loggers, the
# same category from another module, and the project's own warnings.
EMIT = r'''
import logging, sys, warnings
from wuxia_lightning.console import quiet_third_party
quiet_third_party("--verbose" in sys.argv)
quiet_third_party("--verbose" in sys.argv)  # twice, as a script calling into the CLI would: no harm

logging.getLogger("kernels._internals.hf_hub").warning(
    "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because Hugging Face "
    "Hub is in offline mode.")
logging.getLogger("kernels._internals.hf_hub").warning("KEEP kernels: another warning")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
    "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure", "offline")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("KEEP bitsandbytes: another warning")
from lightning.pytorch.utilities.rank_zero import rank_zero_info
rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](x)")
rank_zero_info("KEEP lightning: GPU available: False")
warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                       "modeling_utils.py", 1, module="transformers.modeling_utils")
warnings.warn_explicit("`is_gradient_checkpointing` is deprecated (KEEP: our module)", FutureWarning,
                       "style.py", 1, module="wuxia_lightning.modules.style")
from lightning.pytorch.utilities._pytree import _tree_flatten
_tree_flatten(1)  # the real LeafSpec deprecation, raised where Lightning raises it
import jieba
jieba.lcut("剑光一闪，那人已然倒地。")  # builds its dictionary and logs how, through its own handler
logging.getLogger("wuxia_lightning.x").warning("KEEP wuxia: our own log warning")
warnings.warn("KEEP wuxia: our own UserWarning")
'''

KEPT = ("KEEP kernels", "KEEP bitsandbytes", "KEEP lightning", "KEEP: our module", "KEEP wuxia: our own log",
        "KEEP wuxia: our own UserWarning")


def emit(tmp_path, *argv: str, verbose_env: bool = False) -> str:
    # TMPDIR: jieba writes its dictionary cache to the temp folder
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    env.pop("WUXIA_VERBOSE", None)
    if verbose_env:
        env["WUXIA_VERBOSE"] = "1"
    result = subprocess.run([sys.executable, "-c", EMIT, *argv], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def test_noise_is_gone_and_everything_else_stays(tmp_path):
    output = emit(tmp_path)
    assert [line for line in output.splitlines() if any(noise in line for noise in NOISE)] == []
    assert all(kept in output for kept in KEPT), output


@pytest.mark.parametrize("how", ["env", "flag"])
def test_verbose_brings_the_noise_back(tmp_path, how):
    output = emit(tmp_path, *(["--verbose"] if how == "flag" else []), verbose_env=how == "env")
    assert [noise for noise in NOISE if noise not in output] == []
    assert all(kept in output for kept in KEPT)
