//! The optional TCP listener (`[tcp]` in the configuration; off by default): the same gRPC
//! service as the Unix socket, for clients that cannot reach a Unix socket (a container sharing
//! only the network namespace, a language without UDS support in its gRPC stack).
//!
//! TCP has no peer credentials, so the caller's identity comes from configuration: every request
//! must carry `authorization: Bearer <token>` matching the token file, and is then served as the
//! configured uid ([`TcpCaller`]). The listener binds loopback addresses only, checked here again
//! at bind time so that no path around the configuration check can expose the daemon to a network.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, ensure};
use bits_core::{BitsError, Code};
use bits_manager::Manager;
use bits_proto::status::to_status;
use bits_proto::token::{AUTHORIZATION, Token};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

use crate::awake::KeepAwake;
use crate::grpc::{BitsService, TcpCaller};
use crate::health::HealthService;
use crate::server::{self, Control};
use crate::throttle::Throttle;

/// Everything the gRPC thread needs to serve TCP: the bound listener, the service and the check.
pub struct TcpServing {
    pub listener: std::net::TcpListener,
    pub service: BitsService,
    pub health: HealthService,
    pub check: BearerCheck,
    pub awake: KeepAwake,
    /// The socket's caps (shared totals) and timeouts.
    pub control: Control,
    /// Asked whether `uid` is an administrator (exempt from the per-user connection cap).
    pub manager: Manager,
    /// The uid every TCP caller acts as, whose share its connections count against.
    pub uid: u32,
}

/// Binds `addr`, which must be a loopback address (and so must the address actually bound).
/// The listener is non-blocking, ready to be handed to the gRPC thread's runtime.
pub fn bind(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    ensure!(
        addr.ip().is_loopback(),
        "refusing to listen on {addr}: the TCP listener binds loopback addresses only"
    );
    let listener =
        std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr().with_context(|| format!("cannot listen on {addr}"))?;
    ensure!(
        bound.ip().is_loopback(),
        "refusing to listen on {bound}: the TCP listener binds loopback addresses only"
    );
    listener.set_nonblocking(true).with_context(|| format!("cannot listen on {addr}"))?;
    Ok(listener)
}

/// Serves the gRPC API, Health and reflection on `tcp` until `shutdown` resolves; every call to
/// any of them passes [`BearerCheck`].
pub async fn serve(tcp: TcpServing, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let listener =
        tokio::net::TcpListener::from_std(tcp.listener).context("cannot use the TCP listener")?;
    let incoming = server::tcp_incoming(listener, tcp.control, tcp.manager, tcp.uid);
    let (reflection_v1, reflection_v1alpha) = crate::health::reflection()?;
    tonic::transport::Server::builder()
        .max_concurrent_streams(server::MAX_STREAMS_PER_CONNECTION)
        .layer(tcp.awake)
        .layer(server::Tracking)
        .add_service(InterceptedService::new(
            bits_proto::v1::bits_server::BitsServer::new(tcp.service),
            tcp.check.clone(),
        ))
        .add_service(InterceptedService::new(tcp.health.server(), tcp.check.clone()))
        .add_service(InterceptedService::new(reflection_v1, tcp.check.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, tcp.check))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("gRPC server on TCP failed")
}

/// Lets a request through only with the right bearer token, and marks it as coming from the
/// configured uid. The token is compared in constant time (`Token`'s `==`) and never logged; it
/// is removed from the request before any handler sees it.
#[derive(Clone)]
pub struct BearerCheck {
    expected: Arc<Token>,
    uid: u32,
    /// A loop of bad requests must not write a WARN line each (one wrote 9,007).
    refusals: Arc<Throttle>,
}

impl BearerCheck {
    pub fn new(token: &Token, uid: u32) -> BearerCheck {
        BearerCheck { expected: Arc::new(token.clone()), uid, refusals: Arc::default() }
    }
}

impl Interceptor for BearerCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request.metadata_mut().remove(AUTHORIZATION);
        let refusal = match header.as_ref().map(Token::from_authorization) {
            None => Some("a bearer token is required (metadata \"authorization: Bearer <token>\")"),
            Some(Err(_)) => Some("the authorization metadata is not \"Bearer <token>\""),
            Some(Ok(token)) if token != *self.expected => Some("the bearer token is wrong"),
            Some(Ok(_)) => None,
        };
        if let Some(why) = refusal {
            if let Some(left_out) = self.refusals.allow() {
                let peer = request.extensions().get::<server::Peer>().and_then(|p| p.remote);
                tracing::warn!(
                    peer = ?peer,
                    reason = why,
                    left_out,
                    "TCP request refused (at most one line per {:?}; left_out: refusals since the last)",
                    crate::throttle::PERIOD
                );
            }
            return Err(unauthenticated(why));
        }
        request.extensions_mut().insert(TcpCaller { uid: self.uid });
        Ok(request)
    }
}

/// E_ACCESSDENIED in the usual BITS encoding, but with the gRPC code that says "who are you"
/// rather than "you may not".
fn unauthenticated(why: &str) -> Status {
    let status = to_status(&BitsError::new(Code::E_ACCESSDENIED, why));
    Status::with_metadata(tonic::Code::Unauthenticated, status.message(), status.metadata().clone())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn check() -> BearerCheck {
        BearerCheck::new(&Token::parse("s3cret").unwrap(), 1234)
    }

    fn request(authorization: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = authorization {
            request.metadata_mut().insert(AUTHORIZATION, value.parse().unwrap());
        }
        request
    }

    #[test]
    fn the_right_token_acts_as_the_configured_uid_and_is_removed() {
        for header in ["Bearer s3cret", "bearer s3cret", "  BEARER   s3cret  "] {
            let passed = check().call(request(Some(header))).unwrap();
            assert_eq!(passed.extensions().get::<TcpCaller>(), Some(&TcpCaller { uid: 1234 }));
            assert!(passed.metadata().get(AUTHORIZATION).is_none(), "handlers never see it");
        }
    }

    #[test]
    fn no_token_or_a_wrong_one_is_unauthenticated_access_denied() {
        let cases = [
            (None, "a bearer token is required"),
            (Some("s3cret"), "is not \"Bearer <token>\""),
            (Some("Basic czNjcmV0"), "is not \"Bearer <token>\""),
            (Some("Bearer s3cre"), "the bearer token is wrong"),
            (Some("Bearer s3cret2"), "the bearer token is wrong"),
            (Some("Bearer S3CRET"), "the bearer token is wrong"),
            (Some("Bearer "), "is not \"Bearer <token>\""),
        ];
        for (header, why) in cases {
            let status = check().call(request(header)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{header:?}");
            assert!(
                status.message().starts_with("E_ACCESSDENIED (0x80070005): "),
                "{header:?}: {}",
                status.message()
            );
            assert!(status.message().contains(why), "{header:?}: {}", status.message());
            assert!(!status.message().contains("s3cret"), "the token is never echoed");
            assert_eq!(status.metadata().get("bits-code").unwrap(), "E_ACCESSDENIED");
            assert_eq!(
                bits_proto::status::from_status(&status).code,
                Code::E_ACCESSDENIED,
                "clients read it as a BITS error"
            );
        }
    }

    #[test]
    fn only_loopback_addresses_are_bound() {
        for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"] {
            let e = bind(addr.parse().unwrap()).unwrap_err().to_string();
            assert!(e.contains("loopback addresses only"), "{addr}: {e}");
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        assert!(listener.local_addr().unwrap().ip().is_loopback());
    }
}
