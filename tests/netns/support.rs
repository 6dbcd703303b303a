//! What the tests share: unique labs, byte-verified TCP transfers, ping, kernel counters.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use overlayd_lab::{Lab, LabGuard, Topology, in_netns};

pub(crate) fn overlayd_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_overlayd"))
}

/// A lab name unique to this test and process: `tag` (≤ 3 chars) + 5 hex digits of the PID.
pub(crate) fn lab_name(tag: &str) -> String {
    format!("{tag}{:05x}", std::process::id() & 0xfffff)
}

/// Brings up a lab; it is torn down when the guard drops, also on panic.
pub(crate) fn lab(tag: &str, topology: &Topology) -> Result<TestLab> {
    let name = lab_name(tag);
    // A lab of this name can only be left over from a killed run of this same test.
    let _ = Lab::down(&name);
    LOG_DIRS.with(|dirs| dirs.borrow_mut().push(log_dir(&name)));
    let guard = Lab::up(&name, topology, overlayd_bin())
        .with_context(|| format!("bringing up lab {name}"))?;
    Ok(TestLab(Some(guard)))
}

thread_local! {
    /// Where the labs of the test running on this thread leave their daemons' logs.
    static LOG_DIRS: std::cell::RefCell<Vec<std::path::PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn log_dir(lab: &str) -> std::path::PathBuf {
    std::env::temp_dir().join("overlayd-test-logs").join(lab)
}

/// A test's lab: torn down on drop like the [`LabGuard`] it wraps, after its daemons'
/// logs are copied out of the run directory, so a failure can show them.
pub(crate) struct TestLab(Option<LabGuard>);

impl std::ops::Deref for TestLab {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.0.as_deref().expect("present until drop")
    }
}

impl std::ops::DerefMut for TestLab {
    fn deref_mut(&mut self) -> &mut Lab {
        self.0.as_deref_mut().expect("present until drop")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if let Some(guard) = self.0.take() {
            let dir = log_dir(guard.name());
            let _ = std::fs::remove_dir_all(&dir);
            let _ = std::fs::create_dir_all(&dir);
            if let Ok(entries) = std::fs::read_dir(guard.run_dir()) {
                for entry in entries
                    .flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
                {
                    let _ = std::fs::copy(entry.path(), dir.join(entry.file_name()));
                }
            }
        }
    }
}

/// A process a test started, killed and reaped when dropped (also on early return).
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a test; on failure, appends the last lines of every daemon log of its labs.
pub(crate) fn with_logs(test: fn() -> Result<()>) -> Result<(), String> {
    LOG_DIRS.with(|dirs| dirs.borrow_mut().clear());
    let Err(e) = test() else { return Ok(()) };
    let mut message = format!("{e:#}");
    for dir in LOG_DIRS.with(|dirs| dirs.borrow().clone()) {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut logs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        logs.sort();
        for log in logs {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(15)..].join("\n");
            message.push_str(&format!(
                "\n--- last lines of {} ---\n{tail}",
                log.display()
            ));
        }
    }
    Err(message)
}

/// Segments a (10.100.1.0/24) and b (10.100.2.0/24) joined by the router, then `nodes`
/// (`[[node]]` tables and anything else a test adds).
pub(crate) fn two_segments(nodes: &str) -> Result<Topology> {
    two_segments_with("", nodes)
}

/// [`two_segments`] with top-level keys (`gossip = false`, say) in front.
pub(crate) fn two_segments_with(top_level: &str, nodes: &str) -> Result<Topology> {
    let text = format!("{top_level}\n{}{nodes}", overlayd_lab::TWO_SEGMENTS);
    Ok(Topology::parse(&text)?)
}

/// A DF ping of `size` payload bytes from `ns` to `dst`: its exit status and all output.
pub(crate) fn df_ping(ns: &str, dst: Ipv4Addr, size: u16) -> Result<(bool, String)> {
    let (size, dst) = (size.to_string(), dst.to_string());
    let out = ns_cmd(
        ns,
        &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", &size, &dst],
    )?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), text))
}

/// The default topology: segments a and b, n1 n2 on a, n3 n4 on b, two pods each, and the
/// Service `hello` in front of every pod.
pub(crate) fn default_lab(tag: &str) -> Result<TestLab> {
    lab(tag, &Topology::default())
}

/// The default topology without its Service: no traffic but what a test makes (every
/// node health-checks a Service's backends), for tests that count packets.
pub(crate) fn quiet_lab(tag: &str) -> Result<TestLab> {
    lab(tag, &Topology::parse(overlayd_lab::DEFAULT_NODES)?)
}

/// Pings `dst` from namespace `ns`; returns ping's output. `Err` iff any reply is missing.
pub(crate) fn ping(ns: &str, dst: Ipv4Addr, count: u32) -> Result<String> {
    let out = ns_cmd(
        ns,
        &[
            "ping",
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            &dst.to_string(),
        ],
    )?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success() && text.contains(" 0% packet loss"),
        "ping {dst} from {ns} lost replies:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// ping's summary line ("N packets transmitted, M received, …") from its output, and
/// the replies lost (transmitted − received).
pub(crate) fn ping_stats(out: &std::process::Output) -> Result<(u32, String)> {
    let text = String::from_utf8_lossy(&out.stdout);
    let stats = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping statistics in:\n{text}"))?
        .to_owned();
    let num = |word: &str| -> Result<u32> {
        stats
            .split(", ")
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next())
            .with_context(|| format!("no {word} count in {stats:?}"))?
            .parse()
            .map_err(Into::into)
    };
    Ok((num("transmitted")?.saturating_sub(num("received")?), stats))
}

/// Runs a command inside a namespace (no mount namespace change needed for these).
pub(crate) fn ns_cmd(ns: &str, args: &[&str]) -> Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .with_context(|| format!("running {args:?} in {ns}"))
}

/// Like [`ns_cmd`], but `Err` unless it succeeds; returns stdout.
pub(crate) fn ns_run(ns: &str, args: &[&str]) -> Result<String> {
    let out = ns_cmd(ns, args)?;
    ensure!(
        out.status.success(),
        "{args:?} in {ns} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A deterministic byte stream (xorshift64*) both ends can produce independently, in
/// pieces of any size.
pub(crate) struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    pub(crate) fn new(seed: u64) -> Self {
        Pattern {
            state: seed | 1,
            word: [0; 8],
            used: 8,
        }
    }

    pub(crate) fn fill(&mut self, buf: &mut [u8]) {
        for byte in buf {
            if self.used == 8 {
                self.state ^= self.state >> 12;
                self.state ^= self.state << 25;
                self.state ^= self.state >> 27;
                self.word = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *byte = self.word[self.used];
            self.used += 1;
        }
    }
}

/// Reads `from` to its end and checks every byte against [`Pattern`] `seed`; returns how
/// many bytes came.
pub(crate) fn expect_pattern(from: &mut impl Read, seed: u64) -> Result<usize> {
    let mut expect = Pattern::new(seed);
    let (mut buf, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut got = 0usize;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(got);
        }
        expect.fill(&mut want[..n]);
        ensure!(
            buf[..n] == want[..n],
            "byte mismatch within {got}..{}",
            got + n
        );
        got += n;
    }
}

/// Accepts one connection, or fails after `timeout` (the sender could not connect).
fn accept_within(listener: &TcpListener, timeout: Duration) -> Result<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true)?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((conn, peer)) => {
                conn.set_nonblocking(false)?;
                return Ok((conn, peer));
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e).context("no connection arrived"),
        }
    }
}

/// A TCP listener in `ns` on an ephemeral port.
pub(crate) fn listen(ns: &str) -> Result<TcpListener> {
    in_netns(ns, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))).context("binding a listener")
}

/// Connects from `ns` to `dst`.
pub(crate) fn connect(ns: &str, dst: SocketAddr) -> Result<TcpStream> {
    let stream = in_netns(ns, || {
        TcpStream::connect_timeout(&dst, Duration::from_secs(5))
    })
    .with_context(|| format!("connecting from {ns} to {dst}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_write_timeout(Some(Duration::from_secs(20)))?;
    Ok(stream)
}

/// Sends `len` pattern bytes from namespace `src` to a server in namespace `dst` at
/// `dst_ip`, and checks on the receiving side that every byte arrived intact and in order.
/// Returns the source address the receiver saw.
pub(crate) fn tcp_transfer(
    src: &str,
    dst: &str,
    dst_ip: Ipv4Addr,
    len: usize,
) -> Result<SocketAddr> {
    let listener = listen(dst)?;
    let port = listener.local_addr()?.port();
    let seed = u64::from(port) * 7919;
    let receiver = std::thread::spawn(move || -> Result<SocketAddr> {
        let (mut conn, peer) = accept_within(&listener, Duration::from_secs(20))?;
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let got = expect_pattern(&mut conn, seed).context("receiving")?;
        ensure!(got == len, "received {got} bytes, expected {len}");
        Ok(peer)
    });
    let mut conn = connect(src, SocketAddr::from((dst_ip, port)))?;
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while sent < len {
        let n = buf.len().min(len - sent);
        pattern.fill(&mut buf[..n]);
        conn.write_all(&buf[..n])
            .with_context(|| format!("sending after {sent} bytes"))?;
        sent += n;
    }
    conn.shutdown(std::net::Shutdown::Write)?;
    match receiver.join() {
        Ok(r) => r,
        Err(_) => bail!("receiver panicked"),
    }
}

/// The kernel's packet counters of a link in a namespace: (rx_packets, tx_packets).
pub(crate) fn link_packets(ns: &str, dev: &str) -> Result<(u64, u64)> {
    let out = ns_run(ns, &["ip", "-s", "-j", "link", "show", "dev", dev])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let stats = &v[0]["stats64"];
    let get = |dir: &str| stats[dir]["packets"].as_u64().context("no packet counter");
    Ok((get("rx")?, get("tx")?))
}

/// Polls `f` every 100 ms until it returns `Ok(true)` or `timeout` passes.
pub(crate) fn wait_for(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = None;
    while std::time::Instant::now() < deadline {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => last = None,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match last {
        Some(e) => Err(e).context(format!("timed out after {timeout:?} waiting for {what}")),
        None => bail!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// `overlayd check` on broken configs prints `FILE:LINE:COLUMN: KEY: MESSAGE` and fails;
/// on a good one it succeeds. Needs no root: nothing touches the system.
pub(crate) fn check_reports_config_errors() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("overlayd-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cases = [
        (
            "[node]\nname = \"n1\"\npod_subnet = \"10.244.1.0/24\"\n[tunnel]\nport = 0\n",
            "bad.toml:5:8: tunnel.port:",
        ),
        (
            "[node]\nname = \"n1\"\npod_subnet = \"10.244.1.0/24\"\nbogus = 1\n",
            "bad.toml:4:1: node.bogus:",
        ),
        (
            "[node]\nname = \"n1\"\npod_subnet = \"10.244.1.0/24\"\n[[peer]]\nname = \"n2\"\nunderlay_address = \"10.0.0.2\"\npod_subnet = \"10.244.1.128/25\"\n",
            "bad.toml:7:14: peer[0].pod_subnet:",
        ),
    ];
    for (text, expect) in cases {
        let path = dir.join("bad.toml");
        std::fs::write(&path, text)?;
        let out = Command::new(overlayd_bin())
            .current_dir(&dir)
            .args(["check", "--config", "bad.toml"])
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "check accepted:\n{text}");
        ensure!(stderr.contains(expect), "expected {expect:?} in:\n{stderr}");
    }
    std::fs::write(
        dir.join("good.toml"),
        "[node]\nname = \"n1\"\npod_subnet = \"10.244.1.0/24\"\n",
    )?;
    let out = Command::new(overlayd_bin())
        .current_dir(&dir)
        .args(["check", "--config", "good.toml"])
        .output()?;
    ensure!(
        out.status.success(),
        "good config refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// The PIDs of the processes in a pod's namespace (its server).
pub(crate) fn pod_processes(lab: &overlayd_lab::Lab, pod: &str) -> Result<Vec<u32>> {
    let ns = &lab.pod(pod)?.netns;
    let inode = overlayd_lab::netns::inode(ns)?;
    Ok(overlayd_lab::process::pids_in_namespaces(
        &[inode].into_iter().collect(),
    ))
}
