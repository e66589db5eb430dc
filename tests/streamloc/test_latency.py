import numpy as np

from streamloc.latency import LatencyStats


def test_percentiles_skip_warmup_and_match_numpy():
    rng = np.random.default_rng(0)
    values = rng.gamma(2.0, 5.0, 500)
    stats = LatencyStats(warmup=10)
    for v in values:
        stats.add({"total": float(v), "encoder": float(v) / 2})
    s = stats.summary()
    kept = values[10:]
    for q, key in [(50, "p50"), (90, "p90"), (99, "p99")]:
        assert s["stages"]["total"][key] == np.percentile(kept, q)
    assert s["stages"]["total"]["max"] == kept.max()
    assert s["stages"]["encoder"]["n"] == 490 and s["warmup_skipped"] == 10


def test_counters_and_format():
    stats = LatencyStats(warmup=0)
    stats.count("ticks_skipped", 3)
    stats.count("ticks_skipped")
    stats.add({"e2e": 12.5})
    assert stats.summary()["counters"] == {"ticks_skipped": 4}
    text = stats.format()
    assert "e2e" in text and "ticks_skipped 4" in text and "p99" in text
