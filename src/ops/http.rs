//! The operations HTTP endpoint (SPEC §8): `GET /metrics` in the Prometheus text format, the
//! status page `GET /` with its data `GET /api/status` and `GET /api/dead-letters?limit=N`, on
//! `metrics.listen` (127.0.0.1:9249 by default). Read-only: every other method is refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Response, Server};

use crate::ops::metrics;
use crate::ops::report::JobCounters;
use crate::ops::status::{status_json, StatusHistory, RECENT_DEAD_LETTERS};

/// The status page: one self-contained file, no external assets.
const STATUS_PAGE: &str = include_str!("status.html");

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot serve /metrics on {addr}: {message}\n  hint: free the port or set metrics.listen (WRONGBOOK_METRICS__LISTEN); an empty value serves nothing")]
pub struct ServeError {
    pub addr: String,
    pub message: String,
}

/// The running endpoint; stops when dropped.
pub struct OpsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OpsServer {
    /// Listens on `listen` and serves `counters` on a thread of its own.
    pub fn start(listen: &str, counters: JobCounters) -> Result<OpsServer, ServeError> {
        let fail = |message: String| ServeError {
            addr: listen.to_owned(),
            message,
        };
        let server = Server::http(listen).map_err(|e| fail(e.to_string()))?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| fail("not an IP address".into()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("wrongbook-http".into())
                .spawn(move || {
                    let endpoints = Endpoints {
                        registry: metrics::registry(counters.clone()),
                        counters,
                        history: StatusHistory::default(),
                    };
                    serve(&server, &endpoints, &stop)
                })
                .map_err(|e| fail(e.to_string()))?
        };
        tracing::info!(address = %addr, "serving the status page / and /metrics");
        Ok(OpsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// Where it listens (the port is the real one when `listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for OpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Endpoints {
    registry: Registry,
    counters: JobCounters,
    history: StatusHistory,
}

fn serve(server: &Server, endpoints: &Endpoints, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        endpoints.history.sample(&endpoints.counters);
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accepting a request failed");
                continue;
            }
        };
        let url = request.url().to_owned();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let response = match (request.method(), path) {
            (Method::Get | Method::Head, "/metrics") => text(
                metrics::encode(&endpoints.registry),
                metrics::CONTENT_TYPE,
                200,
            ),
            (Method::Get | Method::Head, "/") => {
                text(STATUS_PAGE.into(), "text/html; charset=utf-8", 200)
            }
            (Method::Get | Method::Head, "/api/status") => text(
                status_json(&endpoints.counters, &endpoints.history).to_string(),
                JSON,
                200,
            ),
            (Method::Get | Method::Head, "/api/dead-letters") => {
                let limit = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("limit="))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(50)
                    .min(RECENT_DEAD_LETTERS);
                let letters = endpoints.counters.dead_letters.newest(limit);
                text(
                    serde_json::to_string(&letters).expect("dead letters serialize"),
                    JSON,
                    200,
                )
            }
            (Method::Get | Method::Head, _) => {
                text("not found\n".into(), "text/plain; charset=utf-8", 404)
            }
            _ => text(
                "read-only: only GET\n".into(),
                "text/plain; charset=utf-8",
                405,
            ),
        };
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "metrics endpoint: the client went away");
        }
    }
}

const JSON: &str = "application/json";

fn text(body: String, content_type: &str, status: u16) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(Header::from_bytes("Content-Type", content_type).expect("a valid header"))
}
