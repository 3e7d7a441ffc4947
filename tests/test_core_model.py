"""Model and inference engine: KV-cache decoding equals full recomputation (MHA and GQA), batched rows of different
lengths, the engine equals naive generation, sampling controls behave."""
from __future__ import annotations

import pytest
import torch

from lmforge.config import ModelConfig
from lmforge.inference import Engine, KVCache, SamplingParams
from lmforge.inference.sampling import apply_repetition_penalty, sample_next
from lmforge.model import build_model
from lmforge.tokenizer import train_bpe

CONFIGS = {
    "mha": ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, max_seq_len=64),
    "gqa": ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64),
    "mqa-layernorm-gelu": ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=1, mlp="gelu",
                                      norm="layernorm", tie_embeddings=True, max_seq_len=64),
}


def _model(name: str) -> torch.nn.Module:
    model = build_model(CONFIGS[name], seed=1)
    with torch.no_grad():  # larger weights than init so attention is far from uniform and errors would show
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5)
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_logits_equal_full_recomputation(name):
    model = _model(name)
    x = torch.randint(0, 97, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(x)
        cache = KVCache.for_model(model, 3)
        pieces = [model(x[:, :17], cache=cache)]  # prefill, then one token at a time, then a chunk
        pieces += [model(x[:, t:t + 1], cache=cache) for t in range(17, 30)]
        pieces.append(model(x[:, 30:], cache=cache))
    assert (torch.cat(pieces, 1) - full).abs().max().item() < 1e-4
    assert cache.lengths == [40, 40, 40]


@pytest.mark.parametrize("name", ["mha", "gqa"])
def test_rows_of_different_lengths_share_one_cache(name):
    model = _model(name)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 97, (1, 12), generator=g), torch.randint(0, 97, (1, 5), generator=g)
    with torch.no_grad():
        cache = KVCache.for_model(model, 2)
        for row, ids in enumerate((a, b)):
            cache.rows = [row]
            model(ids, cache=cache)
        cache.rows = None
        nxt = torch.tensor([[3], [4]])
        batched = model(nxt, cache=cache)[:, -1]
        ref_a = model(torch.cat([a, nxt[:1]], 1))[:, -1]
        ref_b = model(torch.cat([b, nxt[1:]], 1))[:, -1]
    assert (batched[0] - ref_a[0]).abs().max().item() < 1e-4
    assert (batched[1] - ref_b[0]).abs().max().item() < 1e-4


@pytest.fixture(scope="module")
def engine(stories):
    tok = train_bpe(stories[:100], 300)
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=96)
    return Engine(build_model(cfg, seed=3).eval(), tok)


def test_engine_matches_naive_generation(engine):
    """Greedy decoding with the KV cache equals re-running the whole sequence for every new token."""
    prompt = engine.tokenizer.encode("Once upon a time")
    params = SamplingParams(max_new_tokens=30, temperature=0, stop_at_eos=False)
    fast = [step[0] for step in engine.generate_tokens([prompt], params)]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(30):
            ids.append(int(engine.model(torch.tensor([ids]))[0, -1].argmax()))
    assert fast == ids[len(prompt):]


def test_batched_generation_equals_one_by_one(engine):
    prompts = ["Once upon a time", "The dog", "Lily and Ben went to the park to"]
    params = SamplingParams(max_new_tokens=20, temperature=0, stop_at_eos=False)
    together = [c.text for c in engine.complete_batch(prompts, params)]
    alone = [engine.complete(p, params).text for p in prompts]
    assert together == alone


def test_seeded_sampling_is_reproducible_and_seed_dependent(engine):
    params = dict(max_new_tokens=25, temperature=1.0, stop_at_eos=False)
    a = engine.complete("Once", SamplingParams(seed=7, **params)).text
    b = engine.complete("Once", SamplingParams(seed=7, **params)).text
    c = engine.complete("Once", SamplingParams(seed=8, **params)).text
    assert a == b and a != c


def test_stop_strings_and_max_tokens(engine):
    out = engine.complete("Once", SamplingParams(max_new_tokens=40, temperature=0, stop_at_eos=False))
    assert out.finish_reason == "length"
    stop = out.text[5:8]
    cut = engine.complete("Once", SamplingParams(max_new_tokens=40, temperature=0, stop_at_eos=False, stop=[stop]))
    assert cut.finish_reason == "stop" and cut.text == out.text[: out.text.find(stop)]
    streamed = "".join(engine.stream("Once", SamplingParams(max_new_tokens=40, temperature=0, stop_at_eos=False,
                                                            stop=[stop])))
    assert streamed == cut.text


def test_prompt_longer_than_context_is_rejected(engine):
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="the model's context is 96"):
        engine.complete(list(range(1, 200)), SamplingParams(max_new_tokens=5))


def test_top_k_top_p_and_repetition_penalty():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    assert all(sample_next(logits, SamplingParams(temperature=1.0, top_k=1), g).item() == 1 for _ in range(20))
    assert all(sample_next(logits, SamplingParams(temperature=1.0, top_p=0.01), g).item() == 1 for _ in range(20))
    picks = {sample_next(logits, SamplingParams(temperature=1.0, top_k=2), g).item() for _ in range(200)}
    assert picks == {1, 2}
    penalized = apply_repetition_penalty(logits, torch.tensor([[1, 3, -1]]), 2.0)
    assert penalized.tolist() == [[1.0, 1.5, 2.0, -2.0]]
    assert sample_next(logits, SamplingParams(temperature=0, repetition_penalty=4.0), context=torch.tensor([[1]])
                       ).item() == 2
