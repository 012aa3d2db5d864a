"""A replica's Prometheus metrics, as plain text (exposition format 0.0.4): counters, gauges, histograms.

Kept here rather than in prometheus_client so that one replica's numbers are one object that the tests and
`/metrics` read alike; each line carries the replica's id, so a scrape of several replicas adds up.
"""
from __future__ import annotations

import bisect
import threading

# seconds above the audio floor: the bound (150 ms) lies on a bucket edge
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one: above every bucket (+Inf only)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """What one replica served. Updated from its event loop and its model thread, hence the lock."""

    def __init__(self, replica: str = "0"):
        self.replica = replica
        self._lock = threading.Lock()
        self.frames = 0
        self.dropped = {"late": 0, "slow_client": 0}
        self.sessions = 0  # open now
        self.sessions_total = 0
        self.refused = {"auth": 0, "full": 0, "protocol": 0}
        self.queue_depth = 0  # frames waiting for the model
        self.latency = Histogram(LATENCY_BUCKETS)
        self.batch = Histogram(BATCH_BUCKETS)

    def add(self, name: str, n: int = 1, key: str | None = None) -> None:
        with self._lock:
            if key is None:
                setattr(self, name, getattr(self, name) + n)
            else:
                getattr(self, name)[key] += n

    def observe(self, name: str, value: float) -> None:
        with self._lock:
            getattr(self, name).observe(value)

    def render(self) -> str:
        r = f'replica="{self.replica}"'
        with self._lock:
            lines = [
                "# HELP amnet_frames_served_total Frames sent to clients.", "# TYPE amnet_frames_served_total counter",
                f"amnet_frames_served_total{{{r}}} {self.frames}",
                "# HELP amnet_frames_dropped_total Frames not sent: late (a newer one was ready) or for a slow client.",
                "# TYPE amnet_frames_dropped_total counter",
                *(f'amnet_frames_dropped_total{{{r},reason="{k}"}} {v}' for k, v in self.dropped.items()),
                "# HELP amnet_sessions Stream sessions open now.", "# TYPE amnet_sessions gauge",
                f"amnet_sessions{{{r}}} {self.sessions}",
                "# HELP amnet_sessions_total Stream sessions accepted.", "# TYPE amnet_sessions_total counter",
                f"amnet_sessions_total{{{r}}} {self.sessions_total}",
                "# HELP amnet_sessions_refused_total Sessions refused or closed for a bad token, a full replica, "
                "a bad message.", "# TYPE amnet_sessions_refused_total counter",
                *(f'amnet_sessions_refused_total{{{r},reason="{k}"}} {v}' for k, v in self.refused.items()),
                "# HELP amnet_queue_depth Frames waiting for the model.", "# TYPE amnet_queue_depth gauge",
                f"amnet_queue_depth{{{r}}} {self.queue_depth}",
            ]
            lines += _histogram("amnet_frame_latency_over_floor_seconds",
                                "From the audio that completed a frame's window arriving to the frame being sent.",
                                self.latency, r)
            lines += _histogram("amnet_batch_size", "Frames per model call.", self.batch, r)
        return "\n".join(lines) + "\n"


def _histogram(name: str, help_text: str, h: Histogram, labels: str) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
    total = 0
    for edge, n in zip(h.buckets, h.counts):
        total += n
        lines.append(f'{name}_bucket{{{labels},le="{edge:g}"}} {total}')
    lines += [f'{name}_bucket{{{labels},le="+Inf"}} {h.count}', f"{name}_sum{{{labels}}} {h.sum:.6f}",
              f"{name}_count{{{labels}}} {h.count}"]
    return lines


def parse(text: str) -> dict[str, float]:
    """Prometheus text → {"name{labels}": value} (for tests and the load test's report)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out
