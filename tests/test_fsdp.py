"""FSDP2 — ModelParallelStrategy with torch's ``fully_shard`` per decoder layer — on 2 CPU processes over
gloo, for both stages through the real CLI; the combinations that are refused; a 2-node launch simulated
with torchrun on one host.

How the runs are compared:

* **First step vs one process.** A 2-rank run sees one micro-batch per rank per step and logs rank 0's
  loss. With ``--data.batch_size 1`` (and ``--data.replay_batch_size 1`` in stage 2) rank 0's first batch
  *is* the single-process run's first batch: the samplers are DistributedSamplers over one seeded
  permutation (rank r takes positions r, r + 2, …; one process takes them all in order), and a window's
  masking draw depends only on (seed, epoch, index). The first loss is computed before any update, from
  the same initial weights (same seed on every rank), and FSDP2's all-gather copies the values exactly,
  so the two first losses agree to rounding. Measured: identical (stage 1 4.306395, stage 2 7.162770).
  ``LOSS_RTOL`` = 1e-5 leaves room for a different BLAS/gloo build summing in another order.
* **Later steps vs DDP.** After step 1 one process has trained on one window and two ranks on two, so
  the FSDP2 run is compared with DDP on the same 2 ranks: the same data per rank, and the adapters must
  agree. With 2 ranks a gradient reduction is one addition, the same in either order, and we measured
  bit-identical adapters; ``TENSOR_ATOL`` (1e-6) and ``LOGITS_ATOL`` (1e-5) allow for more ranks, where
  DDP's all-reduce and FSDP2's reduce-scatter sum in different orders (fp32 rounding, ~1e-7 relative).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, SAMPLE_TEXT
from test_cli import read_metrics, series

LOSS_RTOL = 1e-5
TENSOR_ATOL = 1e-6
LOGITS_ATOL = 1e-5

STAGE1 = ["--config", "configs/quickstart_style.yaml"]
STAGE2 = ["--config", "configs/quickstart_instruct.yaml"]
FSDP2 = ["--config", "configs/fsdp2_cpu.yaml"]
DDP = ["--trainer.devices=2", "--trainer.strategy=ddp"]
# 4 steps of one window per rank; validation after steps 2 and 4 (loss, 3 sampled continuations split
# 2 + 1 over the ranks, a checkpoint with the adapter folder), so every collective path runs.
STAGE1_RUN = ["--data.batch_size=1", "--trainer.max_steps=4", "--trainer.val_check_interval=2",
              "--trainer.limit_val_batches=1", "--model.eval_samples=3", "--model.eval_max_new_tokens=8"]
# 2 epochs of 2 steps of one dialogue (+ one replayed style window) per rank, validation with one reply:
# fewer prompts than ranks, so rank 1 generates nothing but still takes part in the metrics' reduction.
STAGE2_RUN = ["--data.batch_size=1", "--data.replay_batch_size=1", "--trainer.limit_train_batches=2",
              "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1", "--trainer.limit_val_batches=1",
              "--model.eval_samples=1", "--model.max_new_tokens=8"]
PROBE = "--trainer.callbacks+=fsdp_probe.ShardingProbe"
CSV_LOGGER = "--trainer.logger=lightning.pytorch.loggers.CSVLogger"


def wuxia(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``python -m wuxia_lightning …`` with tests/ on PYTHONPATH (for fsdp_probe)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "wuxia_lightning", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def fit(run: Path, output: str, *args: str) -> Path:
    """One ``fit`` with its logs (one CSVLogger), checkpoints and ``run/<output>`` folder under ``run``."""
    wuxia("fit", *args, f"--trainer.default_root_dir={run}", CSV_LOGGER,
          f"--trainer.logger.init_args.save_dir={run / 'logs'}", f"--model.output_dir={run / output}")
    return run


def probed(run: Path) -> list[str]:
    return [PROBE, f"--trainer.callbacks.out_dir={run / 'probe'}"]


def probe_reports(run: Path) -> list[dict]:
    return [json.loads((run / "probe" / f"rank{rank}.json").read_text(encoding="utf-8")) for rank in (0, 1)]


def first_loss(run: Path) -> float:
    return series(read_metrics(run / "logs"), "train/loss")[0]


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def assert_sharded_layers(reports: list[dict], trainable: str, frozen_adapter: str | None = None) -> None:
    """Every decoder-layer tensor is a DTensor, split over the two ranks; the LM head (tied to the
    embedding in the tiny model) stayed whole; generate will keep the ranks in step."""
    assert [r["strategy"] for r in reports] == ["AdapterFSDP2Strategy"] * 2
    assert all(r["world_size"] == 2 and not r["head_sharded"] and r["generate_syncs_ranks"] for r in reports)
    params = [r["params"] for r in reports]
    layer_names = [name for name in params[0] if ".layers." in name]
    assert layer_names and set(params[0]) == set(params[1])
    for name in layer_names:
        shards = [p[name] for p in params]
        assert all(s["sharded"] for s in shards), name
        assert sum(s["local"] for s in shards) == shards[0]["full"] > max(s["local"] for s in shards), name
    assert not params[0]["base_model.model.model.embed_tokens.weight"]["sharded"]
    lora = [name for name in layer_names if "lora_" in name]
    assert lora and all(params[0][n]["trainable"] == (f".{trainable}." in n) for n in lora)
    if frozen_adapter:
        assert any(f".{frozen_adapter}." in n for n in lora)


@pytest.fixture(scope="module")
def stage1_fsdp2(tmp_path_factory, tiny_model_dir) -> Path:
    """One stage-1 FSDP2 fit, shared by the stage-1 and stage-2 tests (stage 2 stacks on its adapter)."""
    run = tmp_path_factory.mktemp("stage1_fsdp2")
    return fit(run, "style", *STAGE1, *FSDP2, *STAGE1_RUN, *probed(run))


@pytest.mark.slow
def test_stage1_fsdp2_fit_on_two_cpu_processes(stage1_fsdp2, tmp_path, tiny_model_dir):
    assert_sharded_layers(probe_reports(stage1_fsdp2), trainable="style")

    # first step: the same loss as one process on the same window
    single = fit(tmp_path / "single", "style", *STAGE1, "--data.batch_size=1", "--trainer.max_steps=1",
                 "--model.eval_prompts=null")
    assert first_loss(stage1_fsdp2) == pytest.approx(first_loss(single), rel=LOSS_RTOL)

    # every step, and the adapter written: the same as DDP on the same two ranks
    ddp = fit(tmp_path / "ddp", "style", *STAGE1, *DDP, *STAGE1_RUN)
    fsdp_losses, ddp_losses = (series(read_metrics(run / "logs"), "train/loss") for run in (stage1_fsdp2, ddp))
    assert len(fsdp_losses) == 4 and fsdp_losses == pytest.approx(ddp_losses, rel=LOSS_RTOL)
    assert series(read_metrics(stage1_fsdp2 / "logs"), "val_style/ppl")  # validation ran, sampled text scored
    sharded, replicated = adapter_tensors(stage1_fsdp2 / "style"), adapter_tensors(ddp / "style")
    assert {k: v.shape for k, v in sharded.items()} == {k: v.shape for k, v in replicated.items()}
    assert all(torch.isfinite(v).all() for v in sharded.values())
    assert max((sharded[k] - replicated[k]).abs().max().item() for k in sharded) <= TENSOR_ATOL
    assert any(v.abs().max() > 0 for k, v in sharded.items() if "lora_B" in k)  # it trained

    # a plain peft folder: PeftModel.from_pretrained on the base gives DDP's logits
    fsdp_logits, ddp_logits = (peft_logits(tiny_model_dir, run / "style") for run in (stage1_fsdp2, ddp))
    assert torch.isfinite(fsdp_logits).all()
    torch.testing.assert_close(fsdp_logits, ddp_logits, atol=LOGITS_ATOL, rtol=0)

    # checkpoints: one file, adapter tensors only, the same keys as DDP's (AtomicCheckpointIO wrote it)
    from wuxia_lightning.callbacks.checkpointing import checkpoint_is_intact

    fsdp_ckpt, ddp_ckpt = (next(run.rglob("last.ckpt")) for run in (stage1_fsdp2, ddp))
    assert fsdp_ckpt.is_file() and checkpoint_is_intact(fsdp_ckpt)
    fsdp_state, ddp_state = (torch.load(c, weights_only=True)["state_dict"] for c in (fsdp_ckpt, ddp_ckpt))
    assert set(fsdp_state) == set(ddp_state) and all("lora_" in key for key in fsdp_state)


def peft_logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(adapter_dir)).eval()
    with torch.no_grad():
        return model(**tokenizer(SAMPLE_TEXT, return_tensors="pt")).logits


@pytest.mark.slow
def test_stage2_fsdp2_fit_on_two_cpu_processes(stage1_fsdp2, tmp_path):
    style = [f"--model.style_adapter={stage1_fsdp2 / 'style'}"]
    run = fit(tmp_path / "fsdp2", "stacked", *STAGE2, *FSDP2, *style, *STAGE2_RUN, *probed(tmp_path / "fsdp2"))
    assert_sharded_layers(probe_reports(run), trainable="instruct", frozen_adapter="style")
    rows = read_metrics(run / "logs")
    assert len(series(rows, "train/loss")) == 4 and series(rows, "train/replay_kl") and series(rows, "val/loss")
    assert series(rows, "val/stop_rate")  # the one reply (rank 0) reduced with rank 1's empty share

    single = fit(tmp_path / "single", "stacked", *STAGE2, *style, "--data.batch_size=1",
                 "--data.replay_batch_size=1", "--trainer.max_steps=1", "--model.eval_samples=0")
    assert first_loss(run) == pytest.approx(first_loss(single), rel=LOSS_RTOL)

    # the stacked folder: the frozen style adapter exactly as stage 1 wrote it (gathered whole again),
    # the instruct adapter with the single-process folder's names and shapes, trained and finite
    stacked = run / "stacked"
    written_style, stage1_style = adapter_tensors(stacked / "style"), adapter_tensors(stage1_fsdp2 / "style")
    assert written_style.keys() == stage1_style.keys()
    assert all(torch.equal(written_style[k], stage1_style[k]) for k in stage1_style)
    instruct, reference = adapter_tensors(stacked / "instruct"), adapter_tensors(single / "stacked" / "instruct")
    assert {k: v.shape for k, v in instruct.items()} == {k: v.shape for k, v in reference.items()}
    assert all(torch.isfinite(v).all() for v in instruct.values())
    assert any(v.abs().max() > 0 for k, v in instruct.items() if "lora_B" in k)

    from wuxia_lightning.modeling.stacking import load_stacked

    model, _ = load_stacked(stacked)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert torch.isfinite(logits).all()


def test_fsdp_with_a_4bit_base_is_refused_before_anything_loads(tmp_path):
    outputs = [f"--trainer.default_root_dir={tmp_path / 'r'}", f"--model.output_dir={tmp_path / 'out'}"]
    result = wuxia("fit", *STAGE1, *FSDP2, "--model.quantization=4bit", *outputs, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "4-bit" in error[0] and "--trainer.strategy ddp" in error[0]
    assert not (tmp_path / "r").exists() and not (tmp_path / "out").exists()


def test_which_strategy_choices_are_refused():
    from lightning.pytorch.strategies import ModelParallelStrategy

    from wuxia_lightning.errors import UserInputError
    from wuxia_lightning.modules.sharding import (
        AdapterFSDP2Strategy,
        check_strategy_choice,
        refuse_unresumable_checkpoints,
    )

    fsdp_overlay = {"class_path": "lightning.pytorch.strategies.FSDPStrategy", "init_args": {}}
    fsdp2 = {"class_path": "wuxia_lightning.modules.sharding.AdapterFSDP2Strategy"}
    for strategy in ("fsdp", fsdp_overlay, fsdp2, AdapterFSDP2Strategy(2, 1), ModelParallelStrategy()):
        with pytest.raises(UserInputError, match="4-bit"):
            check_strategy_choice(strategy, "gpu", "4bit")
        check_strategy_choice(strategy, "gpu", "none")
    check_strategy_choice("ddp", "gpu", "4bit")  # QLoRA: DDP
    for strategy in ("fsdp", fsdp_overlay):
        for accelerator in ("cpu", *(("auto",) if not torch.cuda.is_available() else ())):
            with pytest.raises(UserInputError, match="ModelParallelStrategy.*configs/fsdp2_cpu.yaml"):
                check_strategy_choice(strategy, accelerator, "none")
    for strategy in ("ddp", fsdp2, "auto"):
        check_strategy_choice(strategy, "cpu", "none")
    with pytest.raises(UserInputError, match="cannot be resumed"):
        refuse_unresumable_checkpoints(ModelParallelStrategy())  # Lightning's default: adapter-only DCP folders
    refuse_unresumable_checkpoints(ModelParallelStrategy(save_distributed_checkpoint=False))
    refuse_unresumable_checkpoints(AdapterFSDP2Strategy())


def test_fsdp_strategy_overlay_on_cpu_names_the_fsdp2_overlay(tmp_path):
    """The GPU FSDPStrategy overlay, asked to run on CPU: one line pointing to configs/fsdp2_cpu.yaml."""
    result = wuxia("fit", "--config", "configs/qwen2.5-7b_style_qlora.yaml", "--config", "configs/fsdp_style.yaml",
                   "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path / 'r'}", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "use ModelParallelStrategy" in result.stderr and "configs/fsdp2_cpu.yaml" in result.stderr


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.slow
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this Python")
def test_two_nodes_simulated_with_torchrun(stage1_fsdp2, tmp_path):
    """Lightning's num_nodes under torchrun: two torchrun agents on this host, one process each, stand for
    two machines (--node-rank 0/1, one rendezvous address). Global rank 0 — on node 0 — writes every
    output; node 1 trains on its own windows."""
    port = _free_port()
    args = ["fit", *STAGE1, "--trainer.num_nodes=2", "--trainer.devices=1", "--trainer.accelerator=cpu",
            "--trainer.strategy=ddp", "--data.batch_size=1", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
            "--model.eval_prompts=null", f"--trainer.default_root_dir={tmp_path}", CSV_LOGGER,
            f"--trainer.logger.init_args.save_dir={tmp_path / 'logs'}", f"--model.output_dir={tmp_path / 'style'}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    nodes = [subprocess.Popen([str(TORCHRUN), "--nnodes=2", "--nproc-per-node=1", f"--node-rank={node}",
                               "--master-addr=127.0.0.1", f"--master-port={port}", "-m", "wuxia_lightning", *args],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    try:
        outputs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (out, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, f"{out[-2000:]}\n{err[-4000:]}"
    (out0, err0), (out1, err1) = outputs
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in err0 and "GLOBAL_RANK: 1, MEMBER: 2/2" in err1
    assert f"trained model written to {tmp_path / 'style'}" in out0 and "trained model written" not in out1
    assert (tmp_path / "style" / "adapter_model.safetensors").exists()
    losses = series(read_metrics(tmp_path / "logs"), "train/loss")
    # rank 0 trains on the same first window as rank 0 of the single-host FSDP2 run
    assert len(losses) == 2 and losses[0] == pytest.approx(first_loss(stage1_fsdp2), rel=LOSS_RTOL)
