"""The local backend's model manager and core, with stand-in servables (no TensorFlow)."""

from __future__ import annotations

import asyncio
import collections
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from contracts.model_config import ModelConfigError, ModelEntry, write_model_config
from serving.core import ModelRef
from serving.errors import DeadlineExceeded, InvalidArgument, NotFound, Unavailable
from serving.local_server.core import LocalCore
from serving.local_server.faults import FaultConfig, FaultInjector, FaultSpec
from serving.local_server.manager import LoadRetries, ModelManager
from serving.local_server.versions import scan_versions, wanted_versions
from tests.serving.local_server.fakes import FakeServable, make_versions


def test_scan_skips_folders_without_a_saved_model(tmp_path: Path) -> None:
    make_versions(tmp_path, 1, 3)
    (tmp_path / "4").mkdir()  # still being written
    (tmp_path / "notes").mkdir()
    (tmp_path / "7").write_text("a file")
    assert sorted(scan_versions(tmp_path)) == [1, 3]
    assert scan_versions(tmp_path / "missing") == {}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (ModelEntry("m", "/m"), {5}),
        (ModelEntry("m", "/m", latest=2), {3, 5}),
        (ModelEntry("m", "/m", versions=[1, 4, 9]), {1}),
        (ModelEntry("m", "/m", all_versions=True), {1, 3, 5}),
    ],
)
def test_version_policies(entry: ModelEntry, expected: set[int]) -> None:
    assert wanted_versions(entry, [1, 3, 5]) == expected


class Harness:
    """A manager over a config file in tmp_path, with loads that can be held back."""

    def __init__(self, tmp_path: Path, entries: list[ModelEntry], retries: LoadRetries | None = None) -> None:
        self.config = tmp_path / "models.config"
        write_model_config(self.config, entries)
        self.gate = threading.Event()
        self.gate.set()
        self.fail: set[int] = set()
        self.failures_left: dict[int, int] = {}  # version -> loads that fail before one succeeds
        self.tries: collections.Counter[int] = collections.Counter()
        self.executor = ThreadPoolExecutor(max_workers=4)
        self.manager = ModelManager(self._load, self.executor, config_file=self.config, retries=retries)

    def _load(self, path: Path) -> FakeServable:
        self.gate.wait(10)
        version = int(path.name)
        self.tries[version] += 1
        if version in self.fail:
            raise RuntimeError("corrupt saved_model.pb\nsecond line")
        if self.failures_left.get(version, 0) > 0:
            self.failures_left[version] -= 1
            raise OSError("storage not reachable")
        return FakeServable(path)

    async def settle(self) -> None:
        self.manager.read_config()
        await self.manager.reconcile()
        await self.manager.wait_for_loads()

    def states(self, name: str) -> dict[int, str]:
        return {s.version: s.state for s in self.manager.status(ModelRef(name))}


def test_loads_policy_versions_and_labels(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1, 2, 3)
    entries = [ModelEntry("a", "a", versions=[1, 2], labels={"champion": 1, "challenger": 2})]

    async def scenario() -> None:
        h = Harness(tmp_path, entries)
        await h.settle()
        assert h.states("a") == {1: "AVAILABLE", 2: "AVAILABLE"}
        assert h.manager.resolve(ModelRef("a"))[0] == 2
        assert h.manager.resolve(ModelRef("a", label="champion"))[0] == 1
        assert h.manager.resolve(ModelRef("a", version=1))[0] == 1
        assert [s.version for s in h.manager.status(ModelRef("a", label="challenger"))] == [2]
        with pytest.raises(InvalidArgument, match="Unrecognized servable version label: nope"):
            h.manager.resolve(ModelRef("a", label="nope"))
        with pytest.raises(NotFound, match=r"Servable not found for request: Specific\(a, 3\)"):
            h.manager.resolve(ModelRef("a", version=3))
        with pytest.raises(NotFound, match=r"Servable not found for request: Latest\(zzz\)"):
            h.manager.resolve(ModelRef("zzz"))
        with pytest.raises(NotFound, match="Could not find any versions of model zzz"):
            h.manager.status(ModelRef("zzz"))
        with pytest.raises(NotFound, match="Could not find version 3 of model a"):
            h.manager.status(ModelRef("a", version=3))
        h.manager.close()

    asyncio.run(scenario())


def test_new_version_replaces_the_old_only_once_loaded(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1)

    async def scenario() -> None:
        h = Harness(tmp_path, [ModelEntry("a", str(tmp_path / "a"))])
        await h.settle()
        h.gate.clear()  # version 2's load is held back
        make_versions(tmp_path / "a", 2)
        await h.manager.reconcile()
        await asyncio.sleep(0.05)
        assert h.states("a") == {1: "AVAILABLE", 2: "LOADING"}
        assert h.manager.resolve(ModelRef("a"))[0] == 1  # still serving the old one
        h.gate.set()
        await h.manager.wait_for_loads()
        assert h.states("a") == {1: "END", 2: "AVAILABLE"}
        assert h.manager.resolve(ModelRef("a"))[0] == 2
        h.manager.close()

    asyncio.run(scenario())


def test_failed_load_is_reported_and_the_old_version_stays(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1)

    async def scenario() -> None:
        h = Harness(tmp_path, [ModelEntry("a", "a")])
        await h.settle()
        h.fail.add(2)
        make_versions(tmp_path / "a", 2)
        await h.manager.reconcile()
        await h.manager.wait_for_loads()
        statuses = {s.version: s for s in h.manager.status(ModelRef("a"))}
        assert statuses[1].state == "AVAILABLE"
        assert statuses[2].state == "END"
        assert statuses[2].error_code == "UNKNOWN"
        assert "corrupt saved_model.pb" in statuses[2].error_message
        assert "\n" not in statuses[2].error_message
        assert h.manager.resolve(ModelRef("a"))[0] == 1
        h.manager.close()

    asyncio.run(scenario())


def test_failed_load_is_retried_as_tf_serving_does(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1)
    make_versions(tmp_path / "b", 1)

    async def scenario() -> None:
        h = Harness(
            tmp_path,
            [ModelEntry("a", "a"), ModelEntry("b", "b")],
            LoadRetries(max_retries=2, interval_s=0.05),
        )
        h.failures_left[1] = 2  # "a" and "b" share version 1: the first two loads fail, the third works
        h.manager.read_config()
        await h.manager.reconcile()
        await asyncio.sleep(0.02)
        assert {h.states("a")[1], h.states("b")[1]} == {"LOADING"}  # retrying, not failed yet
        await h.manager.wait_for_loads()
        assert h.states("a") == {1: "AVAILABLE"}
        assert h.states("b") == {1: "AVAILABLE"}
        assert h.tries[1] == 4  # two failures shared between the models, then one success each
        h.manager.close()

    asyncio.run(scenario())


def test_load_gives_up_after_the_retries(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1)

    async def scenario() -> None:
        h = Harness(tmp_path, [ModelEntry("a", "a")], LoadRetries(max_retries=2, interval_s=0.01))
        h.fail.add(1)
        await h.settle()
        status = h.manager.status(ModelRef("a"))[0]
        assert (status.state, status.error_code) == ("END", "UNKNOWN")
        assert h.tries[1] == 3  # the first try and two retries
        h.manager.close()

    asyncio.run(scenario())


def test_a_model_removed_while_its_load_waits_to_retry_is_not_tried_again(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1)

    async def scenario() -> None:
        h = Harness(tmp_path, [ModelEntry("a", "a")], LoadRetries(max_retries=5, interval_s=0.2))
        h.failures_left[1] = 5
        h.manager.read_config()
        await h.manager.reconcile()
        await asyncio.sleep(0.05)  # the first try has failed; the retry waits
        write_model_config(h.config, [])
        h.manager.read_config()
        await h.manager.reconcile()
        await h.manager.wait_for_loads()
        assert "a" not in h.manager.models
        assert h.tries[1] == 1
        h.manager.close()

    asyncio.run(scenario())


def test_config_changes_move_labels_and_remove_models(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1, 2)
    make_versions(tmp_path / "b", 1)

    async def scenario() -> None:
        h = Harness(
            tmp_path, [ModelEntry("a", "a", all_versions=True, labels={"champion": 1}), ModelEntry("b", "b")]
        )
        await h.settle()
        assert h.manager.resolve(ModelRef("a", label="champion"))[0] == 1
        write_model_config(h.config, [ModelEntry("a", "a", all_versions=True, labels={"champion": 2})])
        await h.settle()
        assert h.manager.resolve(ModelRef("a", label="champion"))[0] == 2
        with pytest.raises(NotFound):
            h.manager.resolve(ModelRef("b"))
        # A broken file is refused and the current config stays in force.
        h.config.write_text("model_config_list { config { name: 'a' ")
        with pytest.raises(ModelConfigError):
            h.manager.read_config()
        assert h.manager.read_config() is False  # the same broken text is not re-reported
        await h.manager.reconcile()
        assert h.manager.resolve(ModelRef("a", label="champion"))[0] == 2
        h.manager.close()

    asyncio.run(scenario())


def test_label_waits_for_its_version(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1)

    async def scenario() -> None:
        h = Harness(tmp_path, [ModelEntry("a", "a", versions=[1, 2], labels={"champion": 2})])
        await h.settle()
        with pytest.raises(InvalidArgument, match="Unrecognized servable version label"):
            h.manager.resolve(ModelRef("a", label="champion"))
        make_versions(tmp_path / "a", 2)
        await h.manager.reconcile()
        await h.manager.wait_for_loads()
        assert h.manager.resolve(ModelRef("a", label="champion"))[0] == 2
        h.manager.close()

    asyncio.run(scenario())


def _core(
    tmp_path: Path, delay_s: float, faults: FaultInjector | None = None
) -> tuple[LocalCore, ModelManager]:
    make_versions(tmp_path / "a", 3)
    executor = ThreadPoolExecutor(max_workers=8)
    manager = ModelManager(
        lambda path: FakeServable(path, delay_s), executor, single_model=ModelEntry("a", str(tmp_path / "a"))
    )
    return LocalCore(manager, executor, faults), manager


def test_core_runs_requests_concurrently_and_honours_deadlines(tmp_path: Path) -> None:
    async def scenario() -> None:
        core, manager = _core(tmp_path, delay_s=0.3)
        await manager.reconcile()
        await manager.wait_for_loads()
        FakeServable.peak = 0
        x = np.arange(3, dtype=np.float32)
        results = await asyncio.gather(*(core.predict(ModelRef("a"), {"x": x}) for _ in range(4)))
        assert all(r.version == 3 and r.outputs["y"].tolist() == [0.0, 3.0, 6.0] for r in results)
        assert FakeServable.peak >= 2  # no global lock around model calls
        with pytest.raises(DeadlineExceeded):
            await core.predict(ModelRef("a"), {"x": x}, timeout_s=0.05)
        metadata = await core.metadata(ModelRef("a"))
        assert (metadata.name, metadata.version) == ("a", 3)
        assert "serving_default" in metadata.signature_def.signature_def
        manager.close()

    asyncio.run(scenario())


def test_fault_injection(tmp_path: Path) -> None:
    config = FaultConfig(seed=1, models={"a": FaultSpec(error_rate=1.0, error_code="UNAVAILABLE")})

    async def scenario() -> None:
        core, manager = _core(tmp_path, delay_s=0.0, faults=FaultInjector(config))
        await manager.reconcile()
        await manager.wait_for_loads()
        with pytest.raises(Unavailable, match="injected fault"):
            await core.predict(ModelRef("a"), {"x": np.zeros(1, np.float32)})
        manager.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("spec", "low", "high"),
    [
        (FaultSpec(latency_ms=50), 0.05, 0.05),
        (FaultSpec(latency_ms=50, latency_distribution="uniform", latency_spread_ms=10), 0.04, 0.06),
        (FaultSpec(latency_ms=50, latency_distribution="exponential"), 0.0, 2.0),
        (FaultSpec(latency_ms=50, latency_distribution="normal", latency_spread_ms=5), 0.0, 0.2),
        (FaultSpec(latency_ms=50, latency_distribution="lognormal"), 0.0, 2.0),
    ],
)
def test_fault_latency_distributions(spec: FaultSpec, low: float, high: float) -> None:
    injector = FaultInjector(FaultConfig(seed=3, default=spec))
    draws = [injector.latency_s(injector.spec("any")) for _ in range(200)]
    assert all(low <= d <= high for d in draws)
    if spec.latency_distribution != "fixed":
        assert len(set(draws)) > 100
    assert abs(sum(draws) / len(draws) - 0.05) < 0.02


def test_fault_config_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "faults.yaml"
    path.write_text("models:\n  a:\n    error_rate: 2\n")
    with pytest.raises(ValueError, match=r"models\.a\.error_rate"):
        FaultConfig.from_file(path)
    path.write_text("default: {latency_ms: 5, latency_distribution: normal}\n")
    assert FaultConfig.from_file(path).default.latency_distribution == "normal"
    with pytest.raises(ValueError, match="cannot read"):
        FaultConfig.from_file(tmp_path / "absent.yaml")


# --- a corrupt newest version -------------------------------------------------------------------


def test_a_failing_version_does_not_count_towards_latest() -> None:
    latest = ModelEntry("m", "/m")
    assert wanted_versions(latest, [1, 2, 3], troubled=[3]) == {2, 3}
    assert wanted_versions(latest, [1, 2, 3], troubled=[3, 2]) == {1, 2, 3}
    assert wanted_versions(ModelEntry("m", "/m", latest=2), [1, 2, 3], troubled=[2]) == {1, 2, 3}
    assert wanted_versions(ModelEntry("m", "/m", versions=[3]), [1, 2, 3], troubled=[3]) == {3}


def test_a_corrupt_newest_version_at_start_falls_back_and_waits_for_no_retry(tmp_path: Path) -> None:
    """TF Serving would keep its ports closed through every retry, then exit, serving nothing."""
    make_versions(tmp_path / "a", 1, 2, 3)

    async def scenario() -> None:
        h = Harness(tmp_path, [ModelEntry("a", "a")], LoadRetries(max_retries=5, interval_s=60))
        h.fail.add(3)
        h.manager.read_config()
        await h.manager.reconcile()
        await asyncio.wait_for(h.manager.wait_for_first_tries(), timeout=10)  # not 5 minutes
        assert h.states("a") == {2: "AVAILABLE", 3: "LOADING"}  # 3 is still being retried
        assert h.manager.resolve(ModelRef("a"))[0] == 2
        assert h.manager.unservable() == {}
        assert (h.tries[3], h.tries[2], h.tries[1]) == (1, 1, 0)
        h.manager.close()

    asyncio.run(scenario())


def test_the_fallback_goes_once_the_newest_version_loads_after_all(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1, 2)

    async def scenario() -> None:
        h = Harness(tmp_path, [ModelEntry("a", "a")], LoadRetries(max_retries=3, interval_s=0.1))
        h.failures_left[2] = 1  # storage flickers once
        await h.settle()
        assert h.states("a") == {1: "END", 2: "AVAILABLE"}
        assert h.manager.resolve(ModelRef("a"))[0] == 2
        assert (h.tries[2], h.tries[1]) == (2, 1)  # version 1 served while 2 was retried
        h.manager.close()

    asyncio.run(scenario())


def test_a_version_that_gives_up_leaves_the_older_one_serving_and_says_why(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1, 2)
    make_versions(tmp_path / "b", 4)

    async def scenario() -> None:
        h = Harness(
            tmp_path,
            [ModelEntry("a", "a"), ModelEntry("b", "b", versions=[4])],
            LoadRetries(max_retries=1, interval_s=0.01),
        )
        h.fail.update({2, 4})
        await h.settle()
        statuses = {s.version: s for s in h.manager.status(ModelRef("a"))}
        assert (statuses[1].state, statuses[2].state, statuses[2].error_code) == (
            "AVAILABLE",
            "END",
            "UNKNOWN",
        )
        assert h.manager.resolve(ModelRef("a"))[0] == 1
        # A specific policy names its version: there is nothing to fall back to.
        assert h.manager.unservable() == {
            "b": "version 4: END (Failed to load b version 4: corrupt saved_model.pb)"
        }
        h.manager.close()

    asyncio.run(scenario())


def test_every_version_corrupt_is_reported_not_hidden(tmp_path: Path) -> None:
    make_versions(tmp_path / "a", 1, 2)
    (tmp_path / "empty").mkdir()

    async def scenario() -> None:
        h = Harness(
            tmp_path,
            [ModelEntry("a", "a"), ModelEntry("e", "empty")],
            LoadRetries(max_retries=0, interval_s=0),
        )
        h.fail.update({1, 2})
        await h.settle()
        problems = h.manager.unservable()
        assert set(problems) == {"a", "e"}
        assert "version 1: END" in problems["a"]
        assert "version 2: END" in problems["a"]
        assert problems["e"].startswith("no version found under ")
        with pytest.raises(NotFound):
            h.manager.resolve(ModelRef("a"))
        h.manager.close()

    asyncio.run(scenario())
