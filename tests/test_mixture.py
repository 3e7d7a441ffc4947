"""Weighted mixtures: the draw ratio follows the weights, the same seed gives the same batches, the position resumes
exactly (also through a checkpoint), ranks split a global batch without overlap, and training logs tokens per source."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmforge.config import load_config
from lmforge.data.mixture import build_mixture_loader, prepare_mixture
from lmforge.errors import ConfigError
from lmforge.metrics import read_metrics
from lmforge.train import pretrain

from conftest import SHARED

SEQ = 32
BATCH = 8


def _overrides(tmp: Path, a: Path, b: Path, **extra) -> list[str]:
    mixture = (f'[{{name = "a", sources = ["{a}"], weight = 0.75}}, '
               f'{{name = "b", sources = ["{b}"], weight = 0.25}}]')
    out = [f'out_dir="{tmp / "run"}"', "tokenizer.kind=\"gpt2\"", f'tokenizer.path="{SHARED / "tokenizers" / "gpt2"}"',
           f"data.mixture={mixture}", "data.val_fraction=0.1", "model.max_seq_len=64", f"train.seq_len={SEQ}",
           f"train.batch_size={BATCH}"]
    return out + [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]


@pytest.fixture(scope="module")
def mixture(tmp_path_factory, stories):
    tmp = tmp_path_factory.mktemp("mix")
    a, b = tmp / "a.txt", tmp / "b.txt"
    a.write_text("\n<|endoftext|>\n".join(stories[:200]))
    b.write_text("\n<|endoftext|>\n".join(stories[200:400]))
    cfg = load_config("tiny", _overrides(tmp, a, b))
    return cfg, prepare_mixture(cfg, progress=False)


def _batches(loader, n: int) -> list[torch.Tensor]:
    return [loader.next_batch()[0] for _ in range(n)]


def test_weights_give_the_token_ratio_and_seed_gives_the_same_batches(mixture):
    cfg, data = mixture
    first = build_mixture_loader(cfg, data, BATCH, SEQ)
    again = build_mixture_loader(cfg, data, BATCH, SEQ)
    xs, ys = _batches(first, 200), _batches(again, 200)
    assert all(torch.equal(x, y) for x, y in zip(xs, ys))
    m = first.metrics()
    assert m["tokens_a"] + m["tokens_b"] == 200 * BATCH * SEQ
    share = m["tokens_a"] / (m["tokens_a"] + m["tokens_b"])
    # 1600 windows drawn Bernoulli(0.75): standard deviation 0.011, so 0.04 is > 3.5 sigma
    assert abs(share - 0.75) < 0.04, share
    # another seed draws another sequence
    cfg.train.seed += 1
    try:
        other = build_mixture_loader(cfg, data, BATCH, SEQ)
    finally:
        cfg.train.seed -= 1
    assert not all(torch.equal(x, y) for x, y in zip(xs[:5], _batches(other, 5)))


def test_resume_is_exact_and_ranks_do_not_overlap(mixture):
    cfg, data = mixture
    straight = build_mixture_loader(cfg, data, BATCH, SEQ)
    _batches(straight, 37)
    state = json.loads(json.dumps(straight.state_dict()))  # as stored in trainer_state.json
    expected = _batches(straight, 20)
    resumed = build_mixture_loader(cfg, data, BATCH, SEQ)
    resumed.load_state_dict(state)
    assert all(torch.equal(x, y) for x, y in zip(expected, _batches(resumed, 20)))
    assert resumed.metrics() == straight.metrics()

    # two ranks of batch 4 together give exactly one process's batch of 8, in order
    whole = build_mixture_loader(cfg, data, BATCH, SEQ)
    r0 = build_mixture_loader(cfg, data, BATCH // 2, SEQ, rank=0, world=2)
    r1 = build_mixture_loader(cfg, data, BATCH // 2, SEQ, rank=1, world=2)
    for _ in range(10):
        assert torch.equal(whole.next_batch()[0], torch.cat([r0.next_batch()[0], r1.next_batch()[0]]))


def test_training_logs_tokens_per_source_and_resumes(mixture, tmp_path):
    cfg, data = mixture
    run = tmp_path / "run"
    over = [f'out_dir="{run}"', f'data.dataset="{data.root}"', "model.d_model=32", "model.n_layers=1",
            "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64", "train.max_steps=4", "train.log_every=1",
            "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=2", "train.keep_checkpoints=0"]
    base = _overrides(tmp_path, *[Path(s) for p in cfg.data.mixture for s in p.sources])
    result = pretrain(load_config("tiny", base + over), progress=False)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["tokens_a"] + r["tokens_b"] for r in rows] == [r["tokens"] for r in rows]
    assert {"val_loss", "val_a_loss", "val_b_bpb"} <= set(read_metrics(run / "metrics.jsonl")[-1])
    assert result.final_eval["loss"] == pytest.approx(0.75 * result.final_eval["a_loss"]
                                                      + 0.25 * result.final_eval["b_loss"])
    losses = {r["step"]: r["loss"] for r in rows}
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_000004")
    pretrain(load_config("tiny", base + over), resume=True, progress=False)
    again = {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert again == losses  # bit-identical: same windows from the restored mixture position


def test_mixture_preset_and_bad_entries():
    cfg = load_config("mixture-tiny")
    assert [(p.name, p.weight) for p in cfg.data.mixture] == [("stories", 0.75), ("code", 0.25)]
    with pytest.raises(ConfigError, match="weight"):
        load_config("tiny", ['data.mixture=[{name = "x", sources = ["a"], weight = 0}]'])
    with pytest.raises(ConfigError, match="used twice"):
        load_config("tiny", ['data.mixture=[{name = "x", sources = ["a"]}, {name = "x", sources = ["b"]}]'])
    with pytest.raises(ConfigError, match="did you mean"):
        load_config("tiny", ['data.mixture=[{name = "x", source = ["a"]}]'])
    gqa = load_config("gqa-1b")
    assert [p.weight for p in gqa.data.mixture] == [0.40, 0.25, 0.35]


def test_stdlib_code_source_reads_python_files():
    from itertools import islice

    from lmforge.data.sources import iter_documents

    docs = list(islice(iter_documents("code:stdlib"), 5))
    assert len(docs) == 5 and any("def " in d or "import " in d for d in docs)
