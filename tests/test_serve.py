"""The OpenAI-compatible server, driven over real HTTP (uvicorn on a free localhost port) with the official
`openai` client; reference outputs come from the plain Engine on the same checkpoint."""
from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from lmforge.checkpoint import load_model
from lmforge.data.templates import get_prompt_style
from lmforge.inference import Engine, SamplingParams
from lmforge.inference.server import BackgroundServer, app_for_run


@pytest.fixture(scope="module")
def ref(tiny_run) -> Engine:
    lm = load_model(tiny_run)
    return Engine(lm.model, lm.tokenizer)


@pytest.fixture(scope="module")
def server(tiny_run):
    app = app_for_run(tiny_run, max_batch=8)
    with BackgroundServer(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def model_name(server) -> str:
    return server[1].state.model_name


def test_models_health_and_page(server, client, model_name):
    url, app = server
    assert [m.id for m in client.models.list().data] == [model_name]
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["max_batch"] == 8
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "/v1/chat/completions" in page.text
    # the run has no [sft] section and its tokenizer no <|im_start|>: the plain User/Assistant style
    assert app.state.prompt_style.name == "plain"


def test_completion_matches_engine(client, model_name, ref):
    prompt = "Once upon a time"
    r = client.completions.create(model=model_name, prompt=prompt, max_tokens=12, temperature=0.9, seed=5,
                                  extra_body={"top_k": 40, "ignore_eos": True})
    want = ref.complete(prompt, SamplingParams(max_new_tokens=12, temperature=0.9, top_k=40, seed=5,
                                               stop_at_eos=False))
    assert r.choices[0].text == want.text and r.choices[0].text
    assert r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(ref.tokenizer.encode(prompt)) and r.usage.completion_tokens == 12


def test_chat_completion_and_stream_give_the_same_text(client, model_name, ref):
    messages = [{"role": "system", "content": "You tell short stories."},
                {"role": "user", "content": "Tell me about a cat."}]
    kw = dict(model=model_name, messages=messages, max_tokens=24, temperature=1.0, seed=11, top_p=0.95,
              extra_body={"repetition_penalty": 1.2})
    full = client.chat.completions.create(**kw)
    text = full.choices[0].message.content
    assert full.choices[0].message.role == "assistant" and text
    chunks = list(client.chat.completions.create(stream=True, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 1  # really streamed, not one blob
    assert "".join(pieces) == text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason
    # the server rendered the conversation with the run's prompt style and stopped at its stop strings
    style = get_prompt_style("plain")
    want = ref.complete(style.prompt(messages), SamplingParams(max_new_tokens=24, temperature=1.0, seed=11, top_p=0.95,
                                                               repetition_penalty=1.2, stop=list(style.stop)))
    assert text == want.text


def test_stop_strings_cut_the_answer(client, model_name):
    kw = dict(model=model_name, prompt="The little dog", max_tokens=30, seed=3, extra_body={"ignore_eos": True})
    text = client.completions.create(**kw).choices[0].text
    stop = text[8:10]
    cut = client.completions.create(stop=[stop], **kw).choices[0]
    assert cut.text == text[: text.find(stop)] and cut.finish_reason == "stop"
    streamed = client.completions.create(stop=stop, stream=True, **kw)
    assert "".join(c.choices[0].text for c in streamed) == cut.text


BAD_REQUESTS = [  # (path, raw body, status, param)
    ("/v1/chat/completions", '{"messages": [', 400, None),
    ("/v1/chat/completions", json.dumps({"max_tokens": 5}), 400, "messages"),
    ("/v1/chat/completions", json.dumps({"messages": []}), 400, "messages"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}), 400,
     "max_tokens"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "story " * 400}]}), 400, "messages"),
    ("/v1/chat/completions", json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404,
     "model"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "wizard", "content": "hi"}]}), 400, "messages.0.role"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}), 400, "top_p"),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user", "content": "hi"}], "n": 2}), 400, "n"),
    ("/v1/chat/completions", json.dumps(["not", "an", "object"]), 400, None),
    ("/v1/completions", json.dumps({"prompt": "Once", "max_tokens": -5}), 400, "max_tokens"),
    ("/v1/completions", json.dumps({"prompt": [10 ** 6]}), 400, "prompt"),
    ("/v1/completions", json.dumps({"prompt": "word " * 400}), 400, "prompt"),
    ("/v1/completions", json.dumps({"max_tokens": 3}), 400, "prompt"),
]


@pytest.mark.parametrize("path,body,status,param", BAD_REQUESTS)
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, path, body, status, param):
    url = server[0]
    r = httpx.post(url + path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["param"] == param
    ok = httpx.post(url + "/v1/completions", json={"prompt": "Once", "max_tokens": 2})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


def test_openai_client_raises_the_status(client, model_name):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=model_name, messages=[{"role": "user", "content": "hi"}], max_tokens=-1)
    assert e.value.status_code == 400
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="hi")


def test_16_concurrent_streams_complete_correctly(server, client, model_name, ref):
    prompts = [f"Once upon a time there was a {w}" for w in
               ["cat", "dog", "girl", "boy", "tree", "bird", "fish", "king", "queen", "frog", "bear", "ship",
                "star", "moon", "ball", "cake"]]
    results: dict[int, tuple[str, str | None]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(prompts))

    def worker(i: int) -> None:
        try:
            barrier.wait()
            stream = client.completions.create(model=model_name, prompt=prompts[i], max_tokens=24 + i, seed=100 + i,
                                               stream=True, extra_body={"ignore_eos": True})
            text, reason = "", None
            for chunk in stream:
                text += chunk.choices[0].text
                reason = chunk.choices[0].finish_reason or reason
            results[i] = (text, reason)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(results) == list(range(16))
    for i, p in enumerate(prompts):
        want = ref.complete(p, SamplingParams(max_new_tokens=24 + i, temperature=1.0, seed=100 + i, stop_at_eos=False))
        assert results[i] == (want.text, "length"), i
    health = httpx.get(server[0] + "/health").json()
    assert health["peak_batch"] > 1  # the requests shared forward passes
    assert health["active"] == 0 and health["queued"] == 0


def test_api_key(tiny_run):
    app = app_for_run(tiny_run, api_key="s3cret", max_batch=2)
    with BackgroundServer(app) as url:
        name = app.state.model_name
        for key in ("wrong", "s3cret-but-longer"):
            bad = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as e:
                bad.completions.create(model=name, prompt="Once", max_tokens=2)
            assert e.value.status_code == 401
        r = httpx.get(url + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model=name, prompt="Once", max_tokens=2).choices[0].text is not None
        assert httpx.get(url + "/health").status_code == 200


def test_serve_command_parses():
    import argparse

    from lmforge.commands import serve

    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "runs/x", "--api-key", "k", "--max-batch", "4"])
    assert (args.host, args.port, args.api_key, args.max_batch, args.func) == ("127.0.0.1", 8000, "k", 4, serve.run)


# -- the scheduler on its own (no HTTP) -------------------------------------------------------------------------------
def _drain(q) -> tuple[str, str, int]:
    text = ""
    while True:
        ev = q.get(timeout=60)
        text += ev.text
        if ev.finish_reason is not None:
            return text, ev.finish_reason, ev.completion_tokens


def test_scheduler_batches_mixed_requests_like_the_engine_alone(ref):
    import queue

    from lmforge.inference.scheduler import Scheduler

    cases = [("Once upon a time", SamplingParams(max_new_tokens=20, temperature=0)),
             ("The cat sat", SamplingParams(max_new_tokens=15, temperature=0.8, seed=1)),
             ("Lily and Tom went to the park. They played", SamplingParams(max_new_tokens=25, temperature=1.0,
                                                                           top_p=0.9, seed=2, stop_at_eos=False)),
             ("One day", SamplingParams(max_new_tokens=18, temperature=0.7, top_k=20, repetition_penalty=1.3, seed=3)),
             ("A big red", SamplingParams(max_new_tokens=30, temperature=1.0, seed=4, stop=["."])),
             ("Mom said", SamplingParams(max_new_tokens=10, temperature=1.2, seed=5))]
    sched = Scheduler(ref, max_batch=4, start=False)  # 6 requests, 4 rows: two wait for a free row
    queues = []
    for prompt, params in cases:
        q = queue.Queue()
        sched.submit(ref.tokenizer.encode(prompt), params, q.put)
        queues.append(q)
    sched.start()
    try:
        got = [_drain(q) for q in queues]
    finally:
        sched.stop()
    assert sched.peak_batch == 4
    for (prompt, params), (text, reason, _) in zip(cases, got):
        want = ref.complete(prompt, params)
        assert (text, reason) == (want.text, want.finish_reason), prompt


def test_scheduler_cancel_context_end_and_bad_prompts(ref):
    from lmforge.errors import LmforgeError
    from lmforge.inference.scheduler import Scheduler

    sched = Scheduler(ref, max_batch=2)
    try:
        # a cancelled request frees its row; the others go on
        gen = sched.generate(ref.tokenizer.encode("Once"), SamplingParams(max_new_tokens=10_000, stop_at_eos=False))
        next(gen)
        gen.close()  # cancels
        text, reason, n = sched.complete(ref.tokenizer.encode("Once"), SamplingParams(max_new_tokens=5, seed=0,
                                                                                      stop_at_eos=False))
        assert reason == "length" and n == 5
        assert sched.stats()["active"] == 0
        # the context end stops a request (the prompt leaves room for 3 tokens)
        ids = (ref.tokenizer.encode("the cat and the dog " * 40))[: ref.context - 3]
        _, reason, n = sched.complete(ids, SamplingParams(max_new_tokens=50, stop_at_eos=False))
        assert (reason, n) == ("length", 3)
        assert sched.complete(ids, SamplingParams(max_new_tokens=0)) == ("", "length", 0)
        with pytest.raises(LmforgeError, match="context"):
            sched.submit(list(range(ref.context)), SamplingParams(), print)
        with pytest.raises(LmforgeError, match="top_p"):
            sched.submit([1, 2], SamplingParams(top_p=0), print)
    finally:
        sched.stop()


def test_body_is_json_whatever_the_content_type(server):
    # `curl -d '{...}'` sends application/x-www-form-urlencoded; OpenAI's API reads the body as JSON anyway
    r = httpx.post(server[0] + "/v1/completions", content=json.dumps({"prompt": "Once", "max_tokens": 3}),
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json()["object"] == "text_completion"
