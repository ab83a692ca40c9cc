//! `--metrics-addr`: the metrics of a running command (`runtime::metrics`) over HTTP, for
//! Prometheus (`/metrics`), and its liveness (`/healthz`) and readiness (`/readyz`) for an
//! orchestrator. A small blocking server on its own thread: a scrape every few seconds does not
//! need more.

use std::sync::Arc;

use anyhow::Context;

use crate::runtime::metrics::Metrics;

/// Alive while the main loop went round within this long (a checkpoint of a large state, a
/// slow commit, take seconds; a stuck process takes forever).
const ALIVE_WITHIN_MS: i64 = 60_000;

/// Binds `addr` now (a taken port fails before any work) and serves on a background thread for
/// as long as the process runs.
pub fn serve(addr: &str, metrics: Arc<Metrics>) -> anyhow::Result<std::net::SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| format!("--metrics-addr {addr}: cannot listen"))?;
    let bound = server.server_addr().to_ip().with_context(|| format!("--metrics-addr {addr}: not an IP address"))?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let (status, body, kind) = match request.url() {
                    "/metrics" => (200, metrics.encode(), "text/plain; version=0.0.4; charset=utf-8"),
                    "/healthz" if metrics.alive(ALIVE_WITHIN_MS) => (200, "alive\n".to_string(), "text/plain"),
                    "/healthz" => (503, "the main loop has not gone round for a minute\n".to_string(), "text/plain"),
                    "/readyz" if metrics.ready() => (200, "ready\n".to_string(), "text/plain"),
                    "/readyz" => (503, "not ready\n".to_string(), "text/plain"),
                    _ => (404, "/metrics, /healthz, /readyz\n".to_string(), "text/plain"),
                };
                let header = tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
                let _ = request.respond(tiny_http::Response::from_string(body).with_status_code(status).with_header(header));
            }
        })
        .context("cannot start the metrics thread")?;
    tracing::info!("metrics on http://{bound}/metrics (and /healthz, /readyz)");
    Ok(bound)
}
