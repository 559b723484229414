//! A hand-written HTTP/1.1 request, so a test sees a server's answer byte for byte, with no
//! client library normalising it on the way.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One raw HTTP/1.1 request on a fresh connection (`Connection: close`): the head (without its
/// closing blank line, empty if none came), the body, and how reading ended (a fault server's
/// reset shows there).
pub async fn raw_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Vec<u8>, io::Result<()>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let end = stream.read_to_end(&mut response).await.map(|_| ());
    let Some(split) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (String::new(), response, end);
    };
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    (head, response[split + 4..].to_vec(), end)
}

/// [`raw_exchange`] for a well-behaved server: the response must be complete.
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (String, Vec<u8>) {
    let (head, body, end) = raw_exchange(addr, method, path, headers).await;
    end.unwrap();
    assert!(!head.is_empty(), "no response head: {body:?}");
    (head, body)
}

/// The value of header `name` in a raw response head.
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}
