"""``/openapi.json`` is the contract, and the server keeps it.

The schema itself is checked in-process (every status, the one error schema, the bearer
key, the media types), for the default settings and the auth variants. Then schemathesis
runs every operation of a real ``guarita serve`` process (``scripted`` models, no LLM)
with all of its checks, all of its phases (examples, coverage, fuzzing, stateful), a
real key and a bounded, deterministic number of examples per operation.

Schemathesis runs through its command line, its documented interface: the pytest
plugin's ``schemathesis.pytest.from_fixture`` (the only way to test a server a fixture
starts) fails under pytest 9.2 (``'Function' object has no attribute '_nodeid'``). It is
only given the server's loopback URL.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guarita.app import create_app
from guarita.settings import load_settings
from tests.helpers import GuaritaServer

CONFIG: dict[str, Any] = {
    "models": {"m": {"provider": "scripted"}, "m2": {"provider": "scripted"}},
    "agents": {"a": {"model": "m"}},
    "default_agent": "a",
}
ERROR_REF = "#/components/schemas/ErrorResponse"
# What each route can answer besides its success; 500 everywhere (an unexpected error), and
# 408 and 431 everywhere (the HTTP layer's bounds on the request head).
ERRORS = {
    ("post", "/v1/chat/completions"): {400, 401, 403, 404, 408, 413, 429, 431, 500, 502, 503, 504},
    ("get", "/v1/models"): {401, 403, 408, 431, 500},
    ("post", "/v1/embeddings"): {400, 401, 403, 404, 408, 413, 429, 431, 500, 502, 503, 504},
    ("post", "/api/chat"): {400, 401, 403, 404, 408, 413, 429, 431, 500, 502, 503, 504},
    ("post", "/api/tasks"): {400, 401, 403, 404, 408, 413, 429, 431, 500, 503},
    ("get", "/api/tasks/{task_id}"): {401, 403, 404, 408, 431, 500},
    ("get", "/health"): {408, 431, 500},
    ("get", "/ready"): {408, 431, 500, 503},
    ("get", "/metrics"): {408, 431, 500},
    ("get", "/admin/breakers"): {401, 403, 408, 431, 500},
    ("get", "/admin/usage"): {400, 401, 403, 408, 431, 500},
    ("get", "/admin/audit"): {400, 401, 403, 408, 431, 500},
    ("get", "/admin/economy"): {401, 403, 408, 431, 500},
    ("post", "/admin/economy/off"): {400, 401, 403, 408, 413, 431, 500},
    ("get", "/admin/cache"): {401, 403, 408, 431, 500},
    ("post", "/admin/cache/clear"): {400, 401, 403, 408, 413, 431, 500},
    ("post", "/v1/files"): {400, 401, 403, 408, 413, 431, 500},
    ("get", "/v1/files"): {400, 401, 403, 408, 431, 500},
    ("get", "/v1/files/{file_id}"): {401, 403, 404, 408, 431, 500},
    ("get", "/v1/files/{file_id}/content"): {401, 403, 404, 408, 431, 500},
    ("delete", "/v1/files/{file_id}"): {401, 403, 404, 408, 431, 500},
    ("post", "/v1/batches"): {400, 401, 403, 404, 408, 413, 431, 500},
    ("get", "/v1/batches"): {400, 401, 403, 408, 431, 500},
    ("get", "/v1/batches/{batch_id}"): {401, 403, 404, 408, 431, 500},
    ("post", "/v1/batches/{batch_id}/cancel"): {401, 403, 404, 408, 409, 431, 500},
    ("get", "/admin/prompts"): {401, 403, 408, 431, 500},
    ("get", "/admin/slo"): {400, 401, 403, 404, 408, 431, 500},
    ("get", "/admin/requests/{request_id}"): {400, 401, 403, 404, 408, 431, 500},
    ("post", "/admin/prompts"): {400, 401, 403, 408, 409, 413, 431, 500},
    ("get", "/admin/prompts/{name}"): {400, 401, 403, 404, 408, 431, 500},
    ("get", "/admin/prompts/{name}/versions/{version}"): {400, 401, 403, 404, 408, 431, 500},
    ("get", "/admin/prompts/{name}/diff"): {400, 401, 403, 404, 408, 431, 500},
    ("put", "/admin/prompts/{name}/labels/{label}"): {400, 401, 403, 404, 408, 409, 413, 431, 500},
    ("get", "/admin/drift"): {400, 401, 403, 408, 431, 500},
    ("post", "/admin/rollouts"): {400, 401, 403, 404, 408, 409, 413, 431, 500},
    ("get", "/admin/rollouts"): {400, 401, 403, 408, 431, 500},
    ("get", "/admin/rollouts/{rollout_id}"): {401, 403, 404, 408, 431, 500},
    ("get", "/admin/rollouts/{rollout_id}/report"): {401, 403, 404, 408, 431, 500},
    ("post", "/admin/rollouts/{rollout_id}/pause"): {401, 403, 404, 408, 409, 431, 500},
    ("post", "/admin/rollouts/{rollout_id}/resume"): {401, 403, 404, 408, 409, 431, 500},
    ("post", "/admin/rollouts/{rollout_id}/abort"): {401, 403, 404, 408, 409, 431, 500},
    ("post", "/admin/rollouts/{rollout_id}/approve"): {401, 403, 404, 408, 409, 431, 500},
}
OPEN = {("get", "/health"), ("get", "/ready"), ("get", "/metrics")}
EXAMPLES_PER_OPERATION = 25


def openapi_for(data_dir: Path, **overrides: Any) -> dict[str, Any]:
    settings = load_settings(data_dir=data_dir, **{**CONFIG, **overrides})
    document: dict[str, Any] = create_app(settings).openapi()
    return document


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return openapi_for(tmp_path_factory.mktemp("openapi-doc"))


def operations(document: dict[str, Any]) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield (method, path), operation


def test_every_route_declares_what_it_can_answer(document: dict[str, Any]) -> None:
    declared = {
        key: {int(status) for status in operation["responses"] if not status.startswith("2")}
        for key, operation in operations(document)
    }
    assert declared == ERRORS


def test_no_422_anywhere(document: dict[str, Any]) -> None:
    # validation errors leave as 400 (api/errors.py): FastAPI's 422 would be a lie
    assert "422" not in str(document)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_every_error_is_the_one_error_schema(document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["ErrorDetail"]
    assert error["required"] == ["message", "type", "param", "code"]
    for key, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) >= 400 and not (key == ("get", "/ready") and status == "503"):
                assert response["content"] == {"application/json": {"schema": {"$ref": ERROR_REF}}}
            if status in ("429", "503") and key != ("get", "/ready"):
                assert "Retry-After" in response["headers"], (key, status)


def test_every_answer_carries_the_request_id(document: dict[str, Any]) -> None:
    for _, operation in operations(document):
        for response in operation["responses"].values():
            assert response["headers"]["x-request-id"] == {"$ref": "#/components/headers/RequestId"}
    assert document["components"]["headers"]["RequestId"]["required"] is True


def test_keyed_routes_declare_the_bearer_scheme(document: dict[str, Any]) -> None:
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for key, operation in operations(document):
        if key in OPEN:
            assert "security" not in operation, key
            assert "401" not in operation["responses"], key
        else:
            assert operation["security"] == [{"bearerAuth": []}], key
            assert "401" in operation["responses"], key


def test_security_follows_the_auth_settings(tmp_path: Path) -> None:
    off = openapi_for(tmp_path / "off", auth={"enabled": False})
    local = openapi_for(tmp_path / "local", auth={"allow_unauthenticated_localhost": True})
    for key, operation in operations(off):
        assert "security" not in operation and "401" not in operation["responses"], key
    for key, operation in operations(local):
        if key not in OPEN:
            assert operation["security"] == [{"bearerAuth": []}, {}], key
            assert "401" in operation["responses"], key


def test_success_bodies_are_described(document: dict[str, Any]) -> None:
    for key, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("2"):
                for media_type, content in response["content"].items():
                    schema = content.get("schema") or content.get("itemSchema")
                    assert schema and schema != {}, (key, status, media_type)


def test_media_types_are_the_real_ones(document: dict[str, Any]) -> None:
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]
    assert list(metrics["content"]) == ["text/plain"]
    chat = document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]
    assert chat["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatCompletion"
    }
    event = chat["content"]["text/event-stream"]["itemSchema"]
    assert event["required"] == ["data"]
    assert "ChatCompletionChunk" in document["components"]["schemas"]
    assert {"x-guarita-fallback-level", "x-guarita-quality"} <= set(chat["headers"])


def test_ready_and_tasks_describe_their_bodies(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    assert schemas["Readiness"].get("additionalProperties", True) is not False
    ready = document["paths"]["/ready"]["get"]["responses"]
    assert ready["503"]["content"] == ready["200"]["content"]
    accepted = document["paths"]["/api/tasks"]["post"]["responses"]["202"]
    assert accepted["headers"]["Location"]["required"] is True
    assert accepted["links"]["GetTask"]["operationId"] == "getTask"


def test_the_request_schemas_say_what_is_refused(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    # exact 64-bit bounds, not FastAPI's floats (2**64 - 1 would read 18446744073709551616)
    [seed, _] = schemas["ChatCompletionRequest"]["properties"]["seed"]["anyOf"]
    assert (seed["minimum"], seed["maximum"]) == (-(2**63), 2**64 - 1)
    assert schemas["ChatCompletionRequest"]["additionalProperties"] == {
        "$ref": "#/components/schemas/JsonValue"
    }
    # 8192-token window, 256 for the answer: about 31,700 characters fit the default agent,
    # but the input guard takes 10,000 a message (guard.input.max_message_chars)
    assert 4 * (8192 - 256 - 4 - 4) + 3 > 10_000
    message = schemas["AgentChatRequest"]["properties"]["message"]
    assert message["maxLength"] == 10_000
    assert schemas["TaskRequest"]["properties"]["message"]["maxLength"] == 10_000
    assert schemas["ChatCompletionRequest"]["properties"]["messages"]["maxItems"] == 256
    [text, _, _] = schemas["Message"]["properties"]["content"]["anyOf"]
    assert text["maxLength"] == 10_000
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["examples"] == ["m", "m2", "a"]


@pytest.fixture(scope="module")
def server_and_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GuaritaServer, str]]:
    server = GuaritaServer(tmp_path_factory.mktemp("openapi"), CONFIG)
    key = server.create_key("schemathesis", "admin")  # admin: /admin/breakers answers too
    server.start()
    yield server, key
    server.stop()


def test_the_served_schema_is_the_built_one(
    server_and_key: tuple[GuaritaServer, str], document: dict[str, Any]
) -> None:
    server, _ = server_and_key
    served = httpx.get(server.base_url + "/openapi.json", timeout=10).json()
    assert {key for key, _ in operations(served)} == set(ERRORS)
    assert served["components"]["securitySchemes"] == document["components"]["securitySchemes"]


def _a_batch(server: GuaritaServer, key: str) -> str:
    auth = {"authorization": f"Bearer {key}"}
    line = (
        b'{"custom_id": "1", "method": "POST", "url": "/v1/chat/completions", '
        b'"body": {"model": "m", "messages": [{"role": "user", "content": "Hello"}]}}\n'
    )
    uploaded = httpx.post(
        server.base_url + "/v1/files",
        headers=auth,
        files={"file": ("in.jsonl", line)},
        data={"purpose": "batch"},
    )
    body = {
        "input_file_id": uploaded.json()["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
    }
    batch_id: str = httpx.post(server.base_url + "/v1/batches", headers=auth, json=body).json()[
        "id"
    ]
    return batch_id


def _a_rollout(server: GuaritaServer, key: str) -> str:
    body = {"agent": "a", "change_type": "prompt_update", "candidate_model": "m2"}
    answer = httpx.post(server.base_url + "/admin/rollouts", json=body,
                        headers={"authorization": f"Bearer {key}"})  # fmt: skip
    assert answer.status_code == 201, answer.text
    rollout_id: str = answer.json()["id"]
    return rollout_id


@pytest.mark.slow
def test_schemathesis_finds_nothing(
    server_and_key: tuple[GuaritaServer, str], tmp_path: Path
) -> None:
    server, key = server_and_key
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        # any warning fails the run too: e.g. an operation that only ever answered 401
        "[warnings]\nfail-on = true\n"
        f'[auth.openapi.bearerAuth]\nbearer = "{key}"\n'  # in a file, not on a command line
        # the schema cannot say what makes bytes a batch input file (JSONL, each line a
        # request): uploads it calls valid are refused as files naming their bad line, and
        # so the batches it creates from them find no input file
        '[[operations]]\ninclude-operation-id = "createFile"\nwarnings = false\n'
        'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404"]\n'
        '[[operations]]\ninclude-operation-id = "createBatch"\nwarnings = false\n'
        # nor which model configuration a prompt version may carry (its keys and values are
        # checked by the registry), nor that a rollout's candidate must differ from what the
        # agent runs now
        '[[operations]]\ninclude-operation-id = ["pushPrompt", "startRollout"]\n'
        'checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", '
        '"404", "409"]\n'
        # and a start it generates names an agent, a prompt version and a model that exist
        # and differ from the agent's own only by chance: mostly refused, rightly
        '[[operations]]\ninclude-operation-id = "startRollout"\nwarnings = false\n'
        # a rollout started outside the run, for the operations on one
        '[[operations]]\ninclude-operation-id = ["showRollout", "reportRollout", '
        '"pauseRollout", "resumeRollout", "abortRollout", "approveRollout"]\n'
        f'parameters = {{ rollout_id = "{_a_rollout(server, key)}" }}\n'
        # a batch made outside the run, for the operations on one
        '[[operations]]\ninclude-operation-id = ["retrieveBatch", "cancelBatch"]\n'
        f'parameters = {{ batch_id = "{_a_batch(server, key)}" }}\n'
    )
    args = [
        *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run"),
        server.base_url + "/openapi.json",
        *("--checks", "all"),
        *("--max-examples", str(EXAMPLES_PER_OPERATION)),
        "--generation-deterministic",  # the same cases every run
        *("--workers", "1"),
        *("--request-timeout", "30"),
        *("--output-sanitize", "false"),  # it would hide every field named *token*
        "--no-color",
    ]
    started = time.monotonic()
    # its cache and hypothesis database go to the working directory
    run = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    report = f"{run.stdout}\n{run.stderr}\n(after {time.monotonic() - started:.1f}s)"
    assert run.returncode == 0, report


def test_each_403_says_which_roles_may_call(document: dict[str, Any]) -> None:
    """docs/auth.md's table, route by route: reads for viewers, changes for operators, the
    audit log for admins."""
    for (method, path), operation in operations(document):
        if "403" not in operation["responses"]:
            continue
        said = operation["responses"]["403"]["description"]
        if path == "/admin/audit":  # the log names every caller: admin only
            assert "`admin`" in said and "`viewer`" not in said and "`operator`" not in said
        elif path.startswith("/admin/"):
            expected = "`viewer`" if method == "get" else "`operator`"
            assert expected in said and "`admin`" in said, (method, path, said)
            if method != "get":
                assert "`viewer`" not in said, (method, path, said)
        elif path.startswith(("/v1/files", "/v1/batches", "/v1/models", "/api/tasks/")):
            assert "`user`" in said, (method, path, said)
