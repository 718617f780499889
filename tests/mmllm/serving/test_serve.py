"""`mmllm serve` through the official `openai` client and raw HTTP: the answers are `mmllm ask`'s (plain and
streamed, greedy and seeded), concurrent clients get their own answers, and every bad request gets OpenAI's
error JSON with a 4xx status without disturbing the requests batched with it."""

from __future__ import annotations

import base64
import concurrent.futures

import pytest
from commands import http, run_mmllm, start_server
from shard_fixtures import huge_png_header

pytestmark = pytest.mark.slow
openai = pytest.importorskip("openai")

KEY = "test-key"
QUESTIONS = ["What colour is the circle?", "Is there a red star?", "How many shapes are there?", "Describe the image."]


@pytest.fixture(scope="module")
def server(sharp):
    folder, _ = sharp
    process, url = start_server("--model", folder, "--api-key", KEY, "--max-batch", "8", "--max-tokens", "64")
    yield url
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


def data_uri(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def question(path, text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(path)}},
                                         {"type": "text", "text": text}]}]


def test_models_and_health(server, client):
    assert [model.id for model in client.models.list().data] == ["model"]
    assert http("GET", f"{server}/health")[1]["status"] == "ok"


def test_plain_and_streamed_answers_are_mmllm_asks(trained, sharp, client):
    _, reference = sharp
    for path, text in zip(sorted(trained.images.glob("*.png")), QUESTIONS):
        expected = reference.ask(path, text, max_new_tokens=12)
        reply = client.chat.completions.create(model="model", messages=question(path, text), max_tokens=12)
        assert reply.choices[0].message.content == expected and expected
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage.completion_tokens <= 12
        chunks = list(client.chat.completions.create(model="model", messages=question(path, text), max_tokens=12,
                                                     stream=True))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
        assert chunks[-1].choices[0].finish_reason == reply.choices[0].finish_reason


def test_the_command_line_gives_the_same_answer(trained, sharp, client):
    folder, _ = sharp
    path = trained.image
    result = run_mmllm("ask", "--model", folder, path, QUESTIONS[0], "--max-new-tokens", "12")
    assert result.returncode == 0, result.stderr
    reply = client.chat.completions.create(model="model", messages=question(path, QUESTIONS[0]), max_tokens=12)
    assert reply.choices[0].message.content == result.stdout.strip()


def test_seeded_sampling_and_stop_strings_follow_the_python_api(trained, sharp, client):
    _, reference = sharp
    path = trained.image
    sampled = reference.ask(path, QUESTIONS[1], max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7)
    reply = client.chat.completions.create(model="model", messages=question(path, QUESTIONS[1]), max_tokens=16,
                                           temperature=1.0, top_p=0.9, seed=7)
    assert reply.choices[0].message.content == sampled
    greedy = reference.ask(path, QUESTIONS[1], max_new_tokens=16)
    stop = greedy[len(greedy) // 2:][:3]
    cut = client.chat.completions.create(model="model", messages=question(path, QUESTIONS[1]), max_tokens=16,
                                         stop=[stop])
    assert cut.choices[0].message.content == greedy[:greedy.index(stop)].rstrip()
    assert cut.choices[0].finish_reason == "stop"


def test_concurrent_clients_get_their_own_answers_and_a_bad_request_disturbs_none(trained, sharp, server, client):
    _, reference = sharp
    paths = sorted(trained.images.glob("*.png"))
    jobs = [(paths[i % len(paths)], QUESTIONS[i % len(QUESTIONS)]) for i in range(8)]
    expected = [reference.ask(path, text, max_new_tokens=20) for path, text in jobs]

    def ask(job):
        path, text = job
        return client.chat.completions.create(model="model", messages=question(path, text),
                                              max_tokens=20).choices[0].message.content

    def bad(_):
        broken = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                                                          "iVBORw0KGgo!!"}}]}]
        return http("POST", f"{server}/v1/chat/completions", {"messages": broken},
                    {"Authorization": f"Bearer {KEY}"})[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        answers = [pool.submit(ask, job) for job in jobs]
        refused = [pool.submit(bad, None) for _ in range(2)]
        assert [future.result() for future in answers] == expected
        assert [future.result() for future in refused] == [400, 400]
    assert len(set(expected)) > 1


def post(server, body, key: str | None = KEY, declared_length: int | None = None):
    """(status, JSON) of a completion request; body: a JSON-able value, or bytes sent as they are."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return http("POST", f"{server}/v1/chat/completions", body, headers, declared_length)


def image_message(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": "What is it?"}]}]


BOMB = "data:image/png;base64," + base64.b64encode(huge_png_header(30000, 30000)).decode()
USER = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    ([1, 2], 400, "JSON object"),
    ({"messages": []}, 400, "non-empty list"),
    ({"messages": "hello"}, 400, "non-empty list"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "unknown role"),
    ({"messages": [{"role": "user", "content": 3}]}, 400, "no text content"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "user"),
    ({"messages": USER, "max_tokens": "many"}, 400, "max_tokens"),
    ({"messages": USER, "max_tokens": 10_000}, 400, "max_tokens"),
    ({"messages": USER, "temperature": 9}, 400, "temperature"),
    ({"messages": USER, "stream": "yes"}, 400, "stream"),
    ({"messages": USER, "stop": [1]}, 400, "stop"),
    ({"messages": image_message("data:image/png;base64,@@@")}, 400, "base64"),
    ({"messages": image_message(BOMB)}, 400, "too large"),
    ({"messages": image_message("https://example.com/cat.png")}, 400, "does not fetch"),
    ({"messages": image_message("/etc/passwd")}, 400, "does not fetch"),
    ({"messages": image_message("file:///etc/passwd")}, 400, "does not fetch"),
    ({"messages": [{"role": "user", "content": "word " * 5000}]}, 400, "no room"),
])
def test_bad_requests_get_openai_errors_with_a_4xx_status(server, body, status, says):
    code, response = post(server, body)
    assert code == status, response
    error = response["error"]
    assert says in error["message"] and error["type"] == "invalid_request_error"


def test_the_api_key_is_required_and_the_body_size_limited(server):
    assert post(server, {"messages": USER}, key=None)[0] == 401
    assert post(server, {"messages": USER}, key="wrong")[1]["error"]["code"] == "invalid_api_key"
    status, response = post(server, None, declared_length=21 * 1024 * 1024)
    assert status == 413 and "body" in response["error"]["message"]
    assert http("GET", f"{server}/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})[0] == 404
    assert http("GET", f"{server}/")[0] == 200  # the page itself needs no key


def test_the_server_binds_to_loopback_unless_told_otherwise(server):
    from mmllm.cli.main import build_parser

    args = build_parser(["serve"]).parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1"


def test_a_request_past_its_time_limit_ends_with_finish_reason_length(trained, sharp):
    process, url = start_server("--model", sharp[0], "--timeout", "0.001")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="model", messages=question(trained.image, QUESTIONS[3]),
                                               max_tokens=48)
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens <= 2
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_several_images_and_turns_give_mmllm_chats_answer(trained, sharp, client):
    _, reference = sharp
    first, second = sorted(trained.images.glob("*.png"))[:2]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_uri(first)}},
                                     {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "Shapes."},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                     {"type": "image_url", "image_url": {"url": data_uri(second)}}]},
    ]
    ours = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "<image>\nWhat is this?"},
            {"role": "assistant", "content": "Shapes."}, {"role": "user", "content": "And this one?\n<image>"}]
    expected = reference.chat(ours, [first, second], max_new_tokens=12)
    reply = client.chat.completions.create(model="model", messages=messages, max_tokens=12)
    assert reply.choices[0].message.content == expected and expected
