"""Fine-tuning into chat / instruction models: loss masks, ChatML tokens and vocab growth, SFT runs that lower the
held-out loss, early stopping, bad records, the chat REPL through a pipe, and the smoke-test verdicts."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmforge.config import ModelConfig, load_config
from lmforge.data.instruct import encode_conversation, load_conversations, prompt_ids
from lmforge.data.sft_loader import SFTLoader, collate
from lmforge.data.templates import get_prompt_style
from lmforge.errors import DataError
from lmforge.model import Transformer, build_model
from lmforge.model.resize import resize_vocab
from lmforge.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# the real `lmforge <command>` front end for one command module (independent of the other subcommands)
ONE_COMMAND = ("import argparse, importlib, sys\n"
               "mod = importlib.import_module('lmforge.commands.' + sys.argv[1])\n"
               "p = argparse.ArgumentParser(); mod.add_parser(p.add_subparsers())\n"
               "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n")

TWO_TURNS = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "2+2 is 4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "3+3 is 6."},
]


@pytest.fixture(scope="module")
def neox(shared_data):
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json")
    assert tok.vocab_size == 50277
    return tok


def trained_positions(ex) -> list[int]:
    return [i for i, t in enumerate(ex.trained) if t]


# -- Must show 1: exactly which positions are trained -----------------------------------------------------------------
def test_chatml_two_turn_mask(neox):
    tok = neox
    tok.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    style = get_prompt_style("chatml")
    ex = encode_conversation(TWO_TURNS, style, tok, 10_000)
    # the same conversation written out by hand, piece by piece: (text, trained)
    pieces = [
        ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n", False),
        ("<|im_start|>user\nWhat is 2+2?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False), ("2+2 is 4.<|im_end|>", True), ("\n", False),
        ("<|im_start|>user\nAnd 3+3?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False), ("3+3 is 6.<|im_end|>", True), ("\n", False),
    ]
    expected_ids, expected_pos = [], []
    for text, trained in pieces:
        ids = tok.encode(text)
        if trained:
            expected_pos += range(len(expected_ids), len(expected_ids) + len(ids))
        expected_ids += ids
    assert ex.ids == expected_ids
    assert trained_positions(ex) == expected_pos
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert ex.ids.count(im_start) == 5 and ex.ids.count(im_end) == 5  # single special tokens, never split
    # what is trained: the two replies with their <|im_end|>, nothing of the system or user turns
    spans = tok.decode([ex.ids[i] for i in expected_pos])
    assert spans == "2+2 is 4.<|im_end|>3+3 is 6.<|im_end|>"
    assert [ex.ids[i] for i in expected_pos].count(im_end) == 2
    # as training targets (shifted by one): label t is ids[t+1] exactly where ids[t+1] is trained, else -100
    x, y = collate([ex], pad_id=0)
    assert x[0].tolist() == ex.ids[:-1]
    assert [t for t, v in enumerate(y[0].tolist()) if v != -100] == [p - 1 for p in expected_pos]


def test_alpaca_record_mask(neox):
    style = get_prompt_style("alpaca")
    for record_input in ("", "Apples, bananas."):
        messages = [{"role": "user", "content": "Name two fruits.", **({"input": record_input} if record_input else {})},
                    {"role": "assistant", "content": "Apple and banana."}]
        ex = encode_conversation(messages, style, neox, 10_000)
        prompt = style.render_instruction("Name two fruits.", record_input)
        assert ("### Input:" in prompt) == bool(record_input)
        n_prompt = len(neox.encode(prompt))
        n_reply = len(neox.encode("Apple and banana."))
        assert ex.ids[:n_prompt] == neox.encode(prompt)
        assert trained_positions(ex) == list(range(n_prompt, n_prompt + n_reply + 1))  # reply + EOS
        assert ex.ids[-1] == neox.eos_id
        assert neox.decode([ex.ids[i] for i in trained_positions(ex)]) == "Apple and banana.<|endoftext|>"


def test_truncation_keeps_whole_turns(neox):
    style = get_prompt_style("chatml")
    neox.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    full = encode_conversation(TWO_TURNS, style, neox, 10_000)
    first_exchange = encode_conversation(TWO_TURNS[:3], style, neox, 10_000)
    cut = encode_conversation(TWO_TURNS, style, neox, len(full.ids) - 1)
    assert cut.ids == first_exchange.ids  # the second exchange is dropped whole
    assert encode_conversation(TWO_TURNS, style, neox, 10) is None or any(
        encode_conversation(TWO_TURNS, style, neox, 10).trained[1:])


# -- Must show 2: ChatML tokens on GPT-NeoX, vocab 50,279 -------------------------------------------------------------
def test_neox_chatml_ids_and_vocab_growth(shared_data):
    tok = load_tokenizer(shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json")
    assert tok.add_special_tokens(["<|im_start|>", "<|im_end|>"]) == [50277, 50278]
    assert tok.vocab_size == 50279
    cfg = ModelConfig(vocab_size=50277, d_model=2048, n_layers=16, n_heads=16, max_seq_len=1024)
    with torch.device("meta"):
        model = Transformer(cfg)
    resize_vocab(model, tok.vocab_size)
    assert model.embed.weight.shape == (50279, 2048) and model.lm_head.weight.shape == (50279, 2048)
    assert model.cfg.vocab_size == 50279


@pytest.mark.parametrize("tied", [False, True])
def test_resize_keeps_rows_and_inits_new_to_mean(tied):
    cfg = ModelConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2, max_seq_len=16, tie_embeddings=tied)
    model = build_model(cfg, seed=0)
    old_e, old_h = model.embed.weight.detach().clone(), model.lm_head.weight.detach().clone()
    resize_vocab(model, 53)
    assert torch.equal(model.embed.weight[:50], old_e)
    assert torch.allclose(model.embed.weight[50:], old_e.mean(0).expand(3, -1))
    assert torch.allclose(model.lm_head.weight[50:], old_h.mean(0).expand(3, -1))
    assert (model.lm_head.weight is model.embed.weight) == tied
    logits = model(torch.tensor([[1, 51, 52]]))
    assert logits.shape == (1, 3, 53)


# -- Must show 4: bad records --------------------------------------------------------------------------------------
def test_bad_records_skipped_with_locations(tmp_path):
    good_chat = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
    lines = [
        json.dumps(good_chat),
        "{not json",
        json.dumps({"text": "no fields we know"}),
        json.dumps({"conversations": [{"from": "human", "value": "anyone?"}]}),
        json.dumps({"conversations": [{"from": "wizard", "value": "?"}, {"from": "gpt", "value": "!"}]}),
        json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}),
        json.dumps({"instruction": "Say hi", "context": "", "response": "hi"}),
        json.dumps({"instruction": "Say hi"}),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    convs, report = load_conversations([str(path)])
    assert report.loaded == len(convs) == 3 and report.skipped == 5
    where = [w for w, _ in report.problems]
    assert where == [f"{path}:{n}" for n in (2, 3, 4, 5, 8)]
    reasons = " | ".join(r for _, r in report.problems)
    for phrase in ("not JSON", "missing fields", "no assistant turn", "unknown role 'wizard'", "'output'/'response'"):
        assert phrase in reasons
    assert "5 skipped" in report.summary() and f"{path}:2" in report.summary()
    # a JSON array file reports indices; a file with no usable record is an error naming it
    arr = tmp_path / "bad.json"
    arr.write_text(json.dumps([{"conversations": []}, {"instruction": "x"}]))
    with pytest.raises(DataError, match=r"bad\.json: no usable record.*bad\.json\[0\].*bad\.json\[1\]"):
        load_conversations([str(arr)])
    with pytest.raises(DataError, match="not found"):
        load_conversations([str(tmp_path / "missing.json")])


def test_loader_resumes_exactly(neox):
    style = get_prompt_style("alpaca")
    examples = [encode_conversation([{"role": "user", "content": f"Count to {i}."},
                                     {"role": "assistant", "content": " ".join(map(str, range(i + 1)))}],
                                    style, neox, 200) for i in range(11)]
    a = SFTLoader(examples, batch_size=3, seq_len=199, seed=7, pad_id=0)
    for _ in range(4):  # into the second epoch
        a.next_batch()
    b = SFTLoader(examples, batch_size=3, seq_len=199, seed=7, pad_id=0)
    b.load_state_dict(a.state_dict())
    for _ in range(5):
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    packed = SFTLoader(examples, batch_size=1, seq_len=199, seed=7, pad_id=0, packing=True)
    assert len(packed.rows) < len(examples)
    assert sum(sum(r.trained) for r in packed.rows) == sum(sum(e.trained) for e in examples)


# -- Must show 3: SFT lowers the held-out loss; early stopping ---------------------------------------------------------
def _slice(src: Path, n: int, dst: Path) -> str:
    dst.write_text(json.dumps(json.loads(src.read_text())[:n]))
    return str(dst)


def _sft(tiny_run, out: Path, data: str, preset: str, *extra: str):
    from lmforge.train.sft import sft

    cfg = load_config(preset, [f'out_dir="{out}"', f'sft.data=["{data}"]', "train.lr=3e-3", "train.warmup_steps=2",
                               "train.eval_every=5", "train.checkpoint_every=0", "train.log_every=5",
                               "sft.val_fraction=0.1", "sft.epochs=0", "sft.patience=0", *extra])
    return sft(cfg, str(tiny_run), progress=False)


def _val_losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.fixture(scope="module")
def chat_run(tiny_run, shared_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sft_chat")
    data = _slice(shared_data / "chat" / "sharegpt-sample.json", 120, out / "chat.json")
    result = _sft(tiny_run, out / "run", data, "sft-chat-tiny", "train.max_steps=10")
    assert result.step == 10 and not result.stopped_early
    return out / "run"


def test_chat_sft_lowers_heldout_loss(chat_run, tiny_run):
    losses = _val_losses(chat_run)
    assert len(losses) == 3  # step 0 (the base model), 5, 10
    assert losses[-1] < losses[0] - 0.05, losses
    cfg = load_config(str(chat_run / "config.toml"))
    base = load_config(str(tiny_run / "config.toml"))
    assert cfg.sft.prompt_style == "chatml" and cfg.sft.init_from == str(tiny_run)
    assert cfg.model.vocab_size == base.model.vocab_size + 2
    tok = load_tokenizer(chat_run / "tokenizer")
    assert tok.token_to_id("<|im_start|>") == base.model.vocab_size
    assert tok.token_to_id("<|im_end|>") == base.model.vocab_size + 1


def test_alpaca_sft_lowers_heldout_loss(tiny_run, shared_data, tmp_path):
    data = _slice(shared_data / "instruct" / "alpaca-en-demo.json", 120, tmp_path / "alpaca.json")
    _sft(tiny_run, tmp_path / "run", data, "sft-alpaca-tiny", "train.max_steps=10")
    losses = _val_losses(tmp_path / "run")
    assert losses[-1] < losses[0] - 0.05, losses
    cfg = load_config(str(tmp_path / "run" / "config.toml"))
    assert cfg.sft.prompt_style == "alpaca"
    assert cfg.model.vocab_size == load_config(str(tiny_run / "config.toml")).model.vocab_size  # no new tokens


def test_early_stopping(tiny_run, shared_data, tmp_path):
    """With lr 0 the held-out loss can never improve on step 0: patience 2 stops the run after two evaluations."""
    data = _slice(shared_data / "instruct" / "alpaca-en-demo.json", 60, tmp_path / "alpaca.json")
    result = _sft(tiny_run, tmp_path / "run", data, "sft-alpaca-tiny", "train.lr=0.0", "train.min_lr=0.0",
                  "train.eval_every=1", "train.max_steps=40", "sft.patience=2", "train.batch_size=4")
    assert result.stopped_early and result.step == 2
    assert len(_val_losses(tmp_path / "run")) == 3


# -- Must show 5: the chat REPL through a pipe ----------------------------------------------------------------------
def test_chat_repl_through_pipe(chat_run):
    proc = subprocess.run(
        [sys.executable, "-c", ONE_COMMAND, "chat", str(chat_run), "--show-prompt", "--max-new-tokens", "12",
         "--seed", "0"],
        input="Hello there!\nWhat is your name?\n", capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    prompts = [p.split("\n--- end prompt ---")[0] for p in proc.stderr.split("--- prompt ---\n")[1:]]
    assert len(prompts) == 2
    first, second = prompts
    assert first.endswith("<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n")
    assert second.startswith(first)  # the second prompt holds the whole first exchange
    reply = second[len(first):].split("<|im_end|>")[0]
    assert reply.strip() and reply.strip() in proc.stdout
    assert second.endswith("<|im_start|>user\nWhat is your name?<|im_end|>\n<|im_start|>assistant\n")


def test_chat_session_history_commands_and_context(chat_run):
    from lmforge.checkpoint import load_model
    from lmforge.inference import Engine, SamplingParams
    from lmforge.inference.chat import ChatSession, run_prompt_style

    lm = load_model(chat_run)
    style = run_prompt_style(lm.config)
    session = ChatSession(Engine(lm.model, lm.tokenizer), style, "Be brief.",
                          SamplingParams(max_new_tokens=4, temperature=0, seed=0))
    for i in range(8):  # long messages: the 128-token context cannot hold them all
        session.reply(f"Tell me a story about the number {i} and a cat who likes fish very much.")
        assert len(session.last_prompt) + 4 <= session.engine.context
    assert session.dropped > 0 and len(session.history) < 16
    text = lm.tokenizer.decode(session.last_prompt)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "number 7" in text and "number 0" not in text
    session.reset()
    session.set_system("")
    session.reply("Hi")
    assert lm.tokenizer.decode(session.last_prompt) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert session.last_prompt == prompt_ids([{"role": "user", "content": "Hi"}], style, lm.tokenizer)


# -- smoke test ------------------------------------------------------------------------------------------------------
def test_smoke_judging_rules():
    from lmforge.eval.smoke import SUITE, judge

    story = next(p for p in SUITE if p.kind == "story")
    code = next(p for p in SUITE if p.kind == "code")
    chatml = get_prompt_style("chatml")
    good = "there lived a kind old baker who made bread for everyone in the town every single morning."
    assert judge(story, good, "length", None)[0] == "OK"
    assert judge(story, "   ", "stop", None)[:2] == ("FAIL", ["empty"])
    assert judge(story, "the cat sat " * 20, "length", None)[0] == "FAIL"
    assert judge(story, good, "length", chatml)[1] == ["no stop"]
    assert "off-template" in judge(story, good + "<|im_start|>user", "stop", chatml)[1][0]
    assert judge(story, ". the...ed.... and...s... . a the.a.i a", "length", None)[0] == "WEAK"
    fib = "\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\nprint(1)"
    assert judge(code, fib, "length", None)[0] == "OK"
    assert judge(code, fib.replace("return n", "return n +"), "length", None)[0] == "FAIL"
    assert judge(code, "\n    return n\n    x = (", "length", None)[1] == ["code parses only without its last line"]
    templated = "Sure:\n```python\ndef fibonacci(n):\n    return n if n < 2 else fibonacci(n-1) + fibonacci(n-2)\n```"
    assert judge(code, templated, "stop", chatml)[0] == "OK"


def test_smoke_command_writes_json(chat_run):
    proc = subprocess.run([sys.executable, "-c", ONE_COMMAND, "smoke", str(chat_run), "--max-new-tokens", "8"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((chat_run / "smoke.json").read_text())
    assert len(report["results"]) == 12 and report["prompt_style"] == "chatml"
    s = report["summary"]
    assert s["OK"] + s["WEAK"] + s["FAIL"] == 12
    assert f"{s['OK']} OK / {s['WEAK']} WEAK / {s['FAIL']} FAIL" in proc.stdout
    assert all(r["verdict"] in ("OK", "WEAK", "FAIL") and (r["verdict"] == "OK") == (not r["reasons"])
               for r in report["results"])


def test_sft_resume_is_exact(tiny_run, shared_data, tmp_path):
    """Kill after the step-3 checkpoint (its later checkpoint deleted), resume: the same weights as straight through."""
    import shutil

    from safetensors.torch import load_file

    from lmforge.train.sft import sft

    data = _slice(shared_data / "instruct" / "alpaca-en-demo.json", 60, tmp_path / "alpaca.json")
    run = tmp_path / "run"
    _sft(tiny_run, run, data, "sft-alpaca-tiny", "train.max_steps=6", "train.checkpoint_every=3",
         "train.batch_size=4", "train.eval_every=3")
    final = load_file(str(run / "checkpoints" / "step_000006" / "model.safetensors"))
    shutil.rmtree(run / "checkpoints" / "step_000006")
    cfg = load_config(str(run / "config.toml"))  # the saved config; --from comes from sft.init_from
    result = sft(cfg, resume=True, progress=False)
    assert result.step == 6
    resumed = load_file(str(run / "checkpoints" / "step_000006" / "model.safetensors"))
    assert final.keys() == resumed.keys()
    assert all(torch.equal(final[k], resumed[k]) for k in final)
