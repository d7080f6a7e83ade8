//! TCP health and drops: each key against the kernel's own counter of the
//! same name in the world's network namespace, where the test's sockets
//! are the only ones (both ends on its loopback): equal, not close.
//! Segments are lost with an iptables rule inside that namespace.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
};

use crate::{
    require_kernel,
    world::{run, subtest, World},
};

/// `/proc/net/snmp` and `/proc/net/netstat` of the world's netns, as
/// `Tcp:ActiveOpens` -> value.
fn mib(w: &World) -> BTreeMap<String, u64> {
    let out = run(Command::new("ip").args([
        "netns",
        "exec",
        &w.netns,
        "cat",
        "/proc/net/snmp",
        "/proc/net/netstat",
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut heads: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(group) = f.next() else { continue };
        let rest: Vec<String> = f.map(str::to_string).collect();
        match heads.remove(group) {
            None => {
                heads.insert(group.to_string(), rest);
            }
            Some(names) => {
                for (n, v) in names.iter().zip(&rest) {
                    if let Ok(v) = v.parse() {
                        out.insert(format!("{group}{n}"), v);
                    }
                }
            }
        }
    }
    out
}

/// What grew between two MIB snapshots.
fn grew(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>, key: &str) -> u64 {
    let get = |m: &BTreeMap<String, u64>| *m.get(key).unwrap_or_else(|| panic!("no {key} in the MIB"));
    get(after) - get(before)
}

/// A command that runs `python3 -c script` in cgroup `rel`, then the netns.
fn python_in(w: &World, rel: &str, script: &str) -> Command {
    let procs = w.cgroup_mount.join(w.cgroup(rel)).join("cgroup.procs");
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "echo $$ > {}; exec ip netns exec {} python3 -c \"$1\"",
            procs.display(),
            w.netns
        ))
        .arg("sh")
        .arg(script);
    c
}

/// Starts a server script and waits for its "ready" line.
fn serve(w: &World, rel: &str, script: &str) -> Child {
    let mut child = python_in(w, rel, script)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("server ready");
    assert_eq!(line.trim(), "ready", "server did not start");
    child
}

fn finish(child: Child) {
    let out = child.wait_with_output().expect("server");
    assert!(out.status.success(), "server failed: {out:?}");
}

fn port(w: &World) -> u32 {
    41000 + w.n
}

/// A listener that takes `n` connections, reads each until its peer
/// closes, and answers `ok` to each first message.
fn acceptor(p: u32, n: u32) -> String {
    format!(
        "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('127.0.0.1',{p}))\ns.listen(16)\nprint('ready',flush=True)\n\
         for i in range({n}):\n    c,_=s.accept()\n    first=True\n    while True:\n        \
         try:\n            d=c.recv(100)\n        except ConnectionResetError:\n            break\n        \
         if not d:\n            break\n        if first:\n            c.sendall(b'ok'); first=False\n    \
         c.close()\n"
    )
}

fn iptables(rule: &str) -> String {
    format!("subprocess.run('iptables {rule}'.split(),check=True)")
}

fn world() -> World {
    let w = World::new(&["cli", "srv"]);
    w.write_layout();
    w.apply();
    w
}

/// Apply said why a key is absent (here, or in a later apply).
pub fn said_absent(w: &World, key: &str) -> bool {
    absent_keys(w).iter().any(|k| k == key)
}

/// The keys a re-apply says this kernel cannot count.
pub fn absent_keys(w: &World) -> Vec<String> {
    let out = w.try_cgacct(&["apply", w.layout_arg()], &[]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cgacct_common::health::KEYS
        .iter()
        .filter(|k| {
            text.lines()
                .any(|l| l.contains(&format!("{k} and self_{k} are absent")))
        })
        .map(|k| k.to_string())
        .collect()
}

/// Whether this kernel counts `key`; where it does not, asserts that the
/// key is absent from the stats and that apply said why.
fn counted(w: &World, key: &str) -> bool {
    let stat = w.stat("");
    if stat.contains_key(key) {
        return true;
    }
    assert!(!stat.contains_key(&format!("self_{key}")), "{stat:?}");
    assert!(said_absent(w, key), "{key} is absent and apply did not say why");
    eprintln!("{key} is absent on this kernel, as apply said: nothing to compare");
    false
}

#[test]
fn tcp_opens_equal_active_and_passive_opens() {
    require_kernel!();
    let w = world();
    if !counted(&w, "tcp_active_opens") | !counted(&w, "tcp_passive_opens") {
        return;
    }
    // top samples while the connections are made.
    let mut top = Command::new(crate::world::BIN)
        .args(["top", "--once", "--json", "--interval", "6", "--root"])
        .arg(&w.root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn top");
    let mut line = String::new();
    BufReader::new(top.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("top starts sampling");
    assert!(line.starts_with("sampling"), "{line:?}");
    let top = crate::export::Reaped(top);
    let before = mib(&w);
    let p = port(&w);
    let srv = serve(&w, "srv", &acceptor(p, 3));
    let client = format!(
        "import socket\nfor i in range(3):\n    c=socket.create_connection(('127.0.0.1',{p}))\n    \
         c.sendall(b'hi'); c.recv(2); c.close()\n"
    );
    run(&mut python_in(&w, "cli", &client));
    finish(srv);
    let after = mib(&w);
    let (cli, srv, root) = (w.stat("cli"), w.stat("srv"), w.stat(""));
    subtest("active_opens", || {
        assert_eq!(grew(&before, &after, "Tcp:ActiveOpens"), 3);
        assert_eq!(cli["self_tcp_active_opens"], 3);
        assert_eq!(root["tcp_active_opens"], 3);
        assert_eq!(srv["tcp_active_opens"], 0);
    });
    subtest("passive_opens", || {
        assert_eq!(grew(&before, &after, "Tcp:PassiveOpens"), 3);
        assert_eq!(srv["self_tcp_passive_opens"], 3);
        assert_eq!(root["tcp_passive_opens"], 3);
        assert_eq!(root["self_tcp_passive_opens"], 0);
    });
    subtest("top_json", || {
        let mut top = top;
        let mut out = String::new();
        std::io::Read::read_to_string(top.0.stdout.as_mut().expect("stdout"), &mut out).expect("top output");
        let frame: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
        let row = |rel: &str| {
            let id = w.cgroup_id(rel);
            frame["cgroups"]
                .as_array()
                .expect("cgroups")
                .iter()
                .find(|r| r["id"] == id)
                .unwrap_or_else(|| panic!("no row for {rel} in {frame}"))
                .clone()
        };
        assert_eq!(row("cli")["health"]["tcp_active_opens"], 3);
        assert_eq!(row("srv")["health"]["tcp_passive_opens"], 3);
    });
}

/// Data segments lost for 1.6 s: tail loss probes and timeouts resend.
#[test]
fn tcp_retransmits_and_timeouts_equal_the_kernels() {
    require_kernel!();
    let w = world();
    let retrans = counted(&w, "tcp_retrans_segs");
    let p = port(&w);
    let before = mib(&w);
    let srv = serve(&w, "srv", &acceptor(p, 1));
    let drop = format!("INPUT -p tcp --dport {p} -j DROP");
    let client = format!(
        "import socket,subprocess,time\nc=socket.create_connection(('127.0.0.1',{p}))\n{}\n\
         c.sendall(b'abc'); time.sleep(1.6)\n{}\nc.recv(2); c.close()\n",
        iptables(&format!("-A {drop}")),
        iptables(&format!("-D {drop}"))
    );
    run(&mut python_in(&w, "cli", &client));
    finish(srv);
    let after = mib(&w);
    let (cli, root) = (w.stat("cli"), w.stat(""));
    subtest("retrans_segs", || {
        let kernel = grew(&before, &after, "Tcp:RetransSegs");
        assert!(kernel > 0, "the kernel retransmitted nothing");
        if !retrans {
            return;
        }
        assert_eq!(root["tcp_retrans_segs"], kernel);
        assert_eq!(cli["self_tcp_retrans_segs"], kernel);
    });
    subtest("timeouts", || {
        let kernel = grew(&before, &after, "TcpExt:TCPTimeouts");
        assert!(kernel > 0, "no retransmission timeout fired");
        match root.get("tcp_timeouts") {
            Some(v) => {
                eprintln!("tcp_timeouts counted: {v}, the kernel's TCPTimeouts grew by {kernel}");
                assert_eq!(*v, kernel);
                assert_eq!(cli["self_tcp_timeouts"], kernel);
            }
            None => {
                eprintln!("tcp_timeouts absent on this kernel (the kernel's TCPTimeouts grew by {kernel})");
                assert!(!cli.contains_key("self_tcp_timeouts"));
                assert!(
                    said_absent(&w, "tcp_timeouts"),
                    "apply did not say tcp_timeouts is absent"
                );
            }
        }
    });
}

/// SYNs lost (the client resends them), then SYN-ACKs lost (the
/// listener's request resends them, and answers resent SYNs).
#[test]
fn syn_and_synack_retransmits_equal_the_kernels() {
    require_kernel!();
    let w = world();
    if !counted(&w, "tcp_retrans_segs") {
        return;
    }
    let p = port(&w);
    for (name, rule) in [
        ("syn", format!("INPUT -p tcp --dport {p} --syn -j DROP")),
        ("synack", format!("INPUT -p tcp --sport {p} -j DROP")),
    ] {
        subtest(name, || {
            let before = (mib(&w), w.stat(""));
            let srv = serve(&w, "srv", &acceptor(p, 1));
            let client = format!(
                "import socket,subprocess,threading,time\n{}\n\
                 t=threading.Timer(1.5,lambda: {})\nt.start()\n\
                 c=socket.create_connection(('127.0.0.1',{p}),timeout=20)\nt.join()\n\
                 c.sendall(b'hi'); c.recv(2); c.close()\n",
                iptables(&format!("-A {rule}")),
                iptables(&format!("-D {rule}"))
            );
            run(&mut python_in(&w, "cli", &client));
            finish(srv);
            let after = (mib(&w), w.stat(""));
            let kernel = grew(&before.0, &after.0, "Tcp:RetransSegs");
            assert!(kernel > 0, "the kernel retransmitted nothing");
            assert_eq!(after.1["tcp_retrans_segs"] - before.1["tcp_retrans_segs"], kernel);
            if let Some(t) = after.1.get("tcp_timeouts") {
                assert_eq!(
                    t - before.1["tcp_timeouts"],
                    grew(&before.0, &after.0, "TcpExt:TCPTimeouts")
                );
            }
        });
    }
    assert!(
        w.stat("srv")["self_tcp_retrans_segs"] > 0,
        "no SYN-ACK was resent"
    );
}

/// A reset the client's socket sends (close with SO_LINGER 0) counts for
/// the client; the one the kernel sends for a closed port belongs to no
/// socket and counts for no cgroup.
#[test]
fn resets_equal_out_rsts_of_the_cgroups_sockets() {
    require_kernel!();
    let w = world();
    let p = port(&w);
    subtest("linger_zero_close", || {
        let before = mib(&w);
        let srv = serve(&w, "srv", &acceptor(p, 1));
        let client = format!(
            "import socket,struct\nc=socket.create_connection(('127.0.0.1',{p}))\nc.sendall(b'hi'); c.recv(2)\n\
             c.setsockopt(socket.SOL_SOCKET,socket.SO_LINGER,struct.pack('ii',1,0)); c.close()\n"
        );
        run(&mut python_in(&w, "cli", &client));
        finish(srv);
        let kernel = grew(&before, &mib(&w), "Tcp:OutRsts");
        assert_eq!(kernel, 1);
        assert_eq!(w.stat("cli")["self_tcp_out_rsts"], kernel);
        assert_eq!(w.stat("")["tcp_out_rsts"], kernel);
    });
    subtest("closed_port", || {
        let before = (mib(&w), w.stat(""));
        let client = format!(
            "import socket\ntry:\n    socket.create_connection(('127.0.0.1',{}))\nexcept ConnectionRefusedError:\n    \
             print('refused')\n",
            p + 1
        );
        let out = run(&mut python_in(&w, "cli", &client));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "refused");
        let after = (mib(&w), w.stat(""));
        assert_eq!(grew(&before.0, &after.0, "Tcp:OutRsts"), 1);
        assert_eq!(after.1["tcp_out_rsts"], before.1["tcp_out_rsts"]);
    });
}

/// A burst into a receiver with a small receive buffer: each datagram
/// that does not fit is dropped (reason SOCKET_RCVBUFF) and counted in Udp
/// RcvbufErrors.
#[test]
fn udp_receive_buffer_drops_equal_rcvbuf_errors() {
    require_kernel!();
    let w = world();
    let p = port(&w);
    let before = mib(&w);
    let mut rx = python_in(
        &w,
        "srv",
        &format!(
            "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,1024)\ns.bind(('127.0.0.1',{p}))\n\
             print('ready',flush=True)\nsys.stdin.readline()\n"
        ),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn receiver");
    let mut line = String::new();
    BufReader::new(rx.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("receiver ready");
    let sender = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range(100):\n    s.sendto(b'x'*1000,('127.0.0.1',{p}))\n"
    );
    run(&mut python_in(&w, "cli", &sender));
    let after = mib(&w);
    drop(rx.stdin.take());
    finish(rx);
    let kernel = grew(&before, &after, "Udp:RcvbufErrors");
    assert!(kernel > 0, "no datagram overflowed the buffer");
    let srv = w.stat("srv");
    let Some(v) = srv.get("self_drop_packets") else {
        assert!(
            said_absent(&w, "drop_packets"),
            "apply did not say drop_packets is absent"
        );
        return;
    };
    assert_eq!(*v, kernel);
    assert_eq!(w.stat("")["drop_packets"], kernel);
    assert_eq!(w.stat("cli")["drop_packets"], 0);
    subtest("status_json", || {
        let out = w.cgacct(&["status", "--json", "--root", w.root.to_str().expect("utf-8")]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        let h = &v["health"];
        let id = w.cgroup_id("srv");
        let row = h["cgroups"]
            .as_array()
            .expect("health.cgroups")
            .iter()
            .find(|c| c["id"] == id)
            .unwrap_or_else(|| panic!("no health row for srv in {h}"));
        assert_eq!(row["counters"]["drop_packets"], kernel);
        // Host-wide, by reason: at least this test's drops.
        let reason = h["drop_reasons"]["socket_rcvbuff"].as_u64().unwrap_or(0);
        assert!(reason >= kernel, "socket_rcvbuff {reason} < {kernel}: {h}");
    });
    subtest("export", || {
        let (_exporter, addr) = crate::export::start_exporter(&w);
        let text = crate::export::http_get(&addr, "/metrics").expect("scrape");
        let line = |name: &str, labels: &str| -> u64 {
            let prefix = format!("{name}{{{labels}");
            text.lines()
                .find(|l| l.starts_with(&prefix))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
                .unwrap_or_else(|| panic!("no {prefix} in the scrape"))
        };
        let cgroup = format!("cgroup=\"/{}\"", w.cgroup("srv"));
        assert_eq!(line("cgacct_drop_packets_total", &cgroup), kernel);
        assert!(line("cgacct_drops_total", "reason=\"socket_rcvbuff\"") >= kernel);
    });
}

/// The `removed --json` record of the world's cgroup `rel`.
fn removed_record(w: &World, rel: &str) -> serde_json::Value {
    let out = w.cgacct(&["removed", "--json", "--root", w.root.to_str().expect("utf-8")]);
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).expect("removed --json");
    let path = format!("/{}", w.cgroup(rel));
    all.as_array()
        .expect("records")
        .iter()
        .find(|r| r["cgroup"] == path.as_str())
        .unwrap_or_else(|| panic!("no record of {path} in {all}"))
        .clone()
}

/// A removed cgroup's counts stay in its parent's subtree keys, and the
/// events of its socket that lives on count there too, never under the
/// removed id.
#[test]
fn removed_cgroups_fold_into_the_parent() {
    require_kernel!();
    let mut w = world();
    if !counted(&w, "tcp_active_opens") {
        return;
    }
    w.add_cgroup("gone");
    w.add_cgroup("late");
    w.apply();
    let p = port(&w);
    let srv = serve(&w, "srv", &acceptor(p, 3));
    let client = format!(
        "import socket\nfor i in range(2):\n    c=socket.create_connection(('127.0.0.1',{p}))\n    \
         c.sendall(b'hi'); c.recv(2); c.close()\n"
    );
    run(&mut python_in(&w, "gone", &client));
    let gone = w.cgroup_mount.join(w.cgroup("gone"));
    subtest("fold_at_rmdir", || {
        assert_eq!(w.stat("gone")["self_tcp_active_opens"], 2);
        std::fs::remove_dir(&gone).expect("rmdir gone");
        let root = w.stat("");
        assert_eq!(root["tcp_active_opens"], 2);
        assert_eq!(root["self_tcp_active_opens"], 0);
    });
    subtest("removed_record", || {
        let rec = removed_record(&w, "gone");
        assert_eq!(rec["health"]["own"]["tcp_active_opens"], 2, "{rec}");
        assert_eq!(rec["health"]["subtree"]["tcp_active_opens"], 2, "{rec}");
        assert_eq!(rec["health"]["own"]["tcp_passive_opens"], 0, "{rec}");
    });
    subtest("late_socket", || {
        // A socket made in `late`, whose process then leaves; `late` is
        // removed before the socket connects.
        let script = format!(
            "import socket,sys\nc=socket.socket()\nprint('ready',flush=True)\nsys.stdin.readline()\n\
             c.connect(('127.0.0.1',{p})); c.sendall(b'hi'); c.recv(2); c.close()\nprint('done',flush=True)\n"
        );
        let mut late = python_in(&w, "late", &script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn late");
        let mut out = BufReader::new(late.stdout.take().expect("stdout"));
        let mut line = String::new();
        out.read_line(&mut line).expect("ready");
        assert_eq!(line.trim(), "ready");
        let root_procs = w.cgroup_mount.join(w.cgroup("")).join("cgroup.procs");
        let late_dir = w.cgroup_mount.join(w.cgroup("late"));
        for pid in std::fs::read_to_string(late_dir.join("cgroup.procs"))
            .expect("procs")
            .lines()
        {
            std::fs::write(&root_procs, pid).expect("move process");
        }
        std::fs::remove_dir(&late_dir).expect("rmdir late");
        use std::io::Write as _;
        writeln!(late.stdin.as_mut().expect("stdin")).expect("go");
        line.clear();
        out.read_line(&mut line).expect("done");
        assert_eq!(line.trim(), "done");
        let root = w.stat("");
        assert_eq!(root["tcp_active_opens"], 3);
        assert_eq!(root["self_tcp_active_opens"], 0);
        // Its record holds what it counted before its removal: nothing.
        let rec = removed_record(&w, "late");
        assert_eq!(rec["health"]["subtree"]["tcp_active_opens"], 0, "{rec}");
        let _ = late.wait();
    });
    finish(srv);
}

/// `apply --migrate-maps` after a `[maps] cgroups` change keeps the health
/// counts (per-CPU, or shared where the counter maps are) as it keeps the
/// packet counters.
#[test]
fn migrate_maps_keeps_health_counts() {
    require_kernel!();
    let w = world();
    if !counted(&w, "tcp_active_opens") {
        return;
    }
    let p = port(&w);
    let srv = serve(&w, "srv", &acceptor(p, 2));
    let client = format!(
        "import socket\nfor i in range(2):\n    c=socket.create_connection(('127.0.0.1',{p}))\n    \
         c.sendall(b'hi'); c.recv(2); c.close()\n"
    );
    run(&mut python_in(&w, "cli", &client));
    finish(srv);
    assert_eq!(w.stat("cli")["self_tcp_active_opens"], 2);
    let text = std::fs::read_to_string(&w.layout).expect("layout");
    std::fs::write(&w.layout, format!("{text}[maps]\ncgroups = 20000\n")).expect("layout");
    let out = w.try_cgacct(&["apply", "--migrate-maps", w.layout_arg()], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = aya::maps::MapInfo::from_pin(w.root.join("maps/health_stats")).expect("health_stats");
    assert_eq!(info.max_entries(), 20000, "health_stats was not replaced");
    assert_eq!(
        w.stat("cli")["self_tcp_active_opens"],
        2,
        "migrate lost health counts"
    );
    assert_eq!(
        w.stat("srv")["self_tcp_passive_opens"],
        2,
        "migrate lost health counts"
    );
}

/// With more cgroups opening connections than `[maps] cgroups` has room
/// for, every open is counted: in its cgroup, or in the health overflow
/// that `status`, `status --json` and the exporter report. The health
/// programs see every socket of the host, so the overflow also takes
/// the events of other cgroups without an entry (other tests running at
/// the same time): the world's opens are at most what grew there.
#[test]
fn a_full_health_map_counts_what_it_cannot_hold_as_overflow() {
    require_kernel!();
    const SIZE: u32 = 16;
    const CLIENTS: u32 = 24;
    let names: Vec<String> = (0..CLIENTS).map(|i| format!("c{i}")).collect();
    let mut refs: Vec<&str> = names.iter().map(String::as_str).collect();
    refs.push("srv");
    let w = World::new(&refs);
    w.write_layout();
    let text = std::fs::read_to_string(&w.layout).expect("layout");
    let text = text.replace("[tc]\n", &format!("[maps]\ncgroups = {SIZE}\n[tc]\n"));
    std::fs::write(&w.layout, text).expect("layout");
    w.apply();
    if !counted(&w, "tcp_active_opens") {
        return;
    }
    let root_arg = w.root.to_str().expect("utf-8");
    let status = || -> serde_json::Value {
        let out = w.cgacct(&["status", "--json", "--root", root_arg]);
        serde_json::from_slice(&out.stdout).expect("status --json")
    };
    let lost_opens = |v: &serde_json::Value| {
        v["health"]["overflow"]["tcp_active_opens"]
            .as_u64()
            .expect("overflow")
    };
    let lost_before = lost_opens(&status());
    let before = mib(&w);
    let p = port(&w);
    let srv = serve(&w, "srv", &acceptor(p, CLIENTS));
    let client = format!(
        "import socket\nc=socket.create_connection(('127.0.0.1',{p}))\nc.sendall(b'hi'); c.recv(2); c.close()\n"
    );
    for name in &names {
        run(&mut python_in(&w, name, &client));
    }
    finish(srv);
    let opens = grew(&before, &mib(&w), "Tcp:ActiveOpens");
    assert_eq!(opens, u64::from(CLIENTS));
    let counted: u64 = names.iter().map(|n| w.stat(n)["self_tcp_active_opens"]).sum();
    let v = status();
    let over = v["health"]["overflow"].clone();
    let lost = lost_opens(&v) - lost_before;
    eprintln!(
        "{CLIENTS} cgroups opened {opens} connections with room for {SIZE}: {counted} counted in \
         their cgroups, overflow grew by {lost}"
    );
    subtest("every_open_counted", || {
        assert!(counted < opens, "every client had an entry: {counted}");
        assert!(
            counted + lost >= opens,
            "{} opens lost: {over}",
            opens - counted - lost
        );
    });
    subtest("status", || {
        let m = v["maps"]
            .as_array()
            .expect("maps")
            .iter()
            .find(|m| m["name"] == "health_stats")
            .expect("health_stats in maps")
            .clone();
        assert_eq!(m["entries"], SIZE);
        let events: u64 = over
            .as_object()
            .expect("object")
            .values()
            .filter_map(|x| x.as_u64())
            .sum();
        assert_eq!(m["overflow"]["events"], events, "{m}");
        let out = w.cgacct(&["status", "--root", root_arg]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("warning: map health_stats is 100% full")
                && err.contains("TCP health and drop events"),
            "{err}"
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines()
                .any(|l| l.starts_with("overflow health_stats ") && l.contains(" events ")),
            "{text}"
        );
    });
    subtest("export", || {
        let (_exporter, addr) = crate::export::start_exporter(&w);
        let low = lost_opens(&status());
        let text = crate::export::http_get(&addr, "/metrics").expect("scrape");
        let high = lost_opens(&status());
        let served = text
            .lines()
            .find_map(|l| l.strip_prefix("cgacct_health_overflow_total{key=\"tcp_active_opens\"} "))
            .unwrap_or_else(|| panic!("no health overflow in:\n{text}"));
        let served: u64 = served.parse().expect("a number");
        assert!((low..=high).contains(&served), "{served} not in {low}..={high}");
    });
}
