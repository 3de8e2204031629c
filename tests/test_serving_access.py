"""Who may POST to `tfx-gpt2 serve`: API keys, body types, the feedback rate limit, and the
refusal to listen beyond loopback without keys (a real server with keys, real clients)."""

import json
import time

import pytest
from mlflow_helpers import OurServer, get, post_json, register_tiny

from tfx_gpt2.serving.access import ApiKeyError, ApiKeys, RateLimiter, key_id

NAME = "access-tiny"
ALICE, BOB, CAROL = "alice-0123456789abcdef", "bob-fedcba9876543210xyz", "carol-00112233445566778899"
GREEDY = {"max_new_tokens": 3, "temperature": 0.0}
ROUTES = {  # a valid body of each POST route
    "/v1/completions": {"prompt": "Hi", "max_tokens": 2, "temperature": 0},
    "/invocations": {"inputs": ["Hi"], "params": GREEDY},
    "/api/v1.0/predictions": {"data": {"ndarray": ["Hi"]}, "parameters": GREEDY},
    f"/v2/models/{NAME}/infer": {"inputs": [{"name": "text_input", "shape": [1], "datatype": "BYTES",
                                             "data": ["Hi"]}], "parameters": GREEDY},
}


@pytest.fixture(scope="module")
def keyed(mlflow_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("keyed")
    keys = root / "keys.txt"
    keys.write_text(f"# the team's keys\nalice:{ALICE}\n{BOB}\ncarol:{CAROL}\n")
    champion = register_tiny(mlflow_server.uri, str(root / "m"), NAME)
    server = OurServer(champion, str(root), ["--api-keys-file", str(keys), "--feedback-per-minute", "1",
                                             "--feedback-burst", "3", "--max-batch-size", "2"],
                       tracking_uri=mlflow_server.uri)
    yield server
    server.stop()


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


def message(body) -> str:
    return json.dumps(body)


@pytest.mark.parametrize("path", list(ROUTES) + ["/v1/feedback"])
def test_post_routes_need_a_known_key(keyed, path):
    body = ROUTES.get(path, {"completion_id": "cmpl-x", "rating": 1})
    for headers in ({}, bearer("wrong-key-0123456789"), {"Authorization": f"Basic {ALICE}"}):
        status, answer, head = post_json(keyed.url + path, body, headers, answer_headers=True)
        assert status == 401 and head["WWW-Authenticate"] == "Bearer", (headers, answer)
        assert "Authorization: Bearer" in message(answer)
    if path != "/v1/feedback":
        assert post_json(keyed.url + path, body, bearer(ALICE))[0] == 200
        assert post_json(keyed.url + path, body, bearer(BOB))[0] == 200
    assert get(keyed.url + "/ping")[0] == 200 and get(keyed.url + "/v1/models")[0] == 200  # GETs stay open


@pytest.mark.parametrize("path", list(ROUTES) + ["/v1/feedback"])
@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"])
def test_json_routes_refuse_the_bodies_another_site_can_post(keyed, path, kind):
    """A web page can POST these three types to any address without the browser asking first."""
    body = json.dumps(ROUTES.get(path, {"completion_id": "cmpl-x", "rating": 1})).encode()
    status, answer = post_json(keyed.url + path, body, {**bearer(ALICE), "Content-Type": kind})
    assert status == 415 and "application/json" in message(answer), answer


def test_records_and_logs_carry_the_key_id_never_the_key(keyed):
    from tfx_gpt2.feedback.store import SqliteStore

    status, answer = post_json(keyed.url + "/v1/completions", ROUTES["/v1/completions"], bearer(BOB))
    assert status == 200
    status, fb = post_json(keyed.url + "/v1/feedback", {"completion_id": answer["id"], "rating": 1}, bearer(BOB))
    assert status == 200, fb
    store = SqliteStore(keyed.feedback_dir + "/feedback.db")
    deadline = time.monotonic() + 30
    while store.completion(answer["id"]) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.completion(answer["id"])["key_id"] == key_id(BOB)
    (_, record), = store.feedback_of(answer["id"])
    assert record["key_id"] == key_id(BOB)
    log = keyed.read_log()
    assert f'"key_id": "{key_id(BOB)}"' in log and '"key_id": "alice"' in log
    assert ALICE not in log and BOB not in log


def test_feedback_is_rate_limited_per_key_with_retry_after(keyed):
    ids = []
    for _ in range(5):
        status, answer = post_json(keyed.url + "/v1/completions", {**ROUTES["/v1/completions"], "prompt": ["a", "b"]},
                                   bearer(ALICE))
        ids.append(answer["id"])
    statuses = []
    for cid in ids:
        for index in (0, 1):
            status, answer, head = post_json(keyed.url + "/v1/feedback", {"completion_id": cid, "rating": 1,
                                                                         "index": index}, bearer(ALICE), True)
            statuses.append(status)
            if status == 429:
                assert int(head["Retry-After"]) >= 1 and "alice" in answer["error"]["message"]
    # a burst of 3 (the earlier tests spent none of alice's), then 1 a minute: no more in these seconds
    assert statuses[:3] == [200] * 3 and statuses[3:] == [429] * 7, statuses
    assert post_json(keyed.url + "/v1/feedback", {"completion_id": ids[-1], "rating": 1, "index": 1},
                     bearer(BOB))[0] == 200  # bob's own bucket


def test_key_files_and_variables():
    keys = ApiKeys.parse(f"alice:{ALICE}\n\n# comment\n{BOB}  # trailing comment\n", "file")
    assert keys.identify(ALICE) == "alice" and keys.identify(BOB) == key_id(BOB) and keys.identify("x" * 20) is None
    assert ApiKeys.load(env="KEYS", environ={"KEYS": f"a:{ALICE},b:{BOB}"}).identify(BOB) == "b"
    assert not ApiKeys().required and ApiKeys.load().entries == ()
    for text, words in [("a:short", "at least 16"), (f"a:{ALICE}\na:{BOB}", "given twice"), ("# none\n", "no key"),
                        (f"anonymous:{ALICE}", "means no key")]:
        with pytest.raises(ApiKeyError, match=words):
            ApiKeys.parse(text, "file")
    with pytest.raises(ApiKeyError, match="not set"):
        ApiKeys.load(env="KEYS", environ={})
    with pytest.raises(ApiKeyError, match="readable file"):
        ApiKeys.load(path="/nonexistent/keys")


def test_non_loopback_needs_keys_or_allow_anonymous(capsys, tmp_path):
    from tfx_gpt2.cli import _api_keys, build_parser, main

    assert main(["serve", "models:/m@champion", "--host", "0.0.0.0", "--feedback-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--allow-anonymous" in err and "--api-keys-file" in err
    args = build_parser().parse_args(["serve", "m", "--host", "0.0.0.0", "--allow-anonymous"])
    assert not _api_keys(args).required and "without API keys" in capsys.readouterr().err
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert not _api_keys(build_parser().parse_args(["serve", "m", "--host", host])).required


def test_the_rate_limiter_refills_at_its_rate():
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=2, clock=lambda: now[0])
    assert [limiter.take("k") for _ in range(3)] == [0, 0, pytest.approx(1.0)]
    now[0] = 0.5
    assert limiter.take("k") == pytest.approx(0.5) and limiter.take("other") == 0
    now[0] = 1.0
    assert limiter.take("k") == 0 and limiter.take("k") == pytest.approx(1.0)


def test_the_playground_asks_for_the_key(keyed):
    """In a real Chromium: the key field shows on a server with keys; without a key, Generate says
    so; with one, the text arrives and the rating is recorded."""
    from selenium.webdriver.common.by import By
    from test_playground import make_browser, wait_for

    browser = make_browser()
    try:
        browser.get(keyed.url + "/")
        by_id = lambda name: browser.find_element(By.ID, name)  # noqa: E731
        wait_for(browser, lambda d: by_id("status").text == "ready")
        assert by_id("key-field").is_displayed()
        by_id("prompt").send_keys("Hello")
        by_id("max_tokens").clear()
        by_id("max_tokens").send_keys("4")  # the tiny model's context is 16 tokens
        by_id("generate").click()
        wait_for(browser, lambda d: "Authorization: Bearer" in by_id("status").text)
        by_id("api_key").send_keys(CAROL)  # alice's feedback is spent by the rate-limit test
        by_id("generate").click()
        wait_for(browser, lambda d: by_id("status").text.startswith("done"))
        by_id("thumbs-up").click()
        wait_for(browser, lambda d: by_id("rate-status").text.startswith(("thank you", "the rating was not")))
        assert by_id("rate-status").text == "thank you: recorded"
    finally:
        browser.quit()
