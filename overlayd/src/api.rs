//! The control API client: one JSON request per line over a Unix socket, one JSON
//! response line back. The schema (requests, responses) is `overlayd_proto::api`, shared
//! with the daemon and the lab.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

pub use overlayd_proto::api::*;

/// How long the CLI waits for the daemon (pod add does netlink work; it is quick).
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends one request and returns the result, or the daemon's error as `Err`.
pub async fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T> {
    tokio::time::timeout(CALL_TIMEOUT, call_inner(socket, request))
        .await
        .map_err(|_| {
            anyhow!(
                "the daemon at {} did not answer within {CALL_TIMEOUT:?}",
                socket.display()
            )
        })?
}

async fn call_inner<T: DeserializeOwned>(socket: &Path, request: &Request) -> Result<T> {
    let stream = UnixStream::connect(socket).await.with_context(|| {
        format!(
            "cannot reach the daemon at {}; is `overlayd run` running? (set --socket or OVERLAYD_SOCKET)",
            socket.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut reply = String::new();
    BufReader::new(read)
        .read_line(&mut reply)
        .await
        .context("reading the daemon's reply")?;
    let response: Response =
        serde_json::from_str(&reply).context("the daemon's reply is not valid JSON")?;
    if !response.ok {
        return Err(anyhow!(
            response
                .error
                .unwrap_or_else(|| "the daemon reported an error".into())
        ));
    }
    Ok(serde_json::from_value(
        response.result.unwrap_or(serde_json::Value::Null),
    )?)
}
