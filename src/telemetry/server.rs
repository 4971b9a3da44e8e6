//! The telemetry HTTP endpoint (`[telemetry] listen`): `/metrics` (Prometheus text format),
//! `/healthz` (200 while the process serves requests) and `/readyz` (200 when
//! [`Metrics::is_ready`], else 503). It runs as one task on the worker's tokio runtime and
//! owns nothing but its listener: what it reports lives in [`Metrics`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::Metrics;

/// How long [`Server::stop`] waits for open connections (a scraper's keep-alive) to close.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry endpoint: cannot listen on {addr}: {source}")]
pub struct BindError {
    addr: SocketAddr,
    #[source]
    source: std::io::Error,
}

/// The routes, on `metrics`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> Response {
    match metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the metrics: {e}\n"),
        )
            .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> (StatusCode, &'static str) {
    if metrics.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The running endpoint; [`Server::stop`] ends it.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    /// Fired by [`Server::stop`]: the server stops accepting and closes idle connections.
    shutdown_tx: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Server {
    /// Listens on `addr` (port 0: any free port, see [`Server::local_addr`]) and serves
    /// `metrics` on the current tokio runtime.
    pub async fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Self, BindError> {
        let bind_error = |source| BindError { addr, source };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, router(metrics))
                .with_graceful_shutdown(async {
                    let _ = shutdown_rx.await;
                })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "telemetry endpoint failed");
            }
        });
        tracing::info!(address = %local_addr, "telemetry endpoint: /metrics, /healthz, /readyz");
        Ok(Self {
            local_addr,
            shutdown_tx,
            task,
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving: waits up to `STOP_TIMEOUT` for requests in progress, then drops
    /// what is left. True when everything closed in time.
    pub async fn stop(self) -> bool {
        let _ = self.shutdown_tx.send(());
        let mut task = self.task;
        let closed = tokio::time::timeout(STOP_TIMEOUT, &mut task).await.is_ok();
        if !closed {
            tracing::warn!("telemetry endpoint: connections still open at stop; dropped");
            task.abort();
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::proto;

    /// One HTTP/1.1 GET; the status and the body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head.to_ascii_lowercase(), body.to_string())
    }

    fn model() -> proto::ModelInfo {
        proto::ModelInfo {
            name: "agcnn-test".into(),
            sha256: "ab".repeat(32),
            execution_provider: "CPUExecutionProvider".into(),
            views: 1,
        }
    }

    async fn started() -> (Server, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let server = Server::start("127.0.0.1:0".parse().unwrap(), metrics.clone())
            .await
            .unwrap();
        (server, metrics)
    }

    #[tokio::test]
    async fn healthz_is_ok_while_the_process_serves() {
        let (server, _) = started().await;
        let (status, _, body) = get(server.local_addr(), "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        server.stop().await;
    }

    #[tokio::test]
    async fn readyz_follows_model_group_and_shutdown() {
        let (server, metrics) = started().await;
        let addr = server.local_addr();
        assert_eq!(get(addr, "/readyz").await.0, 503, "no model yet");
        metrics.expect_consumer_group();
        metrics.model_loaded(&model());
        assert_eq!(get(addr, "/readyz").await.0, 503, "not in the group yet");
        metrics.joined_group();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        metrics.shutting_down();
        assert_eq!(get(addr, "/readyz").await.0, 503, "draining");
        server.stop().await;
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_text_format() {
        let (server, metrics) = started().await;
        metrics.model_loaded(&model());
        let (status, head, body) = get(server.local_addr(), "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(body.contains("# TYPE radiogate_classifications_total counter"));
        assert!(
            body.contains("radiogate_model_info{execution_provider=\"CPUExecutionProvider\",model=\"agcnn-test\""),
            "{body}"
        );
        assert_eq!(get(server.local_addr(), "/nothing").await.0, 404);
        server.stop().await;
    }

    #[tokio::test]
    async fn stop_does_not_wait_for_an_idle_keep_alive_connection() {
        let (server, _) = started().await;
        let addr = server.local_addr();
        // A scraper keeps its connection open between scrapes.
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        assert!(idle.read(&mut buf).await.unwrap() > 0);
        assert!(
            server.stop().await,
            "the idle connection was closed, not waited for"
        );
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "no longer listening"
        );
    }

    #[tokio::test]
    async fn a_busy_address_is_a_bind_error() {
        let (server, _) = started().await;
        let taken = Server::start(server.local_addr(), Arc::new(Metrics::new())).await;
        let e = taken.unwrap_err();
        assert!(e.to_string().contains("cannot listen on"), "{e}");
        server.stop().await;
    }
}
