//! Prometheus text-format metrics, kept in atomics so handlers never lock: request counts by
//! route and status, a latency histogram of searches, the index's size, and the counters of the
//! model queue and the search batcher ([`Counters`]).

use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the search latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Figures the page shows that other parts of the server keep.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub index_rows: usize,
    pub index_bytes: u64,
    /// Model forward passes and the images they embedded.
    pub inference_batches: u64,
    pub inference_images: u64,
    /// Index scans the search batcher ran and the searches they answered.
    pub index_scans: u64,
    pub index_searches: u64,
}

#[derive(Default)]
pub struct Metrics {
    /// (route, status) → count; few distinct keys, so a small locked list is enough.
    requests: Mutex<Vec<(&'static str, u16, u64)>>,
    buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_micros: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: &'static str, status: u16) {
        let mut r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        match r.iter_mut().find(|e| e.0 == route && e.1 == status) {
            Some(e) => e.2 += 1,
            None => r.push((route, status, 1)),
        }
    }

    pub fn search_latency(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            if s <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// The metrics page.
    pub fn render(&self, c: &Counters) -> String {
        let mut out = String::new();
        out.push_str("# HELP visual_search_requests_total HTTP requests by route and status.\n");
        out.push_str("# TYPE visual_search_requests_total counter\n");
        let r = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for (route, status, n) in r.iter() {
            let _ = writeln!(
                out,
                "visual_search_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        drop(r);
        out.push_str("# HELP visual_search_search_seconds Latency of /search requests.\n");
        out.push_str("# TYPE visual_search_search_seconds histogram\n");
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "visual_search_search_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "visual_search_search_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "visual_search_search_seconds_sum {}",
            self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "visual_search_search_seconds_count {count}");
        let gauges = [
            (
                "visual_search_index_rows",
                "Images in the index.",
                c.index_rows as u64,
                "gauge",
            ),
            (
                "visual_search_index_bytes",
                "Size of the index on disk.",
                c.index_bytes,
                "gauge",
            ),
            (
                "visual_search_inference_batches_total",
                "Model forward passes.",
                c.inference_batches,
                "counter",
            ),
            (
                "visual_search_inference_images_total",
                "Images embedded.",
                c.inference_images,
                "counter",
            ),
            (
                "visual_search_index_scans_total",
                "Scans of the embedded index (concurrent searches share one).",
                c.index_scans,
                "counter",
            ),
            (
                "visual_search_index_searches_total",
                "Searches those scans answered.",
                c.index_searches,
                "counter",
            ),
        ];
        for (name, help, value, kind) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.search_latency(Duration::from_millis(7));
        m.search_latency(Duration::from_millis(300));
        m.request("search", 200);
        m.request("search", 200);
        m.request("search", 400);
        let text = m.render(&Counters {
            index_rows: 5,
            index_bytes: 100,
            index_scans: 3,
            index_searches: 7,
            ..Counters::default()
        });
        assert!(text.contains("visual_search_search_seconds_bucket{le=\"0.005\"} 0"));
        assert!(text.contains("visual_search_search_seconds_bucket{le=\"0.01\"} 1"));
        assert!(text.contains("visual_search_search_seconds_bucket{le=\"0.5\"} 2"));
        assert!(text.contains("visual_search_search_seconds_count 2"));
        assert!(text.contains("visual_search_requests_total{route=\"search\",status=\"200\"} 2"));
        assert!(text.contains("visual_search_index_rows 5"));
        assert!(text.contains("visual_search_index_scans_total 3"));
        assert!(text.contains("visual_search_index_searches_total 7"));
    }
}
