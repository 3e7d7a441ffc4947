"""Continuous batching over one shared KV cache.

A background thread owns the model. Callers `submit` a prompt with its own sampling parameters and a callback;
each loop step the worker (1) prefills newly queued requests into free cache rows, one row at a time, (2) runs one
decode forward for every active row together, (3) samples each row with that request's parameters and its own
torch.Generator (so a seeded request gives the same text whether it ran alone or beside others), and (4) streams
text deltas to each request's callback, freeing the row when the request ends. Requests that arrive while others
are decoding join the batch at the next step; nobody waits for a batch to drain.

The scheduler knows the engine (model + tokenizer), not HTTP."""
from __future__ import annotations

import heapq
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from lmforge.errors import LmforgeError
from lmforge.inference.engine import Engine
from lmforge.inference.kv_cache import KVCache
from lmforge.inference.sampling import SamplingParams, shape_logits
from lmforge.inference.textstream import TextStream

log = logging.getLogger(__name__)


@dataclass
class Event:
    """A piece of one request's output. `finish_reason` is None until the last event of the request:
    "stop" (EOS or a stop string), "length" (max tokens or the context end), "cancelled" or "error"."""
    index: int
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None


class Request:
    def __init__(self, ids: list[int], params: SamplingParams, emit: Callable[[Event], None], index: int,
                 text: TextStream, device: torch.device) -> None:
        self.ids, self.params, self.emit, self.index, self.text = ids, params, emit, index, text
        self.generator = torch.Generator(device=device)
        if params.seed is None:
            self.generator.seed()  # a fresh random seed
        else:
            self.generator.manual_seed(params.seed)
        self.history = list(ids)  # the context the repetition penalty looks at
        self.generated = 0
        self.next_token: int | None = None  # sampled, to be fed at the next decode step
        self.row: int | None = None
        self.cancelled = False
        self.finished = False

    def cancel(self) -> None:
        """Ask the worker to drop this request (e.g. the client went away); its row is freed at the next step."""
        self.cancelled = True


class Scheduler:
    def __init__(self, engine: Engine, max_batch: int = 16, start: bool = True) -> None:
        if max_batch < 1:
            raise LmforgeError("max_batch must be >= 1")
        self.engine = engine
        self.model, self.tokenizer = engine.model, engine.tokenizer
        self.max_batch = max_batch
        self.cache = KVCache.for_model(self.model, max_batch, engine.context)
        self._free = list(range(max_batch))  # a heap: lowest rows first keeps the batch contiguous
        self._pending: deque[Request] = deque()
        self._active: dict[int, Request] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.peak_batch = 0  # the most rows decoded in one forward so far
        self.decode_steps = 0
        if start:
            self.start()

    # -- public API ---------------------------------------------------------------------------------------------------
    @property
    def context(self) -> int:
        return self.engine.context

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="lmforge-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def stats(self) -> dict[str, int]:
        return {"active": len(self._active), "queued": len(self._pending), "max_batch": self.max_batch,
                "peak_batch": self.peak_batch, "decode_steps": self.decode_steps}

    def submit(self, ids: Sequence[int], params: SamplingParams, emit: Callable[[Event], None],
               index: int = 0) -> Request:
        """Queue one prompt. Raises LmforgeError for a bad prompt or bad parameters (nothing is queued then)."""
        try:
            params.validate()
        except ValueError as e:
            raise LmforgeError(str(e)) from None
        ids = list(ids)
        self.engine._check_prompt(ids)
        req = Request(ids, params, emit, index, TextStream(self.tokenizer, params.stop), self.engine.device)
        if params.max_new_tokens == 0:
            self._finish(req, "", "length")
            return req
        with self._cond:
            if self._stopping:
                raise LmforgeError("the scheduler is shutting down")
            self._pending.append(req)
            self._cond.notify()
        return req

    def generate(self, ids: Sequence[int], params: SamplingParams) -> Iterator[Event]:
        """Blocking helper: the events of one request, in order, ending with the one that has a finish_reason."""
        q: queue.Queue[Event] = queue.Queue()
        req = self.submit(ids, params, q.put)
        try:
            while True:
                ev = q.get()
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            req.cancel()

    def complete(self, ids: Sequence[int], params: SamplingParams) -> tuple[str, str, int]:
        """-> (text, finish_reason, completion tokens) for one prompt."""
        pieces, reason, n = [], "length", 0
        for ev in self.generate(ids, params):
            pieces.append(ev.text)
            reason, n = ev.finish_reason or reason, ev.completion_tokens
        return "".join(pieces), reason, n

    # -- worker -------------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():  # grad mode is per thread
            while True:
                with self._cond:
                    while not self._stopping and not self._pending and not self._active:
                        self._cond.wait()
                    if self._stopping:
                        break
                    admitted = []
                    while self._pending and self._free:
                        admitted.append((self._pending.popleft(), heapq.heappop(self._free)))
                try:
                    self._step(admitted)
                except Exception as e:  # a bug, not a bad request: fail what runs, keep serving the next ones
                    log.exception("scheduler step failed")
                    for req, row in admitted:
                        if req.row is None:
                            self._active[row] = req
                            req.row = row
                    for req in list(self._active.values()):
                        self._finish(req, "", "error", error=f"{type(e).__name__}: {e}")
                    self.cache.rows = None
        for req in list(self._active.values()) + list(self._pending):
            self._finish(req, "", "cancelled")
        self._pending.clear()

    def _step(self, admitted: list[tuple[Request, int]]) -> None:
        device = self.engine.device
        for req, row in admitted:
            req.row = row
            self._active[row] = req
            if req.cancelled:
                continue
            self.cache.reset([row])
            self.cache.rows = [row]
            logits = self.model(torch.tensor([req.ids], device=device), cache=self.cache, last_only=True)[:, -1]
            self.cache.rows = None
            self._sample([req], logits)
        for req in [r for r in self._active.values() if r.cancelled]:
            self._finish(req, "", "cancelled")
        rows = sorted(self._active)
        if not rows:
            return
        reqs = [self._active[r] for r in rows]
        self.peak_batch = max(self.peak_batch, len(rows))
        self.decode_steps += 1
        self.cache.rows = rows
        try:
            x = torch.tensor([[r.next_token] for r in reqs], device=device)
            logits = self.model(x, cache=self.cache)[:, -1]
        finally:
            self.cache.rows = None
        self._sample(reqs, logits)

    def _sample(self, reqs: list[Request], logits: torch.Tensor) -> None:
        """Shape the logits of requests with equal parameters together; draw each row with its own generator."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            p = r.params
            groups.setdefault((p.temperature, p.top_k, p.top_p, p.repetition_penalty), []).append(i)
        tokens = [0] * len(reqs)
        for idx in groups.values():
            params = reqs[idx[0]].params
            context = None
            if params.repetition_penalty != 1.0:
                width = max(len(reqs[i].history) for i in idx)
                context = torch.tensor([reqs[i].history + [-1] * (width - len(reqs[i].history)) for i in idx],
                                       device=logits.device)
            shaped = shape_logits(logits[idx], params, context)
            if params.temperature == 0:
                picked = shaped.argmax(-1).tolist()
            else:
                probs = shaped.softmax(-1)
                picked = [int(torch.multinomial(probs[j], 1, generator=reqs[i].generator))
                          for j, i in enumerate(idx)]
            for i, t in zip(idx, picked):
                tokens[i] = t
        for r, t in zip(reqs, tokens):
            self._advance(r, t)

    def _advance(self, req: Request, token: int) -> None:
        req.generated += 1
        req.history.append(token)
        if token == self.tokenizer.eos_id and req.params.stop_at_eos:
            self._finish(req, req.text.flush(), "stop")
            return
        delta, stopped = req.text.feed(token)
        if stopped:
            self._finish(req, delta, "stop")
        elif req.generated >= req.params.max_new_tokens or self.cache.lengths[req.row] + 1 >= self.cache.max_len:
            # prompt + completion fill the context (as in the engine)
            self._finish(req, delta + req.text.flush(), "length")
        else:
            req.next_token = token
            if delta:
                self._emit(req, Event(req.index, delta, None, len(req.ids), req.generated))

    def _emit(self, req: Request, event: Event) -> None:
        try:
            req.emit(event)
        except Exception:  # the receiver is gone (e.g. its event loop closed): stop generating for it
            log.debug("dropping request whose receiver failed", exc_info=True)
            req.cancelled = True

    def _finish(self, req: Request, text: str, reason: str, error: str | None = None) -> None:
        if req.finished:
            return
        req.finished = True
        if req.row is not None and self._active.get(req.row) is req:
            del self._active[req.row]
            with self._cond:
                heapq.heappush(self._free, req.row)
        self._emit(req, Event(req.index, text, reason, len(req.ids), req.generated, error))
