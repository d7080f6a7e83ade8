//! Real traffic for sections 2 and 7: a veth pair between this network
//! namespace and one of its own, a cgroup for each end, iperf3, and the
//! benchmark's own sink (`cgacct-bench --sink`, [`sink`]).
use std::{
    io::{BufRead as _, BufReader},
    net::{SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, ChildStdout, Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::{
    report::{Report, Verdict},
    world::{check_interrupted, run, sh, World},
};

/// A veth pair `<prefix><tag>a` (here) / `<prefix><tag>b` (in the netns
/// `<prefix>-<tag>`), a /30 between them, and the cgroups `<tag>/client`
/// and `<tag>/server` below the benchmark's directory. Removed on drop.
pub struct Pair<'w> {
    w: &'w World,
    pub tag: String,
    pub ns: String,
    pub host: String,
    pub host_ip: String,
    pub peer_ip: String,
    /// The cgroups' parent, as a path below the cgroup2 mount.
    pub cgroup: String,
}

impl<'w> Pair<'w> {
    /// `net` picks the second octet of the pair's 10.x.y.0/30, so that two
    /// sections' pairs never share addresses.
    pub fn new(w: &'w World, tag: &str, net: u8) -> Result<Pair<'w>> {
        let third = 1 + std::process::id() % 250;
        let pair = Pair {
            w,
            tag: tag.to_string(),
            ns: format!("{}-{tag}", w.prefix),
            host: format!("{}{tag}a", w.prefix),
            host_ip: format!("10.{net}.{third}.1"),
            peer_ip: format!("10.{net}.{third}.2"),
            cgroup: w.cgroup_rel(tag),
        };
        let (ns, host, peer) = (&pair.ns, &pair.host, format!("{}{tag}b", w.prefix));
        let (host_ip, peer_ip) = (&pair.host_ip, &pair.peer_ip);
        sh(&format!(
            "ip netns add {ns}
             ip link add {host} type veth peer name {peer} netns {ns}
             ip addr add {host_ip}/30 dev {host}
             ip link set {host} up
             ip -n {ns} addr add {peer_ip}/30 dev {peer}
             ip -n {ns} link set {peer} up
             ip -n {ns} link set lo up"
        ))?;
        w.add_cgroups(tag, 0)?;
        for c in ["client", "server"] {
            std::fs::create_dir(w.cgroup_mount.join(&pair.cgroup).join(c))?;
        }
        Ok(pair)
    }

    /// The cgroups' parent directory.
    pub fn cgroup_dir(&self) -> PathBuf {
        self.w.cgroup_mount.join(&self.cgroup)
    }

    /// `cgroup.procs` of `client` or `server`.
    pub fn procs(&self, which: &str) -> PathBuf {
        self.cgroup_dir().join(which).join("cgroup.procs")
    }

    /// A layout putting every cgacct program on the pair: both TC programs
    /// on the host side, both cgroup_skb programs at the cgroups' parent,
    /// stats files on both cgroups.
    pub fn layout(&self, root: &std::path::Path) -> Result<PathBuf> {
        let (host, cg) = (&self.host, &self.cgroup);
        self.w.layout(
            &self.tag,
            &format!(
                "root = {root:?}\n[tc]\ninterfaces = [{host:?}]\n[cgroup_skb]\nattach = [\"/{cg}\"]\n\
                 [stats]\ncgroups = [\"/{cg}/**\"]\n"
            ),
        )
    }

    /// A counter of the netns's `/proc/net/snmp` (`Udp`, `RcvbufErrors`).
    pub fn snmp(&self, group: &str, key: &str) -> Result<u64> {
        let text = run(Command::new("ip").args(["netns", "exec", &self.ns, "cat", "/proc/net/snmp"]))?;
        snmp_value(&text, group, key)
    }
}

impl Drop for Pair<'_> {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.ns]));
        let _ = self.w.remove_cgroups(&self.tag);
    }
}

/// One counter of a `/proc/net/snmp` text: a header line and a value line
/// per group.
fn snmp_value(text: &str, group: &str, key: &str) -> Result<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no {group} lines in /proc/net/snmp");
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == key)
        .and_then(|(_, v)| v.parse().ok())
        .ok_or_else(|| anyhow!("no {group} {key} in /proc/net/snmp"))
}

/// A process started in a cgroup of the pair's netns; killed (by its pid)
/// when dropped.
pub struct Server {
    child: Child,
    _stdout: Option<BufReader<ChildStdout>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Pair<'_> {
    /// `iperf3 -s` on the peer address, in `server`.
    pub fn iperf_server(&self, port: u32) -> Result<Server> {
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}; exec ip netns exec {} iperf3 -s -B {} -p {port}",
                self.procs("server").display(),
                self.ns,
                self.peer_ip
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the iperf3 server")?;
        Ok(Server { child, _stdout: None })
    }

    /// This binary's `--sink` on the peer address, in `server`; returns
    /// once it listens.
    pub fn sink(&self, port: u32) -> Result<Server> {
        let me = std::env::current_exe().context("locating this binary")?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}; exec ip netns exec {} {} --sink {}:{port}",
                self.procs("server").display(),
                self.ns,
                me.display(),
                self.peer_ip
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the sink")?;
        let mut out = BufReader::new(child.stdout.take().context("the sink's stdout")?);
        let mut line = String::new();
        let mut server = Server { child, _stdout: None };
        out.read_line(&mut line).context("waiting for the sink")?;
        if line.trim() != "ready" {
            bail!("the sink did not start (said {line:?})");
        }
        server._stdout = Some(out);
        Ok(server)
    }

    /// One `iperf3 -c ... -J` run from `client` (`extra`: `-R`, `-u -b 0
    /// -l 64`); its JSON. Retries while the server is still starting.
    pub fn iperf_client(&self, port: u32, seconds: u32, extra: &str) -> Result<serde_json::Value> {
        let mut last = String::new();
        for _ in 0..50 {
            check_interrupted()?;
            let out = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {}; exec iperf3 -c {} -p {port} -t {seconds} -J {extra}",
                    self.procs("client").display(),
                    self.peer_ip
                ))
                .output()
                .context("running the iperf3 client")?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            if v["end"].is_object() && v["error"].is_null() {
                return Ok(v);
            }
            last = v["error"].as_str().unwrap_or("no JSON output").to_string();
            thread::sleep(Duration::from_millis(100));
        }
        bail!("iperf3 client failed: {last}")
    }
}

/// `setsockopt(SOL_SOCKET, name, value)` on an open socket.
pub fn setsockopt<T>(socket: &impl AsRawFd, name: libc::c_int, value: &T) -> std::io::Result<()> {
    // SAFETY: an open socket, and a value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    match rc {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// False, with a row saying so, when iperf3 is not installed.
pub fn iperf3_present(report: &mut Report, section: &'static str, what: &str) -> bool {
    if Command::new("iperf3").arg("--version").output().is_ok() {
        return true;
    }
    report.note(
        section,
        what,
        "iperf3 not installed (scripts/bench.sh installs it): not measured",
        Verdict::NotAvailable,
    );
    false
}

/// `cgacct-bench --sink ADDR`: a UDP socket on ADDR with the smallest
/// receive buffer, never read (every datagram past the first few is
/// dropped: `SKB_DROP_REASON_SOCKET_RCVBUFF`, Udp RcvbufErrors), and a TCP
/// listener on ADDR that accepts and closes. Says `ready` on stdout once
/// both are bound; runs until killed.
pub fn sink(addr: SocketAddr) -> Result<()> {
    let udp = UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
    setsockopt(&udp, libc::SO_RCVBUF, &(1 as libc::c_int)).context("setsockopt SO_RCVBUF")?;
    let tcp = TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
    // A longer accept queue than std's 128: a burst of connections waits
    // instead of losing its SYNs (and the client a second to their
    // retransmission).
    // SAFETY: listen on a bound, listening socket (it sets the backlog anew).
    if unsafe { libc::listen(tcp.as_raw_fd(), 4096) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listen");
    }
    println!("ready");
    loop {
        // Each connection is closed at once.
        let _ = tcp.accept();
    }
}
