"""The inference engine: prefill + KV-cache decoding for one or many prompts, streaming tokens or text.

The engine knows the model and tokenizer, not the server or the REPL that use it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from lmforge.errors import LmforgeError
from lmforge.inference.kv_cache import KVCache
from lmforge.inference.sampling import SamplingParams, sample_next
from lmforge.inference.textstream import TextStream
from lmforge.tokenizer import Tokenizer


@dataclass
class Completion:
    text: str
    tokens: list[int]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int


def _column_major_head(model: torch.nn.Module) -> None:
    """Store the output head's [vocab, d_model] weight column-major (same values, same shape, another layout).
    Decoding multiplies one activation row by it every token; CPU BLAS streams that layout about 2.5x faster
    (measured on 2 cores: 1.7 ms vs 4.5 ms for 32000 x 288), and the head is most of a small model's bytes.
    (The same trick on SwiGLU's gate/up gave no measurable gain in the whole decode step, so it stops here.)"""
    head = getattr(model, "lm_head", None)
    if not isinstance(head, torch.nn.Linear) or head.weight.stride(0) == 1:
        return
    with torch.no_grad():
        head.weight = torch.nn.Parameter(head.weight.t().contiguous().t(), requires_grad=head.weight.requires_grad)
    if getattr(model.cfg, "tie_embeddings", False):
        model.embed.weight = head.weight  # stay tied


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.context = model.cfg.max_seq_len
        self.device = next(model.parameters()).device
        if self.device.type == "cpu":
            _column_major_head(model)

    def _check_prompt(self, ids: Sequence[int]) -> None:
        if not ids:
            raise LmforgeError("the prompt is empty")
        if len(ids) >= self.context:
            raise LmforgeError(f"the prompt has {len(ids)} tokens; the model's context is {self.context} "
                               f"(the prompt must leave room for at least one new token)")

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is None:
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g

    @torch.inference_mode()
    def generate_tokens(self, prompts: list[list[int]], params: SamplingParams) -> Iterator[list[int | None]]:
        """Yield one list per decoding step: the new token of each row, or None for rows that have finished
        (EOS, or the context is full). Rows may have different prompt lengths."""
        params.validate()
        for ids in prompts:
            self._check_prompt(ids)
        B = len(prompts)
        longest = max(len(p) for p in prompts)
        max_len = min(self.context, longest + params.max_new_tokens)
        cache = KVCache.for_model(self.model, B, max_len)
        gen = self._generator(params.seed)
        eos = self.tokenizer.eos_id if params.stop_at_eos else None
        history = [list(p) for p in prompts]
        if all(len(p) == longest for p in prompts):
            logits = self.model(torch.tensor(prompts, device=self.device), cache=cache, last_only=True)[:, -1]
        else:  # prefill rows one by one into the shared cache
            rows = []
            for r, ids in enumerate(prompts):
                cache.rows = [r]
                rows.append(self.model(torch.tensor([ids], device=self.device), cache=cache, last_only=True)[:, -1])
            cache.rows = None
            logits = torch.cat(rows)
        done = [False] * B
        for _ in range(params.max_new_tokens):
            context = None
            if params.repetition_penalty != 1.0:
                width = max(len(h) for h in history)
                context = torch.tensor([h + [-1] * (width - len(h)) for h in history], device=self.device)
            nxt = sample_next(logits, params, gen, context).tolist()
            out: list[int | None] = []
            for r, t in enumerate(nxt):
                if done[r]:
                    out.append(None)
                    continue
                history[r].append(t)
                out.append(t)
                if t == eos or cache.lengths[r] + 1 >= max_len:
                    done[r] = True
            yield out
            if all(done):
                return
            logits = self.model(torch.tensor([[t] for t in nxt], device=self.device), cache=cache)[:, -1]

    def stream(self, prompt: str | list[int], params: SamplingParams) -> Iterator[str]:
        """Text deltas for one prompt, stopping at EOS, a stop string, max_new_tokens or the context end."""
        for delta, _ in self._stream_with_reason(prompt, params):
            if delta:
                yield delta

    def _stream_with_reason(self, prompt: str | list[int], params: SamplingParams) -> Iterator[tuple[str, str | None]]:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        eos = self.tokenizer.eos_id
        text = TextStream(self.tokenizer, params.stop)
        for step in self.generate_tokens([ids], params):
            t = step[0]
            if t is None:
                break
            if t == eos and params.stop_at_eos:
                yield text.flush(), "stop"  # the text held back for a stop string that never came
                return
            delta, stopped = text.feed(t)
            if stopped:
                yield delta, "stop"
                return
            if delta:
                yield delta, None
        yield text.flush(), "length"

    def complete(self, prompt: str | list[int], params: SamplingParams) -> Completion:
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        pieces, reason = [], "length"
        for delta, why in self._stream_with_reason(ids, params):
            pieces.append(delta)
            reason = why or reason
        text = "".join(pieces)
        return Completion(text, self.tokenizer.encode(text), reason, len(ids))

    def complete_batch(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Several prompts decoded together in one batch (one forward pass per step for all of them)."""
        ids = [self.tokenizer.encode(p) for p in prompts]
        outs: list[list[int]] = [[] for _ in prompts]
        reasons = ["length"] * len(prompts)
        eos = self.tokenizer.eos_id if params.stop_at_eos else None
        for step in self.generate_tokens(ids, params):
            for r, t in enumerate(step):
                if t is None:
                    continue
                if t == eos:
                    reasons[r] = "stop"
                else:
                    outs[r].append(t)
        results = []
        for r, toks in enumerate(outs):
            text, reason = self.tokenizer.decode(toks), reasons[r]
            cuts = [text.find(s) for s in params.stop if s in text]
            if cuts:
                text, reason = text[: min(cuts)], "stop"
            results.append(Completion(text, self.tokenizer.encode(text), reason, len(ids[r])))
        return results
