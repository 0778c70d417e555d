//! The gRPC edge against a real server on loopback: every malformed or abandoned call gets a
//! clear status (or is simply dropped) and the server keeps serving everyone else.

use basalt_net::client::Client;
use basalt_net::{Code, KvService, LocalKv, ServerConfig, ServerHandle, Status, StoreStatus};
use basalt_proto::etcdserverpb::{
    compare, request_op, AlarmRequest, AlarmResponse, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, MemberListRequest, MemberListResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
};
use bytes::{BufMut, Bytes, BytesMut};
use glommio::{LocalExecutorBuilder, Placement};
use std::future::Future;
use std::io::{Read, Write};
use std::net::SocketAddr;

const MAX_REQUEST_BYTES: usize = 1_572_864;
const RECV_MESSAGE_BYTES_MAX: usize = MAX_REQUEST_BYTES + 512 * 1024;

fn start_server() -> ServerHandle {
    let config = ServerConfig {
        listen_client_urls: vec!["http://127.0.0.1:0".to_string()],
        cores: 2,
        pin_cores: false,
        max_request_bytes: MAX_REQUEST_BYTES,
        ..ServerConfig::default()
    };
    basalt_net::spawn(config).expect("server starts")
}

/// Runs `test` as a client on its own executor thread against a fresh server.
fn with_server<F, Fut>(test: F)
where
    F: FnOnce(SocketAddr) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let server = start_server();
    let addr = server.client_addrs()[0];
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || test(addr))
        .expect("client executor starts")
        .join()
        .expect("client test passed");
    server.stop().expect("server stops cleanly");
}

/// The server still answers a normal Range on a new connection.
async fn assert_serving(addr: SocketAddr) {
    let client = Client::connect(addr).await.expect("connects");
    let resp = client
        .range(&range("after"))
        .await
        .expect("range is served");
    assert!(resp.header.expect("header").revision >= 1);
}

fn range(key: &str) -> RangeRequest {
    RangeRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        ..Default::default()
    }
}

fn put(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        ..Default::default()
    }
}

/// A gRPC frame header declaring `body_bytes`, followed by `body`.
fn frame(compressed: bool, body_bytes: u32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::new();
    out.put_u8(u8::from(compressed));
    out.put_u32(body_bytes);
    out.put_slice(body);
    out.freeze()
}

/// Sends `raw` as the whole request body of a call to `path` and returns how the call ended.
async fn raw_call(client: &Client, path: &str, raw: Bytes) -> Status {
    let (mut sender, mut responses) = client.open(path).await.expect("stream opens");
    sender.send_raw(raw).await.expect("bytes go out");
    sender.close().expect("half-close");
    match responses
        .message::<basalt_proto::etcdserverpb::RangeResponse>()
        .await
    {
        Err(status) => status,
        Ok(resp) => panic!("call to {path} succeeded: {resp:?}"),
    }
}

#[test]
fn kv_round_trip_through_the_client() {
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        let first = client.put(&put("a", "1")).await.unwrap();
        let second = client.put(&put("b", "2")).await.unwrap();
        let rev_a = first.header.unwrap().revision;
        assert_eq!(second.header.as_ref().unwrap().revision, rev_a + 1);

        let got = client.range(&range("a")).await.unwrap();
        assert_eq!(got.kvs.len(), 1);
        assert_eq!(&got.kvs[0].value[..], b"1");
        let header = got.header.unwrap();
        let config = ServerConfig::default();
        assert_eq!(
            (header.cluster_id, header.member_id, header.revision),
            (config.cluster_id, config.member_id, rev_a + 1)
        );
        assert!(header.raft_term > 0);

        let txn = TxnRequest {
            compare: vec![Compare {
                key: Bytes::from_static(b"a"),
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Value as i32,
                target_union: Some(compare::TargetUnion::Value(Bytes::from_static(b"1"))),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(put("c", "3"))),
            }],
            failure: vec![],
        };
        assert!(client.txn(&txn).await.unwrap().succeeded);

        let deleted = client
            .delete_range(&DeleteRangeRequest {
                key: Bytes::from_static(b"a"),
                range_end: Bytes::from_static(b"z"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(deleted.deleted, 3);

        let status = client.status().await.unwrap();
        assert_eq!(status.leader, config.member_id);
        assert_eq!(status.raft_index, status.header.unwrap().revision as u64);
    });
}

#[test]
fn maintenance_and_cluster_describe_the_single_member() {
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        let config = ServerConfig::default();
        client.put(&put("a", "1")).await.unwrap();

        let status = client.status().await.unwrap();
        let header = status.header.unwrap();
        assert_eq!((header.member_id, header.revision), (config.member_id, 2));
        assert_eq!(status.leader, config.member_id);
        assert_eq!((status.raft_index, status.raft_applied_index), (2, 2));
        assert_eq!(status.version, basalt_net::ETCD_SERVER_VERSION);

        let alarms: AlarmResponse = client
            .unary("/etcdserverpb.Maintenance/Alarm", &AlarmRequest::default())
            .await
            .unwrap();
        assert!(alarms.alarms.is_empty());

        let members: MemberListResponse = client
            .unary(
                "/etcdserverpb.Cluster/MemberList",
                &MemberListRequest::default(),
            )
            .await
            .unwrap();
        assert_eq!(members.members.len(), 1);
        let member = &members.members[0];
        assert_eq!(
            (member.id, &member.name, &member.client_ur_ls),
            (
                config.member_id,
                &config.name,
                &config.advertise_client_urls
            )
        );
    });
}

#[test]
fn grpc_health_check_reports_the_server_serving() {
    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckRequest {
        #[prost(string, tag = "1")]
        service: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct HealthCheckResponse {
        #[prost(int32, tag = "1")]
        status: i32,
    }
    const PATH: &str = "/grpc.health.v1.Health/Check";
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        let whole = HealthCheckRequest {
            service: String::new(),
        };
        let resp: HealthCheckResponse = client.unary(PATH, &whole).await.unwrap();
        assert_eq!(resp.status, 1, "SERVING");
        let other = HealthCheckRequest {
            service: "etcdserverpb.KV".to_string(),
        };
        let err = client
            .unary::<_, HealthCheckResponse>(PATH, &other)
            .await
            .unwrap_err();
        assert_eq!(err, Status::new(Code::NotFound, "unknown service"));
    });
}

#[test]
fn storage_errors_reach_the_client_with_etcds_code_and_message() {
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        let empty_key = client.put(&put("", "v")).await.unwrap_err();
        assert_eq!(
            empty_key,
            Status::new(Code::InvalidArgument, "etcdserver: key is not provided")
        );
        let future = client
            .range(&RangeRequest {
                revision: 1_000,
                ..range("a")
            })
            .await
            .unwrap_err();
        assert_eq!(
            future,
            Status::new(
                Code::OutOfRange,
                "etcdserver: mvcc: required revision is a future revision"
            )
        );
        let too_large = client
            .put(&put("big", &"x".repeat(MAX_REQUEST_BYTES + 1)))
            .await
            .unwrap_err();
        assert_eq!(
            too_large,
            Status::new(Code::InvalidArgument, "etcdserver: request is too large")
        );
        assert_serving(addr).await;
    });
}

#[test]
fn bad_frames_get_a_clear_status_and_the_server_keeps_serving() {
    const RANGE: &str = "/etcdserverpb.KV/Range";
    let oversized = u32::try_from(RECV_MESSAGE_BYTES_MAX + 1).unwrap();
    let cases: Vec<(&str, Bytes, Code, String)> = vec![
        (
            "malformed protobuf",
            frame(false, 3, &[0x0a, 0x05, b'x']),
            Code::Internal,
            "grpc: error unmarshalling request: ".to_string(),
        ),
        (
            "frame truncated by end of stream",
            frame(false, 100, &[0x0a, 0x01]),
            Code::Internal,
            "grpc: stream ended inside a message".to_string(),
        ),
        (
            "prefix truncated by end of stream",
            Bytes::from_static(&[0, 0, 0]),
            Code::Internal,
            "grpc: stream ended inside a message".to_string(),
        ),
        (
            "no message at all",
            Bytes::new(),
            Code::Internal,
            "grpc: unary request ended before its message".to_string(),
        ),
        (
            "message above the receive limit",
            frame(false, oversized, &[]),
            Code::ResourceExhausted,
            format!(
                "grpc: received message larger than max ({} vs. {})",
                oversized, RECV_MESSAGE_BYTES_MAX
            ),
        ),
        (
            "compressed message",
            frame(true, 1, &[0]),
            Code::Internal,
            "grpc: compressed flag set with identity or empty encoding".to_string(),
        ),
    ];
    with_server(move |addr| async move {
        let client = Client::connect(addr).await.unwrap();
        for (case, raw, code, message_start) in cases {
            let status = raw_call(&client, RANGE, raw).await;
            assert_eq!(status.code, code, "{case}: {status}");
            assert!(
                status.message.starts_with(&message_start),
                "{case}: {status}"
            );
            // The same connection and a new one both still work.
            client.range(&range("k")).await.expect(case);
            assert_serving(addr).await;
        }
    });
}

#[test]
fn unserved_methods_are_unimplemented_in_grpc_go_words() {
    let cases = [
        (
            "/etcdserverpb.KV/Frobnicate",
            "unknown method Frobnicate for service etcdserverpb.KV",
        ),
        ("/nope.Nowhere/Range", "unknown service nope.Nowhere"),
        (
            "/etcdserverpb.Auth/AuthEnable",
            "method AuthEnable not implemented",
        ),
    ];
    with_server(move |addr| async move {
        let client = Client::connect(addr).await.unwrap();
        for (path, message) in cases {
            let status = raw_call(&client, path, frame(false, 0, &[])).await;
            assert_eq!(status, Status::new(Code::Unimplemented, message), "{path}");
        }
        assert_serving(addr).await;
    });
}

#[test]
fn an_oversized_put_is_refused_before_it_is_read_in_full() {
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        let status = client
            .put(&put("big", &"x".repeat(RECV_MESSAGE_BYTES_MAX + 1)))
            .await
            .unwrap_err();
        assert_eq!(status.code, Code::ResourceExhausted, "{status}");
        assert!(status
            .message
            .starts_with("grpc: received message larger than max ("));
        assert_serving(addr).await;
    });
}

#[test]
fn clients_that_vanish_mid_call_do_not_disturb_the_server() {
    with_server(|addr| async move {
        // A call cancelled halfway through its request, on a connection that stays up.
        let client = Client::connect(addr).await.unwrap();
        let (mut sender, _responses) = client.open("/etcdserverpb.KV/Put").await.unwrap();
        sender.send_raw(frame(false, 50, b"partial")).await.unwrap();
        sender.cancel();
        client.range(&range("k")).await.unwrap();

        // A whole connection dropped with a call half sent.
        {
            let doomed = Client::connect(addr).await.unwrap();
            let (mut sender, _responses) = doomed.open("/etcdserverpb.KV/Put").await.unwrap();
            sender.send_raw(frame(false, 50, b"partial")).await.unwrap();
        }
        assert_serving(addr).await;
    });
}

#[test]
fn garbage_after_the_http2_preface_only_closes_that_connection() {
    let server = start_server();
    let addr = server.client_addrs()[0];
    for garbage in [
        &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..],
        b"",
        b"\x00\x00\x04",
    ] {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        socket
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        socket.write_all(garbage).unwrap();
        drop(socket);
    }
    // Half an HTTP/1.1 request, then gone.
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    socket.write_all(b"GET /hea").unwrap();
    drop(socket);
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || assert_serving(addr))
        .unwrap()
        .join()
        .unwrap();
    server.stop().unwrap();
}

#[test]
fn http2_pings_are_answered() {
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        for _ in 0..3 {
            client.ping().await.expect("pong");
        }
    });
}

#[test]
fn many_concurrent_streams_on_one_connection_all_complete() {
    const STREAMS: usize = 256;
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        // One stream stalls mid-message for the whole test; it must hold up no one.
        let (mut stalled, _stalled_responses) = client.open("/etcdserverpb.KV/Put").await.unwrap();
        stalled.send_raw(frame(false, 10, b"half")).await.unwrap();

        let calls: Vec<_> = (0..STREAMS)
            .map(|i| {
                let client = client.clone();
                glommio::spawn_local(async move {
                    let key = format!("key-{i}");
                    client.put(&put(&key, "v")).await.unwrap();
                    client.range(&range(&key)).await.unwrap()
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            let resp = call.await;
            assert_eq!(resp.kvs.len(), 1, "stream {i}");
        }
    });
}

#[test]
fn http1_health_and_version_share_the_client_port() {
    let server = start_server();
    let addr = server.client_addrs()[0];
    let cases = [
        ("/health", "200 OK", r#"{"health":"true","reason":""}"#),
        (
            "/version",
            "200 OK",
            r#"{"etcdserver":"3.5.1","etcdcluster":"3.5.0"}"#,
        ),
        ("/livez", "200 OK", "ok\n"),
        ("/readyz", "200 OK", "ok\n"),
        ("/nothing", "404 Not Found", "404 page not found\n"),
    ];
    for (path, status, body) in cases {
        let mut socket = std::net::TcpStream::connect(addr).unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        socket.read_to_string(&mut reply).unwrap();
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}\r\n")),
            "{path}: {reply}"
        );
        assert!(
            reply.ends_with(&format!("\r\n\r\n{body}")),
            "{path}: {reply}"
        );
    }
    server.stop().unwrap();
}

#[test]
fn metrics_count_grpc_calls_under_etcds_names() {
    with_server(|addr| async move {
        let client = Client::connect(addr).await.unwrap();
        client.range(&range("metrics-probe")).await.unwrap();
        let exposition = blocking_http_get(addr, "/metrics");
        assert!(
            exposition.starts_with("HTTP/1.1 200 OK\r\n"),
            "{exposition}"
        );
        assert!(exposition.contains("# TYPE etcd_server_has_leader gauge\n"));
        let handled = exposition
            .lines()
            .find(|line| {
                line.starts_with("grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"Range\"")
            })
            .unwrap_or_else(|| panic!("no handled Range in {exposition}"));
        let count: u64 = handled.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count >= 1, "{handled}");
    });
}

fn blocking_http_get(addr: SocketAddr, path: &str) -> String {
    let mut socket = std::net::TcpStream::connect(addr).unwrap();
    write!(
        socket,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    socket.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn a_port_in_use_is_reported_not_shared() {
    let first = start_server();
    let taken = first.client_addrs()[0];
    let config = ServerConfig {
        listen_client_urls: vec![format!("http://{taken}")],
        cores: 1,
        pin_cores: false,
        ..ServerConfig::default()
    };
    let err = basalt_net::spawn(config).err().expect("second bind fails");
    assert!(err.to_string().contains(&taken.to_string()), "{err}");
    first.stop().unwrap();
}

#[test]
fn responses_and_requests_larger_than_every_window_flow_through() {
    const VALUES: usize = 24;
    // Each put is a request of many DATA frames; the range reply (24 MiB) is larger than the
    // connection window, so it moves only as the client consumes it.
    let value = "v".repeat(1 << 20);
    with_server(move |addr| async move {
        let client = Client::connect(addr).await.unwrap();
        for i in 0..VALUES {
            client
                .put(&put(&format!("big/{i:02}"), &value))
                .await
                .unwrap();
        }
        let all = client
            .range(&RangeRequest {
                key: Bytes::from_static(b"big/"),
                range_end: Bytes::from_static(b"big0"),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(all.kvs.len(), VALUES);
        assert!(all.kvs.iter().all(|kv| kv.value.len() == value.len()));
    });
}

#[test]
fn stopping_the_server_closes_its_connections_and_listeners() {
    let server = start_server();
    let addr = server.client_addrs()[0];
    let (connected_tx, connected_rx) = std::sync::mpsc::channel();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<()>();
    let client = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || async move {
            let client = Client::connect(addr).await.unwrap();
            client.range(&range("k")).await.unwrap();
            connected_tx.send(()).unwrap();
            glommio::executor()
                .spawn_blocking(move || stopped_rx.recv().unwrap())
                .await;
            client.range(&range("k")).await.unwrap_err()
        })
        .unwrap();
    connected_rx.recv().unwrap();
    server.stop().unwrap();
    stopped_tx.send(()).unwrap();
    let status = client.join().unwrap();
    assert_eq!(status.code, Code::Unavailable, "{status}");

    // Nothing listens on the port any more.
    let refused = std::net::TcpStream::connect(addr).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// The in-memory store, except that a Range of `boom` panics: a bug that kills one core.
struct PanicsOnBoom(LocalKv);

impl KvService for PanicsOnBoom {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Status> {
        assert!(&req.key[..] != b"boom", "injected bug");
        self.0.range(req).await
    }
    async fn put(&self, req: PutRequest) -> Result<PutResponse, Status> {
        self.0.put(req).await
    }
    async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Status> {
        self.0.delete_range(req).await
    }
    async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Status> {
        self.0.txn(req).await
    }
    async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse, Status> {
        self.0.compact(req).await
    }
    async fn status(&self) -> Result<StoreStatus, Status> {
        self.0.status().await
    }
    fn raft_term(&self) -> u64 {
        self.0.raft_term()
    }
}

#[test]
fn a_core_that_dies_stops_the_whole_server_with_an_error() {
    let config = ServerConfig {
        listen_client_urls: vec!["http://127.0.0.1:0".to_string()],
        cores: 2,
        pin_cores: false,
        ..ServerConfig::default()
    };
    let kv = LocalKv::new();
    let server = basalt_net::spawn_with(config, move |_core| PanicsOnBoom(kv.clone())).unwrap();
    let addr = server.client_addrs()[0];
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(512 * 1024)
        .spawn(move || async move {
            let client = Client::connect(addr).await.unwrap();
            client.range(&range("boom")).await.unwrap_err();
        })
        .unwrap()
        .join()
        .unwrap();
    while !server.has_stopped() {
        std::thread::yield_now();
    }
    let err = server.wait().expect_err("the dead core is reported");
    assert!(
        matches!(err, basalt_net::NetError::ExecutorFailed { .. }),
        "{err}"
    );
}
