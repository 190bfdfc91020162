"""The local API Gateway + Lambda + EventBridge front, driven over real HTTP against fixture functions."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import conduix_local.front as front_mod
import pytest
from aws_lambda_powertools.utilities.parser.models import APIGatewayProxyEventModel, EventBridgeModel
from conduix_local.front import Front
from conduix_local.front.base import InvocationError
from conduix_local.front.events import MalformedResponse, proxy_response_to_http
from conduix_local.front.routing import Router
from conduix_local.front.schedules import CronExpr, next_fire, parse_rate
from conduix_local.front.workers import WORKER_SCRIPT
from conduix_local.functions import FunctionSpec, Route, load_functions
from conduix_local.template import load_template

FIXTURES = Path(__file__).parent / "fixtures" / "front"
REFS = {"Table": "t-Table", "Queue.Arn": "arn:aws:sqs:us-east-1:123456789012:q", "Secret": "s3cret"}
OPERATOR_KEY = "op-key-for-tests"


def _specs(*ids: str) -> list[FunctionSpec]:
    specs = load_functions(load_template(FIXTURES / "template.yaml"), REFS, base_dir=FIXTURES)
    return [s for s in specs if not ids or s.logical_id in ids]


def _request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: list[tuple[str, str]] | None = None,
    timeout: float = 10,
) -> tuple[int, http.client.HTTPResponse, bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest(method, path)
        for name, value in headers or []:
            conn.putheader(name, value)  # putheader, unlike a dict, can repeat a header
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        return resp.status, resp, resp.read()
    finally:
        conn.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (ProcessLookupError, FileNotFoundError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie of a non-reaping init is dead too


def _stderr_until(capfd: pytest.CaptureFixture[str], *needles: str, timeout: float = 5) -> str:
    """Worker logs reach stderr through a forwarding thread, so they may trail the response."""
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += capfd.readouterr().err
        if all(n in seen for n in needles):
            break
        time.sleep(0.05)
    return seen


@pytest.fixture(scope="module")
def tick_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("front") / "ticks.jsonl"


@pytest.fixture(scope="module")
def front(tick_file: Path) -> Iterator[Front]:
    specs = _specs()
    with Front(
        specs,
        operator_key=OPERATOR_KEY,
        max_workers_per_function=2,
        extra_env={"TICK_FILE": str(tick_file), "AWS_REGION": "eu-west-1", "LOCAL_EXTRA": "yes"},
        schedules_enabled=False,
    ) as f:
        yield f


# ------------------------------------------------------------------------------------------------ routing


def test_router_precedence_and_params() -> None:
    router = Router(_specs())

    def resolve(method: str, path: str) -> tuple[str, str, dict[str, str]] | list[str]:
        match, allowed = router.resolve(method, path)
        return (match.function, match.route.path_template, match.path_parameters) if match else allowed

    assert resolve("GET", "/items/special") == ("EchoFunction", "/items/special", {})  # literal beats {id}
    assert resolve("GET", "/items/42") == ("EchoFunction", "/items/{id}", {"id": "42"})
    assert resolve("GET", "/items/a%20b") == ("EchoFunction", "/items/{id}", {"id": "a b"})
    assert resolve("DELETE", "/files/a/b%2Fc/d") == ("EchoFunction", "/files/{proxy+}", {"proxy": "a/b/c/d"})
    assert resolve("GET", "/echo/") == ("EchoFunction", "/echo", {})  # trailing slash ignored
    assert resolve("PATCH", "/echo") == ("EchoFunction", "/echo", {})  # ANY
    assert resolve("GET", "/") == ("EchoFunction", "/", {})
    assert resolve("GET", "/files") == []  # {proxy+} needs at least one segment
    assert resolve("GET", "/nope") == []
    assert resolve("POST", "/items/42") == ["GET"]
    assert resolve("GET", "/chatty") == ["POST", "PUT"]
    assert resolve("PUT", "/chatty") == ("ChattyFunction", "/chatty", {})


def test_router_rejects_duplicate_routes() -> None:
    a = FunctionSpec("A", Path("."), "app.h", 3, 128, {}, [Route("ANY", "/x")])
    b = FunctionSpec("B", Path("."), "app.h", 3, 128, {}, [Route("ANY", "/x")])
    with pytest.raises(ValueError, match="A and B"):
        Router([a, b])


def test_unknown_route_is_404_and_wrong_method_405(front: Front) -> None:
    status, _, body = _request(front.url, "GET", "/nope?x=1")
    assert status == 404
    assert json.loads(body) == {
        "error": {"message": "Unknown route: GET /nope", "type": "invalid_request_error", "code": "not_found"}
    }
    status, resp, body = _request(front.url, "GET", "/chatty")
    assert status == 405
    assert resp.getheader("Allow") == "POST, PUT"
    assert json.loads(body)["error"]["code"] == "method_not_allowed"


def test_body_over_10mb_is_413(front: Front) -> None:
    status, _, body = _request(front.url, "POST", "/echo", b"x" * (10 * 1024 * 1024 + 1))
    assert status == 413
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


# ------------------------------------------------------------------------------------------------ events


def test_proxy_event_shape(front: Front) -> None:
    status, _, raw = _request(
        front.url,
        "GET",
        "/items/a%20b?a=1&a=2&empty=&flag&sp=x%20y",
        headers=[("X-Rep", "one"), ("X-Rep", "two"), ("User-Agent", "tests/1.0")],
    )
    assert status == 200
    event = json.loads(raw)["event"]
    APIGatewayProxyEventModel.model_validate(event)  # what Powertools' parser would accept
    assert event["resource"] == "/items/{id}"
    assert event["path"] == "/items/a%20b"
    assert event["httpMethod"] == "GET"
    assert event["pathParameters"] == {"id": "a b"}
    assert event["headers"]["X-Rep"] == "two"
    assert event["multiValueHeaders"]["X-Rep"] == ["one", "two"]
    assert event["queryStringParameters"] == {"a": "2", "empty": "", "flag": "", "sp": "x y"}
    assert event["multiValueQueryStringParameters"] == {
        "a": ["1", "2"],
        "empty": [""],
        "flag": [""],
        "sp": ["x y"],
    }
    assert event["stageVariables"] is None
    assert event["body"] is None and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert (
        ctx["resourcePath"] == "/items/{id}" and ctx["httpMethod"] == "GET" and ctx["path"] == "/items/a%20b"
    )
    assert (ctx["stage"], ctx["accountId"], ctx["apiId"]) == ("local", "123456789012", "local")
    assert ctx["identity"]["sourceIp"] == "127.0.0.1" and ctx["identity"]["userAgent"] == "tests/1.0"
    assert abs(ctx["requestTimeEpoch"] - time.time() * 1000) < 10_000


def test_proxy_event_without_query_and_with_bodies(front: Front) -> None:
    _, _, raw = _request(front.url, "POST", "/files/a/b", b'{"hello": "w\xc3\xb6rld"}')
    event = json.loads(raw)["event"]
    assert event["queryStringParameters"] is None and event["multiValueQueryStringParameters"] is None
    assert event["pathParameters"] == {"proxy": "a/b"}
    assert (event["body"], event["isBase64Encoded"]) == ('{"hello": "wörld"}', False)
    _, _, raw = _request(front.url, "PUT", "/echo", b"\xff\x00binary")
    event = json.loads(raw)["event"]
    assert (event["body"], event["isBase64Encoded"]) == ("/wBiaW5hcnk=", True)


def test_chunked_request_body(front: Front) -> None:
    host, port = front.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/echo", body=iter([b"ab", b"cd"]), encode_chunked=True)
        assert json.loads(conn.getresponse().read())["event"]["body"] == "abcd"
    finally:
        conn.close()


def test_response_headers_status_and_binary(front: Front) -> None:
    status, resp, _ = _request(front.url, "GET", "/echo?status=201")
    assert status == 201
    assert resp.headers.get_all("Set-Cookie") == ["a=1", "b=2", "c=3"]
    assert resp.headers.get_all("X-Multi") == ["m1", "m2"]
    assert resp.getheader("X-Single") == "s"
    assert resp.getheader("x-amzn-RequestId")
    status, resp, body = _request(front.url, "GET", "/echo?binary=1")
    assert (status, body, resp.getheader("Content-Type")) == (200, b"\x00\xffbin", "application/octet-stream")


def test_proxy_response_conversion() -> None:
    status, headers, body = proxy_response_to_http({"statusCode": 204})
    assert (status, headers, body) == (204, [("Content-Type", "application/json")], b"")
    bad_results: list[Any] = [
        "text",
        {"body": "x"},
        {"statusCode": "200"},
        {"statusCode": 200, "body": {}},
        {"statusCode": 200, "headers": {"a": {"b": 1}}},
        {"statusCode": 200, "isBase64Encoded": "yes"},
        {"statusCode": 200, "body": "%%%", "isBase64Encoded": True},
    ]
    for bad in bad_results:
        with pytest.raises(MalformedResponse):
            proxy_response_to_http(bad)


def test_context_env_and_cwd(front: Front) -> None:
    body = json.loads(_request(front.url, "GET", "/echo")[2])
    code_dir = str((FIXTURES / "functions").resolve())
    assert body["cwd"] == code_dir and body["sys_path0"] == code_dir
    ctx = body["context"]
    assert ctx["function_name"] == "EchoFunction" and ctx["function_version"] == "$LATEST"
    assert ctx["invoked_function_arn"] == "arn:aws:lambda:eu-west-1:123456789012:function:EchoFunction"
    assert ctx["memory_limit_in_mb"] == "1024"
    assert ctx["log_group_name"] == "/aws/lambda/EchoFunction" and ctx["log_stream_name"]
    assert 0 < ctx["remaining_ms"] <= 5000
    env = body["env"]
    assert env["TABLE_NAME"] == "t-Table" and env["QUEUE_ARN"] == REFS["Queue.Arn"]
    assert env["LOCAL_EXTRA"] == "yes" and env["AWS_REGION"] == "eu-west-1"
    assert (
        env["AWS_LAMBDA_FUNCTION_NAME"] == "EchoFunction" and env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "1024"
    )


# ------------------------------------------------------------------------------------------------ workers


def test_warm_worker_is_reused(front: Front) -> None:
    first = json.loads(_request(front.url, "GET", "/echo")[2])
    second = json.loads(_request(front.url, "GET", "/echo")[2])
    assert first["pid"] == second["pid"] and first["cold_start_at"] == second["cold_start_at"]
    assert first["context"]["aws_request_id"] != second["context"]["aws_request_id"]


def test_keep_alive_connection(front: Front) -> None:
    host, port = front.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        for path in ("/echo", "/nope", "/echo"):
            conn.request("GET", path)
            conn.getresponse().read()
    finally:
        conn.close()


def test_parallel_calls_use_at_most_max_workers(front: Front) -> None:
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: _request(front.url, "GET", "/sleep?s=0.4"), range(4)))
    elapsed = time.monotonic() - started
    assert [r[0] for r in results] == [200] * 4
    pids = {json.loads(r[2])["pid"] for r in results}
    assert len(pids) == 2  # two ran side by side, the other two waited for a warm worker
    assert elapsed >= 0.8
    assert front.worker_pids("SleepFunction") == sorted(pids)


def test_cold_starts_run_in_parallel() -> None:
    with Front(_specs("SleepFunction"), operator_key=OPERATOR_KEY, max_workers_per_function=3) as f:
        started = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: _request(f.url, "GET", "/sleep?s=0.5"), range(3)))
        assert time.monotonic() - started < 1.4  # one after the other would take 1.5 s
        assert len({json.loads(r[2])["pid"] for r in results}) == 3


def test_missing_code_dir_fails_the_invocation(tmp_path: Path) -> None:
    spec = FunctionSpec("Gone", tmp_path / "missing", "app.h", 3, 128, {}, [Route("ANY", "/gone")])
    with Front([spec], operator_key=OPERATOR_KEY) as f:
        with pytest.raises(InvocationError, match="InvalidEntrypoint"):
            f.invoke("Gone", {})
        assert _request(f.url, "GET", "/gone")[0] == 502
        assert f.worker_pids() == []


def test_timeout_is_504_and_the_worker_replaced() -> None:
    with Front(_specs("SleepFunction"), operator_key=OPERATOR_KEY, max_workers_per_function=1) as f:
        warm_pid = json.loads(_request(f.url, "GET", "/sleep?s=0")[2])["pid"]
        started = time.monotonic()
        status, _, body = _request(f.url, "GET", "/sleep?s=5")
        assert status == 504 and time.monotonic() - started < 3
        assert json.loads(body)["error"]["code"] == "gateway_timeout"
        assert not _alive(warm_pid) and f.worker_pids() == []
        status, _, body = _request(f.url, "GET", "/sleep?s=0")
        assert status == 200 and json.loads(body)["pid"] != warm_pid


def test_handler_exception_is_502_without_trace(front: Front, capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(2):
        status, _, body = _request(front.url, "POST", "/boom")
        assert status == 502
        assert json.loads(body) == {
            "error": {"message": "The function failed to answer.", "type": "api_error", "code": "bad_gateway"}
        }
    assert len(front.worker_pids("BoomFunction")) == 1  # an error doesn't cost the warm worker
    err = _stderr_until(capfd, "[BoomFunction] Traceback", "kaboom: secret internals")
    assert "RuntimeError" in err


def test_malformed_result_is_502(front: Front) -> None:
    status, _, body = _request(front.url, "GET", "/malformed")
    assert status == 502 and json.loads(body)["error"]["code"] == "bad_gateway"


def test_import_error_is_502_and_leaves_no_worker(front: Front, capfd: pytest.CaptureFixture[str]) -> None:
    status, _, _ = _request(front.url, "GET", "/broken")
    assert status == 502
    assert front.worker_pids("BrokenFunction") == []
    assert "conduix_local_fixture_missing_module" in _stderr_until(
        capfd, "[BrokenFunction]", "ModuleNotFound"
    )


def test_function_stdout_goes_to_logs_not_the_protocol(
    front: Front, capfd: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        status, _, body = _request(front.url, "POST", "/chatty")
        assert status == 200 and json.loads(body)["pid"]
    err = _stderr_until(capfd, "raw fd 1 write", "a warning on stderr")
    assert "[ChattyFunction] plain print to stdout" in err
    assert '[ChattyFunction] {"level": "INFO", "message": "structured log"}' in err


def test_powertools_function(front: Front, capfd: pytest.CaptureFixture[str]) -> None:
    status, resp, body = _request(front.url, "GET", "/pt/hello/ada")
    assert status == 200 and resp.getheader("Content-Type") == "application/json"
    answer = json.loads(body)
    assert answer["hello"] == "ada" and answer["request_id"]
    assert _request(front.url, "GET", "/pt/nope")[0] == 404  # the resolver's own 404
    err = _stderr_until(capfd, '"message":"saying hello"', '"Hellos"')
    assert f'"function_request_id":"{answer["request_id"]}"' in err


# ------------------------------------------------------------------------------------------------ /_local/run


def test_local_run_requires_the_operator_key(front: Front) -> None:
    for headers in ([], [("Authorization", "Bearer wrong")], [("Authorization", OPERATOR_KEY)]):
        status, _, body = _request(front.url, "POST", "/_local/run/TickFunction", b"{}", headers)
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    auth = [("Authorization", f"Bearer {OPERATOR_KEY}")]
    assert _request(front.url, "POST", "/_local/run/NoSuchFunction", None, auth)[0] == 404
    assert _request(front.url, "GET", "/_local/run/TickFunction", None, auth)[0] == 405


def test_local_run_invokes(front: Front, tick_file: Path) -> None:
    auth = [("Authorization", f"Bearer {OPERATOR_KEY}")]
    status, _, body = _request(front.url, "POST", "/_local/run/TickFunction", b'{"job": "x"}', auth)
    assert status == 200
    assert json.loads(body) == {"function": "TickFunction", "result": {"ticked": True, "event": {"job": "x"}}}
    status, _, body = _request(front.url, "POST", "/_local/run/TickFunction", None, auth)
    event = json.loads(body)["result"]["event"]
    EventBridgeModel.model_validate(event)
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["region"] == "eu-west-1" and event["time"].endswith("Z")
    status, _, body = _request(front.url, "POST", "/_local/run/BoomFunction", None, auth)
    assert status == 502
    assert json.loads(body)["error"] == {
        "errorType": "RuntimeError",
        "errorMessage": "kaboom: secret internals",
    }


# ------------------------------------------------------------------------------------------------ schedules


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("cron(15 0 1 * ? *)", "2024-01-15T10:00", "2024-02-01T00:15"),
        ("cron(15 0 1 * ? *)", "2024-02-01T00:15", "2024-03-01T00:15"),  # strictly after
        ("cron(15 0 1 * ? *)", "2024-12-31T23:59:59", "2025-01-01T00:15"),
        ("cron(0/15 * * * ? *)", "2024-01-01T10:16", "2024-01-01T10:30"),
        ("cron(5,10 8-9 * * ? *)", "2024-01-01T09:10", "2024-01-02T08:05"),
        ("cron(0 9 ? * MON-FRI *)", "2024-06-08T12:00", "2024-06-10T09:00"),  # Saturday -> Monday
        ("cron(0 12 ? * 1 *)", "2024-06-10T00:00", "2024-06-16T12:00"),  # 1 is Sunday
        ("cron(0 0 31 * ? *)", "2024-04-01T00:00", "2024-05-31T00:00"),  # April has no 31st
        ("cron(0 0 29 FEB ? *)", "2024-03-01T00:00", "2028-02-29T00:00"),
        ("cron(0 0 1 1 ? 2030)", "2024-01-01T00:00", "2030-01-01T00:00"),
        ("cron(0 0 1 1 ? 2030)", "2030-01-01T00:00", None),
        ("rate(1 minute)", "2024-01-01T00:00:30", "2024-01-01T00:01:30"),
    ],
)
def test_next_fire(expression: str, after: str, expected: str | None) -> None:
    assert next_fire(expression, _dt(after)) == (_dt(expected) if expected else None)


def test_rate_counts_from_its_anchor() -> None:
    anchor = _dt("2024-01-01T00:00:10")
    assert parse_rate("rate(5 minutes)") == timedelta(minutes=5)
    assert parse_rate("rate(1 day)") == timedelta(days=1)
    assert parse_rate("rate(2 hours)") == timedelta(hours=2)
    assert next_fire("rate(5 minutes)", _dt("2024-01-01T00:07:00"), anchor) == _dt("2024-01-01T00:10:10")
    assert next_fire("rate(5 minutes)", _dt("2024-01-01T00:10:10"), anchor) == _dt("2024-01-01T00:15:10")


@pytest.mark.parametrize(
    "expression",
    [
        "rate(1 minutes)", "rate(2 hour)", "rate(0 minutes)", "rate(1 week)",
        "cron(0 0 * * * *)", "cron(0 0 ? * ? *)", "cron(0 0 L * ? *)", "cron(0 0 ? * 2#1 *)",
        "cron(60 0 * * ? *)", "cron(0 0 * * ?)", "cron(0 0 1-x * ? *)",
    ],
)  # fmt: skip
def test_invalid_schedule_expressions(expression: str) -> None:
    with pytest.raises(ValueError):
        next_fire(expression, _dt("2024-01-01T00:00"))


def test_bad_schedule_fails_at_construction() -> None:
    spec = _specs("TickFunction")[0]
    spec.schedules[0] = replace(spec.schedules[0], expression="rate(1 minutes)")
    with pytest.raises(ValueError, match="TickFunction: schedule EveryMinute"):
        Front([spec], operator_key=OPERATOR_KEY)


def test_cron_parse_fields() -> None:
    cron = CronExpr.parse("cron(0/20 8-10/2 ? JAN,jul MON-WED *)")
    assert cron.minutes == {0, 20, 40} and cron.hours == {8, 10} and cron.days is None
    assert cron.months == {1, 7} and cron.weekdays == {2, 3, 4}


def test_schedules_fire_scheduled_events_and_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Every rule due 0.2 s from "now", so the scheduler thread fires without waiting for a minute.
    monkeypatch.setattr(
        front_mod, "next_fire", lambda expr, after, anchor=None: after + timedelta(seconds=0.2)
    )
    ticks = tmp_path / "ticks.jsonl"
    env = {"TICK_FILE": str(ticks)}
    with Front(_specs("TickFunction"), operator_key=OPERATOR_KEY, extra_env=env, schedules_enabled=False):
        time.sleep(0.6)
    assert not ticks.exists()
    with Front(_specs("TickFunction"), operator_key=OPERATOR_KEY, extra_env=env):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            events = [json.loads(line) for line in ticks.read_text().splitlines()] if ticks.exists() else []
            if {"job": "monthly"} in events and any("detail-type" in e for e in events):
                break
            time.sleep(0.05)
    scheduled = next(e for e in events if "detail-type" in e)
    EventBridgeModel.model_validate(scheduled)
    assert scheduled["resources"][0].endswith(":123456789012:rule/TickFunctionEveryMinute")
    assert {"job": "monthly"} in events


# ------------------------------------------------------------------------------------------------ stop


def test_a_built_function_s_harness_is_where_the_front_runs_it_from() -> None:
    # (the e2e stack runs built functions under it; the fixtures here run `-m` instead)
    assert WORKER_SCRIPT.is_file() and WORKER_SCRIPT.name == "worker.py"
    assert "def main" in WORKER_SCRIPT.read_text()


def test_stop_leaves_no_processes() -> None:
    f = Front(_specs("ChattyFunction", "SleepFunction"), operator_key=OPERATOR_KEY).start()
    try:
        body = json.loads(_request(f.url, "POST", "/chatty?spawn=1")[2])
        worker, child = body["pid"], body["child"]
        assert _alive(worker) and _alive(child)
        slow: list[int] = []

        def call_slow() -> None:
            try:
                slow.append(_request(f.url, "GET", "/sleep?s=0.9")[0])
            except OSError:
                slow.append(-1)  # the connection went away with the server: fine too

        t = threading.Thread(target=call_slow)
        t.start()
        deadline = time.monotonic() + 10  # the sleep worker is mid-invocation when stop() comes
        while len(f.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # a cold start takes longer on a loaded machine
        time.sleep(0.1)
        pids = f.worker_pids()
        assert len(pids) == 2
    finally:
        f.stop()
    t.join(5)
    assert slow and slow[0] in (200, 502, -1)
    for pid in (*pids, child):
        assert not _alive(pid), pid
    assert f.worker_pids() == []


def test_workers_start_on_demand_up_to_the_maximum() -> None:
    with Front(_specs("SleepFunction"), operator_key=OPERATOR_KEY) as f:  # the default maximum, 64
        for _ in range(3):  # one request at a time needs one warm worker
            assert _request(f.url, "GET", "/sleep?s=0")[0] == 200
        assert len(f.worker_pids("SleepFunction")) == 1
        with ThreadPoolExecutor(6) as pool:  # six at once start five more, no more
            results = list(pool.map(lambda _: _request(f.url, "GET", "/sleep?s=0.6"), range(6)))
        assert len({json.loads(r[2])["pid"] for r in results}) == 6
        assert len(f.worker_pids("SleepFunction")) == 6


# ------------------------------------------------------------------------------------------------ streaming


def _stream(f: Front, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse, float]:
    host, port = f.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    started = time.monotonic()
    conn.request("GET", path)
    return conn, conn.getresponse(), started


@pytest.fixture(scope="module")
def streamer() -> Iterator[Front]:
    with Front(_specs("StreamFunction"), operator_key=OPERATOR_KEY, max_workers_per_function=1) as f:
        yield f


def test_a_streamed_response_is_forwarded_as_it_is_written(streamer: Front) -> None:
    conn, response, started = _stream(streamer, "/stream?n=4&gap=0.3")
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    assert response.getheader("Content-Type") == "text/event-stream" and response.getheader(
        "x-amzn-RequestId"
    )
    lines = []
    while line := response.readline():
        lines.append((line, time.monotonic() - started))
    conn.close()
    assert [line for line, _ in lines] == [b"0\n", b"1\n", b"2\n", b"3\n"]
    assert lines[0][1] < 0.5 and lines[-1][1] > 0.85  # each line when written, not all at the end


def test_a_buffered_route_answers_a_streamed_response_whole(streamer: Front) -> None:
    status, response, body = _request(streamer.url, "GET", "/stream-buffered?n=3&gap=0.05")
    assert (status, body) == (200, b"0\n1\n2\n") and response.getheader("Content-Length") == "6"


def test_a_client_that_hangs_up_leaves_the_function_running_to_its_end(
    streamer: Front, tmp_path: Path
) -> None:
    mark = tmp_path / "finished"
    conn, response, _ = _stream(streamer, f"/stream?n=5&gap=0.2&mark={mark}")
    assert response.readline() == b"0\n"
    conn.sock.shutdown(2)  # type: ignore[union-attr]
    conn.close()
    deadline = time.monotonic() + 5
    while not mark.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mark.exists(), "the function stopped when its client left"
    pid = int(mark.read_text())
    # And the worker stays warm: the next request is served by the same process.
    status, _, _ = _request(streamer.url, "GET", f"/stream-buffered?n=1&mark={mark}2")
    assert status == 200 and int((tmp_path / "finished2").read_text()) == pid


def test_a_failure_or_timeout_mid_stream_cuts_the_body_short(streamer: Front) -> None:
    for path in ("/stream?n=3&fail_at=2", "/stream?n=10&gap=0.5"):  # the function's Timeout is 2 s
        conn, response, _ = _stream(streamer, path)
        assert response.status == 200
        assert response.readline() == b"0\n" and response.readline() == b"1\n"
        with pytest.raises(http.client.IncompleteRead):
            response.read()
        conn.close()
    status, _, body = _request(streamer.url, "GET", "/stream-buffered?n=2")  # a fresh worker serves
    assert (status, body) == (200, b"0\n1\n")
