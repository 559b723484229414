//! `grpc.health.v1.Health` and server reflection (v1 and v1alpha), for probes and generic tools
//! (grpcurl, grpc_cli, grpc-health-probe, Postman, evans).
//!
//! Health is our own small service rather than tonic-health's reporter: the status only ever
//! goes from SERVING (the servers start after the store is loaded) to NOT_SERVING (shutdown),
//! and a Watch stream must end once it has said NOT_SERVING, or the graceful shutdown would wait
//! for it. tonic-health's streams end only when their service's entry is removed, after which
//! Check answers NOT_FOUND instead of NOT_SERVING.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::watch;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use bits_proto::v1::bits_server::BitsServer;

use crate::grpc::BitsService;

/// The services Health answers for: the whole server ("") and the API.
const SERVICES: [&str; 2] = ["", <BitsServer<BitsService> as NamedService>::NAME];

/// Turns the daemon's health to NOT_SERVING (when shutdown begins).
pub struct Reporter(watch::Sender<ServingStatus>);

impl Reporter {
    pub fn not_serving(&self) {
        self.0.send_replace(ServingStatus::NotServing);
    }
}

/// The Health service, cloned into each server (socket and TCP).
#[derive(Clone)]
pub struct HealthService {
    status: watch::Receiver<ServingStatus>,
}

/// A health service that says SERVING until [`Reporter::not_serving`].
pub fn health() -> (Reporter, HealthService) {
    let (tx, rx) = watch::channel(ServingStatus::Serving);
    (Reporter(tx), HealthService { status: rx })
}

impl HealthService {
    pub fn server(self) -> HealthServer<HealthService> {
        HealthServer::new(self)
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        if !SERVICES.contains(&service.as_str()) {
            return Err(Status::not_found(format!(
                "unknown service {service:?}: bitsd reports on \"\" and {:?}",
                SERVICES[1]
            )));
        }
        Ok(Response::new(response(*self.status.borrow())))
    }

    type WatchStream = WatchStream;

    /// The current status, then each change; the stream ends after NOT_SERVING (the daemon is
    /// stopping and never serves again). An unknown service gets SERVICE_UNKNOWN and the stream
    /// stays open until then, as the health protocol asks.
    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let known = SERVICES.contains(&request.get_ref().service.as_str());
        let mut rx = self.status.clone();
        rx.mark_changed();
        let stream = futures::stream::unfold((rx, false), move |(mut rx, done)| async move {
            if done || rx.changed().await.is_err() {
                return None;
            }
            let status = *rx.borrow_and_update();
            let stopping = status == ServingStatus::NotServing;
            match (known, stopping) {
                (true, _) => Some((Ok(response(status)), (rx, stopping))),
                // Said once; silent after that until the end.
                (false, false) => Some((Ok(response(ServingStatus::ServiceUnknown)), (rx, false))),
                (false, true) => None,
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse { status: status.into() }
}

/// Server reflection v1 and v1alpha over the API's descriptors (with the imported
/// `google/protobuf/timestamp.proto`), Health's and reflection's own.
pub fn reflection() -> anyhow::Result<(
    tonic_reflection::server::v1::ServerReflectionServer<
        impl tonic_reflection::server::v1::ServerReflection,
    >,
    tonic_reflection::server::v1alpha::ServerReflectionServer<
        impl tonic_reflection::server::v1alpha::ServerReflection,
    >,
)> {
    // Each version lists both (by default each would list only itself).
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(bits_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            )
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use futures::StreamExt as _;

    use super::*;

    fn request(service: &str) -> Request<HealthCheckRequest> {
        Request::new(HealthCheckRequest { service: service.into() })
    }

    #[tokio::test]
    async fn check_says_serving_then_not_serving_and_refuses_unknown_services() {
        let (reporter, health) = health();
        for service in SERVICES {
            let reply = health.check(request(service)).await.unwrap().into_inner();
            assert_eq!(reply.status(), ServingStatus::Serving, "{service:?}");
        }
        let unknown = health.check(request("foo.Bar")).await.unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert!(unknown.message().contains("\"foo.Bar\""), "{}", unknown.message());
        reporter.not_serving();
        let reply = health.check(request("bits.v1.Bits")).await.unwrap().into_inner();
        assert_eq!(reply.status(), ServingStatus::NotServing);
    }

    #[tokio::test]
    async fn watch_streams_end_after_not_serving() {
        let (reporter, health) = health();
        let mut known = health.watch(request("")).await.unwrap().into_inner();
        let mut unknown = health.watch(request("foo.Bar")).await.unwrap().into_inner();
        assert_eq!(known.next().await.unwrap().unwrap().status(), ServingStatus::Serving);
        assert_eq!(unknown.next().await.unwrap().unwrap().status(), ServingStatus::ServiceUnknown);
        reporter.not_serving();
        assert_eq!(known.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
        assert!(known.next().await.is_none(), "ends after NOT_SERVING");
        assert!(unknown.next().await.is_none());
        // A watch begun while stopping says so and ends.
        let mut late = health.watch(request("bits.v1.Bits")).await.unwrap().into_inner();
        assert_eq!(late.next().await.unwrap().unwrap().status(), ServingStatus::NotServing);
        assert!(late.next().await.is_none());
    }
}
