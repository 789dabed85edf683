"""The online promotion gate: a challenger's evidence on live traffic, read from the gateway.

``ensemble promote … --online GATEWAY_URL`` reads ``GET GATEWAY_URL/v1/ensembles/NAME/comparison``
(the gateway's comparison summary, documented in docs/gateway.md) and lets the alias move only if
the window compares the version being promoted (as the challenger) with the alias's current holder
(as the champion), and

* holds at least ``min_requests`` paired requests (too little traffic otherwise);
* the challenger's classification agreement is at least ``min_agreement`` and its regression mean
  relative difference at most ``max_rel_diff``, for the output kinds the ensemble has;
* the challenger's error rate is at most the champion's plus ``max_error_rate_increase``;
* the challenger's p99 latency is at most ``max_p99_ratio`` times the champion's.

The document is read with the gateway's own schema (``contracts.comparison``); a field the gateway
adds later is ignored, so a newer gateway does not break the gate. The module needs no mlflow: the
HTTP call uses the standard library.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.comparison import ComparisonSummary
from contracts.errors import one_line, validation_summary
from registry.errors import InvalidArgument, NotFound, OnlineEvidenceError, Unreachable

SUMMARY_SCHEMA_VERSIONS = frozenset({1})
"""Versions of the gateway's summary this gate reads."""
FETCH_TIMEOUT_S = 10.0


class OnlineThresholds(BaseModel):
    """What the live evidence must show; the command line's ``--min-requests`` and the rest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_requests: int = Field(default=200, ge=1, description="Paired requests the window must hold.")
    min_agreement: float = Field(
        default=0.95, ge=0.0, le=1.0, description="Classification: least argmax agreement."
    )
    max_rel_diff: float = Field(
        default=0.05, ge=0.0, description="Regression: largest mean relative difference."
    )
    max_p99_ratio: float = Field(default=1.25, gt=0.0, description="Largest challenger p99 / champion p99.")
    max_error_rate_increase: float = Field(
        default=0.01, ge=0.0, le=1.0, description="Largest challenger error rate minus the champion's."
    )


@dataclass(frozen=True, slots=True)
class Evidence:
    """What was read from the gateway: where from, the parsed part, and the document as sent."""

    gateway: str
    summary: ComparisonSummary
    document: dict[str, Any]


@dataclass(frozen=True, slots=True)
class OnlineVerdict:
    """The online gate's answer and a one-line reason (every failed check, joined)."""

    passed: bool
    reason: str


def check_gateway_url(url: str) -> str:
    """``url`` without a trailing slash; InvalidArgument (exit 2) unless it is an http(s) URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InvalidArgument(f"--online {url!r} must be the gateway's http(s) URL, e.g. http://gateway:8501")
    return url.rstrip("/")


def comparison_url(gateway: str, ensemble: str) -> str:
    return f"{gateway}/v1/ensembles/{urllib.parse.quote(ensemble, safe='')}/comparison"


def fetch_evidence(
    gateway: str, ensemble: str, *, token: str | None = None, timeout_s: float = FETCH_TIMEOUT_S
) -> Evidence:
    """Read the comparison of ``ensemble`` from the gateway at ``gateway`` (see :func:`check_gateway_url`)."""
    url = comparison_url(gateway, ensemble)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        message = _error_message(exc.read())
        if exc.code == 404:
            raise NotFound(
                f"the gateway at {gateway} has no comparison for {ensemble!r}: {message}"
            ) from None
        raise OnlineEvidenceError(
            f"the gateway at {gateway} answered {exc.code} for {url}: {message}"
            + ("; give its token with --gateway-token" if exc.code in (401, 403) else "")
        ) from None
    except OSError as exc:  # refused, unknown host, timed out: URLError and socket errors alike
        reason = getattr(exc, "reason", None) or exc
        raise Unreachable(f"the gateway at {gateway} is unreachable: {reason}") from None
    except http.client.HTTPException as exc:  # something that is not HTTP answered on that port
        raise OnlineEvidenceError(
            f"the gateway at {gateway} did not answer HTTP ({type(exc).__name__}); is that its REST port?"
        ) from None
    try:
        document = json.loads(body)
        summary = ComparisonSummary.model_validate(document)
    except (ValueError, ValidationError) as exc:
        raise OnlineEvidenceError(
            f"the gateway at {gateway} answered {url} with no comparison summary ({_first_problem(exc)})"
        ) from None
    if summary.schema_version not in SUMMARY_SCHEMA_VERSIONS:
        raise OnlineEvidenceError(
            f"the gateway's comparison summary is schema version {summary.schema_version}; "
            f"this command reads {', '.join(map(str, sorted(SUMMARY_SCHEMA_VERSIONS)))}"
        )
    if summary.ensemble != ensemble:
        raise OnlineEvidenceError(f"the gateway answered for ensemble {summary.ensemble!r}, not {ensemble!r}")
    return Evidence(gateway=gateway, summary=summary, document=document)


def _error_message(body: bytes) -> str:
    """The gateway's ``{"error": …}`` text, else the body's first line."""
    try:
        data = json.loads(body)
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            return str(data["error"])
    except ValueError:
        pass
    text = body.decode(errors="replace").strip()
    return one_line(text, limit=200) or "no message"


def _first_problem(exc: Exception) -> str:
    return validation_summary(exc) if isinstance(exc, ValidationError) else "not JSON"


def online_gate(
    evidence: ComparisonSummary,
    *,
    alias: str,
    candidate: int,
    holder: int | None,
    thresholds: OnlineThresholds,
) -> OnlineVerdict:
    """Whether ``candidate`` may take ``alias`` (held by ``holder``) on this evidence."""
    champion, challenger = evidence.champion, evidence.challenger
    if champion.alias != alias:
        return OnlineVerdict(
            False, f"the gateway compares {champion.alias!r} with {challenger.alias!r}, not alias {alias!r}"
        )
    if challenger.version != candidate:
        return OnlineVerdict(
            False,
            f"the gateway's challenger {challenger.alias!r} is version {challenger.version}, not {candidate}",
        )
    if holder is None:
        return OnlineVerdict(
            False, f"alias {alias!r} points at no version: there is no champion to compare with"
        )
    if champion.version != holder:
        return OnlineVerdict(
            False,
            f"the gateway's {alias!r} is version {champion.version}, but the registry's is {holder}",
        )
    problems = _problems(evidence, thresholds)
    figures = _figures_text(evidence)
    if problems:
        return OnlineVerdict(False, "; ".join(problems))
    return OnlineVerdict(True, f"online: {figures}: within bounds")


def _problems(evidence: ComparisonSummary, t: OnlineThresholds) -> list[str]:
    champion, challenger = evidence.champion, evidence.challenger
    window = f"window of {evidence.window.requests} requests over at most {evidence.window.max_age_s:g}s"
    if evidence.paired < t.min_requests:
        return [
            f"too little traffic: {evidence.paired} paired requests in the {window}, need {t.min_requests}"
        ]
    problems: list[str] = []
    ours, theirs = challenger.error_rate or 0.0, champion.error_rate or 0.0
    if ours > theirs + t.max_error_rate_increase:
        problems.append(
            f"challenger error rate {ours:.4f} vs champion {theirs:.4f} "
            f"(at most +{t.max_error_rate_increase:g} allowed)"
        )
    if evidence.compared == 0:
        problems.append("no paired request was answered by both sides, so nothing was compared")
    classification, regression = evidence.classification, evidence.regression
    agreement = classification.agreement if classification is not None else None
    if classification is not None and agreement is not None and agreement < t.min_agreement:
        problems.append(f"agreement {agreement:.4f} < {t.min_agreement:g} over {classification.rows} rows")
    rel_diff = regression.mean_rel_diff if regression is not None else None
    if regression is not None and rel_diff is not None and rel_diff > t.max_rel_diff:
        problems.append(
            f"mean relative difference {rel_diff:.4f} > {t.max_rel_diff:g} over {regression.rows} rows"
        )
    mine, base = challenger.latency_s.p99, champion.latency_s.p99
    if mine is None or base is None or base <= 0:
        problems.append("no p99 latency to compare: a side answered no request in the window")
    elif mine / base > t.max_p99_ratio:
        problems.append(
            f"challenger p99 {mine * 1000:.1f} ms is {mine / base:.2f}x the champion's "
            f"{base * 1000:.1f} ms (at most {t.max_p99_ratio:g}x)"
        )
    return problems


def _figures_text(evidence: ComparisonSummary) -> str:
    parts = [f"{evidence.paired} paired requests"]
    if evidence.classification is not None and evidence.classification.agreement is not None:
        parts.append(f"agreement {evidence.classification.agreement:.4f}")
    if evidence.regression is not None and evidence.regression.mean_rel_diff is not None:
        parts.append(f"mean relative difference {evidence.regression.mean_rel_diff:.4f}")
    mine, base = evidence.challenger.latency_s.p99, evidence.champion.latency_s.p99
    if mine is not None and base:
        parts.append(f"p99 ratio {mine / base:.2f}")
    parts.append(
        f"error rate {evidence.challenger.error_rate or 0.0:.4f} vs {evidence.champion.error_rate or 0.0:.4f}"
    )
    return ", ".join(parts)
