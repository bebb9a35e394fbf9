//! A raw MQTT 3.1.1 client: exact control over CONNECT (wills, source address) and a subscriber that never reads.

use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A last will.
pub struct Will<'a> {
    pub topic: &'a str,
    pub payload: &'a [u8],
    pub retain: bool,
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

fn packet(header: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![header];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// Opens a TCP connection from `source` (any 127.0.0.0/8 address works on Linux loopback).
pub async fn tcp_from(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

/// CONNECT; returns the stream and the CONNACK return code (0 accepted, 4 bad user name or password, 5 not
/// authorized), or `None` when the broker closed without a CONNACK.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    client_id: &str,
    creds: Option<(&str, &str)>,
    will: Option<Will<'_>>,
) -> (TcpStream, Option<u8>) {
    let mut flags = 0x02u8; // clean session
    let mut payload = Vec::new();
    put_str(&mut payload, client_id.as_bytes());
    if let Some(w) = &will {
        flags |= 0x04 | 0x08; // will, QoS 1
        if w.retain {
            flags |= 0x20;
        }
        put_str(&mut payload, w.topic.as_bytes());
        put_str(&mut payload, w.payload);
    }
    if let Some((u, p)) = creds {
        flags |= 0x80 | 0x40;
        put_str(&mut payload, u.as_bytes());
        put_str(&mut payload, p.as_bytes());
    }
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.extend_from_slice(&[4, flags, 0, 60]);
    body.extend_from_slice(&payload);
    let mut stream = tcp_from(addr, source).await.expect("TCP connect to the broker");
    stream.write_all(&packet(0x10, &body)).await.expect("CONNECT written");
    let mut ack = [0u8; 4];
    let code = match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_exact(&mut ack)).await {
        Ok(Ok(_)) if ack[0] == 0x20 => Some(ack[3]),
        _ => None,
    };
    (stream, code)
}

/// SUBSCRIBE at QoS 1 and wait for the SUBACK; returns its return code (0x80 = refused).
pub async fn subscribe(stream: &mut TcpStream, filter: &str) -> u8 {
    let mut body = vec![0, 1];
    put_str(&mut body, filter.as_bytes());
    body.push(1);
    stream.write_all(&packet(0x82, &body)).await.expect("SUBSCRIBE written");
    let mut ack = [0u8; 5];
    stream.read_exact(&mut ack).await.expect("SUBACK");
    assert_eq!(ack[0], 0x90, "SUBACK expected: {ack:?}");
    ack[4]
}

/// CONNACK codes.
pub const ACCEPTED: u8 = 0;
pub const BAD_CREDENTIALS: u8 = 4;
pub const NOT_AUTHORIZED: u8 = 5;
