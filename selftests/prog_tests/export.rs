//! `cgacct-pin export` scraped by a real Prometheus server (Debian's
//! package, run standalone with its own config and storage on loopback):
//! the values Prometheus stores equal `net.stat` and the traffic sent.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{require_kernel, world::World};

const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A child process killed (by its PID) and reaped on every exit path.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A temporary directory removed on every exit path.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts `cgacct-pin export` on a free loopback port; returns it and its address.
pub fn start_exporter(w: &World) -> (Reaped, String) {
    let mut child = Command::new(crate::world::BIN)
        .args(["export", "--listen", "127.0.0.1:0", "--root"])
        .arg(&w.root)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn cgacct-pin export");
    let stdout = child.stdout.take().expect("exporter stdout");
    let guard = Reaped(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("exporter says where it listens");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected exporter output {line:?}"))
        .to_string();
    (guard, addr)
}

/// A plain HTTP/1.0 GET; returns the body of a 200 response.
pub fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or("no header end")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{head}\n{body}"));
    }
    Ok(body.to_string())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query that returns one series, once it does.
fn prom_value(addr: &str, query: &str) -> Option<u64> {
    let body = http_get(addr, &format!("/api/v1/query?query={}", urlencode(query))).ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let result = v["data"]["result"].as_array()?;
    if result.len() != 1 {
        return None;
    }
    result[0]["value"][1].as_str()?.parse().ok()
}

/// Exporter series value from its own text, by exact label set prefix.
fn exported(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"));
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("value")
}

#[test]
fn prometheus_scrapes_the_exporter() {
    require_kernel!();
    if !std::path::Path::new(PROMETHEUS).exists() {
        if std::env::var("CGACCT_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("{PROMETHEUS} missing: run scripts/setup.sh (installs Debian's prometheus)");
        }
        eprintln!("SKIPPED export: {PROMETHEUS} missing (scripts/setup.sh installs it)");
        return;
    }
    let w = World::new(&["web.slice", "web.slice/a.scope", "web.slice/b.scope"]);
    w.write_layout();
    w.apply();
    w.send_udp("web.slice/a.scope", false, 31, 300);
    w.send_udp("web.slice/b.scope", true, 17, 700);

    let (_exporter, exporter) = start_exporter(&w);
    let text = http_get(&exporter, "/metrics").expect("scrape the exporter");
    let a = format!("/{}", w.cgroup("web.slice/a.scope"));
    let b = format!("/{}", w.cgroup("web.slice/b.scope"));
    let la = format!("cgroup=\"{a}\",name=\"a.scope\",unit=\"a.scope\"");
    let sa = w.stat("web.slice/a.scope");
    let sb = w.stat("web.slice/b.scope");
    assert_eq!(sa["self_tx_bytes"], 31 * (300 + 28));
    assert_eq!(sb["self_tx_bytes"], 17 * (700 + 48));
    for (name, dir, key) in [
        ("cgacct_socket_bytes_total", "tx", "self_tx_bytes"),
        ("cgacct_socket_packets_total", "tx", "self_tx_packets"),
        ("cgacct_socket_bytes_total", "rx", "self_rx_bytes"),
        ("cgacct_tc_bytes_total", "egress", "self_tc_egress_bytes"),
        ("cgacct_tc_packets_total", "egress", "self_tc_egress_packets"),
    ] {
        let v = exported(&text, name, &format!("{la},direction=\"{dir}\""));
        assert_eq!(v, sa[key], "{name} {dir} vs net.stat {key}");
    }

    // A real Prometheus, on its own free loopback port, with its own
    // config and storage, killed by PID on every exit path.
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let prom_addr = format!("127.0.0.1:{port}");
    let dir = TempDir(std::env::temp_dir().join(format!("{}-prometheus", w.prefix)));
    std::fs::create_dir_all(dir.0.join("data")).expect("prometheus dir");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 2s\n  evaluation_interval: 2s\nscrape_configs:\n  \
             - job_name: cgacct\n    static_configs:\n      - targets: ['{exporter}']\n"
        ),
    )
    .expect("prometheus config");
    let log = std::fs::File::create(dir.0.join("log")).expect("prometheus log");
    let _prom = Reaped(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus"),
    );

    let checks = [
        (
            format!("cgacct_socket_bytes_total{{cgroup=\"{a}\",direction=\"tx\"}}"),
            sa["self_tx_bytes"],
        ),
        (
            format!("cgacct_socket_packets_total{{cgroup=\"{a}\",direction=\"tx\"}}"),
            31,
        ),
        (
            format!("cgacct_socket_bytes_total{{cgroup=\"{b}\",direction=\"tx\"}}"),
            sb["self_tx_bytes"],
        ),
        (
            format!("cgacct_tc_packets_total{{cgroup=\"{b}\",direction=\"egress\"}}"),
            sb["self_tc_egress_packets"],
        ),
        // Own counts add up to the parent's subtree total, as net.stat says.
        (
            format!(
                "sum(cgacct_socket_bytes_total{{cgroup=~\"/{}/.*\",direction=\"tx\"}})",
                w.cgroup("web.slice")
            ),
            w.stat("web.slice")["tx_bytes"],
        ),
        ("up{job=\"cgacct\"}".to_string(), 1),
    ];
    // Generous: under an emulated CPU (the kernel matrix) a scrape can take
    // most of its interval.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (query, want) in &checks {
        loop {
            let got = prom_value(&prom_addr, query);
            if got == Some(*want) {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.0.join("log")).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
                panic!("Prometheus query {query} gave {got:?}, want {want}; prometheus log (last lines):\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}
