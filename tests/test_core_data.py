"""Data: every source format to token shards with metadata; bad input fails clearly and leaves nothing behind;
the window loader resumes exactly."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.cli import main
from lmforge.data import TokenShards, WindowLoader, iter_documents, prepare_dataset, read_meta
from lmforge.errors import DataError
from lmforge.tokenizer import load_tokenizer, train_bpe


@pytest.fixture(scope="module")
def tok(stories):
    return train_bpe(stories[:100], 400)


def test_text_file_splits_on_endoftext_lines(shared_data):
    docs = list(iter_documents(str(shared_data / "tinystories" / "tinystories-valid.txt")))
    assert len(docs) == 1727  # SOURCES.md: 1,727 stories
    assert docs[0].startswith("Once upon a time there was a little boy named Ben.")
    assert all("<|endoftext|>" not in d and d == d.strip() for d in docs)


def test_prepare_writes_uint16_shards_with_metadata(tmp_path, tok, stories):
    meta = prepare_dataset(stories[:200], tok, tmp_path / "ds", val_fraction=0.1, progress=False)
    assert meta["dtype"] == "uint16" and meta["tokenizer"]["fingerprint"] == tok.fingerprint
    train, val = meta["splits"]["train"], meta["splits"]["val"]
    assert (train["docs"], val["docs"]) == (180, 20)
    expected = sum(len(tok.encode(s)) + 1 for s in stories[:200])  # +1: end-of-text after every document
    assert train["tokens"] + val["tokens"] == expected
    assert train["bytes"] + val["bytes"] == sum(len(s.encode()) for s in stories[:200])
    shards = TokenShards(tmp_path / "ds", "train")
    first = shards.read(0, len(tok.encode(stories[0])) + 1)
    assert first.tolist() == tok.encode(stories[0]) + [tok.eos_id]
    assert load_tokenizer(tmp_path / "ds" / "tokenizer").fingerprint == tok.fingerprint


def test_large_vocab_uses_uint32(tmp_path, stories):
    from lmforge.data.shards import token_dtype

    assert token_dtype(50257) == np.uint16 and token_dtype(70000) == np.uint32


def test_jsonl_gz_and_parquet_sources(tmp_path, tok, stories):
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        for s in stories[:30]:
            f.write(json.dumps({"text": s, "id": 1}) + "\n")
    pq.write_table(pa.table({"text": stories[30:60]}), tmp_path / "b.parquet")
    assert list(iter_documents(str(tmp_path / "a.jsonl.gz"))) == stories[:30]
    assert list(iter_documents(str(tmp_path / "b.parquet"))) == stories[30:60]
    assert len(list(iter_documents(str(tmp_path)))) == 60  # a directory of mixed files


def test_hf_datasets_code_path_on_local_files(tmp_path, stories):
    """The hub loader goes through `datasets.load_dataset(..., streaming=True)`; here it reads a local JSON builder."""
    from lmforge.data.sources import iter_hf_dataset

    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[:10]))
    assert list(iter_hf_dataset("json:train", "text", data_files=str(path))) == stories[:10]
    with pytest.raises(DataError, match="could not open the Hugging Face dataset"):
        list(iter_hf_dataset("json:train", "text", data_files=str(tmp_path / "absent.jsonl")))


def test_bad_inputs_are_clear_and_leave_nothing(tmp_path, tok, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": oops}\n')
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        prepare_dataset(iter_documents(str(bad)), tok, out, progress=False)
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.txt: file is empty"):
        list(iter_documents(str(empty)))
    with pytest.raises(DataError, match=r"data source not found: .*missing.txt"):
        list(iter_documents(str(tmp_path / "missing.txt")))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"nofield.jsonl:1: no 'text' field"):
        list(iter_documents(str(nofield)))
    # the CLI turns the same error into one line on stderr and exit code 2
    tok.save(tmp_path / "tok")
    code = main(["data", "prepare", "--source", str(bad), "--tokenizer", str(tmp_path / "tok"), "--out", str(out)])
    assert code == 2 and "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert not out.exists()


def test_failed_prepare_keeps_the_previous_dataset(tmp_path, tok, stories):
    prepare_dataset(stories[:50], tok, tmp_path / "ds", progress=False)
    before = read_meta(tmp_path / "ds")

    def broken():
        yield from stories[:10]
        raise DataError("source broke half-way")

    with pytest.raises(DataError):
        prepare_dataset(broken(), tok, tmp_path / "ds", progress=False)
    assert read_meta(tmp_path / "ds") == before


def test_window_loader_resumes_exactly_and_covers_each_window_once_per_epoch(tmp_path, tok, stories):
    prepare_dataset(stories[:120], tok, tmp_path / "ds", val_fraction=0.1, progress=False)
    data = TokenShards(tmp_path / "ds", "train")
    a = WindowLoader(data, batch_size=4, seq_len=32, seed=5)
    seen = [a.next_batch()[0] for _ in range(6)]
    state = a.state_dict()
    rest = [a.next_batch()[0] for _ in range(4)]
    b = WindowLoader(data, batch_size=4, seq_len=32, seed=5)
    b.load_state_dict(state)
    assert all((x == y).all() for x, y in zip(rest, [b.next_batch()[0] for _ in range(4)]))
    # within one epoch no window repeats
    c = WindowLoader(data, batch_size=4, seq_len=32, seed=5)
    starts = [tuple(row.tolist()) for _ in range(c.n_windows // 4) for row in c.next_batch()[0]]
    assert len(set(starts)) == len(starts)
    # two ranks split the global batch without overlap
    r0, r1 = (WindowLoader(data, 4, 32, seed=5, rank=r, world=2) for r in (0, 1))
    x0, x1 = r0.next_batch()[0], r1.next_batch()[0]
    assert torch_equal(torch_cat(x0, x1), WindowLoader(data, 8, 32, seed=5).next_batch()[0])
    del seen


def torch_cat(a, b):
    import torch

    return torch.cat([a, b])


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
