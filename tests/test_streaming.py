"""Streaming: a directory of many small files, far larger than the shuffle buffer, tokenized on the fly; no window
comes twice in an epoch, the epoch covers the corpus, the position resumes exactly, and training from a stream works
without writing training shards."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lmforge.config import load_config
from lmforge.data.sources import iter_corpus
from lmforge.data.streaming import StreamingWindows
from lmforge.errors import DataError
from lmforge.metrics import read_metrics
from lmforge.tokenizer import load_tokenizer
from lmforge.train import pretrain

from conftest import SHARED

SEQ = 16
BUFFER = 8  # windows: the corpus below is ~100x larger


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """120 files x 4 documents of seeded random words: no two 17-token windows can be equal by chance, so any
    repeated window is the loader's doing."""
    root = tmp_path_factory.mktemp("stream") / "corpus"
    root.mkdir()
    rng = np.random.default_rng(0)
    words = ("the a cat dog ran sat on under blue red green big small happy sad tree house river moon sun star "
             "boat car bird fish jumped sang played found lost gave took said went came saw").split()
    for f in range(120):
        docs = [" ".join(rng.choice(words, size=int(rng.integers(10, 40)))) for _ in range(4)]
        (root / f"part_{f:03d}.txt").write_text("\n<|endoftext|>\n".join(docs) + "\n")
    return root


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(SHARED / "tokenizers" / "gpt2")


def _stream(corpus: Path, tokenizer, seed: int = 0) -> StreamingWindows:
    return StreamingWindows(lambda: iter_corpus([str(corpus)], "<|endoftext|>", "text"), tokenizer, SEQ, BUFFER, seed)


def test_an_epoch_never_repeats_a_window_and_covers_the_corpus(corpus, tokenizer):
    total = sum(len(tokenizer.encode(d)) + 1 for d in iter_corpus([str(corpus)], "<|endoftext|>", "text"))
    assert total > 50 * BUFFER * (SEQ + 1)  # the corpus is much larger than the buffer
    s = _stream(corpus, tokenizer)
    epoch0 = []
    while True:
        (w,) = s.take(1)
        if s.epoch > 0:
            break
        epoch0.append(w.tobytes())
    assert len(set(epoch0)) == len(epoch0), f"{len(epoch0) - len(set(epoch0))} windows came twice in one epoch"
    # each chunk drops its last < SEQ tokens, so at most one window per chunk of BUFFER windows is lost
    full = (total - 1) // SEQ
    assert full * (1 - 1 / BUFFER) - 1 <= len(epoch0) <= full
    # the next epoch visits the same windows in another order
    epoch1 = [w.tobytes()]
    epoch1 += [x.tobytes() for x in s.take(len(epoch0) - 1)]
    assert s.epoch == 1 and set(epoch1) == set(epoch0) and epoch1 != epoch0
    # the windows are shuffled: the first chunk does not come out in corpus order
    stream_order = [w.tobytes() for w in _unshuffled(corpus, tokenizer)]
    assert epoch0 != stream_order[: len(epoch0)]


def _unshuffled(corpus: Path, tokenizer):
    s = _stream(corpus, tokenizer)
    s._fill()
    return list(s._windows)


def test_resume_is_exact(corpus, tokenizer):
    straight = _stream(corpus, tokenizer, seed=3)
    straight.take(123)
    state = json.loads(json.dumps(straight.state_dict()))
    expected = straight.take(60, keep=range(0, 60, 2))
    resumed = _stream(corpus, tokenizer, seed=3)
    resumed.load_state_dict(state)
    got = resumed.take(60, keep=range(0, 60, 2))
    assert all(np.array_equal(a, b) for a, b in zip(expected, got)) and len(got) == 30
    assert resumed.state_dict() == straight.state_dict()


def test_empty_stream_is_an_error(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("hi\n")
    s = StreamingWindows(lambda: iter_corpus([str(tmp_path)], "<|endoftext|>", "text"), tokenizer, 64, 4, 0)
    with pytest.raises(DataError, match="shorter than one window"):
        s.take(1)


def test_training_from_a_stream(corpus, tmp_path):
    run = tmp_path / "run"
    over = [f'out_dir="{run}"', f'data.sources=["{corpus}"]', "data.streaming=true", "data.shuffle_buffer=8",
            "data.val_fraction=0.1", 'tokenizer.kind="gpt2"', f'tokenizer.path="{SHARED / "tokenizers" / "gpt2"}"',
            "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1", "model.d_ff=64",
            "model.max_seq_len=32", "train.seq_len=32", "train.batch_size=4", "train.max_steps=4",
            "train.log_every=1", "train.eval_every=0", "train.eval_batches=1", "train.checkpoint_every=2",
            "train.keep_checkpoints=0"]
    pretrain(load_config("tiny", over), progress=False)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["tokens_data"] for r in rows] == [r["tokens"] for r in rows]
    assert (run / "data" / "data-val" / "meta.json").is_file()
    assert not (run / "data" / "data").exists()  # no training shards were written
    losses = {r["step"]: r["loss"] for r in rows}
    import shutil

    shutil.rmtree(run / "checkpoints" / "step_000004")
    pretrain(load_config("tiny", over), resume=True, progress=False)
    assert {r["step"]: r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r} == losses
