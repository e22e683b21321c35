//! [`Metrics`]: the proxy's counters and the layer's statistics in Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::Stats;

use super::routing::Api;

/// How a client request ended, as far as the proxy can tell when the response head goes out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 1xx, 2xx or 3xx status.
    Success,
    /// A 4xx status (from the upstream).
    ClientError,
    /// A 5xx status from the upstream.
    UpstreamError,
    /// The proxy answered itself: the upstream could not be reached (502).
    ProxyError,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Success,
        Outcome::ClientError,
        Outcome::UpstreamError,
        Outcome::ProxyError,
    ];

    /// The outcome of an upstream response with this status.
    pub fn of(status: http::StatusCode) -> Self {
        if status.is_server_error() {
            Outcome::UpstreamError
        } else if status.is_client_error() {
            Outcome::ClientError
        } else {
            Outcome::Success
        }
    }

    /// The label in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::ClientError => "client_error",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ProxyError => "proxy_error",
        }
    }
}

/// Upper bounds of the upstream latency buckets, in seconds: from a cache hit to a long
/// reasoning answer.
const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// A Prometheus histogram of durations.
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (index, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS
                .get(index)
                .map_or_else(|| "+Inf".to_owned(), f64::to_string);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
        }
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// One route's upstream measurements.
#[derive(Debug)]
struct RouteMetrics {
    label: String,
    latency: Histogram,
    errors: AtomicU64,
}

/// The proxy's own counters: client requests by API and outcome, and per route the upstream's
/// latency (to the response head, every round of the layer included) and transport errors.
/// The layer's statistics ([`Stats`]) are rendered beside them.
#[derive(Debug)]
pub struct Metrics {
    requests: [[AtomicU64; Outcome::ALL.len()]; Api::ALL.len()],
    routes: Vec<RouteMetrics>,
}

impl Metrics {
    /// Metrics for routes with these labels ([`Routes::labels`](super::Routes::labels)).
    pub fn new<'a>(route_labels: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            requests: Default::default(),
            routes: route_labels
                .into_iter()
                .map(|label| RouteMetrics {
                    label: label.to_owned(),
                    latency: Histogram::default(),
                    errors: AtomicU64::default(),
                })
                .collect(),
        }
    }

    /// Counts a client request.
    pub fn request(&self, api: Api, outcome: Outcome) {
        let outcome = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or_default();
        self.requests[api.index()][outcome].fetch_add(1, Ordering::Relaxed);
    }

    fn route(&self, label: &str) -> Option<&RouteMetrics> {
        self.routes.iter().find(|route| route.label == label)
    }

    /// Records the time an upstream of `route` took to send a response head.
    pub fn upstream_latency(&self, route: &str, elapsed: Duration) {
        if let Some(route) = self.route(route) {
            route.latency.observe(elapsed);
        }
    }

    /// Counts a request the upstream of `route` could not be sent or answer.
    pub fn upstream_error(&self, route: &str) {
        if let Some(route) = self.route(route) {
            route.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Everything in Prometheus text exposition format (version 0.0.4).
    ///
    /// ```
    /// use tower_ccr::proxy::{Api, Metrics, Outcome};
    ///
    /// let metrics = Metrics::new(["openai"]);
    /// metrics.request(Api::OpenAiChat, Outcome::Success);
    /// let mut stats = tower_ccr::Stats::default();
    /// stats.store_available = true;
    /// let text = metrics.render(&stats);
    /// assert!(text.contains("ccr_proxy_requests_total{api=\"openai-chat\",outcome=\"success\"} 1\n"));
    /// assert!(text.contains("ccr_store_up 1\n") && text.contains("ccr_store_entries 0\n"));
    ///
    /// // A store that did not answer: its gauges are unknown, not 0.
    /// let text = metrics.render(&tower_ccr::Stats::default());
    /// assert!(text.contains("ccr_store_up 0\n") && !text.contains("ccr_store_entries"));
    /// ```
    pub fn render(&self, stats: &Stats) -> String {
        let mut out = String::with_capacity(8 * 1024);
        header(
            &mut out,
            "ccr_proxy_requests_total",
            "counter",
            "Client requests by API and outcome.",
        );
        for (api, row) in Api::ALL.iter().zip(&self.requests) {
            for (outcome, count) in Outcome::ALL.iter().zip(row) {
                let _ = writeln!(
                    out,
                    "ccr_proxy_requests_total{{api=\"{}\",outcome=\"{}\"}} {}",
                    api.name(),
                    outcome.name(),
                    count.load(Ordering::Relaxed)
                );
            }
        }
        header(
            &mut out,
            "ccr_proxy_upstream_latency_seconds",
            "histogram",
            "Time from sending a request upstream to its response head, every continuation round included.",
        );
        for route in &self.routes {
            let labels = format!("route=\"{}\"", escape(&route.label));
            route
                .latency
                .render(&mut out, "ccr_proxy_upstream_latency_seconds", &labels);
        }
        header(
            &mut out,
            "ccr_proxy_upstream_errors_total",
            "counter",
            "Upstream requests that failed before a response head (connect, TLS, reset).",
        );
        for route in &self.routes {
            let _ = writeln!(
                out,
                "ccr_proxy_upstream_errors_total{{route=\"{}\"}} {}",
                escape(&route.label),
                route.errors.load(Ordering::Relaxed)
            );
        }
        let counters = [
            (
                "ccr_requests_rewritten_total",
                "Requests sent upstream with at least one compressed tool output.",
                stats.requests_rewritten,
            ),
            (
                "ccr_requests_failed_open_total",
                "Requests sent upstream unchanged because of an internal error.",
                stats.requests_failed_open,
            ),
            (
                "ccr_outputs_compressed_total",
                "Tool outputs replaced by a view (counted in every request that carried them).",
                stats.outputs_compressed,
            ),
            (
                "ccr_tokens_before_total",
                "Estimated tokens of the compressed tool outputs.",
                stats.tokens_before,
            ),
            (
                "ccr_tokens_after_total",
                "Estimated tokens of their views, markers included.",
                stats.tokens_after,
            ),
            (
                "ccr_views_reused_total",
                "Tool outputs whose view came from the view cache (seen in an earlier turn).",
                stats.views_reused,
            ),
            (
                "ccr_round_budget_exhausted_total",
                "Exchanges ended because the round budget was spent while the model still asked for originals.",
                stats.round_budget_exhausted,
            ),
            (
                "ccr_continuation_rounds_total",
                "Continuation requests the layer sent upstream after answering retrieval calls.",
                stats.continuation_rounds,
            ),
        ];
        for (name, help, value) in counters {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            &mut out,
            "ccr_retrievals_total",
            "counter",
            "Retrieval calls the layer answered, by outcome.",
        );
        let retrievals = &stats.retrievals;
        for (outcome, value) in [
            ("full", retrievals.full),
            ("search", retrievals.search),
            ("range", retrievals.range),
            ("unknown", retrievals.unknown),
            ("expired", retrievals.expired),
            ("invalid", retrievals.invalid),
            ("unavailable", retrievals.unavailable),
        ] {
            let _ = writeln!(out, "ccr_retrievals_total{{outcome=\"{outcome}\"}} {value}");
        }
        header(
            &mut out,
            "ccr_store_up",
            "gauge",
            "1 when the store answered this scrape's usage query, 0 when it failed (Redis down).",
        );
        let _ = writeln!(out, "ccr_store_up {}", u8::from(stats.store_available));
        // Unknown is not empty: with the store down, its gauges are left out.
        if stats.store_available {
            for (name, help, value) in [
                (
                    "ccr_store_entries",
                    "Originals the store holds now.",
                    stats.entries,
                ),
                ("ccr_store_bytes", "Bytes the store holds now.", stats.bytes),
            ] {
                header(&mut out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let metrics = Metrics::new(["openai", "/we\"ird"]);
        metrics.upstream_latency("openai", Duration::from_millis(3));
        metrics.upstream_latency("openai", Duration::from_millis(300));
        metrics.upstream_latency("openai", Duration::from_secs(500));
        metrics.upstream_latency("unknown route", Duration::from_secs(1));
        metrics.upstream_error("/we\"ird");
        let text = metrics.render(&Stats::default());
        for line in [
            "ccr_proxy_upstream_latency_seconds_bucket{route=\"openai\",le=\"0.005\"} 1",
            "ccr_proxy_upstream_latency_seconds_bucket{route=\"openai\",le=\"0.25\"} 1",
            "ccr_proxy_upstream_latency_seconds_bucket{route=\"openai\",le=\"0.5\"} 2",
            "ccr_proxy_upstream_latency_seconds_bucket{route=\"openai\",le=\"120\"} 2",
            "ccr_proxy_upstream_latency_seconds_bucket{route=\"openai\",le=\"+Inf\"} 3",
            "ccr_proxy_upstream_latency_seconds_count{route=\"openai\"} 3",
            "ccr_proxy_upstream_latency_seconds_count{route=\"/we\\\"ird\"} 0",
            "ccr_proxy_upstream_errors_total{route=\"/we\\\"ird\"} 1",
            "# TYPE ccr_proxy_upstream_latency_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        let sum: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("ccr_proxy_upstream_latency_seconds_sum{route=\"openai\"} ")
            })
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 500.303).abs() < 1e-6, "{sum}");
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let metrics = Metrics::new(["openai"]);
        metrics.request(Api::Gemini, Outcome::ProxyError);
        let text = metrics.render(&Stats::default());
        assert!(
            text.contains("ccr_proxy_requests_total{api=\"gemini\",outcome=\"proxy_error\"} 1\n")
        );
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("ccr_"), "{line}");
        }
    }

    #[test]
    fn every_retrieval_outcome_is_reported() {
        let metrics = Metrics::new(["openai"]);
        let stats = Stats {
            retrievals: crate::RetrievalStats {
                full: 1,
                search: 2,
                range: 3,
                unknown: 4,
                expired: 5,
                invalid: 6,
                unavailable: 7,
            },
            round_budget_exhausted: 8,
            ..Stats::default()
        };
        let text = metrics.render(&stats);
        for (outcome, count) in [
            ("full", 1),
            ("search", 2),
            ("range", 3),
            ("unknown", 4),
            ("expired", 5),
            ("invalid", 6),
            ("unavailable", 7),
        ] {
            let line = format!("ccr_retrievals_total{{outcome=\"{outcome}\"}} {count}\n");
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("ccr_round_budget_exhausted_total 8\n"));
    }
}
