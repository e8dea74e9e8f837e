"""The OpenAI-compatible server: real clients (openai, httpx), continuous batching that changes no
reply, errors in OpenAI's envelope, limits, cancellation and a draining shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from tests.conftest import make_text  # noqa: E402

from lmforge import chat_template as ct  # noqa: E402
from lmforge.infer.engine import Engine  # noqa: E402
from lmforge.infer.generate import GenerationConfig, generate_text  # noqa: E402
from lmforge.infer.server import Metrics, ServedModel, create_app  # noqa: E402
from lmforge.models import build_model  # noqa: E402
from lmforge.models.config import ModelConfig  # noqa: E402
from lmforge.tokenizer import Tokenizer, TokenizerConfig  # noqa: E402

pytestmark = pytest.mark.xdist_group("server")  # one worker: the servers share the two cores


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer.train(make_text(4000).splitlines(), TokenizerConfig(kind="bpe", vocab_size=300))
    tok.chat_template = ct.TEMPLATES["plain"]
    return tok


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(arch="decoder", vocab_size=320, n_layer=2, n_head=2, d_model=32, d_ff=64, max_len=96)
    return build_model(cfg).eval()


class Server:
    """A server on a free loopback port, in a thread of this process."""

    def __init__(self, model, tokenizer, **limits):
        import uvicorn

        max_tokens = limits.pop("max_tokens", 64)
        body = limits.pop("max_body_bytes", 1 << 20)
        self.metrics = Metrics()
        ends = ct.turn_end_ids(tokenizer, tokenizer.chat_template)
        self.engine = Engine(model, tokenizer, end_ids=ends, metrics=self.metrics, **limits)
        served = ServedModel("tiny", self.engine, tokenizer, tokenizer.chat_template, max_tokens, 0)
        app = create_app(served, max_body_bytes=body, metrics=self.metrics)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not (self.server.started and self.server.servers):
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self):
        return openai.OpenAI(base_url=self.url + "/v1", api_key="x", max_retries=0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.close(drain=False, timeout=5)


@pytest.fixture(scope="module")
def server(model, tokenizer):
    s = Server(model, tokenizer, max_batch=8, max_queue=32)
    yield s
    s.close()


def solo(model, tokenizer, prompt_ids, n, ends):
    """What greedy decoding of this prompt alone gives (the reference for batched serving)."""
    return "".join(generate_text(model, tokenizer, prompt_ids, GenerationConfig(max_new_tokens=n, temperature=0),
                                 end_ids=ends))  # fmt: skip


def test_models_health_and_page(server):
    c = server.client()
    assert [m.id for m in c.models.list().data] == ["tiny"]
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "tiny" in page.text and "/v1/chat/completions" in page.text


def test_completions_equal_solo_greedy_decoding(server, model, tokenizer):
    c = server.client()
    out = c.completions.create(model="tiny", prompt="the model of", max_tokens=12, temperature=0)
    ids = tokenizer.encode("the model of")
    assert out.choices[0].text == solo(model, tokenizer, ids, 12, server.engine.end_ids)
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens <= 12
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    echo = c.completions.create(model="tiny", prompt="the model of", max_tokens=3, temperature=0, echo=True)
    assert echo.choices[0].text.startswith("the model of")


def test_chat_and_streaming_through_the_openai_client(server, model, tokenizer):
    c = server.client()
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the data"}]
    whole = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    text = whole.choices[0].message.content
    ids = ct.encode_chat(tokenizer, messages, tokenizer.chat_template, add_generation_prompt=True).ids
    assert text == solo(model, tokenizer, ids, 10, server.engine.end_ids)
    pieces, usage, reasons = [], None, []
    stream = c.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0, stream=True,
                                       stream_options={"include_usage": True})  # fmt: skip
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == text and reasons[-1] in ("stop", "length")
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_raw_server_sent_events(server):
    body = {"model": "tiny", "prompt": "the", "max_tokens": 4, "stream": True, "temperature": 0}
    with httpx.stream("POST", server.url + "/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"text_completion"} and chunks[-1]["choices"][0]["finish_reason"]


def test_concurrent_requests_share_steps_and_each_gets_its_own_reply(server, model, tokenizer):
    prompts = [
        "the model",
        "a word of the data",
        "it is",
        "value",
        "return the string of a list",
        "one",
        "time",
        "of",
    ]
    lengths = [5, 20, 9, 14, 3, 17, 11, 8]

    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        return await asyncio.gather(*[
            c.completions.create(model="tiny", prompt=p, max_tokens=n, temperature=0) for p, n in zip(prompts, lengths)
        ])  # fmt: skip

    outs = asyncio.run(main())
    for p, n, out in zip(prompts, lengths, outs):
        assert out.choices[0].text == solo(model, tokenizer, tokenizer.encode(p), n, server.engine.end_ids), p


def test_seeds_reproduce_sampling_whatever_shares_the_batch(server):
    c = server.client()
    ask = dict(model="tiny", prompt="the model", max_tokens=12, temperature=1.0, top_p=0.9)
    a = c.completions.create(**ask, seed=7).choices[0].text
    b = c.completions.create(**ask, seed=7).choices[0].text
    assert a == b
    many = c.completions.create(**ask, seed=7, n=3)
    assert many.choices[0].text == a and len({ch.text for ch in many.choices}) > 1


def test_stop_strings_and_logprobs(server, model, tokenizer):
    c = server.client()
    full = c.completions.create(model="tiny", prompt="the", max_tokens=20, temperature=0).choices[0].text
    cut = full[3:6] if len(full) > 6 else full[-1:]
    stopped = c.completions.create(model="tiny", prompt="the", max_tokens=20, temperature=0, stop=[cut])
    assert stopped.choices[0].text == full[: full.find(cut)] and stopped.choices[0].finish_reason == "stop"

    out = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "the"}], max_tokens=3,
                                    temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    first = out.choices[0].logprobs.content[0]
    ids = ct.encode_chat(tokenizer, [{"role": "user", "content": "the"}], tokenizer.chat_template,
                         add_generation_prompt=True).ids  # fmt: skip
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids]))[0, -1].float(), -1)
    best = ref.topk(3)
    assert first.logprob == pytest.approx(float(best.values[0]), abs=1e-4)
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_penalties_change_the_reply(server):
    c = server.client()
    plain = c.completions.create(model="tiny", prompt="the", max_tokens=30, temperature=0).choices[0].text
    penalised = c.completions.create(model="tiny", prompt="the", max_tokens=30, temperature=0,
                                     frequency_penalty=2.0, presence_penalty=2.0).choices[0].text  # fmt: skip
    assert penalised != plain


def test_a_refused_stream_is_an_error_status_not_an_event(server):
    body = {"model": "tiny", "prompt": "the " * 300, "stream": True}
    r = httpx.post(server.url + "/v1/completions", json=body)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(
    "body, status, needle",
    [
        (b"{bad json", 400, "not valid JSON"),
        (b"\xff\xfe\x00", 400, "not valid JSON"),
        (b"[1, 2]", 400, "body"),
        (json.dumps({"model": "tiny", "prompt": "a", "max_tokens": "many"}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny", "prompt": "a", "frobnicate": 1}).encode(), 400, "Unrecognized request argument supplied: frobnicate"),
        (json.dumps({"model": "tiny", "prompt": "a", "max_tokens": 10_000}).encode(), 400, "limit"),
        (json.dumps({"model": "tiny", "prompt": "the " * 300}).encode(), 400, "context"),
        (json.dumps({"model": "tiny", "prompt": "a", "temperature": 5}).encode(), 400, "temperature"),
        (json.dumps({"model": "tiny", "prompt": "a", "logit_bias": {"1": 2}}).encode(), 400, "logit_bias is not supported"),
        (json.dumps({"model": "nope", "prompt": "a"}).encode(), 404, "does not exist"),
    ],
)  # fmt: skip
def test_bad_completion_requests(server, body, status, needle):
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and needle in err["message"]


@pytest.mark.parametrize(
    "messages, needle",
    [
        ([], "messages"),
        ([{"role": "robot", "content": "hi"}], "role"),
        ([{"role": "user", "content": ""}], "empty"),
        ([{"role": "user"}], "empty"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages"),
    ],
)
def test_bad_chat_requests(server, messages, needle):
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]


def test_a_body_over_the_limit_is_413_and_the_server_goes_on(server):
    big = b"x" * (100 << 20)  # 100 MB against a 1 MB limit
    r = httpx.post(server.url + "/v1/completions", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():
        for _ in range(4):
            yield b"x" * (512 << 10)

    r = httpx.post(
        server.url + "/v1/completions", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert server.client().completions.create(model="tiny", prompt="the", max_tokens=2).choices


def test_unknown_paths_and_metrics(server):
    r = httpx.get(server.url + "/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert (
        httpx.post(server.url + "/v1/completions", json={"model": "tiny"}).status_code == 400
    )  # counted below
    text = httpx.get(server.url + "/metrics").text
    for name in ("lmforge_requests_total", "lmforge_queue_depth", "lmforge_tokens_per_second",
                 "lmforge_time_to_first_token_seconds_bucket", "lmforge_generated_tokens_total"):  # fmt: skip
        assert name in text
    assert re.search(r'lmforge_requests_total\{endpoint="/v1/completions",status="400"\} [1-9]', text)


def test_a_full_queue_is_429(model, tokenizer):
    s = Server(model, tokenizer, max_batch=1, max_queue=1, max_tokens=80)
    try:
        body = {"model": "tiny", "prompt": "the", "max_tokens": 80, "temperature": 0}

        async def main():
            async with httpx.AsyncClient(base_url=s.url, timeout=60) as c:
                return await asyncio.gather(*[c.post("/v1/completions", json=body) for _ in range(6)])

        codes = sorted(r.status_code for r in asyncio.run(main()))
        assert codes[0] == 200 and 429 in codes
        assert httpx.get(s.url + "/health").status_code == 200
    finally:
        s.close()


def test_a_client_that_leaves_cancels_its_generation(model, tokenizer):
    s = Server(model, tokenizer, max_batch=2, max_queue=4, max_tokens=90)
    try:
        body = {"model": "tiny", "prompt": "the", "max_tokens": 90, "stream": True, "stop": ["never said"]}
        with httpx.stream("POST", s.url + "/v1/completions", json=body) as r:
            next(r.iter_lines())
        deadline = time.monotonic() + 10
        while s.engine.running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.engine.running == 0
    finally:
        s.close()


def test_sigterm_drains_in_flight_requests_and_refuses_new_ones(model, tokenizer, tmp_path):
    from lmforge.run import write_run

    run = write_run(tmp_path / "tiny", model=model, model_config=model.config, tokenizer=tokenizer,
                    config={"objective": "clm"})  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(run), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    try:
        line = proc.stderr.readline()
        port = int(re.search(r":(\d+)/", line).group(1))
        url = f"http://127.0.0.1:{port}"
        body = {"model": "tiny", "prompt": "the", "max_tokens": 60, "stream": True, "temperature": 0}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=60) as r:
            events = r.iter_lines()
            lines = [next(events)]
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.3)
            with pytest.raises(httpx.TransportError):  # no longer listening
                httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "a"}, timeout=5)
            lines += list(events)
        assert [line for line in lines if line][-1] == "data: [DONE]"  # the one in flight finished
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once drained
    finally:
        proc.kill()


def test_fuzzing_the_servers_own_schema_finds_no_server_error(server):
    """schemathesis generates valid and invalid requests from /openapi.json: never a 5xx, and the
    server is healthy after (the model name is set right in most valid cases, so they get past
    the 404 and into generation)."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    seen: dict[int, int] = {}

    def fuzz(op, mode):
        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case):
            if isinstance(case.body, dict) and mode is GenerationMode.POSITIVE:
                case.body["model"] = "tiny"
                if isinstance(case.body.get("max_tokens"), int):
                    case.body["max_tokens"] = min(case.body["max_tokens"], 8)
            r = case.call(base_url=server.url, timeout=60)
            seen[r.status_code] = seen.get(r.status_code, 0) + 1
            assert r.status_code < 500, (case.body, r.text[:300])

        try:
            call()
        except Unsatisfiable:  # no invalid request exists for an operation without inputs
            assert mode is GenerationMode.NEGATIVE

    for result in schema.get_all_operations():
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(result.ok(), mode)
    assert seen.get(200, 0) > 10 and seen.get(400, 0) > 10
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
    assert server.client().completions.create(model="tiny", prompt="the", max_tokens=2).choices


def _chromium() -> str | None:
    import shutil

    return next(
        (p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None
    )


def test_the_chat_page_streams_replies_keeps_the_conversation_and_shows_errors(model, tokenizer):
    """The page at / in a real headless Chromium (the distribution's: no browser download)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    executable = _chromium()
    if executable is None:
        pytest.skip("no Chromium on this machine (apt install chromium)")
    server = Server(model, tokenizer, max_batch=2, max_queue=4, max_tokens=12)  # short replies: two turns fit
    with server, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.fill("#input", "the model")
            page.click("#send")
            page.wait_for_function(
                "document.querySelectorAll('.assistant').length == 1 && !document.querySelector('#send').disabled"
            )
            assert page.inner_text(".assistant").strip()  # a sampled reply (the page sends no temperature)
            page.fill("#input", "and the data")
            page.press("#input", "Enter")
            page.wait_for_function(
                "document.querySelectorAll('.assistant').length == 2 && !document.querySelector('#send').disabled"
            )
            assert page.locator(".user").count() == 2  # the conversation is kept and sent whole
            page.fill("#input", "the " * 300)  # longer than the context: the server's error is shown
            page.click("#send")
            page.wait_for_function("document.querySelector('#error').textContent.length > 0")
            assert "context" in page.inner_text("#error") and page.locator(".user").count() == 2
            page.click("#reset")
            assert page.locator(".message").count() == 0
        finally:
            browser.close()


def test_a_failing_prefill_or_step_ends_its_requests_with_an_error_and_the_rest_go_on(
    model, tokenizer, monkeypatch
):
    s = Server(model, tokenizer, max_batch=4, max_queue=8, max_tokens=20)
    try:
        admit = s.engine.slots.admit

        def refuse_one(prompts):
            if any(p[:2] == tokenizer.encode("zz zz")[:2] for p in prompts):
                raise RuntimeError("no memory for this one")
            return admit(prompts)

        monkeypatch.setattr(s.engine.slots, "admit", refuse_one)
        bad = httpx.post(
            s.url + "/v1/completions", json={"model": "tiny", "prompt": "zz zz", "max_tokens": 3}, timeout=30
        )
        assert bad.status_code == 500 and "no memory" in bad.json()["error"]["message"]
        good = httpx.post(
            s.url + "/v1/completions", json={"model": "tiny", "prompt": "the", "max_tokens": 3}, timeout=30
        )
        assert good.status_code == 200
        monkeypatch.setattr(
            s.engine.slots, "step", lambda ids: (_ for _ in ()).throw(RuntimeError("step broke"))
        )
        body = {"model": "tiny", "prompt": "the", "max_tokens": 5, "stream": True}
        with httpx.stream("POST", s.url + "/v1/completions", json=body, timeout=30) as r:
            lines = [line for line in r.iter_lines() if line]
        assert "step broke" in lines[-2] and lines[-1] == "data: [DONE]"
    finally:
        s.close()
