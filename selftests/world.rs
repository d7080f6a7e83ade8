//! A test's own world: a network namespace with a veth pair, a cgroup
//! subtree, a layout root on bpffs, all named with a unique prefix and all
//! removed when the `World` is dropped, panics included.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use cgacct_pin::observe::host;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Held by the tests that make many TCX attachments at once (cgacct-pin
/// then sets the host-wide `/sys/kernel/rcu_expedited` for a moment), so
/// that the test of that setting sees only its own runs change it.
pub static HOST_RCU: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// [`HOST_RCU`], taken (a test that panicked with it does not matter).
pub fn host_rcu() -> std::sync::MutexGuard<'static, ()> {
    HOST_RCU.lock().unwrap_or_else(|e| e.into_inner())
}

pub const BIN: &str = env!("CARGO_BIN_EXE_cgacct-pin");

/// Why the kernel tests cannot run here, if they cannot. Raises
/// RLIMIT_MEMLOCK on the way, as cgacct-pin does: kernels before 5.11
/// charge the programs this process loads (probes) to it.
pub fn missing_privilege() -> Option<String> {
    cgacct_pin::sys::os::raise_memlock();
    // SAFETY: plain getter.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: the selftests create netns, veths, cgroups and BPF pins".into());
    }
    if host::cgroup2_mount().is_err() {
        return Some("no cgroup2 mount".into());
    }
    if cgacct_pin::bpffs::root::check_on_bpffs(Path::new("/sys/fs/bpf")).is_err() {
        return Some("/sys/fs/bpf is not bpffs (run scripts/setup.sh)".into());
    }
    None
}

/// Skips the test loudly when it cannot run; fails instead when
/// CGACCT_REQUIRE_KERNEL=1 (as CI sets it), so a skip never hides there.
#[macro_export]
macro_rules! require_kernel {
    () => {
        if let Some(why) = $crate::world::missing_privilege() {
            if std::env::var("CGACCT_REQUIRE_KERNEL").as_deref() == Ok("1") {
                panic!("CGACCT_REQUIRE_KERNEL=1 but the kernel tests cannot run: {why}");
            }
            eprintln!("SKIPPED {}: {why}", module_path!());
            return;
        }
    };
}

/// Whether this kernel gets `net.stat` files (cgroup iterators), as
/// cgacct-pin probes it.
pub fn stats_files() -> bool {
    cgacct_pin::observe::kernel::features().stats_files()
}

/// The programs cgacct-pin loads on this kernel (no iterator without
/// cgroup iterators).
pub fn programs() -> &'static [&'static str] {
    cgacct_pin::object::programs(cgacct_pin::observe::kernel::features().object())
}

/// Skips a test about the `net.stat` files themselves, loudly and naming
/// the kernel feature, on a kernel without cgroup iterators (the counters
/// they hold are tested through `World::stat` everywhere).
#[macro_export]
macro_rules! require_stats_files {
    () => {
        if !$crate::world::stats_files() {
            eprintln!(
                "SKIPPED {}: this kernel has no cgroup iterators (bpf_iter_cgroup, Linux >= 6.1, \
                 with bpf_map_lookup_percpu_elem, Linux >= 5.19): no net.stat files to test",
                module_path!()
            );
            return;
        }
    };
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

/// Whether this kernel attaches TC programs as TCX links (else clsact
/// filters), as cgacct-pin decides it.
pub fn tcx() -> bool {
    cgacct_pin::tc::choose(cgacct_pin::tc::Preference::Auto)
        .expect("tc attach probe")
        .mode
        == cgacct_pin::tc::Mode::Tcx
}

/// Waits up to 5 s for `cond`, for what the kernel does asynchronously
/// (freeing links and programs after their last reference goes).
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "not within 5 s: {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One named part of a scenario, as the kernel's selftests have subtests:
/// its name is printed when it starts and named in the failure, so a long
/// scenario says which part broke. Parts run in order; a failed part ends
/// the scenario (the later parts build on it).
pub fn subtest<T>(name: &str, part: impl FnOnce() -> T) -> T {
    eprintln!("  subtest {name}");
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(part)) {
        Ok(v) => v,
        Err(e) => {
            let why = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("subtest {name} failed: {why}")
        }
    }
}

pub fn sh(script: &str) -> Output {
    run(Command::new("sh").arg("-euc").arg(script))
}

pub struct World {
    pub prefix: String,
    pub netns: String,
    pub host_if: String,
    pub n: u32,
    pub cgroup_mount: PathBuf,
    /// Our cgroup subtree, relative to the cgroup2 mount.
    pub cgroup_root: String,
    pub root: PathBuf,
    pub layout: PathBuf,
    cgroups: Vec<String>,
}

impl World {
    /// Creates the netns, veth pair and addresses. `cgroups` are paths
    /// below our subtree root, parents first (e.g. "web.slice", "web.slice/a.scope").
    pub fn new(cgroups: &[&str]) -> World {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("cgt{}x{n}", std::process::id() % 100_000);
        let mount = host::cgroup2_mount().expect("cgroup2 mount");
        let mut w = World {
            netns: format!("{prefix}-ns"),
            host_if: format!("{prefix}h"),
            n,
            cgroup_root: prefix.clone(),
            root: PathBuf::from("/sys/fs/bpf").join(&prefix),
            layout: std::env::temp_dir().join(format!("{prefix}.toml")),
            cgroup_mount: mount,
            prefix,
            cgroups: Vec::new(),
        };
        sh(&format!(
            "ip netns add {}\nip -n {} link set lo up",
            w.netns, w.netns
        ));
        w.add_veth();
        fs::create_dir(w.cgroup_mount.join(&w.cgroup_root)).expect("mkdir test cgroup");
        w.cgroups.push(w.cgroup_root.clone());
        for c in cgroups {
            let rel = format!("{}/{c}", w.cgroup_root);
            fs::create_dir(w.cgroup_mount.join(&rel)).expect("mkdir cgroup");
            w.cgroups.push(rel);
        }
        w
    }

    /// Creates the veth pair (host side up with its addresses, peer in the
    /// netns): at creation, and again after a test deleted it.
    pub fn add_veth(&self) {
        let (ns, h, p) = (&self.netns, &self.host_if, format!("{}p", self.prefix));
        let (h4, p4, v6) = (self.addr4(1), self.addr4(2), self.subnet6());
        sh(&format!(
            "ip link add {h} type veth peer name {p}
             ip link set {p} netns {ns}
             ip addr add {h4}/30 dev {h}
             ip -6 addr add {v6}::1/64 dev {h} nodad
             ip link set {h} up
             ip -n {ns} addr add {p4}/30 dev {p}
             ip -n {ns} -6 addr add {v6}::2/64 dev {p} nodad
             ip -n {ns} link set {p} up"
        ));
    }

    /// Which of 16384 subnets this world uses: from the process id and the
    /// world's number, so that test runs of other processes on the same
    /// host (which route in the same root namespace) do not collide.
    fn subnet_index(&self) -> u32 {
        (std::process::id().wrapping_mul(64) + self.n) % 16384
    }

    /// Address `host` (1: host side, 2: namespace side) of this world's
    /// IPv4 /30: 10.214.0.0/16 holds 16384 of them.
    fn addr4(&self, host: u32) -> String {
        let i = self.subnet_index();
        format!("10.214.{}.{}", i / 64, (i % 64) * 4 + host)
    }

    /// This world's IPv6 /64 prefix (without the trailing "::").
    fn subnet6(&self) -> String {
        format!("fd00:214:{:x}", self.subnet_index())
    }

    /// Makes one more cgroup below our subtree (removed with the world).
    pub fn add_cgroup(&mut self, rel: &str) {
        let path = self.cgroup(rel);
        fs::create_dir(self.cgroup_mount.join(&path)).expect("mkdir cgroup");
        self.cgroups.push(path);
    }

    /// The host side's IPv4 address.
    pub fn ipv4_host(&self) -> String {
        self.addr4(1)
    }

    pub fn ipv4_peer(&self) -> String {
        self.addr4(2)
    }

    pub fn ipv6_peer(&self) -> String {
        format!("{}::2", self.subnet6())
    }

    /// Path of one of our cgroups below the cgroup2 mount ("" = our root).
    pub fn cgroup(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.cgroup_root.clone()
        } else {
            format!("{}/{rel}", self.cgroup_root)
        }
    }

    pub fn cgroup_id(&self, rel: &str) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(self.cgroup_mount.join(self.cgroup(rel)))
            .expect("stat cgroup")
            .ino()
    }

    /// The standard layout of a test: TC on our host veth, cgroup_skb at our
    /// subtree root, a stats file for each of our cgroups.
    pub fn write_layout(&self) {
        let text = format!(
            "root = {:?}\n[tc]\ninterfaces = [{:?}]\n[cgroup_skb]\nattach = [\"/{}\"]\n[stats]\ncgroups = [\"/{}/**\"]\n",
            self.root, self.host_if, self.cgroup_root, self.cgroup_root
        );
        fs::write(&self.layout, text).expect("write layout");
    }

    /// The standard layout, with TC on every interface matching `pattern`
    /// instead of our one veth.
    pub fn write_layout_tc(&self, pattern: &str) {
        self.write_layout();
        let text = fs::read_to_string(&self.layout).expect("layout");
        let text = text.replace(
            &format!("interfaces = [{:?}]", self.host_if),
            &format!("interfaces = [{pattern:?}]"),
        );
        fs::write(&self.layout, text).expect("layout");
    }

    pub fn cgacct(&self, args: &[&str]) -> Output {
        run(Command::new(BIN).args(args))
    }

    /// Runs cgacct-pin with extra environment, whatever its exit status.
    pub fn try_cgacct(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap_or_else(|e| panic!("spawning cgacct-pin: {e}"))
    }

    pub fn layout_arg(&self) -> &str {
        self.layout.to_str().expect("utf-8 path")
    }

    /// `plan --json`: the planned actions.
    pub fn plan(&self) -> Vec<serde_json::Value> {
        let out = self.cgacct(&["plan", "--json", self.layout_arg()]);
        serde_json::from_slice(&out.stdout).expect("plan --json")
    }

    /// Every link in the kernel attached to this world's veth or cgroups,
    /// found by walking all links (not only our pins), sorted.
    pub fn inventory(&self) -> Vec<cgacct_pin::sys::bpf::LinkState> {
        use cgacct_pin::sys::bpf::{self as sys, LinkTarget};
        let ifindex: u32 = fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.host_if))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(u32::MAX);
        let ids: Vec<u64> = self
            .cgroups
            .iter()
            .filter_map(|c| {
                use std::os::unix::fs::MetadataExt as _;
                fs::metadata(self.cgroup_mount.join(c)).ok().map(|m| m.ino())
            })
            .collect();
        let mut out: Vec<_> = sys::link_ids()
            .into_iter()
            .filter_map(|id| sys::link_state_by_id(id).ok())
            .filter(|l| match l.target {
                LinkTarget::Tcx { ifindex: i, .. } => i == ifindex,
                LinkTarget::Cgroup { cgroup_id, .. } | LinkTarget::CgroupIter { cgroup_id, .. } => {
                    ids.contains(&cgroup_id)
                }
                LinkTarget::Clsact { .. } | LinkTarget::Other { .. } => false,
            })
            .collect();
        out.sort_by_key(|l| l.id);
        out
    }

    /// Ids of the programs pinned under our root, by name.
    pub fn program_ids(&self) -> std::collections::BTreeMap<String, u32> {
        programs()
            .iter()
            .filter_map(|p| {
                let info = aya::programs::ProgramInfo::from_pin(self.root.join("progs").join(p)).ok()?;
                Some((p.to_string(), info.id()))
            })
            .collect()
    }

    /// The kernel holds exactly the standard layout (see `write_layout`)
    /// for `stats` stats files: two TC programs on our veth (TCX links, or
    /// clsact filters on kernels without TCX), two cgroup links on our
    /// subtree root, one iterator link per stats file, each on the pinned
    /// program of its kind, nothing else attached to our world, and `plan`
    /// finds nothing to do. On a kernel without cgroup iterators there are
    /// no stats files and no iterator program.
    pub fn assert_converged(&self, stats: usize) {
        let stats = if stats_files() { stats } else { 0 };
        use cgacct_common::programs as p;
        use cgacct_pin::sys::bpf::LinkTarget;
        let progs = self.program_ids();
        assert_eq!(progs.len(), programs().len(), "pinned programs: {progs:?}");
        let links = self.inventory();
        let count = |f: &dyn Fn(&LinkTarget) -> bool| links.iter().filter(|l| f(&l.target)).count();
        let tc = cgacct_pin::tc::attached_programs(&self.host_if).expect("tc attachments");
        assert_eq!(
            tc.tcx + tc.clsact,
            2,
            "tc attachments on {}: {tc:?}",
            self.host_if
        );
        assert_eq!(
            count(&|t| matches!(t, LinkTarget::Tcx { .. })),
            tc.tcx,
            "{links:?}"
        );
        assert_eq!(count(&|t| matches!(t, LinkTarget::Cgroup { .. })), 2, "{links:?}");
        assert_eq!(
            count(&|t| matches!(t, LinkTarget::CgroupIter { .. })),
            stats,
            "{links:?}"
        );
        for l in &links {
            let want = match l.target {
                LinkTarget::Tcx { attach_type, .. } if attach_type == cgacct_pin::sys::bpf::TCX_INGRESS => {
                    p::TC_INGRESS
                }
                LinkTarget::Tcx { .. } => p::TC_EGRESS,
                LinkTarget::Cgroup { attach_type, .. }
                    if attach_type == cgacct_pin::sys::bpf::CGROUP_INGRESS =>
                {
                    p::CGROUP_INGRESS
                }
                LinkTarget::Cgroup { .. } => p::CGROUP_EGRESS,
                _ => p::CGROUP_ITER,
            };
            assert_eq!(
                Some(&l.prog_id),
                progs.get(want),
                "link {l:?} is not on the pinned {want}"
            );
        }
        let plan = self.plan();
        assert!(plan.is_empty(), "plan after convergence: {plan:#?}");
    }

    pub fn apply(&self) -> String {
        let out = self.cgacct(&["apply", self.layout.to_str().expect("utf-8 path")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `net.stat` of one of our cgroups, parsed; on a kernel without
    /// cgroup iterators (no stats files) the same keys from
    /// `status --json`, which computes them from the maps.
    pub fn stat(&self, rel: &str) -> std::collections::BTreeMap<String, u64> {
        if stats_files() {
            let pins = cgacct_pin::bpffs::names::Pins::new(&self.root, true);
            return cgacct_pin::report::read::read_stat(&pins.stats_file(&self.cgroup(rel)))
                .expect("read net.stat");
        }
        self.status_stat(rel)
    }

    /// `net.stat` of the cgroup2 root (with the overflow keys), from the
    /// file or, without cgroup iterators, from `status --json`.
    pub fn root_stat(&self) -> std::collections::BTreeMap<String, u64> {
        if stats_files() {
            let pins = cgacct_pin::bpffs::names::Pins::new(&self.root, true);
            return cgacct_pin::report::read::read_stat(&pins.stats_file("")).expect("root net.stat");
        }
        self.status_stat_of("/")
    }

    /// The `net.stat` keys of one of our cgroups as `status --json` computes
    /// them from the pinned maps (on any kernel).
    pub fn status_stat(&self, rel: &str) -> std::collections::BTreeMap<String, u64> {
        self.status_stat_of(&format!("/{}", self.cgroup(rel)))
    }

    /// The `net.stat` keys `status --json` computes for the cgroup at
    /// `path` ("/" for the root, "/a/b" below).
    pub fn status_stat_of(&self, path: &str) -> std::collections::BTreeMap<String, u64> {
        let out = self.cgacct(&["status", "--json", "--root", self.root.to_str().expect("utf-8")]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
        let keys = v["stats"][path]
            .as_object()
            .unwrap_or_else(|| panic!("status --json has no stats of {path}"));
        keys.iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_u64().unwrap_or_else(|| panic!("{k} is no number")),
                )
            })
            .collect()
    }

    /// Sends `count` UDP datagrams of `payload` bytes to the peer from a
    /// process placed in cgroup `rel`, with a receiver in the netns taking
    /// them all (so no ICMP errors come back). Returns when all arrived.
    pub fn send_udp(&self, rel: &str, v6: bool, count: u32, payload: usize) {
        self.send_udp_to(rel, None, v6, count, payload);
    }

    /// `send_udp`, with the receiver placed in cgroup `receiver` (a
    /// container's cgroup: the veth's owner stays the one cgroup of the
    /// netns's processes) instead of the test's own.
    pub fn send_udp_to(&self, rel: &str, receiver: Option<&str>, v6: bool, count: u32, payload: usize) {
        let (fam, addr) = if v6 {
            ("AF_INET6", self.ipv6_peer())
        } else {
            ("AF_INET", self.ipv4_peer())
        };
        let port = 40000 + self.n;
        let receiver_code = format!(
            "import socket,sys\ns=socket.socket(socket.{fam},socket.SOCK_DGRAM)\ns.bind(('{addr}',{port}))\n\
             s.settimeout(10)\nprint('ready',flush=True)\nn=0\nwhile n<{count}:\n    s.recv(65536); n+=1\nprint(n)\n"
        );
        let mut rx = match receiver {
            None => Command::new("ip"),
            Some(r) => {
                // Joins the cgroup, then the netns (which hides cgroupfs).
                let procs = self.cgroup_mount.join(self.cgroup(r)).join("cgroup.procs");
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("echo $$ > {}; exec \"$@\"", procs.display()))
                    .arg("sh")
                    .arg("ip");
                c
            }
        };
        let mut rx = rx
            .args(["netns", "exec", &self.netns, "python3", "-c", &receiver_code])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn receiver");
        // Wait for the receiver's "ready".
        let mut stdout = rx.stdout.take().expect("receiver stdout");
        let mut buf = [0u8; 6];
        std::io::Read::read_exact(&mut stdout, &mut buf).expect("receiver ready");
        let procs = self.cgroup_mount.join(self.cgroup(rel)).join("cgroup.procs");
        let sender = format!(
            "import socket,time\ns=socket.socket(socket.{fam},socket.SOCK_DGRAM)\nfor i in range({count}):\n    \
             s.sendto(b'x'*{payload},('{addr}',{port}))\n    time.sleep(0.001)\n"
        );
        sh(&format!(
            "echo $$ > {}; exec python3 -c \"{sender}\"",
            procs.display()
        ));
        let out = rx.wait_with_output().expect("receiver");
        let got = String::from_utf8_lossy(&out.stdout);
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).ok();
        assert!(out.status.success(), "receiver failed: {got}{rest}");
        assert_eq!(rest.trim(), count.to_string(), "receiver got {rest:?} datagrams");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if self.root.exists() {
            let _ = Command::new(BIN)
                .args(["destroy", "--root"])
                .arg(&self.root)
                .output();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.netns]).output();
        let _ = Command::new("ip").args(["link", "del", &self.host_if]).output();
        for c in self.cgroups.iter().rev() {
            let dir = self.cgroup_mount.join(c);
            // Processes we placed there have exited; move any straggler to the root.
            if let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = fs::write(self.cgroup_mount.join("cgroup.procs"), pid);
                }
            }
            let _ = fs::remove_dir(&dir);
        }
        let _ = fs::remove_file(&self.layout);
    }
}
