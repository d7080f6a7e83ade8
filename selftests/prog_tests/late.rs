//! Traffic of sockets that outlive their cgroup: a socket keeps the cgroup
//! it was made in after its process moved away and the cgroup was removed.
//! What it sends and receives after the removal counts in the subtree keys
//! of the nearest live ancestor and in the removed cgroup's record
//! (`late`), never in an entry under the removed cgroup's id; once the
//! socket is gone and the kernel has released the cgroup, nothing under
//! that id is left in the counter maps.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
};

use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    export::Reaped,
    require_kernel,
    world::{eventually, World},
};

/// A process placed in a cgroup that runs a Python script taking one
/// command per line on stdin and answering each with one line.
struct Driven {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    _child: Reaped,
}

impl Driven {
    fn start(w: &World, rel: &str, script: &str) -> Driven {
        let procs = w.cgroup_mount.join(w.cgroup(rel)).join("cgroup.procs");
        let mut child: Child = Command::new("sh")
            .arg("-euc")
            .arg(format!("echo $$ > {}; exec python3 -c \"$0\"", procs.display()))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn sender");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        Driven {
            stdin,
            stdout,
            _child: Reaped(child),
        }
    }

    /// Sends one command; returns the answer line.
    fn ask(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}").expect("write command");
        self.stdin.flush().expect("flush command");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read answer");
        assert!(!line.is_empty(), "the script exited at {cmd:?}");
        line.trim().to_string()
    }
}

/// The command loop every driven script ends with: `move PATH` writes the
/// process's pid into PATH (a cgroup.procs), other commands are `do_CMD`.
const LOOP: &str = "
import os,sys
for line in sys.stdin:
    c=line.split()
    if c[0]=='move':
        open(c[1],'w').write(str(os.getpid())); print('ok',flush=True)
    else:
        print(globals()['do_'+c[0]](*c[1:]),flush=True)
";

/// Parsed `removed --json` record of the cgroup at `path`.
fn record(w: &World, path: &str) -> serde_json::Value {
    let out = w.cgacct(&["removed", "--json", "--root", w.root.to_str().expect("utf-8")]);
    let recs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("removed --json");
    recs.into_iter()
        .find(|r| r["cgroup"] == path)
        .unwrap_or_else(|| panic!("no record of {path}"))
}

/// Keys under `id` in the counter maps, by map.
fn entries_under(w: &World, id: u64) -> Vec<&'static str> {
    let snap = read::snapshot(&Pins::new(&w.root, true)).expect("snapshot");
    let mut out = Vec::new();
    for (name, present) in [
        ("cgroup_stats", snap.cgroups.contains_key(&id)),
        ("tc_cgroup_stats", snap.tc_cgroups.contains_key(&id)),
        ("veth_stats", snap.veth.contains_key(&id)),
    ] {
        if present {
            out.push(name);
        }
    }
    out
}

fn delta(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>, key: &str) -> u64 {
    a[key] - b[key]
}

const N1: u64 = 11;
const N2: u64 = 17;
const N3: u64 = 5;
const P: u64 = 300;
/// Bytes of one of those datagrams over IPv4.
const B: u64 = P + 28;

/// A UDP socket made by a process in one of the world's cgroups, sending
/// to a receiver in the world's netns that takes `total` datagrams.
struct Udp {
    sender: Driven,
    rx_out: BufReader<ChildStdout>,
    _rx: Reaped,
    total: u64,
}

impl Udp {
    fn start(w: &World, rel: &str, total: u64) -> Udp {
        let (addr, port) = (w.ipv4_peer(), 42000 + w.n);
        let receiver = format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{addr}',{port}))\n\
             s.settimeout(300)\nprint('ready',flush=True)\nn=0\ntry:\n    while n<{total}:\n        s.recv(65536); n+=1\n\
             except socket.timeout:\n    pass\nprint(n,flush=True)\n"
        );
        let mut rx = Command::new("ip")
            .args(["netns", "exec", &w.netns, "python3", "-c", &receiver])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn receiver");
        let mut rx_out = BufReader::new(rx.stdout.take().expect("receiver stdout"));
        let rx = Reaped(rx);
        let mut line = String::new();
        rx_out.read_line(&mut line).expect("receiver ready");
        let script = format!(
            "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             def do_send(n):\n    for i in range(int(n)):\n        s.sendto(b'x'*{P},('{addr}',{port})); time.sleep(0.001)\n    \
             return 'sent'\ndef do_close():\n    s.close(); return 'closed'\n{LOOP}"
        );
        Udp {
            sender: Driven::start(w, rel, &script),
            rx_out,
            _rx: rx,
            total,
        }
    }

    fn send(&mut self, n: u64) {
        assert_eq!(self.sender.ask(&format!("send {n}")), "sent");
    }

    /// The process moves to the cgroup2 root: its socket stays where it was made.
    fn move_out(&mut self, w: &World) {
        let out_of_tree = w.cgroup_mount.join("cgroup.procs");
        assert_eq!(self.sender.ask(&format!("move {}", out_of_tree.display())), "ok");
    }

    /// Closes the socket, ends the sender and checks the receiver got all.
    fn close(mut self) {
        assert_eq!(self.sender.ask("close"), "closed");
        drop(self.sender);
        let mut line = String::new();
        self.rx_out.read_line(&mut line).expect("receiver count");
        assert_eq!(line.trim(), self.total.to_string());
    }
}

fn rmdir(w: &World, rel: &str) {
    std::fs::remove_dir(w.cgroup_mount.join(w.cgroup(rel))).unwrap_or_else(|e| panic!("rmdir {rel}: {e}"));
}

/// After the sockets closed: apply unpins the removed cgroups' stats
/// files, which hold them too (watch does so at once); then the kernel
/// releases them.
fn released(w: &World, paths: &[&str]) {
    w.apply();
    for path in paths {
        eventually(&format!("{path} released"), || record(w, path)["dying"] == false);
    }
}

#[test]
fn udp_after_removal_counts_in_the_parent() {
    require_kernel!();
    let w = World::new(&["jobs.slice", "jobs.slice/late.scope"]);
    w.write_layout();
    w.apply();
    let dead = w.cgroup_id("jobs.slice/late.scope");
    let path = format!("/{}", w.cgroup("jobs.slice/late.scope"));

    let mut udp = Udp::start(&w, "jobs.slice/late.scope", N1 + N2);
    udp.send(N1);
    let before = w.stat("jobs.slice");
    assert_eq!(w.stat("jobs.slice/late.scope")["self_tx_packets"], N1);

    // The process leaves; its socket stays in late.scope, which goes.
    udp.move_out(&w);
    rmdir(&w, "jobs.slice/late.scope");
    let removed = w.stat("jobs.slice");
    assert_eq!(removed["tx_packets"], before["tx_packets"], "{removed:?}");
    assert_eq!(removed["removed_cgroups"], 1);

    udp.send(N2);
    let late = w.stat("jobs.slice");
    let got = delta(&late, &removed, "tx_packets");
    eprintln!(
        "after removal: {N2} datagrams sent, jobs.slice tx_packets +{got}; entries under the removed id: {:?}",
        entries_under(&w, dead)
    );
    for (key, want) in [
        ("tx_packets", N2),
        ("tx_bytes", N2 * B),
        ("tc_egress_packets", N2),
        ("tc_egress_bytes", N2 * B),
    ] {
        assert_eq!(delta(&late, &removed, key), want, "{key}: {late:?}");
    }
    assert_eq!(late["self_tx_packets"], before["self_tx_packets"]);
    assert_eq!(late["removed_cgroups"], 1);
    assert_eq!(entries_under(&w, dead), Vec::<&str>::new());
    let rec = record(&w, &path);
    assert_eq!(rec["own"]["socket"]["tx_packets"], N1);
    assert_eq!(rec["late"]["socket"]["tx_packets"], N2);
    assert_eq!(rec["late"]["socket"]["tx_bytes"], N2 * B);
    assert_eq!(rec["late"]["tc"]["tx_packets"], N2);
    assert_eq!(rec["dying"], true, "{rec}");

    // The socket closes: the kernel releases the cgroup.
    udp.close();
    released(&w, &[&path]);
    let rec = record(&w, &path);
    assert_eq!(rec["late"]["socket"]["tx_packets"], N2, "{rec}");
    assert_eq!(entries_under(&w, dead), Vec::<&str>::new());
    let end = w.stat("jobs.slice");
    assert_eq!(end["tx_packets"], before["tx_packets"] + N2);
    assert_eq!(end["tx_bytes"], before["tx_bytes"] + N2 * B);
}

/// The socket's cgroup goes, then its parent: late traffic reaches the
/// nearest cgroup still there, before and after the parent's removal.
#[test]
fn late_traffic_passes_removed_ancestors() {
    require_kernel!();
    let w = World::new(&["jobs.slice", "jobs.slice/a.scope", "jobs.slice/a.scope/b.scope"]);
    w.write_layout();
    w.apply();
    let ids = [
        w.cgroup_id("jobs.slice/a.scope"),
        w.cgroup_id("jobs.slice/a.scope/b.scope"),
    ];
    let paths = [
        format!("/{}", w.cgroup("jobs.slice/a.scope")),
        format!("/{}", w.cgroup("jobs.slice/a.scope/b.scope")),
    ];
    let mut udp = Udp::start(&w, "jobs.slice/a.scope/b.scope", N1 + N2 + N3);
    udp.send(N1);
    udp.move_out(&w);
    rmdir(&w, "jobs.slice/a.scope/b.scope");
    // a.scope is live: it takes the late traffic.
    udp.send(N2);
    let a = w.stat("jobs.slice/a.scope");
    assert_eq!((a["tx_packets"], a["self_tx_packets"]), (N1 + N2, 0), "{a:?}");
    assert_eq!(w.stat("jobs.slice")["tx_packets"], N1 + N2);
    // a.scope goes: what it held folds into jobs.slice, which then takes
    // the late traffic directly.
    rmdir(&w, "jobs.slice/a.scope");
    assert_eq!(w.stat("jobs.slice")["tx_packets"], N1 + N2);
    udp.send(N3);
    let j = w.stat("jobs.slice");
    for (key, want) in [
        ("tx_packets", N1 + N2 + N3),
        ("tx_bytes", (N1 + N2 + N3) * B),
        ("tc_egress_packets", N1 + N2 + N3),
        ("removed_cgroups", 2),
    ] {
        assert_eq!(j[key], want, "{key}: {j:?}");
    }
    let (ra, rb) = (record(&w, &paths[0]), record(&w, &paths[1]));
    assert_eq!(rb["late"]["socket"]["tx_packets"], N2 + N3, "{rb}");
    assert_eq!(ra["late"]["socket"]["tx_packets"], 0, "{ra}");
    assert_eq!(ra["subtree"]["socket"]["tx_packets"], N1 + N2, "{ra}");
    for id in ids {
        assert_eq!(entries_under(&w, id), Vec::<&str>::new());
    }
    udp.close();
    released(&w, &[&paths[1], &paths[0]]);
    assert_eq!(w.stat("jobs.slice")["tx_packets"], N1 + N2 + N3);
    for id in ids {
        assert_eq!(entries_under(&w, id), Vec::<&str>::new());
    }
}

/// A cgroup removed before cgacct was applied: nothing knew it was gone,
/// so its late traffic sits under its id, and is folded into its parent
/// when the kernel releases it.
#[test]
fn removed_before_apply_is_folded_at_release() {
    require_kernel!();
    let w = World::new(&["jobs.slice", "jobs.slice/early.scope"]);
    w.write_layout();
    let dead = w.cgroup_id("jobs.slice/early.scope");
    let mut udp = Udp::start(&w, "jobs.slice/early.scope", N2);
    udp.move_out(&w);
    rmdir(&w, "jobs.slice/early.scope");
    w.apply();
    udp.send(N2);
    assert_eq!(entries_under(&w, dead), ["cgroup_stats", "tc_cgroup_stats"]);
    assert_eq!(w.stat("jobs.slice")["tx_packets"], 0);
    udp.close();
    eventually("the entries under the removed id folded", || {
        entries_under(&w, dead).is_empty()
    });
    let j = w.stat("jobs.slice");
    for (key, want) in [
        ("tx_packets", N2),
        ("tx_bytes", N2 * B),
        ("tc_egress_packets", N2),
        ("removed_cgroups", 0),
    ] {
        assert_eq!(j[key], want, "{key}: {j:?}");
    }
}

/// Python: TCP_INFO of socket `s` as "segs_out segs_in bytes_sent
/// bytes_received" (segments as the kernel counts them for the socket,
/// GSO segments each).
const TCP_INFO: &str = "
import socket,struct
def info(s):
    b=s.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,232)
    so,si=struct.unpack_from('II',b,136)
    rcvd,=struct.unpack_from('Q',b,128)
    sent,=struct.unpack_from('Q',b,200)
    return '%d %d %d %d'%(so,si,sent,rcvd)
";

/// Parses an answer of `info`.
fn tcp_info(answer: &str) -> [u64; 4] {
    let v: Vec<u64> = answer
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    v.try_into().expect("four numbers")
}

/// IPv4 and TCP headers of a segment with timestamps and no SACK blocks:
/// every segment after the handshake, once the server's netns refuses
/// SACK (a DSACK after a spurious retransmission would add 12 bytes).
const SEG_HEADERS: u64 = 52;
/// A SYN's headers are longer: MSS and window scale too (SACK-permitted,
/// where offered, takes two bytes that are padding otherwise).
const SYN_EXTRA: u64 = 8;

#[test]
fn tcp_connection_outliving_its_cgroup() {
    require_kernel!();
    let w = World::new(&["jobs.slice", "jobs.slice/conn.scope"]);
    w.write_layout();
    w.apply();
    let dead = w.cgroup_id("jobs.slice/conn.scope");
    let path = format!("/{}", w.cgroup("jobs.slice/conn.scope"));
    let (addr, port) = (w.ipv4_peer(), 43000 + w.n);
    // The server's SYN-ACK then leaves SACK out: neither end sends SACK
    // options, and each segment's headers are SEG_HEADERS long.
    crate::world::sh(&format!(
        "ip netns exec {} sysctl -qw net.ipv4.tcp_sack=0",
        w.netns
    ));
    // Server: answers each 4000-byte message with one byte. At EOF it
    // sends its FIN, waits for the client's last ACK and prints its own
    // TCP_INFO: every segment of the connection, either way.
    let server = format!(
        "{TCP_INFO}import time\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         l.bind(('{addr}',{port}))\nl.listen(1)\nprint('ready',flush=True)\nc,_=l.accept()\nl.close()\n\
         buf=0\nwhile True:\n    d=c.recv(65536)\n    if not d: break\n    buf+=len(d)\n    \
         while buf>=4000:\n        buf-=4000; c.sendall(b'k')\n\
         c.shutdown(socket.SHUT_WR)\ntime.sleep(0.5)\nprint(info(c),flush=True)\nc.close()\n"
    );
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &w.netns, "python3", "-c", &server])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let mut srv_out = BufReader::new(srv.stdout.take().expect("server stdout"));
    let srv = Reaped(srv);
    let mut line = String::new();
    srv_out.read_line(&mut line).expect("server ready");

    // Client: `xfer N` sends N messages, each waiting for its answer, then
    // idles half a second (delayed ACKs settle) and prints TCP_INFO.
    let script = format!(
        "{TCP_INFO}import time\ns=socket.create_connection(('{addr}',{port}))\n\
         def do_xfer(n):\n    for i in range(int(n)):\n        s.sendall(b'x'*4000); s.recv(1)\n    \
         time.sleep(0.5); return info(s)\n\
         def do_close():\n    s.close(); return 'closed'\n{LOOP}"
    );
    let mut client = Driven::start(&w, "jobs.slice/conn.scope", &script);
    let a = tcp_info(&client.ask("xfer 3"));
    let at_a = w.stat("jobs.slice");
    let out_of_tree = w.cgroup_mount.join("cgroup.procs");
    assert_eq!(client.ask(&format!("move {}", out_of_tree.display())), "ok");
    rmdir(&w, "jobs.slice/conn.scope");
    assert_eq!(w.stat("jobs.slice")["tx_packets"], at_a["tx_packets"]);

    let b = tcp_info(&client.ask("xfer 20"));
    let at_b = w.stat("jobs.slice");
    let (segs_out, segs_in) = (b[0] - a[0], b[1] - a[1]);
    eprintln!(
        "after removal: {segs_out} segments out, {segs_in} in (TCP_INFO); jobs.slice tx_packets +{}, \
         rx_packets +{}; entries under the removed id: {:?}",
        delta(&at_b, &at_a, "tx_packets"),
        delta(&at_b, &at_a, "rx_packets"),
        entries_under(&w, dead)
    );
    for (key, want) in [
        ("tx_packets", segs_out),
        ("rx_packets", segs_in),
        ("tx_bytes", b[2] - a[2] + SEG_HEADERS * segs_out),
        ("rx_bytes", b[3] - a[3] + SEG_HEADERS * segs_in),
        ("tc_egress_packets", segs_out),
    ] {
        assert_eq!(delta(&at_b, &at_a, key), want, "{key}: {at_b:?}");
    }
    assert_eq!(entries_under(&w, dead), Vec::<&str>::new());
    let rec = record(&w, &path);
    assert_eq!(rec["late"]["socket"]["tx_packets"], segs_out, "{rec}");
    assert_eq!(rec["late"]["socket"]["rx_packets"], segs_in, "{rec}");

    // Close: FIN and ACKs come from the socket after its cgroup is gone.
    // The server's TCP_INFO has every segment of the connection.
    assert_eq!(client.ask("close"), "closed");
    drop(client);
    line.clear();
    srv_out.read_line(&mut line).expect("server TCP_INFO");
    let [srv_out_segs, srv_in_segs, srv_sent, srv_rcvd] = tcp_info(&line);
    drop(srv);
    released(&w, &[&path]);
    let end = w.stat("jobs.slice");
    let rec = record(&w, &path);
    eprintln!(
        "whole connection: server saw {srv_in_segs} segments in, {srv_out_segs} out; jobs.slice \
         tx_packets {}, rx_packets {}",
        end["tx_packets"], end["rx_packets"]
    );
    // The server's SYN-ACK came from its request socket, before the
    // connection's socket (whose counters these are) existed; the FIN it
    // received takes a sequence number, which bytes_received counts.
    let (srv_out_segs, srv_rcvd) = (srv_out_segs + 1, srv_rcvd - 1);
    let whole = [
        ("tx_packets", srv_in_segs),
        ("rx_packets", srv_out_segs),
        ("tx_bytes", srv_rcvd + SEG_HEADERS * srv_in_segs + SYN_EXTRA),
        ("rx_bytes", srv_sent + SEG_HEADERS * srv_out_segs + SYN_EXTRA),
    ];
    for (key, want) in whole {
        assert_eq!(end[key], want, "{key} of the whole connection: {end:?}");
        let own = rec["own"]["socket"][key].as_u64().expect("own");
        let late = rec["late"]["socket"][key].as_u64().expect("late");
        assert_eq!(own + late, want, "{key}: own {own} + late {late} in {rec}");
    }
    assert_eq!(end["tc_egress_packets"], srv_in_segs);
    assert_eq!(entries_under(&w, dead), Vec::<&str>::new());
}
