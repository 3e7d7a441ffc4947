"""The command line end to end on a tiny trained run: generate, eval, tokenizer train/encode, data prepare, errors."""
from __future__ import annotations

import json

from lmforge.cli import main

from conftest import TINYSTORIES


def test_generate_streams_and_is_seeded(tiny_run, capsys):
    args = ["generate", str(tiny_run), "--prompt", "Once upon a time", "--max-new-tokens", "20", "--seed", "3",
            "--top-k", "40", "--top-p", "0.9", "--repetition-penalty", "1.1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("Once upon a time") and len(first) > len("Once upon a time") + 5
    assert main(args) == 0
    assert capsys.readouterr().out == first


def test_generate_batched_prompts(tiny_run, capsys):
    assert main(["generate", str(tiny_run), "--prompt", "The cat", "--prompt", "Tom and Sue", "--temperature", "0",
                 "--max-new-tokens", "10"]) == 0
    out = capsys.readouterr().out
    assert "--- [0] ---\nThe cat" in out and "--- [1] ---\nTom and Sue" in out


def test_prompt_longer_than_context_is_an_error(tiny_run, capsys):
    assert main(["generate", str(tiny_run), "--prompt", "word " * 400]) == 2
    assert "the model's context is 128" in capsys.readouterr().err


def test_eval_on_own_split_and_on_raw_text(tiny_run, tmp_path, capsys):
    assert main(["eval", str(tiny_run), "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["split"] == "val" and own["bpb"] > 0 and own["perplexity"] > 1
    raw = tmp_path / "held_out.txt"
    stories = TINYSTORIES.read_text().split("<|endoftext|>\n")[-40:]
    raw.write_text("<|endoftext|>\n".join(stories))
    assert main(["eval", str(tiny_run), "--data", str(raw), "--json"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["tokens"] > 1000 and 0.5 < other["bpb"] / own["bpb"] < 2


def test_tokenizer_and_data_commands(tmp_path, capsys):
    assert main(["tokenizer", "train", "--input", str(TINYSTORIES), "--kind", "unigram", "--vocab-size", "400",
                 "--max-docs", "300", "--out", str(tmp_path / "tok")]) == 0
    assert main(["tokenizer", "encode", str(tmp_path / "tok"), "Once upon a time"]) == 0
    assert main(["data", "prepare", "--source", str(TINYSTORIES), "--tokenizer", str(tmp_path / "tok"),
                 "--out", str(tmp_path / "ds"), "--max-docs", "200", "--val-fraction", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "train: 180 documents" in out and "val: 20 documents" in out
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["splits"]["val"]["docs"] == 20


def test_unknown_config_key_on_the_command_line(capsys):
    assert main(["train", "tiny", "--set", "train.bach_size=4"]) == 2
    assert "unknown config key 'train.bach_size'; did you mean 'train.batch_size'" in capsys.readouterr().err
