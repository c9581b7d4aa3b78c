from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from portcullis import __version__
from portcullis.basics.vocabulary import Decision, Mode, Reason
from portcullis.observe.events import CloseEvent, DecisionEvent
from portcullis.observe.metrics import FLUSH_DELAY, LATENCY_BUCKETS, Metrics


def dec(rule: str | None, decision: Decision, reason: Reason) -> DecisionEvent:
    return DecisionEvent(
        time=0.0,
        id="x-1",
        client="10.0.0.1",
        client_port=40000,
        mode="explicit",
        host="us.icr.io",
        port=443,
        sni=None,
        rule=rule,
        decision=decision,
        reason=reason,
        dns_ms=3.0,
        connect_ms=4.0,
    )


def value(m: Metrics, name: str, **labels: str) -> float | None:
    m.flush()  # what a scrape does first
    return m.registry.get_sample_value(name, labels)


def test_decisions_counted_by_decision_reason_rule() -> None:
    m = Metrics()
    for _ in range(3):
        m.record_decision(dec("ibm", Decision.ALLOW, Reason.RULE_ALLOW))
    m.record_decision(dec(None, Decision.DENY, Reason.NO_RULE))
    m.record_decision(dec(None, Decision.REPORT, Reason.NO_RULE))
    name = "portcullis_decisions_total"
    assert value(m, name, decision="allow", reason="rule_allow", rule="ibm") == 3
    assert value(m, name, decision="deny", reason="no_rule", rule="") == 1
    assert value(m, name, decision="report", reason="no_rule", rule="") == 1
    assert value(m, name, decision="deny", reason="rule_allow", rule="ibm") is None


def test_record_decision_does_not_observe_timings() -> None:
    m = Metrics()
    m.record_decision(dec("r", Decision.ALLOW, Reason.RULE_ALLOW))
    assert value(m, "portcullis_dns_seconds_count") == 0
    assert value(m, "portcullis_upstream_connect_seconds_count") == 0


def test_registries_are_independent() -> None:
    a, b = Metrics(), Metrics()
    a.record_decision(dec("r", Decision.ALLOW, Reason.RULE_ALLOW))
    a.connection_opened("explicit")
    name = "portcullis_decisions_total"
    assert value(a, name, decision="allow", reason="rule_allow", rule="r") == 1
    assert value(b, name, decision="allow", reason="rule_allow", rule="r") is None
    assert value(b, "portcullis_active_connections", mode="explicit") == 0


def test_active_connections_gauge_per_mode() -> None:
    m = Metrics()
    m.connection_opened("explicit")
    m.connection_opened("explicit")
    m.connection_opened("transparent")
    m.connection_closed("explicit")
    assert value(m, "portcullis_active_connections", mode="explicit") == 1
    assert value(m, "portcullis_active_connections", mode="transparent") == 1
    assert value(m, "portcullis_active_connections", mode="http") == 0


def test_bytes_from_close_events() -> None:
    m = Metrics()
    for up, down in ((10, 1000), (0, 5), (7, 0)):
        m.record_close(
            CloseEvent(
                time=0.0,
                id="i",
                client="c",
                host=None,
                bytes_up=up,
                bytes_down=down,
                duration_s=1.0,
                close_reason="eof",
            )
        )
    assert value(m, "portcullis_bytes_total", direction="up") == 17
    assert value(m, "portcullis_bytes_total", direction="down") == 1005


def test_latency_histograms_and_buckets() -> None:
    assert LATENCY_BUCKETS[0] == 0.0005
    assert LATENCY_BUCKETS[-1] == 10.0
    assert list(LATENCY_BUCKETS) == sorted(LATENCY_BUCKETS)
    m = Metrics()
    m.observe_dns(0.0003)
    m.observe_dns(0.02)
    m.observe_connect(30.0)
    assert value(m, "portcullis_dns_seconds_bucket", le="0.0005") == 1
    assert value(m, "portcullis_dns_seconds_bucket", le="0.025") == 2
    assert value(m, "portcullis_dns_seconds_count") == 2
    assert value(m, "portcullis_upstream_connect_seconds_bucket", le="10.0") == 0
    assert value(m, "portcullis_upstream_connect_seconds_bucket", le="+Inf") == 1


def test_connect_errors_fold_unknown_kinds_into_other() -> None:
    m = Metrics()
    m.connect_error("refused")
    m.connect_error("timeout")
    m.connect_error("timeout")
    m.connect_error("ENOSPC-made-up")
    name = "portcullis_connect_errors_total"
    assert value(m, name, kind="refused") == 1
    assert value(m, name, kind="timeout") == 2
    assert value(m, name, kind="other") == 1
    assert value(m, name, kind="unreachable") == 0
    assert value(m, name, kind="ENOSPC-made-up") is None


def test_reloads_rules_and_info() -> None:
    m = Metrics(version="9.9.9")
    m.reload(True)
    m.reload(True)
    m.reload(False)
    m.set_policy_rules(42)
    assert value(m, "portcullis_policy_reloads_total", result="ok") == 2
    assert value(m, "portcullis_policy_reloads_total", result="error") == 1
    assert value(m, "portcullis_policy_rules") == 42
    assert value(m, "portcullis_info", version="9.9.9") == 1
    assert value(Metrics(), "portcullis_info", version=__version__) == 1


def test_render_is_parseable_prometheus_text() -> None:
    m = Metrics()
    m.record_decision(dec('we"ird\\rule\n', Decision.DENY, Reason.RULE_DENY))
    body, ctype = m.render()
    assert ctype.startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for expected in (
        "portcullis_decisions",
        "portcullis_active_connections",
        "portcullis_bytes",
        "portcullis_dns_seconds",
        "portcullis_upstream_connect_seconds",
        "portcullis_connect_errors",
        "portcullis_policy_reloads",
        "portcullis_policy_rules",
        "portcullis_info",
    ):
        assert expected in families, expected
    [sample] = [s for s in families["portcullis_decisions"].samples if s.name.endswith("_total")]
    assert sample.labels["rule"] == 'we"ird\\rule\n'
    assert sample.value == 1


def test_a_flushed_histogram_is_the_one_observe_makes() -> None:
    # flush adds a batch through prometheus_client's internals: the exposition
    # must stay what one observe() per value would have written.
    samples = [0.0, 0.0005, 0.00051, 0.003, 0.025, 0.2, 9.99, 10.0, 10.5, 300.0]
    reference = CollectorRegistry()
    direct = Histogram("portcullis_dns_seconds", "Time to resolve a requested name.",
                       buckets=LATENCY_BUCKETS, registry=reference)
    m = Metrics()
    for sample in samples:
        direct.observe(sample)
        m.observe_dns(sample)
    m.flush()
    m.observe_dns(0.001)  # a second batch adds to the first
    m.flush()
    direct.observe(0.001)

    def histogram_lines(body: bytes) -> list[str]:
        return [line for line in body.decode().splitlines()
                if line.startswith("portcullis_dns_seconds") and "_created" not in line]

    assert histogram_lines(generate_latest(m.registry)) == histogram_lines(
        generate_latest(reference))


def test_a_batch_is_flushed_by_itself_within_the_delay() -> None:
    async def main() -> tuple[float | None, float | None]:
        m = Metrics()
        m.record_decision(dec("ibm", Decision.ALLOW, Reason.RULE_ALLOW))
        m.connection_opened(Mode.EXPLICIT)
        name = "portcullis_decisions_total"
        labels = {"decision": "allow", "reason": "rule_allow", "rule": "ibm"}
        before = m.registry.get_sample_value(name, labels)
        await asyncio.sleep(FLUSH_DELAY * 3)
        return before, m.registry.get_sample_value(name, labels)

    before, after = asyncio.run(main())
    assert (before, after) == (None, 1)
