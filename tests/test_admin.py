"""The admin endpoint's metrics collector, on its own."""

import header_augment
from mitmproxy.test import taddons
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from header_augment_core.counters import REQUEST_COUNTERS, REQUEST_OUTCOMES
from header_augment_core.failures import REASON_CLASSES
from header_augment_core.metrics import ProviderCollector
from header_augment_core.snapshot import Snapshot

VALUE = "Bearer v4lue-never-shown"
OTHER_VALUE = "other-v4lue-never-shown"
QUERY = "query-t0ken-never-shown"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics answer, by name and labels (parsed by prometheus_client's own parser)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


# -- the collector, in-process -----------------------------------------------------------------------------------


def test_collector_reads_the_counters_the_addon_keeps(tmp_path):
    url = "http://127.0.0.1:9/headers"
    providers = tmp_path / "providers.yaml"
    providers.write_text(
        f"- url: {url}\n  hosts: b.example\n"  # the same fetch as the single provider: one refresher for both
        f"- name: named\n  url: http://127.0.0.1:9/other?token={QUERY}\n  hosts: c.example\n  max_stale: 50s\n"
    )
    addon = header_augment.HeaderAugment()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, header_provider_url=url, header_hosts=["a.example"], header_providers_file=str(providers))
        single, shared, named = addon.bindings
        assert single.refresher is shared.refresher
        refresher = single.refresher
        refresher.snapshot = Snapshot.build([("X-Token", VALUE), ("X-Other", OTHER_VALUE)], 990.0, 0.0)
        refresher.next_fetch_at = 1100.0
        refresher.in_flight_since = 997.5
        refresher.counts.ok = 2
        refresher.counts.count_failure("HTTP 500 (free text)", "status")
        named.refresher.snapshot = Snapshot.build([("X-C", VALUE)], 900.0, 50.0)  # stale since 950
        for number, binding in enumerate(addon.bindings):
            for offset, c in enumerate(REQUEST_COUNTERS):
                setattr(binding.counters, c.attribute, 10 * number + offset)
        registry = CollectorRegistry()
        registry.register(ProviderCollector(lambda: addon.bindings, clock=lambda: 1000.0, wall=lambda: 5000.0))
        text = generate_latest(registry).decode()

    expected = {}

    def expect(value: float, name: str, **labels: str) -> None:
        expected[(name, frozenset(labels.items()))] = value

    labels = ((single, url), (shared, f"{url} #2"), (named, "named"))  # unnamed entries sharing a source stay apart
    for number, (binding, provider) in enumerate(labels):
        for offset, c in enumerate(REQUEST_COUNTERS):
            if c in REQUEST_OUTCOMES:
                expect(10 * number + offset, "header_augment_requests_total", provider=provider, outcome=c.attribute)
            else:
                expect(10 * number + offset, f"header_augment_requests_{c.attribute}_total", provider=provider)
        ours = binding.refresher is refresher
        expect(2 if ours else 0, "header_augment_fetches_total", provider=provider, result="ok", reason_class="")
        for reason_class in REASON_CLASSES:
            count = 1 if ours and reason_class == "status" else 0
            expect(count, "header_augment_fetches_total", provider=provider, result="failed", reason_class=reason_class)
        for name, if_ours, if_named in (
            ("last_success_timestamp_seconds", 4990, 4900),
            ("usable", 1, 0),
            ("headers", 2, 0),
            ("next_refresh_timestamp_seconds", 5100, 0),  # never scheduled: not started
            ("fetch_in_flight_seconds", 2.5, 0),
        ):
            expect(if_ours if ours else if_named, f"header_augment_{name}", provider=provider)
    assert samples(text) == expected
    for secret in (VALUE, OTHER_VALUE, QUERY, "free text"):
        assert secret not in text
    help_lines = [line for line in text.splitlines() if line.startswith("# HELP header_augment_fetches_total")]
    assert "share one refresher" in help_lines[0]
