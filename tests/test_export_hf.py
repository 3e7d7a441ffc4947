"""Hugging Face export / import: logits, greedy continuations, weights and tokenizers survive the round trip."""
from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from _export_util import make_run  # noqa: E402
from lmforge.checkpoint import load_model  # noqa: E402
from lmforge.errors import LmforgeError  # noqa: E402
from lmforge.export import hf  # noqa: E402
from lmforge.inference import Engine, SamplingParams  # noqa: E402
from lmforge.tokenizer import train_bpe, train_unigram  # noqa: E402


@pytest.fixture(scope="module")
def bpe(stories):
    return train_bpe(stories[:200], 400, ["<|endoftext|>"])


FAMILIES = {
    "dense": ["model.n_kv_heads=4", "model.tie_embeddings=false"],
    "gqa": ["model.n_kv_heads=2", "model.head_dim=24", "model.rope_theta=500000.0"],
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip(tmp_path, bpe, stories, family):
    run = make_run(tmp_path / "run", bpe, FAMILIES[family])
    out = hf.export(run, tmp_path / "hf")
    lm = load_model(run)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_key_value_heads == lm.config.model.kv_heads

    ids = torch.tensor([bpe.encode(stories[0])[:100], bpe.encode(stories[1])[:100]])
    with torch.no_grad():
        ours, theirs = lm.model(ids), model(ids).logits
    assert (ours - theirs).abs().max().item() < 1e-4

    # Greedy continuation: transformers generate vs lmforge's KV-cache Engine at temperature 0.
    prompt = bpe.encode("Once upon a time, there was a little")
    hf_out = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                            pad_token_id=bpe.eos_id)[0, len(prompt):].tolist()
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop_at_eos=False)
    ours_out = [step[0] for step in Engine(lm.model, lm.tokenizer).generate_tokens([prompt], params)]
    assert ours_out == hf_out

    # Import back: identical weights and a run that loads like any other.
    back = hf.import_hf(out, tmp_path / "back")
    lm2 = load_model(back)
    s1, s2 = lm.model.state_dict(), lm2.model.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert lm2.tokenizer.encode(stories[2]) == bpe.encode(stories[2])
    assert lm2.tokenizer.eos_id == bpe.eos_id


def test_bpe_tokenizer_encodes_like_lmforge(tmp_path, bpe, stories):
    out = hf.export(make_run(tmp_path / "run", bpe, []), tmp_path / "hf")
    auto = transformers.AutoTokenizer.from_pretrained(out)
    text = stories[:50]
    assert [auto(t)["input_ids"] for t in text] == [bpe.encode(t) for t in text]
    joined = "<|endoftext|>".join(text[:3])
    assert auto(joined)["input_ids"] == bpe.encode(joined)
    assert auto.decode(bpe.encode(text[0])) == bpe.decode(bpe.encode(text[0]))
    assert auto.eos_token_id == bpe.eos_id
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == bpe.eos_id


def test_unigram_tokenizer_encodes_like_lmforge(tmp_path, stories):
    tok = train_unigram(stories[:200], 400, ["<|endoftext|>"])
    out = hf.export(make_run(tmp_path / "run", tok, []), tmp_path / "hf")
    auto = transformers.AutoTokenizer.from_pretrained(out)
    text = stories[200:260] + ["Ünïcode ✓ and  double  spaces\nnew line<|endoftext|>end"]
    assert [auto(t)["input_ids"] for t in text] == [tok.encode(t) for t in text]
    assert auto.decode(tok.encode(text[0])) == tok.decode(tok.encode(text[0]))


@pytest.mark.parametrize("style", ["chatml", "alpaca"])
def test_chat_template_renders_like_lmforge(tmp_path, style):
    """The exported Jinja template renders what SFT trained on (plus the EOS after replies where the style has one)."""
    from lmforge.data.templates import get_prompt_style
    from lmforge.export.hf_tokenizer import save_hf_tokenizer

    tok = train_bpe(["hello world"] * 10, 300, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    save_hf_tokenizer(tok, tmp_path, 128, style)
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    ps = get_prompt_style(style)
    eos = tok.eos_token if getattr(ps, "eos_after_reply", False) else ""
    convs = [
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Tell me a story."}],
        [{"role": "user", "content": "Sum it up.", "input": "Cats sleep a lot."}],
    ]
    for messages in convs:
        rendered = auto.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expected = "".join(text + (eos if trained else "") for text, trained in ps.segments(messages))
        assert rendered == expected + ps.assistant_prefix()


def test_refuses_what_llama_cannot_compute(tmp_path, bpe):
    run = make_run(tmp_path / "run", bpe, ['model.mlp="gelu"', "model.d_ff=0"])
    with pytest.raises(LmforgeError, match="LlamaForCausalLM"):
        hf.export(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_import_rejects_other_architectures(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(LmforgeError, match="model_type 'gpt2'"):
        hf.import_hf(tmp_path / "src", tmp_path / "out")


def test_import_sharded_and_bin(tmp_path, bpe, stories):
    """Sharded safetensors and a plain-tensor pytorch_model.bin both import to the same weights."""
    from safetensors.torch import load_file, save_file

    out = hf.export(make_run(tmp_path / "run", bpe, []), tmp_path / "hf")
    state = load_file(str(out / "model.safetensors"))
    keys = sorted(state)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (sharded / f).write_bytes((out / f).read_bytes())
    binned = tmp_path / "binned"
    binned.mkdir()
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (binned / f).write_bytes((out / f).read_bytes())
    half = len(keys) // 2
    weight_map = {}
    for i, part in enumerate((keys[:half], keys[half:])):
        name = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(sharded / name))
        weight_map.update({k: name for k in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    torch.save(state, binned / "pytorch_model.bin")
    ref = load_model(tmp_path / "run").model.state_dict()
    for src in (sharded, binned):
        got = load_model(hf.import_hf(src, tmp_path / f"back_{src.name}")).model.state_dict()
        assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.parametrize("overrides,match", [(["model.n_experts=2"], "MoE"), (['model.quant="ternary"'], "ternary")])
def test_refuses_moe_and_ternary_with_reason(tmp_path, bpe, overrides, match):
    run = make_run(tmp_path / "run", bpe, overrides)
    with pytest.raises(LmforgeError, match=match):
        hf.export(run, tmp_path / "hf")


def test_cli_export_sft_run_with_chat_template_and_import(tmp_path, stories):
    """Through the CLI: a run with a recorded ChatML prompt style exports its chat template; import-hf reads it back."""
    from lmforge.cli import main

    tok = train_bpe(stories[:100], 320, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    run = make_run(tmp_path / "run", tok, ['sft.prompt_style="chatml"', 'sft.system_prompt="Be kind."'])
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = auto.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [tok.eos_id, tok.token_to_id("<|im_end|>")]
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 2  # refuses to overwrite
