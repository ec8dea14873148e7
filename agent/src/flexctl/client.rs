//! A connection to flex-agent's local socket, as flexctl uses it.
//!
//! Lines from the agent are either replies (`{"ok":...}`) or, on connections that
//! carry a stream, events (`{"event":...}`); [`Client::next`] tells them apart.

use std::path::{Path, PathBuf};

use flex_protocol::api::ApiError;
use flex_protocol::socket::{
    parse_answer, parse_reply, ErrReply, Event, HelloReply, Request, MAX_LINE,
};
use flex_protocol::PROTOCOL_VERSION;
use serde::de::DeserializeOwned;
use tokio::io::{ReadHalf, WriteHalf};

use crate::socket::{write_json, LineRead, LineReader};

use super::CtlError;

/// One line from the agent.
#[derive(Debug)]
pub enum Incoming {
    /// A reply line, still encoded: decode with [`decode_reply`].
    Reply(String),
    Event(Event),
}

/// The agent's endpoint: a Unix socket, or the named pipe on Windows.
#[cfg(unix)]
type Stream = tokio::net::UnixStream;
#[cfg(windows)]
type Stream = tokio::net::windows::named_pipe::NamedPipeClient;

pub struct Client {
    path: PathBuf,
    reader: LineReader<ReadHalf<Stream>>,
    writer: WriteHalf<Stream>,
}

impl Client {
    /// Connects and checks that the agent speaks our protocol version.
    pub async fn connect(path: &Path) -> Result<Client, CtlError> {
        let stream = open(path).await.map_err(|source| CtlError::Unreachable {
            path: path.to_owned(),
            source,
        })?;
        let (r, w) = tokio::io::split(stream);
        let mut client = Client {
            path: path.to_owned(),
            reader: LineReader::new(r, MAX_LINE),
            writer: w,
        };
        let hello: HelloReply = client
            .call(&Request::Hello {
                protocol: PROTOCOL_VERSION,
                client: Some(format!("flexctl {}", env!("CARGO_PKG_VERSION"))),
            })
            .await?
            .map_err(CtlError::Refused)?;
        tracing::debug!(account = %hello.account, agent = %hello.agent_version, "connected to flex-agent");
        Ok(client)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn send(&mut self, req: &Request) -> Result<(), CtlError> {
        write_json(&mut self.writer, req)
            .await
            .map_err(|source| CtlError::Lost {
                path: self.path.clone(),
                source,
            })
    }

    /// The next line; `None` when the agent closed the connection.
    pub async fn next(&mut self) -> Result<Option<Incoming>, CtlError> {
        loop {
            let read = self.reader.next().await.map_err(|source| CtlError::Lost {
                path: self.path.clone(),
                source,
            })?;
            match read {
                LineRead::Eof => return Ok(None),
                LineRead::TooLong { len } => {
                    return Err(CtlError::Garbled(format!(
                        "a {len}-byte line, over the {MAX_LINE}-byte limit"
                    )))
                }
                LineRead::Line => {}
            }
            let line = String::from_utf8_lossy(self.reader.line()).into_owned();
            if line.trim().is_empty() {
                continue;
            }
            let value: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| CtlError::Garbled(format!("{e}: {line}")))?;
            if value.get("event").is_some() {
                return match serde_json::from_value::<Event>(value) {
                    Ok(event) => Ok(Some(Incoming::Event(event))),
                    // An event kind newer than this flexctl: skip it.
                    Err(e) => {
                        tracing::debug!(error = %e, "skipping an unknown event");
                        continue;
                    }
                };
            }
            return Ok(Some(Incoming::Reply(line)));
        }
    }

    /// The next reply, handing events that arrive first to `on_event`.
    pub async fn reply<T: DeserializeOwned>(
        &mut self,
        on_event: impl FnMut(Event),
    ) -> Result<Result<T, ApiError>, CtlError> {
        Ok(self
            .answer(on_event)
            .await?
            .map_err(|refused| refused.error))
    }

    /// Sends `req` and waits for its reply, keeping a refusal whole (with the
    /// display name of the product it refuses).
    pub async fn ask<T: DeserializeOwned>(
        &mut self,
        req: &Request,
    ) -> Result<Result<T, ErrReply>, CtlError> {
        self.send(req).await?;
        self.answer(|_| {}).await
    }

    /// Like [`reply`](Self::reply), keeping a refusal whole.
    pub async fn answer<T: DeserializeOwned>(
        &mut self,
        mut on_event: impl FnMut(Event),
    ) -> Result<Result<T, ErrReply>, CtlError> {
        loop {
            match self.next().await? {
                None => {
                    return Err(CtlError::Lost {
                        path: self.path.clone(),
                        source: std::io::ErrorKind::UnexpectedEof.into(),
                    })
                }
                Some(Incoming::Event(e)) => on_event(e),
                Some(Incoming::Reply(line)) => {
                    return parse_answer(&line)
                        .map_err(|e| CtlError::Garbled(format!("{e}: {line}")))
                }
            }
        }
    }

    /// Sends `req` and waits for its reply (events before it are dropped).
    pub async fn call<T: DeserializeOwned>(
        &mut self,
        req: &Request,
    ) -> Result<Result<T, ApiError>, CtlError> {
        self.send(req).await?;
        self.reply(|_| {}).await
    }
}

#[cfg(unix)]
async fn open(path: &Path) -> std::io::Result<Stream> {
    Stream::connect(path).await
}

/// Opens the pipe, waiting while every instance is busy (the agent creates
/// the next one as soon as it accepts a client).
#[cfg(windows)]
async fn open(path: &Path) -> std::io::Result<Stream> {
    const ERROR_PIPE_BUSY: i32 = 231;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tokio::net::windows::named_pipe::ClientOptions::new().open(path) {
            Err(e)
                if e.raw_os_error() == Some(ERROR_PIPE_BUSY)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            other => return other,
        }
    }
}

pub fn decode_reply<T: DeserializeOwned>(line: &str) -> Result<Result<T, ApiError>, CtlError> {
    parse_reply(line).map_err(|e| CtlError::Garbled(format!("{e}: {line}")))
}
