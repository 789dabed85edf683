"""The online gate: its checks on a real comparison summary, the HTTP read, and the command's usage errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from cli.main import build_app
from contracts.comparison import ComparisonSummary
from registry.errors import InvalidArgument, NotFound, OnlineEvidenceError, Unreachable
from registry.online_gate import (
    OnlineThresholds,
    check_gateway_url,
    fetch_evidence,
    online_gate,
)
from serving.testing import free_port
from tests.registry.comparison_server import ComparisonServer, comparison_server, summary_document

PATH = "/v1/ensembles/digits/comparison"
LOOSE = OnlineThresholds(min_requests=100, min_agreement=0.9, max_p99_ratio=1.5, max_error_rate_increase=0.02)


def verdict(
    thresholds: OnlineThresholds = LOOSE, candidate: int = 2, holder: int | None = 1, **summary: object
):
    evidence = ComparisonSummary.model_validate(summary_document("digits", **summary))  # type: ignore[arg-type]
    return online_gate(evidence, alias="champion", candidate=candidate, holder=holder, thresholds=thresholds)


def test_enough_agreeing_traffic_passes() -> None:
    passed = verdict(pairs=150, agreement=0.96)
    assert passed.passed, passed.reason
    assert passed.reason.startswith("online: 150 paired requests, agreement 0.9600, p99 ratio 1.10")


@pytest.mark.parametrize(
    ("summary", "says"),
    [
        ({"pairs": 99}, "too little traffic: 99 paired requests in the window of 99 requests"),
        ({"pairs": 200, "agreement": 0.85}, "agreement 0.8500 < 0.9 over 200 rows"),
        ({"pairs": 200, "challenger_errors": 10}, "challenger error rate 0.0500 vs champion 0.0000"),
        (
            {"pairs": 200, "challenger_latency_s": 0.02},
            "challenger p99 20.0 ms is 2.00x the champion's 10.0 ms",
        ),
    ],
)
def test_each_shortfall_refuses_with_its_reason(summary: dict[str, Any], says: str) -> None:
    refused = verdict(**summary)
    assert not refused.passed
    assert says in refused.reason
    assert "\n" not in refused.reason


def test_every_failed_check_is_named_on_one_line() -> None:
    refused = verdict(pairs=200, agreement=0.5, challenger_errors=50, challenger_latency_s=0.05)
    assert not refused.passed
    assert refused.reason.count(";") == 2
    for part in ("agreement", "error rate", "p99"):
        assert part in refused.reason


def test_the_evidence_must_compare_the_candidate_with_the_current_holder() -> None:
    assert "challenger 'challenger' is version 2, not 3" in verdict(pairs=200, candidate=3).reason
    assert "gateway's 'champion' is version 1, but the registry's is 7" in verdict(pairs=200, holder=7).reason
    assert "points at no version" in verdict(pairs=200, holder=None).reason
    other = verdict(pairs=200, champion=("stable", 1))
    assert "compares 'stable' with 'challenger', not alias 'champion'" in other.reason


def test_a_challenger_that_never_answered_has_no_latency_to_compare() -> None:
    refused = verdict(
        pairs=120, challenger_errors=120, thresholds=LOOSE.model_copy(update={"max_error_rate_increase": 1.0})
    )
    assert "nothing was compared" in refused.reason
    assert "no p99 latency to compare" in refused.reason


def test_regression_is_held_to_the_relative_difference() -> None:
    document = summary_document("digits", pairs=150)
    document["classification"] = None
    document["regression"] = {"rows": 150, "agreement": None, "mean_abs_diff": 0.4, "mean_rel_diff": 0.08}
    evidence = ComparisonSummary.model_validate(document)
    refused = online_gate(evidence, alias="champion", candidate=2, holder=1, thresholds=LOOSE)
    assert "mean relative difference 0.0800 > 0.05 over 150 rows" in refused.reason
    passed = online_gate(
        evidence,
        alias="champion",
        candidate=2,
        holder=1,
        thresholds=LOOSE.model_copy(update={"max_rel_diff": 0.1}),
    )
    assert passed.passed


# --- reading the summary over HTTP -------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[ComparisonServer]:
    with comparison_server() as running:
        yield running


def test_fetch_reads_the_summary_and_sends_the_token(server: ComparisonServer) -> None:
    document = summary_document("digits", pairs=5)
    document["a_field_added_later"] = {"ignored": True}
    server.serve(PATH, document)
    evidence = fetch_evidence(server.url, "digits", token="s3cret")
    assert evidence.summary.paired == 5
    assert evidence.document == document
    assert evidence.gateway == server.url
    assert server.requests[-1]["authorization"] == "Bearer s3cret"


@pytest.mark.parametrize(
    ("status", "body", "error", "says"),
    [
        (
            404,
            b'{"error": "no traffic policy for ensemble \'digits\'"}',
            NotFound,
            "no traffic policy for ensemble",
        ),
        (401, b'{"error": "missing or wrong bearer token"}', OnlineEvidenceError, "--gateway-token"),
        (500, b"<html>oops</html>", OnlineEvidenceError, "answered 500"),
        (200, b"not json", OnlineEvidenceError, "no comparison summary (not JSON)"),
        (
            200,
            b'{"ensemble": "digits"}',
            OnlineEvidenceError,
            "no comparison summary (schema_version: Field required)",
        ),
    ],
)
def test_fetch_turns_every_bad_answer_into_one_line(
    server: ComparisonServer, status: int, body: bytes, error: type[Exception], says: str
) -> None:
    server.serve(PATH, body, status)
    with pytest.raises(error) as info:
        fetch_evidence(server.url, "digits")
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_fetch_refuses_another_schema_or_ensemble(server: ComparisonServer) -> None:
    document = summary_document("digits", pairs=5)
    server.serve(PATH, {**document, "schema_version": 2})
    with pytest.raises(OnlineEvidenceError, match="schema version 2; this command reads 1"):
        fetch_evidence(server.url, "digits")
    server.serve(PATH, {**document, "ensemble": "iris"})
    with pytest.raises(OnlineEvidenceError, match="for ensemble 'iris', not 'digits'"):
        fetch_evidence(server.url, "digits")


def test_fetch_from_nothing_or_not_http() -> None:
    with pytest.raises(Unreachable, match="is unreachable"):
        fetch_evidence(f"http://127.0.0.1:{free_port()}", "digits", timeout_s=5)
    # A port that answers something other than HTTP (the gateway's gRPC port, say).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def garbage() -> None:
        conn, _ = listener.accept()
        conn.recv(1024)
        conn.sendall(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00garbage\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=garbage, daemon=True)
    thread.start()
    try:
        with pytest.raises((OnlineEvidenceError, Unreachable)) as info:
            fetch_evidence(f"http://127.0.0.1:{listener.getsockname()[1]}", "digits", timeout_s=5)
        assert "\n" not in str(info.value)
    finally:
        thread.join(timeout=5)
        listener.close()


def test_gateway_url_must_be_http() -> None:
    assert check_gateway_url("http://gateway:8501/") == "http://gateway:8501"
    assert check_gateway_url("https://gw.example.com/base") == "https://gw.example.com/base"
    for bad in ("gateway:8501", "ftp://gateway", "http://", "http://gw:8501/?x=1"):
        with pytest.raises(InvalidArgument, match="must be the gateway's http"):
            check_gateway_url(bad)


# --- the command's usage errors come before any network or registry work ------------------------------
@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--min-agreement", "0.9"], "error: --min-agreement need --online GATEWAY_URL"),
        (
            ["--min-requests", "5", "--max-p99-ratio", "2"],
            "error: --min-requests, --max-p99-ratio need --online",
        ),
        (
            ["--online", "http://gw:8501", "--min-agreement", "1.5"],
            "error: --min-agreement: Input should be less",
        ),
        (
            ["--online", "http://gw:8501", "--max-p99-ratio", "0"],
            "error: --max-p99-ratio: Input should be greater than 0",
        ),
        (
            ["--online", "http://gw:8501", "--min-requests", "0"],
            "error: --min-requests: Input should be greater",
        ),
        (["--online", "gw:8501"], "error: --online 'gw:8501' must be the gateway's http(s) URL"),
    ],
)
def test_usage_errors_exit_2_in_one_line(args: list[str], says: str) -> None:
    # A tracking URI where nothing listens: reaching the registry would take seconds of retries.
    base = ["promote", "digits", "--version", "2", "--tracking-uri", f"http://127.0.0.1:{free_port()}"]
    result = CliRunner().invoke(build_app(), base + args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(says)
    assert result.stderr.count("\n") == 1


def test_an_unreachable_gateway_exits_3_before_the_registry_is_asked() -> None:
    result = CliRunner().invoke(
        build_app(),
        [
            "promote", "digits", "--version", "2", "--online", f"http://127.0.0.1:{free_port()}",
            "--tracking-uri", f"http://127.0.0.1:{free_port()}",
        ],
    )  # fmt: skip
    assert result.exit_code == 3
    assert result.stderr.startswith("error: the gateway at http://127.0.0.1:")
    assert "unreachable" in result.stderr
    assert "MLflow" not in result.stderr
