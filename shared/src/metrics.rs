//! A small Prometheus text-format toolkit: counters, gauges, labelled counters and histograms on
//! atomics, and a minimal HTTP endpoint (`GET /metrics`) bound to `METRICS_ADDR`. Small on
//! purpose: the services export a dozen series and need no metrics framework.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge holding an f64.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A counter per label value (e.g. outcome, event name, close code).
#[derive(Debug, Default)]
pub struct LabeledCounter(Mutex<BTreeMap<String, u64>>);

/// Distinct label values a [`LabeledCounter`] keeps; later new values count under
/// [`OVERFLOW_LABEL`]. Labels can come from outside (Kick's event names): a flood of made-up
/// names must not grow the metrics page (and Prometheus) without bound.
pub const MAX_LABELS: usize = 64;
/// Where new label values beyond [`MAX_LABELS`] are counted.
pub const OVERFLOW_LABEL: &str = "_other";

impl LabeledCounter {
    pub fn add(&self, label: &str, n: u64) {
        let mut m = self.0.lock().unwrap();
        let full = m.len() >= MAX_LABELS;
        match m.get_mut(label) {
            Some(v) => *v = v.saturating_add(n),
            None if full => {
                let v = m.entry(OVERFLOW_LABEL.to_owned()).or_default();
                *v = v.saturating_add(n);
            }
            None => {
                m.insert(label.to_owned(), n);
            }
        }
    }
    pub fn get(&self, label: &str) -> u64 {
        self.0.lock().unwrap().get(label).copied().unwrap_or(0)
    }
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap().clone()
    }
}

/// Latency buckets in seconds, from 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, secs: f64) {
        let secs = secs.max(0.0);
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            if secs <= *b {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Builds the text exposition.
#[derive(Debug, Default)]
pub struct Text(String);

impl Text {
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> &mut Self {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
        self
    }
    pub fn gauge(&mut self, name: &str, help: &str, v: f64) -> &mut Self {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}"
        );
        self
    }
    pub fn labeled(
        &mut self,
        name: &str,
        help: &str,
        kind: &str,
        label: &str,
        values: &BTreeMap<String, u64>,
    ) -> &mut Self {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (k, v) in values {
            let k = k.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(self.0, "{name}{{{label}=\"{k}\"}} {v}");
        }
        self
    }
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (b, c) in h.bounds.iter().zip(&h.counts) {
            let _ = writeln!(
                self.0,
                "{name}_bucket{{le=\"{b}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        let count = h.count();
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            self.0,
            "{name}_sum {}",
            h.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(self.0, "{name}_count {count}");
        self
    }
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.0)
    }
}

/// Something that renders its metrics as Prometheus text.
pub trait Render: Send + Sync + 'static {
    fn render(&self) -> String;
}

/// What the HTTP endpoint serves: `GET /metrics` (Prometheus text) and `GET /healthz` (JSON;
/// status 200 when healthy, 503 otherwise).
pub trait Site: Render {
    /// `(healthy, body)`.
    fn healthz(&self) -> (bool, serde_json::Value);
}

/// At most this many connections are served at once; more are closed at once (a scraper needs
/// one). Protects the process from a connection flood.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection that has not sent its request line and headers within this long is closed.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Request heads larger than this are refused.
const MAX_REQUEST: usize = 8 * 1024;

/// Serves `/metrics` (and `/`) and `/healthz` on `addr` until `shutdown`. Returns the bound
/// address. Connections are capped ([`MAX_CONNECTIONS`]), idle ones time out
/// ([`REQUEST_TIMEOUT`]), and accept errors (e.g. out of file descriptors) back off instead of
/// spinning.
pub async fn serve(
    addr: SocketAddr,
    site: Arc<dyn Site>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    // Connections still reading their request, oldest first (see the eviction below).
    let waiting: Arc<Mutex<std::collections::VecDeque<(u64, CancellationToken)>>> = Arc::default();
    let mut next_id: u64 = 0;
    tokio::spawn(async move {
        let mut backoff = crate::backoff::Backoff::new(
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(1),
        );
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => r,
            };
            let mut sock = match accepted {
                Ok((s, _)) => {
                    backoff.reset();
                    s
                }
                Err(e) => {
                    // EMFILE and friends: the condition lasts; retrying at once would spin.
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "metrics endpoint: accept failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            };
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    // Over the cap: the oldest connection that has still not sent its request
                    // makes room (a flood of idle connections must not lock out a scraper or a
                    // health check, which send theirs at once); with none, the new one is
                    // closed rather than queued.
                    let victim = waiting.lock().unwrap().pop_front();
                    let Some((_, stop)) = victim else {
                        drop(sock);
                        continue;
                    };
                    stop.cancel();
                    match tokio::time::timeout(
                        std::time::Duration::from_millis(100),
                        slots.clone().acquire_owned(),
                    )
                    .await
                    {
                        Ok(Ok(p)) => p,
                        _ => {
                            drop(sock);
                            continue;
                        }
                    }
                }
            };
            let site = site.clone();
            next_id += 1;
            let (id, stop) = (next_id, CancellationToken::new());
            waiting.lock().unwrap().push_back((id, stop.clone()));
            let waiting = waiting.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let path = tokio::select! {
                    r = tokio::time::timeout(REQUEST_TIMEOUT, read_path(&mut sock)) => r,
                    _ = stop.cancelled() => Ok(None),
                };
                waiting.lock().unwrap().retain(|(i, _)| *i != id);
                let Ok(Some(path)) = path else {
                    return;
                };
                let (status, ctype, body) = match path.as_str() {
                    "/metrics" | "/" => ("200 OK", "text/plain; version=0.0.4", site.render()),
                    "/healthz" => {
                        let (ok, body) = site.healthz();
                        let status = if ok {
                            "200 OK"
                        } else {
                            "503 Service Unavailable"
                        };
                        (status, "application/json", format!("{body}\n"))
                    }
                    _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ =
                    tokio::time::timeout(REQUEST_TIMEOUT, sock.write_all(resp.as_bytes())).await;
            });
        }
    });
    Ok(local)
}

/// Reads a request head and returns its path; `None` for anything that is not a GET request
/// within [`MAX_REQUEST`] bytes.
async fn read_path(sock: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() + n > MAX_REQUEST {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.split_whitespace();
    if parts.next()? != "GET" {
        return None;
    }
    let target = parts.next()?;
    Some(target.split('?').next().unwrap_or(target).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dummy;
    impl Render for Dummy {
        fn render(&self) -> String {
            "x 1\n".into()
        }
    }
    impl Site for Dummy {
        fn healthz(&self) -> (bool, serde_json::Value) {
            (true, serde_json::json!({"status": "ok"}))
        }
    }

    #[tokio::test]
    async fn idle_connections_cannot_lock_out_a_health_check() {
        let stop = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Dummy),
            stop.clone(),
        )
        .await
        .unwrap();
        // More idle connections than the cap, never sending a byte.
        let mut idle = Vec::new();
        for _ in 0..(MAX_CONNECTIONS + 8) {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(2),
            s.read_to_string(&mut out),
        )
        .await
        .expect("answered well before the idle ones time out")
        .unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        stop.cancel();
    }

    #[test]
    fn label_values_from_outside_are_bounded() {
        let c = LabeledCounter::default();
        for i in 0..10_000 {
            c.add(&format!("made-up-{i}"), 1);
        }
        let snap = c.snapshot();
        assert_eq!(snap.len(), MAX_LABELS + 1);
        assert_eq!(snap[OVERFLOW_LABEL], 10_000 - MAX_LABELS as u64);
        // Known labels still count as themselves.
        c.add("made-up-0", 1);
        assert_eq!(c.get("made-up-0"), 2);
    }
}
