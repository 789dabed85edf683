"""The champion vs challenger series, labelled by ensemble and alias pair, on the gateway's registry.

Counters move as requests happen (routed requests, shadow outcomes, argmax decisions compared and
agreeing), so PromQL can take rates over any range, which is what the agreement alert does. The
window's figures (agreement, differences, error ratios, latency percentiles, per member) are
gauges read from the comparison windows at scrape time: they are the numbers the JSON summary and
``ensemble promote --online`` see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contracts.comparison import ComparisonSummary, Latency
from serving.metrics import ENSEMBLE, MEMBER, OUTCOME, PREFIX, VERSION
from serving.traffic.comparison import ComparisonWindow, Recorded
from serving.traffic.shadow import Outcome

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIAS = "alias"
SIDE = "side"
OUTPUT = "output"
QUANTILE = "quantile"

PAIR = (ENSEMBLE, CHAMPION, CHALLENGER)
"""The labels every series here carries: the ensemble and its alias pair."""


def _pair(window: ComparisonWindow) -> tuple[str, str, str]:
    return (window.ensemble, window.champion, window.challenger)


class TrafficMetrics:
    """Counters of the traffic policy, plus the window gauges, registered on ``registry``."""

    def __init__(
        self, registry: CollectorRegistry, windows: Callable[[], Iterable[ComparisonWindow]]
    ) -> None:
        self.routed = Counter(
            f"{PREFIX}_traffic_requests",
            "Requests the traffic policy routed, by the alias that answered them.",
            [*PAIR, ALIAS],
            registry=registry,
        )
        self.shadow = Counter(
            f"{PREFIX}_shadow_requests",
            "Shadow calls by outcome: answered, failed, or dropped over the shadow concurrency limit.",
            [*PAIR, OUTCOME],
            registry=registry,
        )
        self.decisions = Counter(
            f"{PREFIX}_comparison_decisions",
            "Argmax decisions (one per row of a [batch, classes] output) compared between both sides.",
            [*PAIR, OUTPUT],
            registry=registry,
        )
        self.agreeing = Counter(
            f"{PREFIX}_comparison_agreeing_decisions",
            "Compared argmax decisions on which the champion and the challenger agree.",
            [*PAIR, OUTPUT],
            registry=registry,
        )
        registry.register(WindowCollector(windows))

    def count_route(self, window: ComparisonWindow, alias: str) -> None:
        self.routed.labels(*_pair(window), alias).inc()

    def count_shadow(self, window: ComparisonWindow, outcome: Outcome) -> None:
        self.shadow.labels(*_pair(window), outcome).inc()

    def count_compared(self, window: ComparisonWindow, recorded: Recorded) -> None:
        for output, part in recorded.diffs.items():
            if part.decisions:
                self.decisions.labels(*_pair(window), output).inc(part.decisions)
                self.agreeing.labels(*_pair(window), output).inc(part.agreeing)


class WindowCollector(Collector):
    """The comparison windows' figures as gauges, computed when Prometheus scrapes."""

    def __init__(self, windows: Callable[[], Iterable[ComparisonWindow]]) -> None:
        self._windows = windows

    def describe(self) -> Iterator[Metric]:
        # Describing without collecting keeps registration from computing a summary.
        yield from _Families().all()

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for window in self._windows():
            families.add(window.summary())
        yield from families.all()


class _Families:
    def __init__(self) -> None:
        side, member = [*PAIR, SIDE], [*PAIR, SIDE, MEMBER, VERSION]

        def gauge(name: str, help_text: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_comparison_{name}", help_text, labels=labels)

        self.requests = gauge("window_requests", "Requests in the comparison window.", list(PAIR))
        self.paired = gauge(
            "window_paired", "Requests in the window that both sides were asked to answer.", list(PAIR)
        )
        self.agreement = gauge(
            "agreement_ratio", "Fraction of argmax decisions that agree, over the window.", [*PAIR, OUTPUT]
        )
        self.abs_diff = gauge(
            "mean_abs_diff", "Mean absolute difference per element, over the window.", [*PAIR, OUTPUT]
        )
        self.rel_diff = gauge(
            "mean_rel_diff",
            "Regression: mean relative difference per element, over the window.",
            [*PAIR, OUTPUT],
        )
        self.error_ratio = gauge(
            "error_ratio", "Failed / observed requests of a side, over the window.", side
        )
        self.latency = gauge(
            "latency_seconds", "Latency percentile of a side's answers, over the window.", [*side, QUANTILE]
        )
        self.member_agreement = gauge(
            "member_agreement_ratio",
            "A member's argmax agreement with the champion's combined answer.",
            [*member, OUTPUT],
        )
        self.member_abs_diff = gauge(
            "member_mean_abs_diff",
            "A member's mean absolute difference from the champion's combined answer.",
            [*member, OUTPUT],
        )
        self.member_rel_diff = gauge(
            "member_mean_rel_diff",
            "Regression: a member's mean relative difference from the champion's combined answer.",
            [*member, OUTPUT],
        )
        self.member_error_ratio = gauge("member_error_ratio", "Failed / observed calls of a member.", member)
        self.member_latency = gauge(
            "member_latency_seconds", "Latency percentile of a member's answers.", [*member, QUANTILE]
        )

    def all(self) -> Iterator[GaugeMetricFamily]:
        yield from vars(self).values()

    def add(self, summary: ComparisonSummary) -> None:
        pair = [summary.ensemble, summary.champion.alias, summary.challenger.alias]
        self.requests.add_metric(pair, summary.window.requests)
        self.paired.add_metric(pair, summary.paired)
        for output, figures in summary.outputs.items():
            _put(self.agreement, [*pair, output], figures.agreement)
            _put(self.abs_diff, [*pair, output], figures.mean_abs_diff)
            _put(self.rel_diff, [*pair, output], figures.mean_rel_diff)
        for side in (summary.champion, summary.challenger):
            name = "champion" if side is summary.champion else "challenger"
            _put(self.error_ratio, [*pair, name], side.error_rate)
            _put_latency(self.latency, [*pair, name], side.latency_s)
        for member in summary.members:
            labels = [*pair, member.side, member.member, str(member.version)]
            for output, figures in member.outputs.items():
                _put(self.member_agreement, [*labels, output], figures.agreement)
                _put(self.member_abs_diff, [*labels, output], figures.mean_abs_diff)
                _put(self.member_rel_diff, [*labels, output], figures.mean_rel_diff)
            _put(self.member_error_ratio, labels, member.error_rate)
            _put_latency(self.member_latency, labels, member.latency_s)


def _put(family: GaugeMetricFamily, labels: list[str], value: float | None) -> None:
    if value is not None:
        family.add_metric(labels, value)


def _put_latency(family: GaugeMetricFamily, labels: list[str], latency: Latency) -> None:
    _put(family, [*labels, "0.5"], latency.p50)
    _put(family, [*labels, "0.99"], latency.p99)
