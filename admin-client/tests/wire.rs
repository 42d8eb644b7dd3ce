//! The generated client against a scripted HTTP server: what it sends
//! (method, path, `api-version` header, body) and how it reads answers.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

use ddm_admin_api::latest::{PeerStatus, RouterKind, TunnelOrigin};
use ddm_admin_client::{new_client, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One request as the scripted server received it.
#[derive(Debug)]
struct Recorded {
    /// The request line, e.g. `GET /originated HTTP/1.1`.
    request_line: String,
    /// Header names (lower-cased) and values, in arrival order.
    headers: Vec<(String, String)>,
    /// The request body.
    body: Vec<u8>,
}

impl Recorded {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Serve exactly one request with `status` and the JSON `reply`, and hand
/// back what was received.
async fn serve_once(
    status: &'static str,
    reply: &'static str,
) -> (SocketAddr, JoinHandle<Recorded>) {
    let listener = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed before sending a request head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let request_line = lines.next().unwrap().to_string();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "client closed in the middle of the body");
            body.extend_from_slice(&chunk[..n]);
        }
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{reply}",
            reply.len()
        );
        sock.write_all(response.as_bytes()).await.unwrap();
        sock.shutdown().await.unwrap();
        Recorded { request_line, headers, body }
    });
    (addr, task)
}

fn log() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

#[tokio::test]
async fn sends_api_version_header() {
    let (addr, server) = serve_once("200 OK", r#"["fd00:1::/64"]"#).await;
    let client = new_client(addr, log());
    let got = client.get_originated().await.unwrap().into_inner();
    let rec = server.await.unwrap();
    assert_eq!(rec.request_line, "GET /originated HTTP/1.1");
    assert_eq!(rec.header("api-version"), Some("2.0.0"));
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        vec!["fd00:1::/64".parse::<oxnet::Ipv6Net>().unwrap()]
    );
}

#[tokio::test]
async fn decodes_v2_peers() {
    let (addr, server) = serve_once(
        "200 OK",
        r#"{"3":{"status":{"type":"Exchange","duration":{"secs":192,"nanos":5}},
             "addr":"fe80::1","host":"sw0","kind":1}}"#,
    )
    .await;
    let peers = new_client(addr, log()).get_peers().await.unwrap().into_inner();
    server.await.unwrap();
    let peer = &peers["3"];
    assert_eq!(peer.host, "sw0");
    assert_eq!(peer.kind, RouterKind::Transit);
    assert_eq!(peer.addr, "fe80::1".parse::<Ipv6Addr>().unwrap());
    assert_eq!(peer.status, PeerStatus::Exchange(Duration::new(192, 5)));
}

#[tokio::test]
async fn sends_tunnel_endpoints_as_json() {
    let (addr, server) = serve_once("204 No Content", "").await;
    let origin = TunnelOrigin {
        overlay_prefix: "203.0.113.0/24".parse().unwrap(),
        boundary_addr: "fd00::1".parse().unwrap(),
        vni: 77,
        metric: 3,
    };
    new_client(addr, log())
        .advertise_tunnel_endpoints(&[origin].into_iter().collect())
        .await
        .unwrap();
    let rec = server.await.unwrap();
    assert_eq!(rec.request_line, "PUT /tunnel_endpoint HTTP/1.1");
    assert_eq!(rec.header("api-version"), Some("2.0.0"));
    let sent: serde_json::Value = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(
        sent,
        serde_json::json!([{
            "overlay_prefix": "203.0.113.0/24",
            "boundary_addr": "fd00::1",
            "vni": 77,
            "metric": 3,
        }])
    );
}

#[tokio::test]
async fn api_errors_carry_the_server_message() {
    let (addr, server) = serve_once(
        "400 Bad Request",
        r#"{"request_id":"r1","error_code":"Bad","message":"no such peer"}"#,
    )
    .await;
    let err = new_client(addr, log())
        .expire_peer(&"fe80::9".parse().unwrap())
        .await
        .unwrap_err();
    let rec = server.await.unwrap();
    assert_eq!(rec.request_line, "DELETE /peers/fe80::9 HTTP/1.1");
    match err {
        Error::ErrorResponse(rv) => {
            assert_eq!(rv.status(), 400);
            assert_eq!(rv.message, "no such peer");
        }
        other => panic!("expected an error response, got {other:?}"),
    }
}
