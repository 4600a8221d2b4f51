//! The one HTTP path every source request takes: a bounded, adaptive number
//! of requests in flight, and one retry policy.
//!
//! - Retried: 429, 5xx, connection errors and resets, timeouts, bodies cut
//!   short. Never retried: other 4xx (400, 401, 403, 404, 409, 422...).
//! - The wait before a retry is jittered exponential backoff, replaced by the
//!   server's `Retry-After` (seconds or HTTP date) or `RateLimit-Reset`
//!   (seconds) when it sends one; all retries of one request share a total
//!   deadline.
//! - [`AdaptiveLimit`] halves the number of requests in flight on a 429 and
//!   raises it again by one after a run of successes.
//!
//! Errors never contain credentials: URLs are shown without their query
//! string and no header is ever printed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde::Serialize;
use tokio::sync::Notify;

/// How requests are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_retries: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// All attempts of one request end by then.
    pub deadline: Duration,
    /// One attempt, headers and body included.
    pub attempt_timeout: Duration,
    /// Waits the server asks for longer than this are capped to it.
    pub max_server_wait: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(30),
            deadline: Duration::from_secs(600),
            attempt_timeout: Duration::from_secs(120),
            max_server_wait: Duration::from_secs(120),
        }
    }
}

/// A failed request, after retries where they apply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    #[error("{what}: HTTP {status} from {url}{detail}")]
    Status { what: String, status: u16, url: String, detail: String, retry_after: Option<Duration> },
    #[error("{what}: {url}: {reason}")]
    Transport { what: String, url: String, reason: String },
    /// The body could not be kept where it goes (a full disk, say).
    #[error("{what}: {reason}")]
    Local { what: String, reason: String },
}

impl HttpError {
    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } => Some(*status),
            HttpError::Transport { .. } | HttpError::Local { .. } => None,
        }
    }

    /// 429, 5xx and transport failures are worth another attempt.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Status { status, .. } => *status == 429 || *status >= 500,
            HttpError::Transport { .. } => true,
            HttpError::Local { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            HttpError::Transport { .. } | HttpError::Local { .. } => None,
        }
    }
}

/// Counters for `--json` and tests.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub throttled: AtomicU64,
    pub bytes: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
pub struct HttpCounts {
    pub requests: u64,
    pub retries: u64,
    pub throttled: u64,
    pub bytes: u64,
}

impl HttpStats {
    pub fn snapshot(&self) -> HttpCounts {
        HttpCounts {
            requests: self.requests.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Requests in flight: at most `limit`, which adapts between 1 and `max`.
#[derive(Debug)]
pub struct AdaptiveLimit {
    state: std::sync::Mutex<LimitState>,
    notify: Notify,
    max: usize,
}

#[derive(Debug)]
struct LimitState {
    limit: usize,
    in_flight: usize,
    successes: usize,
}

/// A slot; freed on drop.
pub struct Permit<'a>(&'a AdaptiveLimit);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("invariant: limiter lock is never poisoned");
        s.in_flight -= 1;
        drop(s);
        self.0.notify.notify_waiters();
    }
}

impl AdaptiveLimit {
    pub fn new(max: usize) -> AdaptiveLimit {
        let max = max.max(1);
        AdaptiveLimit {
            state: std::sync::Mutex::new(LimitState { limit: max, in_flight: 0, successes: 0 }),
            notify: Notify::new(),
            max,
        }
    }

    pub fn limit(&self) -> usize {
        self.state.lock().expect("invariant: limiter lock is never poisoned").limit
    }

    pub async fn acquire(&self) -> Permit<'_> {
        loop {
            let notified = self.notify.notified();
            {
                let mut s = self.state.lock().expect("invariant: limiter lock is never poisoned");
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    return Permit(self);
                }
            }
            notified.await;
        }
    }

    /// The server pushed back: halve the limit.
    pub fn throttled(&self) {
        let mut s = self.state.lock().expect("invariant: limiter lock is never poisoned");
        s.limit = (s.limit / 2).max(1);
        s.successes = 0;
    }

    /// A request went through: after `limit * 4` in a row, allow one more.
    pub fn succeeded(&self) {
        let mut s = self.state.lock().expect("invariant: limiter lock is never poisoned");
        s.successes += 1;
        if s.successes >= s.limit * 4 && s.limit < self.max {
            s.limit += 1;
            s.successes = 0;
            drop(s);
            self.notify.notify_waiters();
        }
    }
}

/// A response: status, headers, whole body.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Where a successful response's body goes as it arrives (see
/// [`Http::send_to`]): memory, or a file for bodies too large to hold.
pub trait BodySink: Send {
    /// A body begins (again, on a retried attempt): whatever an earlier
    /// attempt wrote is dropped. `length` is its `Content-Length` if sent.
    fn start(&mut self, length: Option<u64>) -> std::io::Result<()>;

    /// The next bytes of the body.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

/// The most memory a body's announced length reserves up front.
const MAX_RESERVE: u64 = 64 << 20;

impl BodySink for Vec<u8> {
    fn start(&mut self, length: Option<u64>) -> std::io::Result<()> {
        self.clear();
        self.reserve(length.unwrap_or(0).min(MAX_RESERVE) as usize);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.extend_from_slice(bytes);
        Ok(())
    }
}

/// The shared HTTP client of one export.
#[derive(Debug, Clone)]
pub struct Http {
    pub client: Client,
    pub policy: RetryPolicy,
    pub limit: Arc<AdaptiveLimit>,
    pub stats: Arc<HttpStats>,
}

/// The URL without query string or credentials (for messages).
pub fn shown_url(url: &reqwest::Url) -> String {
    let mut u = url.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

/// Seconds (or an HTTP date) from `Retry-After`, else seconds from `RateLimit-Reset`.
pub fn server_wait(headers: &HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(v) = text("retry-after") {
        if let Ok(secs) = v.parse::<f64>()
            && secs.is_finite()
            && secs >= 0.0
        {
            return Some(Duration::from_secs_f64(secs));
        }
        if let Ok(at) = httpdate::parse_http_date(v) {
            return Some(at.duration_since(now).unwrap_or(Duration::ZERO));
        }
    }
    text("ratelimit-reset")
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Builds the HTTP client (rustls with the platform's certificates).
pub fn build_client(user_agent: &str, attempt_timeout: Duration) -> Result<Client, String> {
    // Several clients in one process share the provider; installing twice is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .user_agent(user_agent)
        .timeout(attempt_timeout)
        .connect_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(64)
        .build()
        .map_err(|e| format!("cannot set up the HTTP client: {e}"))
}

impl Http {
    pub fn new(client: Client, policy: RetryPolicy, max_in_flight: usize) -> Http {
        Http {
            client,
            policy,
            limit: Arc::new(AdaptiveLimit::new(max_in_flight)),
            stats: Arc::new(HttpStats::default()),
        }
    }

    /// Sends the request `build` makes, with the retry policy; returns a 2xx
    /// response, or the error of the last attempt. `what` names the request
    /// in errors (e.g. `listing page 3 of entity/project`).
    pub async fn send(&self, what: &str, build: impl Fn(&Client) -> RequestBuilder) -> Result<Response, HttpError> {
        let mut body = Vec::new();
        let (status, headers) = self.send_to(what, build, &mut body).await?;
        Ok(Response { status, headers, body: Bytes::from(body) })
    }

    /// [`Http::send`], with the 2xx body handed to `sink` as it arrives
    /// instead of held: a retried attempt starts the sink over. Returns the
    /// status and headers.
    pub async fn send_to<S: BodySink>(
        &self,
        what: &str,
        build: impl Fn(&Client) -> RequestBuilder,
        sink: &mut S,
    ) -> Result<(StatusCode, HeaderMap), HttpError> {
        // One attempt at a time writes to the sink; the lock lends it to each.
        let sink = tokio::sync::Mutex::new(sink);
        let started = Instant::now();
        let deadline = self.policy.deadline;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.policy.min_delay)
            .with_max_delay(self.policy.max_delay)
            .with_max_times(self.policy.max_retries)
            .with_jitter();
        let attempt = || async {
            let mut sink = sink.lock().await;
            self.attempt(what, &build, &mut **sink).await
        };
        attempt
            .retry(backoff)
            .when(|e: &HttpError| e.is_retryable() && started.elapsed() < deadline)
            .adjust(|e, dur| {
                // Only when retries remain: honour the server's wait, within the deadline.
                let wait = dur.map(|d| e.retry_after().map_or(d, |w| w.min(self.policy.max_server_wait)))?;
                let left = deadline.saturating_sub(started.elapsed());
                (left > Duration::ZERO).then(|| wait.min(left))
            })
            .notify(|e, dur| {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(request = what, error = %e, wait_ms = dur.as_millis() as u64, "retrying");
            })
            .await
    }

    async fn attempt<S: BodySink>(
        &self,
        what: &str,
        build: &impl Fn(&Client) -> RequestBuilder,
        sink: &mut S,
    ) -> Result<(StatusCode, HeaderMap), HttpError> {
        let _permit = self.limit.acquire().await;
        let request = build(&self.client).build().map_err(|e| HttpError::Transport {
            what: what.to_string(),
            url: String::new(),
            reason: format!("cannot build request: {}", without_url(&e)),
        })?;
        let url = shown_url(request.url());
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let transport = |e: reqwest::Error| HttpError::Transport {
            what: what.to_string(),
            url: url.clone(),
            reason: without_url(&e),
        };
        let mut resp = self.client.execute(request).await.map_err(transport)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_success() {
            let local = |e: std::io::Error| HttpError::Local {
                what: what.to_string(),
                reason: format!("cannot keep the response body: {e}"),
            };
            sink.start(resp.content_length()).map_err(local)?;
            while let Some(chunk) = resp.chunk().await.map_err(transport)? {
                self.stats.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                sink.write(&chunk).map_err(local)?;
            }
            self.limit.succeeded();
            return Ok((status, headers));
        }
        let body = resp.bytes().await.map_err(transport)?;
        self.stats.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
        if status == StatusCode::TOO_MANY_REQUESTS {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            self.limit.throttled();
        }
        let snippet: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        Err(HttpError::Status {
            what: what.to_string(),
            status: status.as_u16(),
            url,
            detail: if snippet.trim().is_empty() { String::new() } else { format!(": {}", snippet.trim()) },
            retry_after: server_wait(&headers, std::time::SystemTime::now()),
        })
    }
}

/// A reqwest error's text without the URL it may carry (query strings can hold tokens).
fn without_url(e: &reqwest::Error) -> String {
    let mut kind = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else if e.is_body() || e.is_decode() {
        "response body cut short or unreadable".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        kind.push_str(": ");
        kind.push_str(&s.to_string());
        source = s.source();
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn server_wait_headers() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut h = HeaderMap::new();
        assert_eq!(server_wait(&h, now), None);
        h.insert("ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(server_wait(&h, now), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("1.5"));
        assert_eq!(server_wait(&h, now), Some(Duration::from_millis(1500)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(7));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        assert_eq!(server_wait(&h, now), Some(Duration::from_secs(7)));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(server_wait(&h, now), Some(Duration::from_secs(3)), "falls back to RateLimit-Reset");
    }

    #[test]
    fn retryable_statuses() {
        let s = |status| HttpError::Status {
            what: "x".into(),
            status,
            url: "u".into(),
            detail: String::new(),
            retry_after: None,
        };
        for code in [429, 500, 502, 503, 504] {
            assert!(s(code).is_retryable(), "{code}");
        }
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!s(code).is_retryable(), "{code}");
        }
        assert!(HttpError::Transport { what: "x".into(), url: "u".into(), reason: "reset".into() }.is_retryable());
    }

    #[test]
    fn urls_are_shown_without_secrets() {
        let u = reqwest::Url::parse("https://api:secret@files.example/a/b.parquet?token=abc").unwrap();
        assert_eq!(shown_url(&u), "https://files.example/a/b.parquet");
    }

    #[tokio::test]
    async fn limit_halves_on_throttle_and_grows_back() {
        let l = AdaptiveLimit::new(8);
        assert_eq!(l.limit(), 8);
        l.throttled();
        assert_eq!(l.limit(), 4);
        l.throttled();
        l.throttled();
        l.throttled();
        assert_eq!(l.limit(), 1);
        for _ in 0..4 {
            l.succeeded();
        }
        assert_eq!(l.limit(), 2);
        let a = l.acquire().await;
        let _b = l.acquire().await;
        // A third waits until one is released.
        let waited = tokio::time::timeout(Duration::from_millis(50), l.acquire()).await;
        assert!(waited.is_err());
        drop(a);
        let c = tokio::time::timeout(Duration::from_millis(500), l.acquire()).await;
        assert!(c.is_ok());
    }
}
