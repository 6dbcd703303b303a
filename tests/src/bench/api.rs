//! The daemon's control API spoken directly from Rust (one JSON request line per
//! connection, one response line back — `overlayd_proto::api`), for the requests a bench
//! makes by the thousand, where starting the CLI for each would measure the CLI.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use overlayd_proto::api::{Request, Response};

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call failed: the socket, or the daemon's own error (`{"ok":false,"error":…}`).
#[derive(Debug, thiserror::Error)]
pub(super) enum ApiError {
    #[error("{socket}: {source}")]
    Io {
        socket: String,
        source: std::io::Error,
    },
    #[error("{socket}: the reply is not the API's JSON ({source})")]
    Json {
        socket: String,
        source: serde_json::Error,
    },
    #[error("the daemon refused: {0}")]
    Daemon(String),
}

/// Sends `request` to the daemon at `socket` and returns its result (JSON `null` when it
/// has none).
pub(super) fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ApiError> {
    let io = |source| ApiError::Io {
        socket: socket.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let mut line = serde_json::to_vec(request).expect("a Request always serializes");
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).map_err(io)?;
    let response: Response = serde_json::from_str(&reply).map_err(|source| ApiError::Json {
        socket: socket.display().to_string(),
        source,
    })?;
    if !response.ok {
        return Err(ApiError::Daemon(
            response
                .error
                .unwrap_or_else(|| "an error it did not name".into()),
        ));
    }
    Ok(response.result.unwrap_or(serde_json::Value::Null))
}

/// [`call`], with the result decoded as `T`.
pub(super) fn call_as<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: &Request,
) -> Result<T, ApiError> {
    serde_json::from_value(call(socket, request)?).map_err(|source| ApiError::Json {
        socket: socket.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn serve_once(reply: &'static str) -> (tempdir::Dir, std::thread::JoinHandle<String>) {
        let dir = tempdir::Dir::new();
        let listener = UnixListener::bind(dir.path().join("s.sock")).unwrap();
        let handle = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            (&conn).write_all(reply.as_bytes()).unwrap();
            line
        });
        (dir, handle)
    }

    #[test]
    fn sends_one_json_line_and_reads_the_result_or_the_error() {
        let (dir, server) = serve_once("{\"ok\":true,\"result\":{\"n\":3}}\n");
        let got = call(&dir.path().join("s.sock"), &Request::ServiceList).unwrap();
        assert_eq!(got["n"], 3);
        let sent = server.join().unwrap();
        assert_eq!(sent, "{\"op\":\"service_list\"}\n", "one JSON line");

        let (dir, _server) = serve_once("{\"ok\":false,\"error\":\"no Services here\"}\n");
        let err = call(&dir.path().join("s.sock"), &Request::ServiceList).unwrap_err();
        assert!(
            matches!(&err, ApiError::Daemon(e) if e == "no Services here"),
            "{err}"
        );
    }

    /// A temporary directory removed on drop (no extra crate for one test).
    mod tempdir {
        pub(super) struct Dir(std::path::PathBuf);
        impl Dir {
            pub(super) fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let path = std::env::temp_dir().join(format!(
                    "overlayd-lab-api-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&path).unwrap();
                Dir(path)
            }
            pub(super) fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
