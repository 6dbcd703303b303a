//! The measuring tools the benches run inside lab namespaces, and their output parsers:
//! iperf3 (TCP and UDP), ping, wrk, and a daemon's CPU time and RSS from /proc.

use std::net::Ipv4Addr;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::lab::LabError;
use crate::netns;

/// What one iperf3 TCP run moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tcp {
    /// Throughput at the receiver, Gbit/s.
    pub gbps: f64,
    /// Bytes the receiver got.
    pub bytes: u64,
}

/// What one iperf3 UDP run at a fixed offered load got through.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Udp {
    /// Datagrams lost, as a fraction of those sent (0.0 ..= 1.0).
    pub loss: f64,
    /// Throughput at the receiver, Gbit/s.
    pub gbps: f64,
    /// What the sender managed to offer, Gbit/s (below the asked rate when it ran out of
    /// CPU).
    pub sent_gbps: f64,
}

/// wrk's figures for one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wrk {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors (connect + read + write + timeout) and non-2xx/3xx responses.
    pub errors: u64,
}

/// An iperf3 test: the client runs in `client_ns` against `dst:port`, the one-off server
/// (`iperf3 -s -1`) in `server_ns` on `port` (a proxy may sit between `dst` and it).
#[derive(Debug, Clone)]
pub struct Iperf<'a> {
    pub client_ns: &'a str,
    pub server_ns: &'a str,
    pub dst: Ipv4Addr,
    pub port: u16,
    pub seconds: u32,
}

impl Iperf<'_> {
    /// TCP with `streams` parallel streams (`-P`).
    pub fn tcp(&self, streams: u32) -> Result<Tcp, LabError> {
        let json = self.run(&["-P", &streams.to_string()])?;
        parse_iperf3_tcp(&json)
    }

    /// UDP at offered load `rate` (iperf3's `-b`, e.g. `1G`) in datagrams of `len` bytes,
    /// with 4 MiB socket buffers (`-w`; the kernel caps them at net.core.rmem_max/wmem_max)
    /// so that the receiving iperf3's default buffer is not where datagrams are lost.
    pub fn udp(&self, rate: &str, len: u32) -> Result<Udp, LabError> {
        let json = self.run(&["-u", "-b", rate, "-l", &len.to_string(), "-w", "4M"])?;
        parse_iperf3_udp(&json)
    }

    fn run(&self, extra: &[&str]) -> Result<String, LabError> {
        let port = self.port.to_string();
        // One-off server: it exits after the test; the guard kills it if we fail first.
        let _server = ChildGuard(netns::spawn_in(
            self.server_ns,
            "iperf3",
            &["-s", "-1", "-p", &port],
        )?);
        wait_listening(self.server_ns, self.port, Duration::from_secs(5))?;
        let mut cmd = netns::command(self.client_ns, "iperf3")?;
        cmd.args([
            "-c",
            &self.dst.to_string(),
            "-p",
            &port,
            "-t",
            &self.seconds.to_string(),
            "-J",
        ])
        .args(extra);
        let out =
            netns::output_with_timeout(cmd, Duration::from_secs(u64::from(self.seconds) + 30))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Waits until something in `ns` listens on TCP `port` (`ss -Hltn`).
pub fn wait_listening(ns: &str, port: u16, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let filter = format!("sport = :{port}");
    loop {
        let listening = netns::run_in(ns, &["ss", "-Hltn", &filter])?;
        if !listening.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Bench(format!(
                "nothing listens on TCP port {port} in {ns} after {timeout:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn iperf3_json(json: &str) -> Result<serde_json::Value, LabError> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(|e| {
        LabError::Bench(format!(
            "iperf3 -J output is not JSON ({e}): {}",
            json.chars().take(300).collect::<String>()
        ))
    })?;
    if let Some(err) = v["error"].as_str() {
        return Err(LabError::Bench(format!("iperf3: {err}")));
    }
    Ok(v)
}

pub fn parse_iperf3_tcp(json: &str) -> Result<Tcp, LabError> {
    let v = iperf3_json(json)?;
    let received = &v["end"]["sum_received"];
    match (
        received["bits_per_second"].as_f64(),
        received["bytes"].as_u64(),
    ) {
        (Some(bps), Some(bytes)) => Ok(Tcp {
            gbps: bps / 1e9,
            bytes,
        }),
        _ => Err(LabError::Bench(
            "iperf3 reported no received throughput".into(),
        )),
    }
}

pub fn parse_iperf3_udp(json: &str) -> Result<Udp, LabError> {
    let v = iperf3_json(json)?;
    // iperf3 ≥ 3.10 has sum_received (the server's view); older ones only sum.
    let end = &v["end"];
    let (sum, sent) = if end["sum_received"].is_object() {
        (&end["sum_received"], &end["sum_sent"])
    } else {
        (&end["sum"], &end["sum"])
    };
    match (
        sum["lost_percent"].as_f64(),
        sum["bits_per_second"].as_f64(),
        sent["bits_per_second"].as_f64(),
    ) {
        (Some(lost), Some(bps), Some(sent_bps)) => Ok(Udp {
            loss: lost / 100.0,
            gbps: bps / 1e9,
            sent_gbps: sent_bps / 1e9,
        }),
        _ => Err(LabError::Bench(
            "iperf3 reported no UDP loss figures".into(),
        )),
    }
}

/// `count` pings from `ns` to `dst`, 10 ms apart; the RTT of every reply, ms.
pub fn ping_rtts(ns: &str, dst: Ipv4Addr, count: u32) -> Result<Vec<f64>, LabError> {
    let mut cmd = netns::command(ns, "ping")?;
    cmd.args([
        "-n",
        "-c",
        &count.to_string(),
        "-i",
        "0.01",
        "-W",
        "2",
        &dst.to_string(),
    ]);
    let out = netns::output_with_timeout(cmd, Duration::from_secs(u64::from(count) / 10 + 30))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts = parse_ping_rtts(&text);
    if rtts.is_empty() {
        return Err(LabError::Bench(format!(
            "no ping reply from {dst} in {ns}:\n{text}"
        )));
    }
    Ok(rtts)
}

/// The `time=0.058 ms` of every reply line.
pub fn parse_ping_rtts(text: &str) -> Vec<f64> {
    text.lines()
        .filter_map(|l| {
            let rest = &l[l.find("time=")? + "time=".len()..];
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// wrk in `ns` against `url` for `seconds` with `connections` connections on `threads`
/// threads, every request with `Connection: close` (a new TCP connection per request).
pub fn wrk_close(
    ns: &str,
    url: &str,
    seconds: u32,
    threads: u32,
    connections: u32,
) -> Result<Wrk, LabError> {
    let mut cmd = netns::command(ns, "wrk")?;
    cmd.args([
        "-t",
        &threads.to_string(),
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--latency",
        "-H",
        "Connection: close",
        url,
    ]);
    let out = netns::output_checked(cmd, Duration::from_secs(u64::from(seconds) + 30))?;
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// Requests/sec, the 50 % and 99 % latencies of `--latency`, and the error counts.
pub fn parse_wrk(text: &str) -> Result<Wrk, LabError> {
    let bad = |what: &str| LabError::Bench(format!("wrk printed no {what}:\n{text}"));
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix).map(str::trim))
    };
    let requests_per_s = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| bad("Requests/sec"))?;
    let p50_ms = field("50%")
        .and_then(duration_ms)
        .ok_or_else(|| bad("50% latency (run it with --latency)"))?;
    let p99_ms = field("99%")
        .and_then(duration_ms)
        .ok_or_else(|| bad("99% latency"))?;
    let mut errors = 0;
    // "Socket errors: connect 0, read 3, write 0, timeout 0"
    if let Some(socket) = field("Socket errors:") {
        errors += socket
            .split(',')
            .filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    if let Some(non_2xx) = field("Non-2xx or 3xx responses:") {
        errors += non_2xx.parse::<u64>().unwrap_or(0);
    }
    Ok(Wrk {
        requests_per_s,
        p50_ms,
        p99_ms,
        errors,
    })
}

/// wrk's `812.00us`, `1.23ms`, `2.00s`, `1.5m` in ms.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3600e3,
        _ => return None,
    };
    Some(number * factor)
}

/// User + system CPU time `pid` has used so far, seconds (all its threads, from
/// /proc/PID/stat `utime` and `stime`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks as f64 / hz as f64)
}

/// utime + stime (fields 14 and 15) of a /proc/PID/stat line, in clock ticks.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name is parenthesised and may hold spaces and ") ": split after the last.
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace().skip(11); // rest starts at field 3 (state)
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of `pid` (VmRSS in /proc/PID/status), KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vmrss_kib(&status)
}

pub fn parse_vmrss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// Kills the child when dropped (a server left behind by a failed run).
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iperf3_tcp_json() {
        let json = r#"{"end":{"sum_received":{"bits_per_second":2.5e9,"bytes":1562500000}}}"#;
        assert_eq!(
            parse_iperf3_tcp(json).unwrap(),
            Tcp {
                gbps: 2.5,
                bytes: 1_562_500_000
            }
        );
        assert!(parse_iperf3_tcp(r#"{"error":"unable to connect"}"#).is_err());
        assert!(parse_iperf3_tcp("not json").is_err());
        assert!(parse_iperf3_tcp(r#"{"end":{}}"#).is_err());
    }

    #[test]
    fn parses_iperf3_udp_json_of_old_and_new_versions() {
        let new = r#"{"end":{"sum":{"lost_percent":0,"bits_per_second":1e9},
            "sum_sent":{"lost_percent":0,"bits_per_second":1e9},
            "sum_received":{"lost_percent":3.5,"bits_per_second":9.65e8}}}"#;
        let udp = parse_iperf3_udp(new).unwrap();
        assert!((udp.loss - 0.035).abs() < 1e-12 && (udp.gbps - 0.965).abs() < 1e-12);
        assert_eq!(udp.sent_gbps, 1.0);
        let old = r#"{"end":{"sum":{"lost_percent":50,"bits_per_second":5e8}}}"#;
        assert_eq!(
            parse_iperf3_udp(old).unwrap(),
            Udp {
                loss: 0.5,
                gbps: 0.5,
                sent_gbps: 0.5
            }
        );
    }

    #[test]
    fn parses_ping_replies() {
        let text = "PING 10.0.0.2 (10.0.0.2) 56(84) bytes of data.\n\
            64 bytes from 10.0.0.2: icmp_seq=1 ttl=63 time=0.101 ms\n\
            64 bytes from 10.0.0.2: icmp_seq=2 ttl=63 time=0.058 ms\n\n\
            --- 10.0.0.2 ping statistics ---\n\
            rtt min/avg/max/mdev = 0.058/0.079/0.101/0.021 ms\n";
        assert_eq!(parse_ping_rtts(text), [0.101, 0.058]);
    }

    #[test]
    fn parses_wrk_latency_output() {
        let text = "Running 2s test @ http://127.0.0.1:18931/
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.16ms    2.85ms  19.86ms   82.01%
    Req/Sec     1.02k   286.57     1.31k    70.00%
  Latency Distribution
     50%  812.00us
     75%    5.05ms
     90%    7.89ms
     99%   1.30s
  2037 requests in 2.01s, 6.00MB read
  Socket errors: connect 2, read 3, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:   1014.03
Transfer/sec:      2.99MB
";
        let wrk = parse_wrk(text).unwrap();
        assert_eq!(wrk.requests_per_s, 1014.03);
        assert!((wrk.p50_ms - 0.812).abs() < 1e-9);
        assert_eq!(wrk.p99_ms, 1300.0);
        assert_eq!(wrk.errors, 10);
        assert!(parse_wrk("Running 2s test\nRequests/sec: 5\n").is_err());
    }

    #[test]
    fn reads_cpu_ticks_and_rss() {
        let stat = "4242 (over) lay d) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    150 25 0 0 20 0 9 0 1234 5000000 800 rest";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(
            parse_vmrss_kib("Name:\toverlayd\nVmRSS:\t   12345 kB\n"),
            Some(12345)
        );
        // This process exists and has used some CPU and memory.
        assert!(cpu_seconds(std::process::id()).is_some());
        assert!(rss_kib(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
