"""The server's Prometheus metrics (``GET /metrics``), in their own registry per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from graphrt.params import GenerationResult

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """Counters, gauges and histograms of one server.

    Per mode: requests by outcome, prompt and completion tokens, forwards (so
    TPF = tokens / forwards, shown as ``graphrt_tpf``), request latency and time
    to first token. Server-wide: backbone calls, steps, failed steps, the
    waiting queue's depth, active requests, HTTP errors by status.

    Speculative decoding, per draft source (``lookup``, ``diffusion``; ``none`` for plain
    steps), from the cycles of finished ``auto`` requests, named as vLLM names its own:
    ``graphrt_spec_decode_num_drafts`` (cycles that drafted), ``..._num_draft_tokens``,
    ``..._num_accepted_tokens``, ``..._num_accepted_tokens_per_pos`` (by draft slot), and the
    derived ``graphrt_spec_decode_acceptance_rate`` and ``..._mean_accepted_length`` (tokens per
    cycle, the bonus token included); the mode mix is ``graphrt_auto_cycles{source, width}``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("graphrt_requests", "Finished requests", ["mode", "outcome"], registry=r)
        self.prompt_tokens = Counter("graphrt_prompt_tokens", "Prompt tokens of finished requests", ["mode"],
                                     registry=r)
        self.tokens = Counter("graphrt_tokens", "Completion tokens of finished requests", ["mode"], registry=r)
        self.forwards = Counter("graphrt_forwards", "Backbone forwards spent by finished requests (a shared call "
                                "counts once for each request)", ["mode"], registry=r)
        self.backbone_calls = Counter("graphrt_backbone_calls", "Packed backbone calls made by the engine",
                                      registry=r)
        self.steps = Counter("graphrt_steps", "Session steps run", registry=r)
        self.failed_steps = Counter("graphrt_failed_steps", "Session steps that raised", registry=r)
        self.http_errors = Counter("graphrt_http_errors", "Requests answered with an error", ["status"], registry=r)
        self.queue_depth = Gauge("graphrt_queue_depth", "Requests waiting for a cache row", registry=r)
        self.active = Gauge("graphrt_active_requests", "Requests holding a cache row", registry=r)
        self.latency = Histogram("graphrt_request_latency_seconds", "Arrival to last token", ["mode"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("graphrt_time_to_first_token_seconds", "Arrival to first token", ["mode"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.step_seconds = Histogram("graphrt_step_seconds", "Duration of one session step",
                                      buckets=LATENCY_BUCKETS, registry=r)
        self.spec_drafts = Counter("graphrt_spec_decode_num_drafts", "Cycles that verified a draft", ["source"],
                                   registry=r)
        self.spec_draft_tokens = Counter("graphrt_spec_decode_num_draft_tokens", "Draft tokens verified",
                                         ["source"], registry=r)
        self.spec_accepted = Counter("graphrt_spec_decode_num_accepted_tokens", "Draft tokens accepted",
                                     ["source"], registry=r)
        self.spec_accepted_pos = Counter("graphrt_spec_decode_num_accepted_tokens_per_pos",
                                         "Draft tokens accepted, by draft slot", ["source", "position"], registry=r)
        self.auto_cycles = Counter("graphrt_auto_cycles", "Cycles of mode auto by draft source and verified width "
                                   "(the mode mix)", ["source", "width"], registry=r)
        r.register(_TPF(self))
        r.register(_Acceptance(self))

    def finished(self, result: GenerationResult, latency: float) -> None:
        """Count a finished (or cancelled) request."""
        mode = result.mode
        self.requests.labels(mode, result.finish_reason).inc()
        self.prompt_tokens.labels(mode).inc(result.prompt_tokens)
        self.tokens.labels(mode).inc(len(result.tokens))
        self.forwards.labels(mode).inc(result.forwards)
        self.latency.labels(mode).observe(latency)
        if result.cycle_info:
            self.cycles(result.cycle_info)

    def cycles(self, cycle_info: list[tuple[int, ...]]) -> None:
        """Count an adaptive request's cycles ``(source, width, accepted)`` (see the class docstring)."""
        from graphrt.adaptive import SOURCES

        for entry in cycle_info:
            s, w, k = (int(x) for x in entry[:3])
            source = SOURCES[s] if 0 <= s < len(SOURCES) else str(s)
            self.auto_cycles.labels(source, str(w)).inc()
            if w <= 1:
                continue
            self.spec_drafts.labels(source).inc()
            self.spec_draft_tokens.labels(source).inc(w - 1)
            self.spec_accepted.labels(source).inc(k)
            for pos in range(k):
                self.spec_accepted_pos.labels(source, str(pos)).inc()

    def text(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class _TPF:
    """``graphrt_tpf{mode}``: completion tokens / forwards over finished requests (ratio of the sums)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        fam = GaugeMetricFamily("graphrt_tpf", "Tokens per forward of finished requests, per mode",
                                labels=["mode"])
        tokens = {s.labels["mode"]: s.value for m in self.metrics.tokens.collect() for s in m.samples
                  if s.name.endswith("_total")}
        for m in self.metrics.forwards.collect():
            for s in m.samples:
                if s.name.endswith("_total") and s.value:
                    fam.add_metric([s.labels["mode"]], tokens.get(s.labels["mode"], 0.0) / s.value)
        yield fam


class _Acceptance:
    """``graphrt_spec_decode_acceptance_rate{source}`` (accepted / draft tokens) and
    ``graphrt_spec_decode_mean_accepted_length{source}`` (committed tokens per drafting cycle)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):  # noqa: ANN201 - prometheus_client's collector protocol
        def totals(counter: Counter) -> dict[str, float]:
            return {s.labels["source"]: s.value for m in counter.collect() for s in m.samples
                    if s.name.endswith("_total")}

        drafts, tokens = totals(self.metrics.spec_drafts), totals(self.metrics.spec_draft_tokens)
        accepted = totals(self.metrics.spec_accepted)
        rate = GaugeMetricFamily("graphrt_spec_decode_acceptance_rate", "Accepted / verified draft tokens, per "
                                 "draft source", labels=["source"])
        length = GaugeMetricFamily("graphrt_spec_decode_mean_accepted_length", "Tokens committed per drafting "
                                   "cycle (accepted drafts plus the bonus token), per draft source", labels=["source"])
        for source, n in drafts.items():
            if n:
                rate.add_metric([source], accepted.get(source, 0.0) / max(tokens.get(source, 0.0), 1.0))
                length.add_metric([source], 1.0 + accepted.get(source, 0.0) / n)
        yield rate
        yield length
