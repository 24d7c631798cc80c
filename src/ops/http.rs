//! The operations HTTP endpoint (SPEC §8): `GET /metrics` in the Prometheus text format, on
//! `metrics.listen` (127.0.0.1:9249 by default). Read-only: every other method is refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tiny_http::{Header, Method, Response, Server};

use crate::ops::metrics;

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
    /// Listens on `listen` and serves on a thread of its own.
    pub fn start(listen: &str, registry: Registry) -> Result<OpsServer, ServeError> {
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
                .spawn(move || serve(&server, &registry, &stop))
                .map_err(|e| fail(e.to_string()))?
        };
        tracing::info!(address = %addr, "serving /metrics");
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

fn serve(server: &Server, registry: &Registry, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let request = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(request)) => request,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accepting a request failed");
                continue;
            }
        };
        let path = request.url().split('?').next().unwrap_or("").to_owned();
        let response = match (request.method(), path.as_str()) {
            (Method::Get | Method::Head, "/metrics") => {
                text(metrics::encode(registry), metrics::CONTENT_TYPE, 200)
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

fn text(body: String, content_type: &str, status: u16) -> Response<std::io::Cursor<Vec<u8>>> {
    Response::from_string(body)
        .with_status_code(status)
        .with_header(Header::from_bytes("Content-Type", content_type).expect("a valid header"))
}
