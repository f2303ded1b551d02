//! gRPC health checking and plain HTTP on the one listener.
mod common;

use common::*;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

async fn channel(server: &Server) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

/// A plain HTTP/1.1 GET on the server's port.
async fn get(server: &Server, path: &'static str) -> (u16, String) {
    let addr = server.addr;
    tokio::task::spawn_blocking(move || http_get(addr, path))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_and_http_on_one_port() {
    let server = Server::start();
    let channel = channel(&server).await;
    let mut health = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest { service: service.to_owned() };

    for service in ["snix.castore.v1.BlobService", "tvix.castore.v1.DirectoryService"]
        .into_iter()
        .chain(castore::grpc::SERVICE_NAMES)
        .chain(store::pathinfo::SERVICE_NAMES)
    {
        let resp = health.check(check(service)).await.unwrap_or_else(|s| panic!("Check {service}: {s:?}")).into_inner();
        assert_eq!(resp.status(), ServingStatus::Serving, "{service} should be SERVING");
    }
    expect_code(
        health.check(check("nix.castore.v1.NoSuchService")).await,
        tonic::Code::NotFound,
        "Check of an unknown service",
    );

    // Plain HTTP/1.1 on the same port.
    let (code, body) = get(&server, "/healthz").await;
    assert_eq!(code, 200, "GET /healthz: {body:?}");
    assert!(body.contains("ok"), "GET /healthz body: {body:?}");
    let (code, _) = get(&server, "/no-such-page").await;
    assert_eq!(code, 404, "an unknown HTTP path is 404");

    // gRPC still works on the same port after the HTTP requests.
    let resp = health.check(check("snix.castore.v1.DirectoryService")).await.expect("check after HTTP");
    assert_eq!(resp.into_inner().status(), ServingStatus::Serving);
}

/// gRPC server reflection lists the castore services under both packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_both_packages() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let server = Server::start();
    let channel = channel(&server).await;
    let mut client = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream =
        client.server_reflection_info(futures::stream::iter([req])).await.expect("reflection").into_inner();
    let resp = stream.message().await.expect("reflection answer").expect("one message");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in
        castore::grpc::SERVICE_NAMES.into_iter().chain(store::pathinfo::SERVICE_NAMES).chain(["grpc.health.v1.Health"])
    {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}
