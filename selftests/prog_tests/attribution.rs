//! Inbound attribution: traffic into a container through its host-side
//! veth counts for the cgroup behind the veth (`veth_*` keys), whether the
//! owner is declared in the layout or discovered from the processes in the
//! veth peer's namespace; no counter counts a frame twice.
use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
};

use cgacct_pin::{bpffs::names::Pins, report::read};

use crate::{
    export::Reaped,
    require_kernel,
    world::{sh, World},
};

/// No ARP, no IPv6 chatter on our veth pair: only the test's frames cross it.
pub fn quiet_link(w: &World) {
    let peer_if = format!("{}p", w.prefix);
    let mac = |ns: Option<&str>, dev: &str| -> String {
        let cmd = match ns {
            Some(ns) => format!("ip netns exec {ns} cat /sys/class/net/{dev}/address"),
            None => format!("cat /sys/class/net/{dev}/address"),
        };
        String::from_utf8_lossy(&sh(&cmd).stdout).trim().to_string()
    };
    let host_mac = mac(None, &w.host_if);
    let peer_mac = mac(Some(&w.netns), &peer_if);
    let peer_ip = w.ipv4_peer();
    let host_ip = w.ipv4_host();
    sh(&format!(
        "sysctl -qw net.ipv6.conf.{h}.disable_ipv6=1
         ip netns exec {ns} sysctl -qw net.ipv6.conf.{p}.disable_ipv6=1
         ip neigh replace {peer_ip} lladdr {peer_mac} dev {h} nud permanent
         ip -n {ns} neigh replace {host_ip} lladdr {host_mac} dev {p} nud permanent",
        h = w.host_if,
        p = peer_if,
        ns = w.netns,
    ));
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, key: &str) -> u64 {
    after[key] - before[key]
}

fn iface_counters(w: &World) -> cgacct_common::Counters {
    let ifindex: u32 = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", w.host_if))
        .expect("ifindex")
        .trim()
        .parse()
        .expect("number");
    let snap = read::snapshot(&Pins::new(&w.root, true)).expect("snapshot");
    snap.interfaces.get(&ifindex).copied().unwrap_or_default()
}

fn set_tc_keys(w: &World, keys: &str) {
    let text = std::fs::read_to_string(&w.layout).expect("layout");
    std::fs::write(&w.layout, text.replace("[tc]\n", &format!("[tc]\n{keys}\n"))).expect("layout");
}

fn ping(w: &World, count: u32) {
    sh(&format!("ping -q -n -c {count} -i 0.2 -W 2 {}", w.ipv4_peer()));
}

const N: u64 = 29;
const P: u64 = 400;

#[test]
fn discovered_owner_counts_inbound_traffic_once() {
    require_kernel!();
    let w = World::new(&["ctr.scope", "sender.scope"]);
    quiet_link(&w);
    w.write_layout();
    set_tc_keys(&w, "discover_owners = true");

    // The container: a receiver living in the netns, in cgroup ctr.scope.
    let port = 41000 + w.n;
    let addr = w.ipv4_peer();
    let receiver = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('{addr}',{port}))\ns.settimeout(300)\nprint('ready',flush=True)\nn=0\n\
         while n<{N}:\n    s.recv(65536); n+=1\nprint(n)\n"
    );
    let procs = w.cgroup_mount.join(w.cgroup("ctr.scope")).join("cgroup.procs");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}; exec ip netns exec {} python3 -c \"{receiver}\"",
            procs.display(),
            w.netns
        ))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn receiver");
    let stdout = child.stdout.take().expect("stdout");
    let mut rx = Reaped(child);
    let mut out = BufReader::new(stdout);
    let mut line = String::new();
    out.read_line(&mut line).expect("receiver ready");
    assert_eq!(line.trim(), "ready");

    let applied = w.apply();
    let ctr = format!("/{}", w.cgroup("ctr.scope"));
    assert!(
        applied.contains(&format!("owner of {} is {ctr} (discovered)", w.host_if)),
        "{applied}"
    );

    let (c0, s0, i0) = (w.stat("ctr.scope"), w.stat("sender.scope"), iface_counters(&w));
    // The sender: a host process (root netns) in sender.scope.
    let sender_procs = w.cgroup_mount.join(w.cgroup("sender.scope")).join("cgroup.procs");
    sh(&format!(
        "echo $$ > {}; exec python3 -c \"import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range({N}):\n    s.sendto(b'x'*{P},('{addr}',{port}))\n    time.sleep(0.001)\n\"",
        sender_procs.display()
    ));
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("receiver output");
    assert!(rx.0.wait().expect("receiver").success());
    assert_eq!(rest.trim(), N.to_string());

    let (c1, s1, i1) = (w.stat("ctr.scope"), w.stat("sender.scope"), iface_counters(&w));
    let bytes = N * (P + 28);
    // Into the container through its veth: its veth_rx, once.
    assert_eq!(diff(&c1, &c0, "self_veth_rx_packets"), N, "{c1:?}");
    assert_eq!(diff(&c1, &c0, "self_veth_rx_bytes"), bytes);
    assert_eq!(diff(&c1, &c0, "self_veth_tx_packets"), 0);
    // Its socket received them too: the socket counters, a different key.
    assert_eq!(diff(&c1, &c0, "self_rx_packets"), N);
    assert_eq!(diff(&c1, &c0, "self_rx_bytes"), bytes);
    // The sender's side: its socket sent them, they left the host veth with it.
    assert_eq!(diff(&s1, &s0, "self_tx_packets"), N);
    assert_eq!(diff(&s1, &s0, "self_tc_egress_packets"), N);
    assert_eq!(diff(&s1, &s0, "self_veth_rx_packets"), 0);
    // The interface saw each frame once, and so did the owner's counter.
    assert_eq!(i1.tx_packets - i0.tx_packets, N);
    assert_eq!(i1.tx_bytes - i0.tx_bytes, bytes);
    // Subtree: the parent's veth keys are the sum of its children.
    let top = w.stat("");
    assert_eq!(
        top["veth_rx_packets"],
        c1["self_veth_rx_packets"] + s1["self_veth_rx_packets"]
    );

    // Traffic made by the container's kernel (echo replies) has no socket of
    // the container: it counts as the owner's veth_tx all the same.
    let c2 = w.stat("ctr.scope");
    ping(&w, 3);
    let c3 = w.stat("ctr.scope");
    assert_eq!(diff(&c3, &c2, "self_veth_rx_packets"), 3, "{c3:?}");
    assert_eq!(diff(&c3, &c2, "self_veth_tx_packets"), 3);
    assert_eq!(diff(&c3, &c2, "self_veth_tx_bytes"), 3 * 84);
    assert_eq!(
        diff(&c3, &c2, "self_tx_packets"),
        0,
        "no socket of the container sent"
    );
}

#[test]
fn declared_owner_attributes_socketless_traffic() {
    require_kernel!();
    let w = World::new(&["ctr.scope"]);
    quiet_link(&w);
    w.write_layout();
    set_tc_keys(
        &w,
        &format!("owners = {{ {:?} = \"/{}\" }}", w.host_if, w.cgroup("ctr.scope")),
    );
    let applied = w.apply();
    assert!(applied.contains("(declared)"), "{applied}");
    let owners = cgacct_pin::apply::owners::read(&Pins::new(&w.root, true)).expect("owners");
    assert_eq!(
        owners.values().copied().collect::<Vec<_>>(),
        [w.cgroup_id("ctr.scope")]
    );
    let c0 = w.stat("ctr.scope");
    ping(&w, 4);
    let c1 = w.stat("ctr.scope");
    assert_eq!(diff(&c1, &c0, "self_veth_rx_packets"), 4, "{c1:?}");
    assert_eq!(diff(&c1, &c0, "self_veth_rx_bytes"), 4 * 84);
    assert_eq!(diff(&c1, &c0, "self_veth_tx_packets"), 4);
    // A second apply keeps the owner and prints nothing about it.
    let again = w.apply();
    assert!(!again.contains("owner"), "{again}");
}

/// The TC programs cache each interface's owner per CPU: every change of
/// owner must reach the next frame. No owner, then a, then b, then none
/// again, each applied while the interface carries traffic.
#[test]
fn an_owner_change_reaches_the_next_frame() {
    require_kernel!();
    let w = World::new(&["a.scope", "b.scope"]);
    quiet_link(&w);
    w.write_layout();
    let plain = std::fs::read_to_string(&w.layout).expect("layout");
    let with_owner = |cgroup: Option<&str>| {
        let keys = match cgroup {
            Some(c) => format!("owners = {{ {:?} = \"/{}\" }}", w.host_if, w.cgroup(c)),
            None => String::new(),
        };
        std::fs::write(&w.layout, plain.replace("[tc]\n", &format!("[tc]\n{keys}\n"))).expect("layout");
        w.apply()
    };
    let veth_rx = |c: &str| w.stat(c)["self_veth_rx_packets"];
    let counts = || {
        (
            veth_rx("a.scope"),
            veth_rx("b.scope"),
            iface_counters(&w).tx_packets,
        )
    };

    with_owner(None);
    let c0 = counts();
    ping(&w, 3);
    let c1 = counts();
    assert_eq!((c1.0 - c0.0, c1.1 - c0.1, c1.2 - c0.2), (0, 0, 3), "no owner yet");

    let applied = with_owner(Some("a.scope"));
    assert!(applied.contains("(declared)"), "{applied}");
    ping(&w, 4);
    let c2 = counts();
    assert_eq!((c2.0 - c1.0, c2.1 - c1.1, c2.2 - c1.2), (4, 0, 4), "owner a");

    with_owner(Some("b.scope"));
    ping(&w, 5);
    let c3 = counts();
    assert_eq!(
        (c3.0 - c2.0, c3.1 - c2.1, c3.2 - c2.2),
        (0, 5, 5),
        "owner moved to b"
    );

    let applied = with_owner(None);
    assert!(applied.contains("removed"), "{applied}");
    ping(&w, 2);
    let c4 = counts();
    assert_eq!(
        (c4.0 - c3.0, c4.1 - c3.1, c4.2 - c3.2),
        (0, 0, 2),
        "owner removed"
    );
}
