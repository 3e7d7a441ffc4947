"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 train the same per-step losses as one process with the same
global batch, write the single-process checkpoint format, and resume (FSDP on 2 processes, DDP on 1 process).

Tolerance: the runs see identical windows and identical initial weights, so they differ only in floating-point
summation order (a batch of 8 split 4 + 4 with the gradient mean taken by all-reduce / reduce-scatter instead of
inside one matmul). In fp32 that is ~1e-7 relative per step (measured here: at most 4.8e-7 absolute over 6 steps
on losses of ~6); AdamW's first steps (~sign(g)·lr) can amplify it, so we allow 1e-5, 20x the measured gap. A
wrong data split
(overlapping or missing windows), a wrong gradient scale (sum instead of mean) or a mis-loaded checkpoint moves the
loss by far more than that from the first step on."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.config import load_config
from lmforge.data.build import ensure_dataset
from lmforge.metrics import read_metrics
from lmforge.train import pretrain

from conftest import ROOT, TINYSTORIES

TOL = 1e-5
STEPS = 6
GLOBAL_BATCH = 8


def _overrides(run: Path, dataset: Path, per_rank_batch: int, parallel: str = "none") -> list[str]:
    return [f'out_dir="{run}"', f'data.dataset="{dataset}"', f'data.sources=["{TINYSTORIES}"]', "data.max_docs=300",
            "model.max_seq_len=64", "train.seq_len=64", f"train.batch_size={per_rank_batch}",
            f"train.max_steps={STEPS}", "train.log_every=1", "train.eval_every=0", "train.eval_batches=2",
            "train.checkpoint_every=3", "train.keep_checkpoints=0", "train.warmup_steps=2", "train.device=\"cpu\"",
            f'train.parallel="{parallel}"']


def _torchrun(overrides: list[str], *extra: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lmforge", "train", "tiny", "--quiet", *extra]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}


def _assert_same(got: dict[int, float], want: dict[int, float], steps) -> None:
    print(f"max |loss - single-process loss| over steps {list(steps)}: {max(abs(got[s] - want[s]) for s in steps):.2e}")
    for s in steps:
        assert abs(got[s] - want[s]) < TOL, f"step {s}: {got[s]:.6f} vs single process {want[s]:.6f}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """A prepared dataset and the single-process run (global batch 8) every multi-process run is compared with."""
    base = tmp_path_factory.mktemp("dist")
    dataset, ref = base / "data", base / "single"
    cfg = load_config("tiny", _overrides(ref, dataset, GLOBAL_BATCH))
    ensure_dataset(cfg, progress=False)
    torch.set_num_threads(1)
    pretrain(cfg, progress=False)
    return dataset, ref


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(reference, tmp_path, parallel):
    dataset, ref = reference
    want = _losses(ref)
    run = tmp_path / parallel
    _torchrun(_overrides(run, dataset, GLOBAL_BATCH // 2, parallel))
    got = _losses(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    _assert_same(got, want, range(1, STEPS + 1))
    assert not (run / "metrics.jsonl.rank1").exists()

    # The checkpoint is the single-process format: same tensor names and shapes, nearly the same values.
    mine = load_file(str(run / "checkpoints" / f"step_{STEPS:06d}" / "model.safetensors"))
    single = load_file(str(ref / "checkpoints" / f"step_{STEPS:06d}" / "model.safetensors"))
    assert mine.keys() == single.keys()
    for k in single:
        assert mine[k].shape == single[k].shape and torch.allclose(mine[k], single[k], atol=1e-3), k
    opt = load_file(str(run / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.safetensors"))
    opt_single = load_file(str(ref / "checkpoints" / f"step_{STEPS:06d}" / "optimizer.safetensors"))
    assert opt.keys() == opt_single.keys()

    # Resume from step 3: FSDP on 2 processes again, DDP on a single process (a different world size).
    shutil.rmtree(run / "checkpoints" / f"step_{STEPS:06d}")
    if parallel == "fsdp":
        _torchrun(_overrides(run, dataset, GLOBAL_BATCH // 2, parallel), "--resume")
    else:
        pretrain(load_config("tiny", _overrides(run, dataset, GLOBAL_BATCH)), resume=True, progress=False)
    resumed = _losses(run)
    assert sorted(resumed) == list(range(1, STEPS + 1))
    _assert_same(resumed, want, range(4, STEPS + 1))


def test_parallel_none_under_torchrun_is_refused(monkeypatch, tmp_path):
    from lmforge.errors import ConfigError
    from lmforge.train.distributed import init_distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="train.parallel"):
        init_distributed(load_config("tiny"))
