//! Destination classes (`[classes]`): exact packets and bytes per class of
//! the peer address, IPv4 and IPv6, sent and received, with a longer
//! prefix (a /24, a /64) inside a shorter one of another class (a /8) and
//! addresses in no class (`other`); the classes sum to `rx_*`/`tx_*`; a
//! re-apply that changes the classes keeps the counts of the classes that
//! stay; a removed cgroup's class counts stay in its parent's subtree;
//! bad `[classes]` exit 2 and change nothing.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
};

use cgacct_common::Counters;

use crate::{
    export::Reaped,
    require_kernel,
    world::{sh, subtest, World},
};

/// The addresses of one world's peer (the netns side of its veth), by the
/// class they fall in with [`LAYOUT`]'s classes, and the host's.
struct Peers {
    /// In `near` (a /24 and a /64 inside `cluster`'s /8s).
    near4: String,
    near6: String,
    /// In `cluster` only.
    cluster4: String,
    cluster6: String,
    /// In no class.
    other4: String,
    other6: String,
    host4: String,
    host6: String,
}

impl Peers {
    /// Adds the extra addresses to the peer, with host routes to them
    /// through the world's veth (both go with the veth).
    fn new(w: &World) -> Peers {
        let near4 = w.ipv4_peer();
        let near6 = w.ipv6_peer();
        let (a, b) = near4
            .rsplit_once('.')
            .map(|(n, h)| (n.to_string(), h))
            .expect("ipv4");
        let tail = a.trim_start_matches("10.214.");
        let x = near6
            .trim_start_matches("fd00:214:")
            .trim_end_matches("::2")
            .to_string();
        let p = Peers {
            cluster4: format!("10.215.{tail}.{b}"),
            cluster6: format!("fd00:215:{x}::2"),
            other4: format!("198.18.{tail}.{b}"),
            other6: format!("2001:db8:214:{x}::2"),
            host4: w.ipv4_host(),
            host6: format!("fd00:214:{x}::1"),
            near4,
            near6,
        };
        let (ns, h, peer) = (&w.netns, &w.host_if, format!("{}p", w.prefix));
        sh(&format!(
            "ip -n {ns} addr add {c4}/32 dev {peer}
             ip -n {ns} addr add {o4}/32 dev {peer}
             ip -n {ns} -6 addr add {c6}/128 dev {peer} nodad
             ip -n {ns} -6 addr add {o6}/128 dev {peer} nodad
             ip route add {c4}/32 dev {h}
             ip route add {o4}/32 dev {h}
             ip -6 route add {c6}/128 dev {h}
             ip -6 route add {o6}/128 dev {h}",
            c4 = p.cluster4,
            o4 = p.other4,
            c6 = p.cluster6,
            o6 = p.other6,
        ));
        p
    }

    /// The `[classes]` section: `cluster` holds 10/8 and fd00::/8, `near`
    /// the peer's /24 and /64 inside them.
    fn classes(&self) -> String {
        let net4 = self.near4.rsplit_once('.').expect("ipv4").0;
        let net6 = self.near6.trim_end_matches('2');
        format!(
            "[classes]\ncluster = [\"10.0.0.0/8\", \"fd00::/8\"]\nnear = [\"{net4}.0/24\", \"{net6}/64\"]\n"
        )
    }
}

/// One kind of datagram: from `src` (None: the socket's default) to
/// `dst`, `count` times with `payload` bytes.
struct Flow {
    src: Option<String>,
    dst: String,
    count: u64,
    payload: u64,
}

fn flow(src: Option<&str>, dst: &str, count: u64, payload: u64) -> Flow {
    Flow {
        src: src.map(str::to_string),
        dst: dst.to_string(),
        count,
        payload,
    }
}

impl Flow {
    /// Network-layer bytes of the flow (IPv4 28, IPv6 48 bytes of headers).
    fn bytes(&self) -> u64 {
        let headers = if self.dst.contains(':') { 48 } else { 28 };
        self.count * (self.payload + headers)
    }
}

const RECEIVER: &str = "import socket,select,sys
total=int(sys.argv[1])
a=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); a.bind(('0.0.0.0',0))
b=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)
b.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,1); b.bind(('::',0))
print('ready',a.getsockname()[1],b.getsockname()[1],flush=True)
n=0
while n<total:
    r,_,_=select.select([a,b],[],[],10)
    if not r: break
    for s in r:
        s.recv(65536); n+=1
print(n,flush=True)
";

const SENDER: &str = "import socket,sys,time
flows=eval(sys.argv[1]); p4=int(sys.argv[2]); p6=int(sys.argv[3])
for src,dst,count,payload in flows:
    v6=':' in dst
    s=socket.socket(socket.AF_INET6 if v6 else socket.AF_INET,socket.SOCK_DGRAM)
    if src: s.bind((src,0))
    for i in range(count):
        s.sendto(b'x'*payload,(dst,p6 if v6 else p4)); time.sleep(0.001)
";

/// A Python command in cgroup `rel` (`in_cgroup`) or in the world's netns.
fn python(w: &World, rel: &str, in_cgroup: bool, script: &str, args: &[String]) -> Command {
    let mut c = Command::new("sh");
    if in_cgroup {
        let procs = w.cgroup_mount.join(w.cgroup(rel)).join("cgroup.procs");
        c.arg("-c")
            .arg(format!("echo $$ > {}; exec python3 -c \"$@\"", procs.display()))
            .arg("sh");
    } else {
        c.arg("-c")
            .arg(format!("exec ip netns exec {} python3 -c \"$@\"", w.netns))
            .arg("sh");
    }
    c.arg(script).args(args);
    c
}

/// Sends `flows` from a socket of cgroup `rel` to the peer (`tx`), or from
/// the peer to a socket of `rel` (not `tx`); returns once every datagram
/// arrived.
fn exchange(w: &World, rel: &str, tx: bool, flows: &[Flow]) {
    let total: u64 = flows.iter().map(|f| f.count).sum();
    let mut rx = python(w, rel, !tx, RECEIVER, &[total.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn receiver");
    let mut out = BufReader::new(rx.stdout.take().expect("receiver stdout"));
    let rx = Reaped(rx);
    let mut ready = String::new();
    out.read_line(&mut ready).expect("receiver ready");
    let ports: Vec<&str> = ready.split_whitespace().skip(1).collect();
    assert_eq!(ports.len(), 2, "receiver said {ready:?}");
    let list: Vec<String> = flows
        .iter()
        .map(|f| {
            let src = f.src.as_ref().map_or("None".to_string(), |s| format!("'{s}'"));
            format!("({src},'{}',{},{})", f.dst, f.count, f.payload)
        })
        .collect();
    let args = [format!("[{}]", list.join(",")), ports[0].into(), ports[1].into()];
    let sent = python(w, rel, tx, SENDER, &args).status().expect("sender");
    assert!(sent.success(), "sender failed");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("receiver output");
    drop(rx);
    assert_eq!(rest.trim(), total.to_string(), "receiver got {rest:?} datagrams");
}

/// `class_<name>_*` counters of a parsed `net.stat` (`self_` for own).
fn class(stat: &BTreeMap<String, u64>, own: bool, name: &str) -> Counters {
    let p = if own { "self_" } else { "" };
    let get = |k: &str| {
        let key = format!("{p}class_{name}_{k}");
        *stat.get(&key).unwrap_or_else(|| panic!("no {key} in {stat:?}"))
    };
    Counters {
        rx_bytes: get("rx_bytes"),
        rx_packets: get("rx_packets"),
        tx_bytes: get("tx_bytes"),
        tx_packets: get("tx_packets"),
    }
}

/// The counts `flows` make in one direction.
fn counted(tx: bool, flows: &[&Flow]) -> Counters {
    let (bytes, packets) = flows
        .iter()
        .fold((0, 0), |(b, p), f| (b + f.bytes(), p + f.count));
    if tx {
        Counters {
            tx_bytes: bytes,
            tx_packets: packets,
            ..Counters::default()
        }
    } else {
        Counters {
            rx_bytes: bytes,
            rx_packets: packets,
            ..Counters::default()
        }
    }
}

fn sum(a: Counters, b: Counters) -> Counters {
    let mut s = a;
    s.add(&b);
    s
}

/// The world's standard layout with `extra` appended.
fn layout_with(w: &World, extra: &str) {
    w.write_layout();
    let text = fs::read_to_string(&w.layout).expect("layout");
    fs::write(&w.layout, format!("{text}{extra}")).expect("layout");
}

#[test]
fn each_class_counts_exactly_in_both_directions_and_families() {
    require_kernel!();
    let w = World::new(&["app.slice", "app.slice/a.scope"]);
    let p = Peers::new(&w);
    layout_with(&w, &p.classes());
    w.apply();
    let rel = "app.slice/a.scope";
    let f = flow;
    // Sent: to every peer address, each its own count and size.
    let tx = [
        f(None, &p.near4, 3, 100),
        f(None, &p.cluster4, 5, 200),
        f(None, &p.other4, 7, 300),
        f(None, &p.near6, 4, 150),
        f(None, &p.cluster6, 6, 250),
        f(None, &p.other6, 2, 350),
    ];
    exchange(&w, rel, true, &tx);
    // Received: from every peer address (the peer binds it as source).
    let rx = [
        f(Some(p.near4.as_str()), &p.host4, 2, 120),
        f(Some(p.cluster4.as_str()), &p.host4, 4, 220),
        f(Some(p.other4.as_str()), &p.host4, 6, 320),
        f(Some(p.near6.as_str()), &p.host6, 5, 170),
        f(Some(p.cluster6.as_str()), &p.host6, 3, 270),
        f(Some(p.other6.as_str()), &p.host6, 1, 370),
    ];
    exchange(&w, rel, false, &rx);
    let want = |i: usize, j: usize| {
        sum(
            counted(true, &[&tx[i], &tx[j]]),
            counted(false, &[&rx[i], &rx[j]]),
        )
    };
    let (near, cluster, other) = (want(0, 3), want(1, 4), want(2, 5));
    let s = w.stat(rel);
    subtest("per_class_exact", || {
        assert_eq!(class(&s, true, "near"), near, "{s:?}");
        assert_eq!(class(&s, true, "cluster"), cluster, "{s:?}");
        assert_eq!(class(&s, true, "other"), other, "{s:?}");
        for name in ["near", "cluster", "other"] {
            assert_eq!(class(&s, false, name), class(&s, true, name), "{name}");
        }
    });
    subtest("classes_sum_to_rx_tx", || {
        let all = sum(sum(near, cluster), other);
        let own = Counters {
            rx_bytes: s["self_rx_bytes"],
            rx_packets: s["self_rx_packets"],
            tx_bytes: s["self_tx_bytes"],
            tx_packets: s["self_tx_packets"],
        };
        assert_eq!(own, all, "{s:?}");
        assert_eq!(s["tx_packets"], 27);
        assert_eq!(s["rx_packets"], 21);
    });
    subtest("subtree_of_the_parent", || {
        let parent = w.stat("app.slice");
        assert_eq!(class(&parent, false, "near"), near, "{parent:?}");
        assert_eq!(class(&parent, false, "other"), other, "{parent:?}");
        assert_eq!(class(&parent, true, "cluster"), Counters::default(), "{parent:?}");
    });
    subtest("status_json", || {
        let out = w.cgacct(&["status", "--json", "--root", w.root.to_str().expect("utf-8")]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let id = w.cgroup_id(rel);
        let row = v["cgroups"]
            .as_array()
            .expect("cgroups")
            .iter()
            .find(|r| r["id"] == id)
            .unwrap_or_else(|| panic!("no row for {id}: {v}"));
        for (name, c) in [("near", near), ("cluster", cluster), ("other", other)] {
            let j = &row["classes"][name];
            assert_eq!(j["tx_bytes"], c.tx_bytes, "{name}: {row}");
            assert_eq!(j["rx_packets"], c.rx_packets, "{name}: {row}");
        }
    });
}

#[test]
fn top_json_carries_classes() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    let p = Peers::new(&w);
    layout_with(&w, &p.classes());
    w.apply();
    let mut child = Command::new(crate::world::BIN)
        .args(["top", "--once", "--json", "--interval", "6", "--root"])
        .arg(&w.root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn top");
    let stderr = child.stderr.take().expect("stderr");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut top = Reaped(child);
    let mut line = String::new();
    BufReader::new(stderr).read_line(&mut line).expect("top starts");
    let flows = [flow(None, &p.cluster4, 9, 64), flow(None, &p.other6, 4, 80)];
    exchange(&w, "a.scope", true, &flows);
    let mut out = String::new();
    stdout.read_to_string(&mut out).expect("top output");
    assert!(top.0.wait().expect("top exits").success(), "{out}");
    let frame: serde_json::Value = serde_json::from_str(out.trim()).expect("json");
    let path = format!("/{}", w.cgroup("a.scope"));
    let row = frame["cgroups"]
        .as_array()
        .expect("cgroups")
        .iter()
        .find(|r| r["cgroup"] == path.as_str())
        .unwrap_or_else(|| panic!("no row for {path}: {frame}"));
    assert_eq!(row["classes"]["cluster"]["tx_packets"], 9, "{row}");
    assert_eq!(row["classes"]["cluster"]["tx_bytes"], 9 * (64 + 28), "{row}");
    assert_eq!(row["classes"]["other"]["tx_bytes"], 4 * (80 + 48), "{row}");
    assert_eq!(row["tx_packets"], 13, "{row}");
}

/// Every `class_*` key of a parsed `net.stat`.
fn class_keys(stat: &BTreeMap<String, u64>) -> Vec<&str> {
    stat.keys()
        .map(String::as_str)
        .filter(|k| k.starts_with("class_") || k.starts_with("self_class_"))
        .collect()
}

#[test]
fn a_reapply_that_changes_classes_keeps_the_counts_of_those_that_stay() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    let p = Peers::new(&w);
    layout_with(&w, &p.classes());
    w.apply();
    let first = [
        flow(None, &p.near4, 3, 100),
        flow(None, &p.cluster4, 5, 100),
        flow(None, &p.other4, 2, 100),
    ];
    exchange(&w, "a.scope", true, &first);
    let before = w.stat("a.scope");
    let programs = w.program_ids();
    // `near` goes, `edge` comes, `cluster` stays.
    let changed = "[classes]\ncluster = [\"10.0.0.0/8\", \"fd00::/8\"]\nedge = [\"198.18.0.0/15\"]\n";
    layout_with(&w, changed);
    let plan = w.plan();
    assert_eq!(plan.len(), 1, "{plan:#?}");
    assert_eq!(plan[0]["action"], "set_classes", "{plan:#?}");
    w.apply();
    let after = w.stat("a.scope");
    subtest("kept_without_reload", || {
        assert_eq!(w.program_ids(), programs, "the programs were loaded again");
        assert!(w.plan().is_empty(), "{:#?}", w.plan());
        assert_eq!(class(&after, true, "cluster"), class(&before, true, "cluster"));
        assert_eq!(class(&after, true, "cluster").tx_packets, 5);
        assert_eq!(class(&after, true, "other"), class(&before, true, "other"));
        assert_eq!(class(&after, true, "edge"), Counters::default());
        assert!(!after.contains_key("class_near_tx_packets"), "{after:?}");
        for k in ["tx_packets", "tx_bytes", "rx_packets"] {
            assert_eq!(after[k], before[k], "{k}");
        }
    });
    subtest("new_prefixes_count", || {
        // The peer's /24 is no class of its own any more: it is in cluster's /8.
        let next = [flow(None, &p.near4, 1, 100), flow(None, &p.other4, 4, 100)];
        exchange(&w, "a.scope", true, &next);
        let s = w.stat("a.scope");
        assert_eq!(class(&s, true, "cluster").tx_packets, 6, "{s:?}");
        assert_eq!(class(&s, true, "edge").tx_packets, 4, "{s:?}");
        assert_eq!(class(&s, true, "edge").tx_bytes, 4 * 128, "{s:?}");
        assert_eq!(class(&s, true, "other").tx_packets, 2, "{s:?}");
    });
    subtest("classes_off", || {
        w.write_layout();
        w.apply();
        let s = w.stat("a.scope");
        assert!(class_keys(&s).is_empty(), "{s:?}");
        assert_eq!(s["tx_packets"], 15);
        assert!(w.plan().is_empty(), "{:#?}", w.plan());
    });
}

#[test]
fn a_removed_cgroups_class_counts_stay_in_its_parent() {
    require_kernel!();
    let w = World::new(&["p.slice", "p.slice/c.scope"]);
    let p = Peers::new(&w);
    layout_with(&w, &p.classes());
    w.apply();
    let flows = [flow(None, &p.near4, 3, 100), flow(None, &p.other6, 2, 100)];
    exchange(&w, "p.slice/c.scope", true, &flows);
    let id = w.cgroup_id("p.slice/c.scope");
    fs::remove_dir(w.cgroup_mount.join(w.cgroup("p.slice/c.scope"))).expect("rmdir");
    let s = w.stat("p.slice");
    assert_eq!(s["removed_cgroups"], 1, "{s:?}");
    assert_eq!(class(&s, false, "near").tx_packets, 3, "{s:?}");
    assert_eq!(class(&s, false, "near").tx_bytes, 3 * 128, "{s:?}");
    assert_eq!(class(&s, false, "other").tx_bytes, 2 * 148, "{s:?}");
    assert_eq!(class(&s, true, "near"), Counters::default(), "{s:?}");
    let top = w.stat("");
    assert_eq!(class(&top, false, "other").tx_packets, 2, "{top:?}");
    let pins = cgacct_pin::bpffs::names::Pins::new(&w.root, true);
    let left = cgacct_pin::report::read::class_totals(&pins).expect("class counters");
    assert!(
        !left.contains_key(&id),
        "counters left under the removed id: {left:?}"
    );
}

#[test]
fn bad_classes_exit_2_and_change_nothing() {
    require_kernel!();
    let w = World::new(&["a.scope"]);
    let sixteen: String = (0..16).map(|i| format!("c{i} = []\n")).collect();
    for (extra, needles) in [
        ("[classes]\nother = [\"10.0.0.0/8\"]\n", &["reserved"][..]),
        (
            "[classes]\na = [\"10.1.2.3/8\"]\n",
            &["host bits", "\"10.0.0.0/8\""][..],
        ),
        (
            "[classes]\na = [\"fd00::/8\"]\nb = [\"fd00::/8\"]\n",
            &["fd00::/8", "class \"a\"", "class \"b\""][..],
        ),
        ("[classes]\nWeb = []\n", &["lowercase"][..]),
        (
            "[classes]\na = [\"cluster\"]\n",
            &["classes.a", "not an IPv4 or IPv6 prefix"][..],
        ),
        (&format!("[classes]\n{sixteen}"), &["at most 15"][..]),
    ] {
        layout_with(&w, extra);
        let out = w.try_cgacct(&["apply", w.layout_arg()], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra}: {err}");
        for n in needles {
            assert!(err.contains(n), "{n:?} not in {err}");
        }
        assert!(!w.root.exists(), "{extra}: {} was created", w.root.display());
    }
    // Applied classes stay as they are when a later layout is bad.
    let good = "[classes]\ncluster = [\"10.0.0.0/8\"]\n";
    layout_with(&w, good);
    w.apply();
    layout_with(&w, "[classes]\ncluster = [\"10.0.0.0/8\"]\nother = []\n");
    let out = w.try_cgacct(&["apply", w.layout_arg()], &[]);
    assert_eq!(out.status.code(), Some(2));
    layout_with(&w, good);
    assert!(w.plan().is_empty(), "{:#?}", w.plan());
    assert_eq!(class_keys(&w.stat("a.scope")).len(), 16);
}

#[test]
fn a_socket_outliving_its_cgroup_counts_its_class_in_the_nearest_live_ancestor() {
    require_kernel!();
    const N: u64 = 6;
    let w = World::new(&["p.slice", "p.slice/c.scope"]);
    let p = Peers::new(&w);
    layout_with(&w, &p.classes());
    w.apply();
    let mut rx = python(&w, "", false, RECEIVER, &[N.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn receiver");
    let mut out = BufReader::new(rx.stdout.take().expect("receiver stdout"));
    let rx = Reaped(rx);
    let mut ready = String::new();
    out.read_line(&mut ready).expect("receiver ready");
    let port = ready.split_whitespace().nth(1).expect("port").to_string();
    // The socket is made in c.scope, then its process moves to p.slice.
    let parent = w.cgroup_mount.join(w.cgroup("p.slice")).join("cgroup.procs");
    let script = format!(
        "import os,socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         open('{}','w').write(str(os.getpid()))\nprint('moved',flush=True)\nsys.stdin.readline()\n\
         for i in range({N}):\n    s.sendto(b'x'*100,('{}',{port}))\nprint('sent',flush=True)\n",
        parent.display(),
        p.near4
    );
    let mut tx = python(&w, "p.slice/c.scope", true, &script, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sender");
    let mut tx_in = tx.stdin.take().expect("stdin");
    let mut tx_out = BufReader::new(tx.stdout.take().expect("stdout"));
    let _tx = Reaped(tx);
    let mut line = String::new();
    tx_out.read_line(&mut line).expect("moved");
    assert_eq!(line.trim(), "moved");
    let id = w.cgroup_id("p.slice/c.scope");
    fs::remove_dir(w.cgroup_mount.join(w.cgroup("p.slice/c.scope"))).expect("rmdir");
    std::io::Write::write_all(&mut tx_in, b"go\n").expect("go");
    line.clear();
    tx_out.read_line(&mut line).expect("sent");
    assert_eq!(line.trim(), "sent");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("receiver output");
    drop(rx);
    assert_eq!(rest.trim(), N.to_string());
    let s = w.stat("p.slice");
    assert_eq!(s["removed_cgroups"], 1, "{s:?}");
    assert_eq!(s["tx_packets"], N, "{s:?}");
    assert_eq!(class(&s, false, "near").tx_packets, N, "{s:?}");
    assert_eq!(class(&s, false, "near").tx_bytes, N * 128, "{s:?}");
    assert_eq!(class(&s, true, "near"), Counters::default(), "{s:?}");
    let pins = cgacct_pin::bpffs::names::Pins::new(&w.root, true);
    let left = cgacct_pin::report::read::class_totals(&pins).expect("class counters");
    assert!(!left.contains_key(&id), "counters under the removed id: {left:?}");
}

/// The class and health counts are per-CPU hashes where the kernel has
/// `bpf_map_lookup_percpu_elem`, and plain hashes shared by every CPU
/// (like the cgroup counter maps) where it has not: the removal programs
/// must read a cgroup's whole count to fold it.
#[test]
fn class_and_health_counts_take_the_form_of_the_counter_maps() {
    require_kernel!();
    use aya::maps::{MapData, MapType};
    let w = World::new(&["a.scope"]);
    layout_with(&w, "[classes]\ncluster = [\"10.0.0.0/8\"]\n");
    w.apply();
    let kind = |name: &str| {
        let pin = cgacct_pin::bpffs::names::Pins::new(&w.root, true).map(name);
        let data = MapData::from_pin(&pin).unwrap_or_else(|e| panic!("{}: {e}", pin.display()));
        data.info().expect("map info").map_type().expect("map type")
    };
    let shared = cgacct_pin::observe::kernel::features().shared_counters();
    let want = if shared {
        MapType::Hash
    } else {
        MapType::PerCpuHash
    };
    for name in cgacct_pin::object::SHARED_MAPS {
        assert_eq!(kind(name), want, "{name} (shared counters: {shared})");
    }
}
