//! A minimal HTTP/1.1 client and message reader over tokio TCP streams.
//!
//! Hand-written so that the load generator costs as little CPU as possible
//! on a machine whose cores it shares with the server under test: one
//! `write` of a pre-built request, one or two `read`s of the answer, no
//! header maps, no per-request allocation beyond the request bytes.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed message: the head as text, the body decoded (chunked or not).
pub struct Message {
    pub head: String,
    pub body: Vec<u8>,
}

impl Message {
    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The status code of a response (0 if the status line is malformed).
    pub fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    /// Method and path of a request.
    pub fn request_line(&self) -> (&str, &str) {
        let mut parts = self.head.split(' ');
        (parts.next().unwrap_or(""), parts.next().unwrap_or(""))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-message")
}

async fn fill<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(16 * 1024);
    if s.read_buf(buf).await? == 0 {
        Err(eof())
    } else {
        Ok(())
    }
}

/// Reads one message from `s`; `buf` carries bytes read past it to the next
/// call. `None` on a clean close before a message starts. A response to a
/// request is read with `is_response = true` (204 and 304 carry no body, and
/// a response without a length runs to the end of the stream).
pub async fn read_message<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut Vec<u8>,
    is_response: bool,
) -> io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        buf.reserve(16 * 1024);
        if s.read_buf(buf).await? == 0 {
            return if buf.is_empty() { Ok(None) } else { Err(eof()) };
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let mut msg = Message { head, body: Vec::new() };
    if is_response && matches!(msg.status(), 204 | 304 | 100..=199) {
        return Ok(Some(msg));
    }
    let chunked = msg
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n") {
                    break p;
                }
                fill(s, buf).await?;
            };
            let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers (none expected), then the final CRLF.
                loop {
                    if buf.starts_with(b"\r\n") {
                        buf.drain(..2);
                        break;
                    }
                    if let Some(p) = find(buf, b"\r\n\r\n") {
                        buf.drain(..p + 4);
                        break;
                    }
                    fill(s, buf).await?;
                }
                break;
            }
            while buf.len() < size + 2 {
                fill(s, buf).await?;
            }
            msg.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
    } else if let Some(len) = msg.header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            fill(s, buf).await?;
        }
        msg.body = buf.drain(..len).collect();
    } else if is_response {
        loop {
            buf.reserve(16 * 1024);
            if s.read_buf(buf).await? == 0 {
                break;
            }
        }
        msg.body = std::mem::take(buf);
    }
    Ok(Some(msg))
}

/// A keep-alive client connection; reconnects after the server closes it.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: Vec::with_capacity(16 * 1024),
        }
    }

    /// Sends one pre-built request and reads its response.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Message> {
        let result = self.try_send(request).await;
        if result.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        result
    }

    async fn try_send(&mut self, request: &[u8]) -> io::Result<Message> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let s = self.stream.as_mut().expect("connected");
        s.write_all(request).await?;
        let msg = read_message(s, &mut self.buf, true).await?.ok_or_else(eof)?;
        if msg
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.stream = None;
            self.buf.clear();
        }
        Ok(msg)
    }
}

/// A request with a body, as bytes ready to write.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 512);
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n").as_bytes());
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}
