//! Capped NDJSON line framing shared by the agent's server side and `flexctl`.
//!
//! [`LineReader`] never holds more than `cap` bytes of one line: once a line has
//! grown past the cap the rest of it is skipped up to the next newline and the caller
//! is told the line was too long, so one bad client line costs bounded memory and the
//! connection can go on with the next line. All progress lives in the struct, so
//! [`LineReader::next`] is cancel-safe and can sit in a `tokio::select!` next to an
//! event stream. Everything is generic over `AsyncRead`/`AsyncWrite` so tests can
//! drive it with `tokio::io::duplex`.

use std::io;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

/// What one call to [`LineReader::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A complete line (without its newline) is in [`LineReader::line`].
    Line,
    /// The line was longer than the cap; it was discarded up to its newline (or to
    /// end of stream). `len` is how many bytes it had, newline included.
    TooLong { len: usize },
    /// The peer closed the stream. A final line without a newline is returned as
    /// [`LineRead::Line`] first.
    Eof,
}

/// Reads newline-terminated lines of at most `cap` bytes, newline included.
pub struct LineReader<R> {
    inner: BufReader<R>,
    cap: usize,
    buf: Vec<u8>,
    seen: usize,
    overflow: bool,
    complete: bool,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    pub fn new(inner: R, cap: usize) -> Self {
        LineReader {
            inner: BufReader::with_capacity(cap.clamp(64, 8 * 1024), inner),
            cap,
            buf: Vec::new(),
            seen: 0,
            overflow: false,
            complete: false,
        }
    }

    /// The line found by the last [`LineRead::Line`].
    pub fn line(&self) -> &[u8] {
        &self.buf
    }

    /// Reads the next line. Cancel-safe: a partly read line is kept for the next call.
    pub async fn next(&mut self) -> io::Result<LineRead> {
        if self.complete {
            self.buf.clear();
            self.seen = 0;
            self.overflow = false;
            self.complete = false;
        }
        loop {
            let available = self.inner.fill_buf().await?;
            if available.is_empty() {
                self.complete = true;
                return Ok(if self.overflow {
                    LineRead::TooLong { len: self.seen }
                } else if self.seen == 0 {
                    LineRead::Eof
                } else {
                    LineRead::Line
                });
            }
            let newline = available.iter().position(|&b| b == b'\n');
            let chunk = match newline {
                Some(i) => &available[..=i],
                None => available,
            };
            let n = chunk.len();
            self.seen += n;
            if !self.overflow {
                if self.seen > self.cap {
                    // The line is rejected whole: stop holding any of it.
                    self.overflow = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            self.inner.consume(n);
            if newline.is_some() {
                self.complete = true;
                if self.overflow {
                    return Ok(LineRead::TooLong { len: self.seen });
                }
                self.buf.pop();
                if self.buf.last() == Some(&b'\r') {
                    self.buf.pop();
                }
                return Ok(LineRead::Line);
            }
        }
    }
}

/// Writes `line` followed by a newline and flushes.
pub async fn write_line<W: AsyncWrite + Unpin>(writer: &mut W, line: &str) -> io::Result<()> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    writer.write_all(&bytes).await?;
    writer.flush().await
}

/// Serializes `value` as one JSON line and writes it.
pub async fn write_json<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    value: &T,
) -> io::Result<()> {
    let line = serde_json::to_string(value).map_err(io::Error::other)?;
    write_line(writer, &line).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn oversize_line_is_skipped_and_next_line_read() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = LineReader::new(server, 32);
        let writer = tokio::spawn(async move {
            client.write_all(&[b'x'; 100]).await.unwrap();
            client.write_all(b"\nok\nlast").await.unwrap();
        });
        assert_eq!(reader.next().await.unwrap(), LineRead::TooLong { len: 101 });
        assert!(reader.buf.capacity() <= 64, "held more than the cap");
        assert_eq!(reader.next().await.unwrap(), LineRead::Line);
        assert_eq!(reader.line(), b"ok");
        writer.await.unwrap();
        assert_eq!(reader.next().await.unwrap(), LineRead::Line);
        assert_eq!(reader.line(), b"last");
        assert_eq!(reader.next().await.unwrap(), LineRead::Eof);
    }

    #[tokio::test]
    async fn line_of_exactly_the_cap_is_accepted() {
        let mut line = vec![b'a'; 31];
        line.push(b'\n');
        for (cap, expected) in [(32, LineRead::Line), (31, LineRead::TooLong { len: 32 })] {
            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(&line).await.unwrap();
            drop(client);
            // 31 bytes plus the newline is exactly 32.
            let mut reader = LineReader::new(server, cap);
            assert_eq!(reader.next().await.unwrap(), expected, "cap {cap}");
        }
    }

    #[tokio::test]
    async fn partial_line_survives_cancellation() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut reader = LineReader::new(server, 64);
        client.write_all(b"{\"op\":").await.unwrap();
        // The first read sees only half a line and is then cancelled.
        tokio::select! {
            biased;
            _ = reader.next() => panic!("half a line is not a line"),
            _ = tokio::task::yield_now() => {}
        }
        client.write_all(b"\"status\"}\n").await.unwrap();
        assert_eq!(reader.next().await.unwrap(), LineRead::Line);
        assert_eq!(reader.line(), b"{\"op\":\"status\"}");
    }
}
