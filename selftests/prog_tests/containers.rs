//! Real container runtimes: Docker (a `dockerd` started here when none
//! runs, and stopped by its PID after) and podman, with an image imported
//! offline from busybox and containers on the runtime's own bridge (docker0,
//! podman0). The host's /usr is mounted read-only into the containers so
//! that their processes can run python3: the traffic is the containers'
//! own sockets, from their cgroups and network namespaces.
//!
//! For each runtime: two containers, a layout with their cgroups, their
//! host-side veths and discovered owners; exact UDP counts both ways, TCP
//! counts equal to the sending socket's TCP_INFO, the idle container
//! unmoved but for the frames the bridge itself floods to every port (its
//! IPv6 router solicitations and MLD reports), which both veths count; names from the runtime in `status --json` and `top --json`; one
//! removal record, with the final totals and the names, for the container
//! removed. Traffic goes only between the containers and the host, on the
//! runtime's bridge, to the addresses the runtime assigned.
use std::{
    collections::BTreeMap,
    fs,
    io::{BufRead as _, BufReader, Read as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use cgacct_pin::{bpffs::Pins, observe::runtime::http, report::read};

use crate::{
    export::Reaped,
    require_kernel,
    world::{self, sh, World},
};

/// Skips loudly when a runtime cannot run here; with
/// CGACCT_REQUIRE_KERNEL=1 (CI) fails instead.
macro_rules! unavailable {
    ($why:expr) => {{
        let why: String = $why;
        if std::env::var("CGACCT_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("CGACCT_REQUIRE_KERNEL=1 but the container runtime cannot run here: {why}");
        }
        eprintln!("SKIPPED {}: {why}", module_path!());
        return;
    }};
}

const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// A file removed on every exit path.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A `dockerd` this test started: stopped by its PID (SIGTERM, then
/// SIGKILL after 20 s) and reaped on every exit path.
struct Dockerd {
    child: Child,
    _log: TempFile,
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: a signal to our own child, which we have not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn docker_answers() -> bool {
    http::get(Path::new(DOCKER_SOCKET), "/_ping", Duration::from_secs(2)).is_ok()
}

/// The running dockerd, or one started here (Some) when none runs.
fn ensure_dockerd(prefix: &str) -> Result<Option<Dockerd>, String> {
    if docker_answers() {
        return Ok(None);
    }
    let log = std::env::temp_dir().join(format!("{prefix}-dockerd.log"));
    let file = fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = file.try_clone().map_err(|e| e.to_string())?;
    let child = Command::new("dockerd")
        .stdout(file)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("no dockerd here ({e}): run scripts/setup.sh"))?;
    let mut d = Dockerd {
        child,
        _log: TempFile(log.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if docker_answers() {
            return Ok(Some(d));
        }
        if let Ok(Some(status)) = d.child.try_wait() {
            // Another test may have started one meanwhile.
            if docker_answers() {
                return Ok(None);
            }
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(5).collect();
            return Err(format!("dockerd exited ({status}): {}", tail.join(" | ")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err("dockerd did not answer on /var/run/docker.sock within 30 s".into())
}

/// One runtime's command line, and what must go when the test ends.
struct Runtime {
    kind: &'static str,
    cli: PathBuf,
    env: Vec<(String, String)>,
    bridge: &'static str,
    /// The daemon a test started (dropped last: declared first).
    _daemon: Option<Dockerd>,
    _conf: Option<TempFile>,
}

impl Runtime {
    fn docker(prefix: &str) -> Result<Runtime, String> {
        let cli = ["/usr/bin/docker", "/usr/local/bin/docker"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no docker command: install docker.io (scripts/setup.sh)")?;
        let daemon = ensure_dockerd(prefix)?;
        Ok(Runtime {
            kind: "docker",
            cli,
            env: Vec::new(),
            bridge: "docker0",
            _daemon: daemon,
            _conf: None,
        })
    }

    fn podman(prefix: &str) -> Result<Runtime, String> {
        let cli = PathBuf::from("/usr/bin/podman");
        if !cli.exists() {
            return Err("no podman command: install podman (scripts/setup.sh)".into());
        }
        // Without CAP_SYS_RESOURCE runc cannot raise the default rlimits.
        let conf = std::env::temp_dir().join(format!("{prefix}-containers.conf"));
        fs::write(
            &conf,
            "[containers]\ndefault_ulimits = []\n[engine]\nevents_logger = \"file\"\n",
        )
        .map_err(|e| e.to_string())?;
        let rt = Runtime {
            kind: "podman",
            cli,
            env: vec![("CONTAINERS_CONF".into(), conf.display().to_string())],
            bridge: "podman0",
            _daemon: None,
            _conf: Some(TempFile(conf)),
        };
        let out = rt.try_run(&["info", "--format", "{{.Host.CgroupManager}}"]);
        if !out.status.success() {
            return Err(format!(
                "podman info failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(rt)
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.cli);
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    fn try_run(&self, args: &[&str]) -> Output {
        self.cmd()
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", self.kind))
    }

    fn run(&self, args: &[&str]) -> String {
        let out = world::run(self.cmd().args(args));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn remove(&self, name: &str) -> Output {
        match self.kind {
            "podman" => self.try_run(&["rm", "-f", "-t", "0", name]),
            _ => self.try_run(&["rm", "-f", name]),
        }
    }
}

/// The image, made offline from busybox; removed on every exit path.
struct Image<'a> {
    rt: &'a Runtime,
    name: String,
}

impl<'a> Image<'a> {
    fn import(rt: &'a Runtime, prefix: &str) -> Image<'a> {
        let rootfs = TempFile(std::env::temp_dir().join(format!("{prefix}-rootfs")));
        let r = &rootfs.0;
        for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "usr"] {
            fs::create_dir_all(r.join(d)).expect("mkdir rootfs");
        }
        fs::copy("/bin/busybox", r.join("bin/busybox")).expect("copy busybox (install busybox-static)");
        let list = world::run(Command::new("/bin/busybox").arg("--list"));
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.contains('/') {
                std::os::unix::fs::symlink("busybox", r.join("bin").join(applet)).expect("applet link");
            }
        }
        // The host's /usr is mounted over /usr: its libraries are found
        // through the merged-/usr links.
        std::os::unix::fs::symlink("usr/lib", r.join("lib")).expect("link");
        std::os::unix::fs::symlink("usr/lib64", r.join("lib64")).expect("link");
        let name = format!("{prefix}-busybox");
        let image = Image { rt, name };
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(r)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn tar");
        let stdout = tar.stdout.take().expect("tar stdout");
        let mut tar = Reaped(tar);
        world::run(rt.cmd().args(["import", "-", &image.name]).stdin(stdout));
        assert!(
            tar.0.wait().is_ok_and(|s| s.success()),
            "tar of the rootfs failed"
        );
        image
    }

    /// How `run` names it.
    fn reference(&self) -> String {
        match self.rt.kind {
            "podman" => format!("localhost/{}", self.name),
            _ => self.name.clone(),
        }
    }
}

impl Drop for Image<'_> {
    fn drop(&mut self) {
        let _ = self.rt.try_run(&["rmi", "-f", &self.reference()]);
    }
}

/// One running container and where the host sees it.
#[derive(Clone, Debug)]
struct Ctr {
    name: String,
    id: String,
    pid: u32,
    ip: String,
    gateway: String,
    mac: String,
    /// Its cgroup2 path below the mount ("docker/<id>").
    cgroup: String,
    cgroup_id: u64,
    /// Its host-side veth.
    veth: String,
}

/// Our containers and the neighbour entries made for them on the bridge;
/// all removed on every exit path.
struct Containers<'a> {
    rt: &'a Runtime,
    names: Vec<String>,
    neighbours: Vec<String>,
}

impl Drop for Containers<'_> {
    fn drop(&mut self) {
        for ip in &self.neighbours {
            let _ = Command::new("ip")
                .args(["neigh", "del", ip, "dev", self.rt.bridge])
                .output();
        }
        for n in &self.names {
            let _ = self.rt.remove(n);
        }
    }
}

impl Containers<'_> {
    fn start(&mut self, image: &Image, name: &str, labels: &[(&str, &str)], mount: &Path) -> Ctr {
        self.names.push(name.to_string());
        let mut args = vec!["run", "-d", "--name", name];
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        for l in &labels {
            args.extend(["--label", l.as_str()]);
        }
        let image_ref = image.reference();
        args.extend(["-v", "/usr:/usr:ro", &image_ref, "/bin/sleep", "600"]);
        let id = self.rt.run(&args);
        let f = "{{.State.Pid}} {{.NetworkSettings.IPAddress}} {{.NetworkSettings.Gateway}} {{.NetworkSettings.MacAddress}}";
        let info = self.rt.run(&["inspect", "-f", f, name]);
        let v: Vec<&str> = info.split_whitespace().collect();
        assert_eq!(v.len(), 4, "inspect {name}: {info:?}");
        let pid: u32 = v[0].parse().expect("pid");
        let cgroup = fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .expect("its cgroups")
            .lines()
            .find_map(|l| l.strip_prefix("0::/").map(str::to_string))
            .expect("a cgroup2 line");
        let cgroup_id = fs::metadata(mount.join(&cgroup)).expect("its cgroup").ino();
        let iflink = self
            .rt
            .run(&["exec", name, "/bin/cat", "/sys/class/net/eth0/iflink"]);
        let veth = host_interface(iflink.trim().parse().expect("iflink"));
        Ctr {
            name: name.to_string(),
            id: id.lines().last().unwrap_or_default().trim().to_string(),
            pid,
            ip: v[1].into(),
            gateway: v[2].into(),
            mac: v[3].into(),
            cgroup,
            cgroup_id,
            veth,
        }
    }

    /// No ARP and no IPv6 on the container's link: only the test's frames
    /// cross its veth, so the veth keys are exact.
    fn quiet(&mut self, c: &Ctr) {
        let bridge_mac =
            fs::read_to_string(format!("/sys/class/net/{}/address", self.rt.bridge)).expect("bridge address");
        self.neighbours.push(c.ip.clone());
        sh(&format!(
            "sysctl -qw net.ipv6.conf.{veth}.disable_ipv6=1
             ip neigh replace {ip} lladdr {mac} dev {br} nud permanent
             nsenter -t {pid} -n sysctl -qw net.ipv6.conf.all.disable_ipv6=1
             nsenter -t {pid} -n ip neigh replace {gw} lladdr {bmac} dev eth0 nud permanent",
            veth = c.veth,
            ip = c.ip,
            mac = c.mac,
            br = self.rt.bridge,
            pid = c.pid,
            gw = c.gateway,
            bmac = bridge_mac.trim(),
        ));
        // One frame from the container teaches the bridge its address: a
        // bridge floods frames for addresses it has not learnt to every
        // port, and each container's veth_rx would count the others' frames.
        let out = self
            .rt
            .try_run(&["exec", &c.name, "/bin/ping", "-c", "1", "-W", "2", &c.gateway]);
        assert!(out.status.success(), "{}: ping {}: {out:?}", c.name, c.gateway);
    }
}

/// The name of the host interface with `ifindex`.
fn host_interface(ifindex: u32) -> String {
    for e in fs::read_dir("/sys/class/net").expect("interfaces").flatten() {
        let idx = fs::read_to_string(e.path().join("ifindex")).unwrap_or_default();
        if idx.trim().parse() == Ok(ifindex) {
            return e.file_name().to_string_lossy().into_owned();
        }
    }
    panic!("no host interface with ifindex {ifindex}");
}

/// A process started with its stdout piped, waited for its first line
/// ("ready"), killed and reaped on every exit path.
struct Peer {
    proc: Reaped,
    out: BufReader<std::process::ChildStdout>,
}

impl Peer {
    fn spawn(cmd: &mut Command) -> Peer {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn peer");
        let stdout = child.stdout.take().expect("stdout");
        let mut p = Peer {
            proc: Reaped(child),
            out: BufReader::new(stdout),
        };
        let mut line = String::new();
        p.out.read_line(&mut line).expect("peer ready");
        assert_eq!(line.trim(), "ready", "peer said {line:?}");
        p
    }

    /// What it printed after "ready", once it exited successfully.
    fn finish(mut self) -> String {
        let mut rest = String::new();
        self.out.read_to_string(&mut rest).expect("peer output");
        let status = self.proc.0.wait().expect("peer exits");
        assert!(status.success(), "peer failed: {rest}");
        rest.trim().to_string()
    }
}

/// python3 on the host, in cgroup `procs` (its cgroup.procs file).
fn host_python(procs: &Path, code: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "echo $$ > {}; exec python3 -c \"$0\" \"$@\"",
            procs.display()
        ))
        .arg(code);
    c
}

/// python3 in container `c`.
fn ctr_python(rt: &Runtime, c: &Ctr, code: &str) -> Command {
    let mut cmd = rt.cmd();
    cmd.args(["exec", &c.name, "/usr/bin/python3", "-c", code]);
    cmd
}

fn udp_receiver(addr: &str, port: u16, count: u64) -> String {
    format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{addr}',{port}))\n\
         s.settimeout(20)\nprint('ready',flush=True)\nn=b=0\nwhile n<{count}:\n    d=s.recv(65536); n+=1; b+=len(d)\n\
         print(n,b)\n"
    )
}

fn udp_sender(addr: &str, port: u16, count: u64, payload: u64) -> String {
    format!(
        "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nprint('ready',flush=True)\n\
         for i in range({count}):\n    s.sendto(b'x'*{payload},('{addr}',{port})); time.sleep(0.001)\n"
    )
}

const TCP_RECEIVER: &str = "import socket,sys\nl=socket.socket()\nl.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
l.bind((sys.argv[1],int(sys.argv[2])))\nl.listen(1)\nl.settimeout(20)\nprint('ready',flush=True)\nc,_=l.accept()\n\
c.settimeout(20)\nn=0\nwhile True:\n    d=c.recv(1<<20)\n    if not d: break\n    n+=len(d)\nc.close()\nprint(n)\n";

/// Sends `size` bytes, closes its side, waits for the peer's close, and
/// prints its socket's TCP_INFO: segments out, payload bytes sent (with
/// retransmissions), retransmitted segments.
fn tcp_sender(addr: &str, port: u16, size: u64) -> String {
    format!(
        "import socket,struct,time\nprint('ready',flush=True)\ns=socket.create_connection(('{addr}',{port}),timeout=20)\n\
         s.sendall(b'y'*{size})\ns.shutdown(socket.SHUT_WR)\nwhile s.recv(65536): pass\ntime.sleep(0.2)\n\
         i=s.getsockopt(socket.IPPROTO_TCP,socket.TCP_INFO,232)\n\
         print(struct.unpack_from('I',i,136)[0],struct.unpack_from('Q',i,200)[0],struct.unpack_from('I',i,100)[0])\n"
    )
}

type Stat = BTreeMap<String, u64>;

struct Scene<'a> {
    rt: &'a Runtime,
    w: &'a World,
    pins: Pins,
    /// The host side's cgroup (ours) and its cgroup.procs.
    host: String,
    host_procs: PathBuf,
    web: Ctr,
    db: Ctr,
}

impl Scene<'_> {
    fn stat(&self, cgroup: &str) -> Stat {
        read::read_stat(&self.pins.stats_file(cgroup)).expect("read net.stat")
    }

    /// Every cgroup's net.stat: web, db, the host side.
    fn all(&self) -> [Stat; 3] {
        [
            self.stat(&self.web.cgroup),
            self.stat(&self.db.cgroup),
            self.stat(&self.host),
        ]
    }

    fn port(&self, i: u16) -> u16 {
        42000 + (std::process::id() % 1000) as u16 * 16 + i
    }
}

/// after - before for each `self_` key.
fn delta(after: &Stat, before: &Stat) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(k, _)| k.starts_with("self_"))
        .map(|(k, v)| {
            (
                k.trim_start_matches("self_").to_string(),
                v - before.get(k).copied().unwrap_or(0),
            )
        })
        .filter(|(_, v)| *v != 0)
        .collect()
}

fn want(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs
        .iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| (k.to_string(), *v))
        .collect()
}

/// What the bridge sent to every port meanwhile (its own IPv6 router
/// solicitations and MLD reports, for one), seen at the idle container's
/// veth: the only keys of the idle container that may move. Returns
/// (packets, bytes), which the busy container's veth_rx holds as well.
fn flooded(idle: &BTreeMap<String, u64>, what: &str) -> (u64, u64) {
    assert!(
        idle.keys().all(|k| k.starts_with("veth_rx_")),
        "the idle container moved {what}: {idle:?}"
    );
    let get = |k: &str| idle.get(k).copied().unwrap_or(0);
    (get("veth_rx_packets"), get("veth_rx_bytes"))
}

/// `pairs`, with the frames the bridge flooded to every port in veth_rx.
fn want_flooded(pairs: &[(&str, u64)], (fp, fb): (u64, u64)) -> BTreeMap<String, u64> {
    let mut w = want(pairs);
    for (k, v) in [("veth_rx_packets", fp), ("veth_rx_bytes", fb)] {
        if v > 0 {
            *w.entry(k.to_string()).or_default() += v;
        }
    }
    w
}

/// UDP from a host socket into `web`, then from `web` to the host: exact
/// counts in every key of both sides, nothing anywhere else.
fn udp_both_ways(s: &Scene) {
    let (n, p) = (29u64, 400u64);
    let bytes = n * (p + 28);
    let before = s.all();
    let rx = Peer::spawn(&mut ctr_python(
        s.rt,
        &s.web,
        &udp_receiver("0.0.0.0", s.port(0), n),
    ));
    let tx = Peer::spawn(&mut host_python(
        &s.host_procs,
        &udp_sender(&s.web.ip, s.port(0), n, p),
    ));
    tx.finish();
    assert_eq!(
        rx.finish(),
        format!("{n} {}", n * p),
        "the container took every datagram"
    );
    let after = s.all();
    let flood = flooded(&delta(&after[1], &before[1]), "during UDP into the other");
    let into = want_flooded(
        &[
            ("rx_bytes", bytes),
            ("rx_packets", n),
            ("veth_rx_bytes", bytes),
            ("veth_rx_packets", n),
        ],
        flood,
    );
    assert_eq!(
        delta(&after[0], &before[0]),
        into,
        "{}: into the container",
        s.rt.kind
    );
    let mut floods = flood.0;
    let sent = want(&[
        ("tx_bytes", bytes),
        ("tx_packets", n),
        ("tc_egress_bytes", bytes),
        ("tc_egress_packets", n),
    ]);
    assert_eq!(delta(&after[2], &before[2]), sent, "the host's sender");

    let (n, p) = (17u64, 300u64);
    let bytes = n * (p + 28);
    let before = after;
    let rx = Peer::spawn(&mut host_python(
        &s.host_procs,
        &udp_receiver(&s.web.gateway, s.port(1), n),
    ));
    let tx = Peer::spawn(&mut ctr_python(
        s.rt,
        &s.web,
        &udp_sender(&s.web.gateway, s.port(1), n, p),
    ));
    tx.finish();
    assert_eq!(rx.finish(), format!("{n} {}", n * p));
    let after = s.all();
    let flood = flooded(&delta(&after[1], &before[1]), "during UDP out of the other");
    floods += flood.0;
    let out = want_flooded(
        &[
            ("tx_bytes", bytes),
            ("tx_packets", n),
            ("tc_ingress_bytes", bytes),
            ("tc_ingress_packets", n),
            ("veth_tx_bytes", bytes),
            ("veth_tx_packets", n),
        ],
        flood,
    );
    assert_eq!(
        delta(&after[0], &before[0]),
        out,
        "{}: out of the container",
        s.rt.kind
    );
    assert_eq!(
        delta(&after[2], &before[2]),
        want(&[("rx_bytes", bytes), ("rx_packets", n)])
    );
    eprintln!(
        "{}: UDP 29 x 400 B in: {} B; 17 x 300 B out: {bytes} B, exact in every key \
         ({floods} frames flooded by the bridge to every port meanwhile)",
        s.rt.kind,
        29 * 428
    );
}

/// TCP from `web` to the host: the container's counters equal its sending
/// socket's TCP_INFO (52 B of headers per segment, 60 B for the SYN), and
/// every key that sees the connection agrees.
fn tcp_out(s: &Scene) {
    let size = 300_000u64;
    let before = s.all();
    let mut recv = host_python(&s.host_procs, TCP_RECEIVER);
    recv.arg(&s.web.gateway).arg(s.port(2).to_string());
    let rx = Peer::spawn(&mut recv);
    let tx = Peer::spawn(&mut ctr_python(
        s.rt,
        &s.web,
        &tcp_sender(&s.web.gateway, s.port(2), size),
    ));
    let info = tx.finish();
    assert_eq!(rx.finish(), size.to_string());
    let v: Vec<u64> = info
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    let (segs, sent, retrans) = (v[0], v[1], v[2]);
    assert!(sent >= size, "{info}");
    let after = s.all();
    let (fp, fb) = flooded(&delta(&after[1], &before[1]), "during TCP from the other");
    let (d, h) = (delta(&after[0], &before[0]), delta(&after[2], &before[2]));
    let wire = sent + 52 * segs + 8;
    for key in ["tx", "tc_ingress", "veth_tx"] {
        assert_eq!(d[&format!("{key}_packets")], segs, "{key}: {d:?} TCP_INFO {info}");
        assert_eq!(d[&format!("{key}_bytes")], wire, "{key}: {d:?} TCP_INFO {info}");
    }
    assert_eq!(
        (h["rx_packets"], h["rx_bytes"]),
        (segs, wire),
        "the host socket took them all"
    );
    // The host's segments into the container: the same count in each key.
    let back = h["tx_packets"];
    assert!(back > 0);
    assert_eq!(
        (d["rx_packets"], d["veth_rx_packets"], h["tc_egress_packets"]),
        (back, back + fp, back)
    );
    assert_eq!(
        (d["rx_bytes"], d["veth_rx_bytes"]),
        (h["tx_bytes"], h["tx_bytes"] + fb)
    );
    eprintln!(
        "{}: TCP {size} B out: TCP_INFO {segs} segments, {sent} B payload, {retrans} retransmitted; \
         counted {wire} B in tx, tc_ingress, veth_tx; {back} segments back",
        s.rt.kind
    );
}

/// `status --json`: each container's entry carries the runtime's names.
fn names_in_status(s: &Scene, compose: bool) {
    let out =
        s.w.cgacct(&["status", "--json", "--root", s.w.root.to_str().expect("utf-8")]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    for (c, service) in [(&s.web, "web"), (&s.db, "db")] {
        // db's sockets never sent: no TC entry of its own.
        let tables: &[&str] = match service {
            "web" => &["cgroups", "tc_cgroups", "veth_cgroups"],
            _ => &["cgroups", "veth_cgroups"],
        };
        for table in tables {
            let e = status[table]
                .as_array()
                .and_then(|a| a.iter().find(|e| e["id"] == c.cgroup_id))
                .unwrap_or_else(|| panic!("no {table} entry for {}: {status:#}", c.name));
            assert_eq!(e["name"], c.name.as_str(), "{e}");
            assert_eq!(e["container_name"], c.name.as_str(), "{e}");
            assert_eq!(e["container_id"], c.id.as_str(), "{e}");
            assert_eq!(e["runtime"], s.rt.kind, "{e}");
            assert_eq!(e["path"], format!("/{}", c.cgroup), "{e}");
            if compose {
                assert_eq!(e["compose_project"], format!("{}proj", s.w.prefix), "{e}");
                assert_eq!(e["compose_service"], service, "{e}");
            }
        }
    }
    let answer = status["runtimes"]
        .as_array()
        .and_then(|a| a.iter().find(|r| r["runtime"] == s.rt.kind))
        .unwrap_or_else(|| panic!("no answer of {}: {status:#}", s.rt.kind))
        .clone();
    assert_ne!(answer["source"], "none", "{answer}");
    let text =
        s.w.cgacct(&["status", "--root", s.w.root.to_str().expect("utf-8")]);
    let text = String::from_utf8_lossy(&text.stdout);
    let line = format!("/{}  {}", s.web.cgroup, s.web.name);
    assert!(text.lines().any(|l| l.ends_with(&line)), "no {line:?} in\n{text}");
    eprintln!("{}: names from its {}", s.rt.kind, answer["source"]);
}

/// `top --once --json`: rows named by the runtime.
fn names_in_top(s: &Scene) {
    let out = s.w.cgacct(&[
        "top",
        "--once",
        "--json",
        "--interval",
        "0.3",
        "--source",
        "veth",
        "--root",
        s.w.root.to_str().expect("utf-8"),
    ]);
    let frame: serde_json::Value = serde_json::from_slice(&out.stdout).expect("top --json");
    for c in [&s.web, &s.db] {
        let row = frame["cgroups"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"] == c.cgroup_id))
            .unwrap_or_else(|| panic!("no row for {}: {frame}", c.name));
        assert_eq!(row["name"], c.name.as_str(), "{row}");
        assert_eq!(row["container_name"], c.name.as_str(), "{row}");
    }
}

/// Removes `web`: exactly one record, for its cgroup2 cgroup, with its
/// final totals and the runtime's names; the other container unmoved.
fn removal(s: &Scene, containers: &mut Containers, compose: bool) {
    let last = s.stat(&s.web.cgroup);
    let db = s.stat(&s.db.cgroup);
    let out = s.rt.remove(&s.web.name);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    containers.names.retain(|n| *n != s.web.name);
    let dir = s.w.cgroup_mount.join(&s.web.cgroup);
    world::eventually("the container's cgroup removed", || !dir.exists());
    // What the bridge flooded to every port since `last` was read.
    let (fp, fb) = flooded(&delta(&s.stat(&s.db.cgroup), &db), "while the other was removed");
    let out =
        s.w.cgacct(&["removed", "--json", "--root", s.w.root.to_str().expect("utf-8")]);
    let recs: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("removed --json");
    let ours: Vec<&serde_json::Value> = recs
        .iter()
        .filter(|r| r["cgroup"].as_str().is_some_and(|c| c.contains(&s.web.id)))
        .collect();
    assert_eq!(ours.len(), 1, "records for {}: {recs:#?}", s.web.id);
    let r = ours[0];
    assert_eq!(r["cgroup"], format!("/{}", s.web.cgroup));
    assert_eq!(r["id"], s.web.cgroup_id);
    assert_eq!(r["name"], s.web.name.as_str(), "{r}");
    assert_eq!(r["container_name"], s.web.name.as_str(), "{r}");
    assert_eq!(r["container_id"], s.web.id.as_str(), "{r}");
    if compose {
        assert_eq!(r["compose_service"], "web", "{r}");
    }
    for (family, dir, key) in [
        ("socket", "rx", "self_rx"),
        ("socket", "tx", "self_tx"),
        ("tc", "rx", "self_tc_ingress"),
        ("tc", "tx", "self_tc_egress"),
        ("veth", "tx", "self_veth_tx"),
    ] {
        for unit in ["bytes", "packets"] {
            let got = &r["own"][family][format!("{dir}_{unit}")];
            let want = last[&format!("{key}_{unit}")];
            assert_eq!(*got, want, "{family} {dir}_{unit}: {r}");
        }
    }
    // Frames the bridge flooded after `web`'s port left it reached `db`
    // only: `web` got the flood of the window up to its port's removal,
    // every such frame whole, and no frame `db` did not get.
    let since = |unit: &str| {
        let got = r["own"]["veth"][format!("rx_{unit}")]
            .as_u64()
            .expect("a counter");
        let was = last[&format!("self_veth_rx_{unit}")];
        got.checked_sub(was)
            .unwrap_or_else(|| panic!("veth rx_{unit} fell from {was} to {got}: {r}"))
    };
    let (p, b) = (since("packets"), since("bytes"));
    assert!(
        p <= fp && b <= fb && (p == 0) == (b == 0) && (p < fp || b == fb),
        "veth rx after the last read: {p} frames, {b} B; the bridge flooded {fp} frames, {fb} B \
         to the other meanwhile: {r}"
    );
    if fp > 0 {
        eprintln!(
            "{}: {fp} frames ({fb} B) flooded while {} was removed, {p} ({b} B) before its port left",
            s.rt.kind, s.web.name
        );
    }
    assert!(
        recs.iter()
            .all(|r| r["cgroup"].as_str().is_none_or(|c| !c.contains(&s.db.id))),
        "a record for the live container: {recs:#?}"
    );
    eprintln!(
        "{}: one removal record for {}: {} B in, {} B out (socket), {} veth frames in",
        s.rt.kind, s.web.name, last["self_rx_bytes"], last["self_tx_bytes"], last["self_veth_rx_packets"]
    );
}

/// Our layout: the containers' cgroups and veths (discovered owners), and
/// our own host-side cgroup. Only what this test made is attached to.
fn write_layout(w: &World, ctrs: &[&Ctr], host: &str) {
    let q = |v: Vec<String>| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
    let veths = q(ctrs.iter().map(|c| c.veth.clone()).collect());
    let mut cgroups: Vec<String> = ctrs.iter().map(|c| format!("/{}", c.cgroup)).collect();
    cgroups.push(format!("/{host}"));
    let attach = q(cgroups.clone());
    cgroups.push(format!("/{}/**", w.cgroup_root));
    let text = format!(
        "root = {:?}\n[tc]\ninterfaces = [{veths}]\ndiscover_owners = true\n[cgroup_skb]\nattach = [{attach}]\n\
         [stats]\ncgroups = [{}]\n",
        w.root,
        q(cgroups)
    );
    fs::write(&w.layout, text).expect("write layout");
}

fn scenario(rt: &Runtime, w: &World) {
    let started = Instant::now();
    let image = Image::import(rt, &w.prefix);
    let mut containers = Containers {
        rt,
        names: Vec::new(),
        neighbours: Vec::new(),
    };
    let project = format!("{}proj", w.prefix);
    let labels = |service: &'static str| {
        [
            ("com.docker.compose.project", project.as_str()),
            ("com.docker.compose.service", service),
        ]
    };
    let web = containers.start(
        &image,
        &format!("{}-web", w.prefix),
        &labels("web"),
        &w.cgroup_mount,
    );
    let db = containers.start(
        &image,
        &format!("{}-db", w.prefix),
        &labels("db"),
        &w.cgroup_mount,
    );
    containers.quiet(&web);
    containers.quiet(&db);
    let host = w.cgroup("host.scope");
    write_layout(w, &[&web, &db], &host);
    let applied = w.apply();
    for c in [&web, &db] {
        let owner = format!("owner of {} is /{} (discovered)", c.veth, c.cgroup);
        assert!(applied.contains(&owner), "{owner:?} not in\n{applied}");
    }
    let s = Scene {
        rt,
        w,
        pins: Pins::new(&w.root, true),
        host_procs: w.cgroup_mount.join(&host).join("cgroup.procs"),
        host,
        web,
        db,
    };
    udp_both_ways(&s);
    tcp_out(&s);
    // The idle one, once: counted, and the busy one unmoved.
    let before = s.all();
    let rx = Peer::spawn(&mut ctr_python(
        rt,
        &s.db,
        &udp_receiver("0.0.0.0", s.port(3), 11),
    ));
    Peer::spawn(&mut host_python(
        &s.host_procs,
        &udp_sender(&s.db.ip, s.port(3), 11, 200),
    ))
    .finish();
    assert_eq!(rx.finish(), "11 2200");
    let after = s.all();
    let flood = flooded(&delta(&after[0], &before[0]), "during UDP into the other");
    let into = want_flooded(
        &[
            ("rx_bytes", 11 * 228),
            ("rx_packets", 11),
            ("veth_rx_bytes", 11 * 228),
            ("veth_rx_packets", 11),
        ],
        flood,
    );
    assert_eq!(delta(&after[1], &before[1]), into);
    // Only our cgroups have socket counters (cgroup_skb is attached to them alone).
    let snap = read::snapshot(&s.pins).expect("snapshot");
    let ours = [s.web.cgroup_id, s.db.cgroup_id, w.cgroup_id("host.scope")];
    assert!(
        snap.cgroups.keys().all(|id| ours.contains(id)),
        "{:?}",
        snap.cgroups
    );
    let compose = rt.kind == "docker";
    names_in_status(&s, compose);
    names_in_top(&s);
    removal(&s, &mut containers, compose);
    eprintln!("{}: done in {:.1} s", rt.kind, started.elapsed().as_secs_f64());
}

#[test]
fn docker_containers_counted_named_and_removed() {
    require_kernel!();
    let started = Instant::now();
    let prefix = format!("cgd{}", std::process::id() % 100_000);
    let rt = match Runtime::docker(&prefix) {
        Ok(rt) => rt,
        Err(why) => unavailable!(why),
    };
    let w = World::new(&["host.scope"]);
    scenario(&rt, &w);
    drop(w);
    let daemon = rt._daemon.is_some();
    drop(rt);
    eprintln!(
        "docker test: {:.1} s (dockerd {})",
        started.elapsed().as_secs_f64(),
        if daemon {
            "started and stopped here"
        } else {
            "already running"
        }
    );
}

#[test]
fn podman_containers_counted_named_and_removed() {
    require_kernel!();
    let started = Instant::now();
    let prefix = format!("cgp{}", std::process::id() % 100_000);
    let rt = match Runtime::podman(&prefix) {
        Ok(rt) => rt,
        Err(why) => unavailable!(why),
    };
    let w = World::new(&["host.scope"]);
    scenario(&rt, &w);
    drop(w);
    drop(rt);
    eprintln!("podman test: {:.1} s", started.elapsed().as_secs_f64());
}
