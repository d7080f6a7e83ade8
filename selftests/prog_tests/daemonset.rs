//! The DaemonSet of deploy/daemonset.yaml run under Docker the way a kubelet
//! runs it: each container of the pod template with its image (built by
//! scripts/image.sh from the binary under test), args, host network and PID
//! namespaces, volume mounts (hostPath volumes as bind mounts with the
//! manifest's propagation, the ConfigMap as a directory holding its keys),
//! memory limit and security context (`--privileged`; where the host
//! refuses it, the capabilities each command needs, one by one). The
//! layout is the ConfigMap's, narrowed to this test's world (its own root,
//! veth and cgroup subtree), the exporter listens on a free loopback port.
//! Then known UDP traffic: `watch` in its container made the stats files
//! and found the veth's owner, and `export` in its container serves exactly
//! the counts that `net.stat` holds and that were sent.
//!
//! Docker: the test runs a dockerd of its own (own socket, data and exec
//! roots, no bridge, no iptables), stopped by PID and removed on every exit
//! path, so it never disturbs a daemon of the host nor is disturbed by one.
//! Without dockerd it uses a daemon that answers `docker info`; without
//! either it skips (fails with CGACCT_REQUIRE_KERNEL=1).
use std::{
    collections::BTreeMap,
    fs,
    net::TcpListener,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use serde::Deserialize as _;
use serde_json::Value;

use crate::{
    attribution::quiet_link,
    export::{http_get, Reaped, TempDir},
    require_kernel,
    watch::wait_until,
    world::World,
};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Datagrams sent, and their payload: N * (P + 28) bytes over IPv4.
const N: u32 = 23;
const P: usize = 321;

/// Every document of a YAML file of deploy/, as JSON values (anchors and
/// aliases resolved).
fn documents(file: &str) -> Vec<Value> {
    let path = Path::new(REPO).join("deploy").join(file);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifest"))
}

fn text(v: &Value) -> &str {
    v.as_str()
        .unwrap_or_else(|| panic!("expected a string, found {v}"))
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map_or(&[], Vec::as_slice)
}

fn the_daemonset(docs: &[Value]) -> &Value {
    let mut sets = docs.iter().filter(|d| d["kind"] == "DaemonSet");
    let set = sets.next().expect("a DaemonSet in deploy/daemonset.yaml");
    assert!(sets.next().is_none(), "one DaemonSet expected");
    set
}

/// The manifest's layout with everything that would touch the host's real
/// cgacct narrowed to `w`: its own root, its veth, its cgroup subtree.
fn narrowed_layout(configmap_text: &str, w: &World) -> String {
    let mut layout: toml::Table = configmap_text.parse().expect("the ConfigMap's layout is TOML");
    let list_of = |s: String| toml::Value::Array(vec![toml::Value::String(s)]);
    let subtree = format!("/{}", w.cgroup_root);
    layout.insert("root".into(), toml::Value::String(w.root.display().to_string()));
    for (table, key, value) in [
        ("tc", "interfaces", list_of(w.host_if.clone())),
        ("cgroup_skb", "attach", list_of(subtree.clone())),
        ("stats", "cgroups", list_of(format!("{subtree}/**"))),
    ] {
        let t = layout
            .get_mut(table)
            .and_then(toml::Value::as_table_mut)
            .unwrap_or_else(|| panic!("the ConfigMap's layout has no [{table}]"));
        assert!(t.contains_key(key), "the ConfigMap's layout has no {table}.{key}");
        t.insert(key.into(), value);
    }
    toml::to_string(&layout).expect("layout as TOML")
}

/// A dockerd of this test's own, or the host's daemon.
struct Docker {
    host: Option<String>,
    daemon: Option<Daemon>,
}

/// The test's own dockerd: SIGTERM (then SIGKILL) by PID, its mounts and
/// directories removed, on every exit path.
struct Daemon {
    child: Child,
    run: PathBuf,
    data: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for dir in [&self.data, &self.run] {
            for m in mounts_below(dir) {
                let _ = Command::new("umount").arg("-l").arg(&m).output();
            }
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect();
    out.sort_by_key(|m| std::cmp::Reverse(m.len()));
    out
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

impl Docker {
    /// Starts the test's own dockerd, or finds a daemon; None when Docker
    /// cannot run here, after saying why (or failing, where required).
    fn start(prefix: &str) -> Option<Docker> {
        let why = if !have("docker") {
            "no docker command (scripts/setup.sh installs docker.io)".to_string()
        } else if have("dockerd") {
            match Docker::own_daemon(prefix) {
                Ok(d) => return Some(d),
                Err(e) => e,
            }
        } else {
            let host = Docker {
                host: None,
                daemon: None,
            };
            match host.run(&["info"]) {
                Ok(_) => return Some(host),
                Err(e) => format!("no dockerd here and no daemon answers `docker info`: {e}"),
            }
        };
        if std::env::var("CGACCT_REQUIRE_KERNEL").as_deref() == Ok("1") {
            panic!("CGACCT_REQUIRE_KERNEL=1 but Docker cannot run here: {why}");
        }
        eprintln!("SKIPPED {}: Docker cannot run here: {why}", module_path!());
        None
    }

    fn own_daemon(prefix: &str) -> Result<Docker, String> {
        let run = PathBuf::from(format!("/run/{prefix}-docker"));
        let data = PathBuf::from(format!("/var/lib/{prefix}-docker"));
        fs::create_dir_all(&run).map_err(|e| format!("mkdir {}: {e}", run.display()))?;
        let config = run.join("daemon.json");
        fs::write(&config, "{}\n").map_err(|e| format!("writing {}: {e}", config.display()))?;
        let log = fs::File::create(run.join("dockerd.log")).map_err(|e| format!("dockerd log: {e}"))?;
        let sock = format!("unix://{}/docker.sock", run.display());
        let child = Command::new("dockerd")
            .arg(format!("--host={sock}"))
            .arg(format!("--config-file={}", config.display()))
            .arg(format!("--data-root={}", data.display()))
            .arg(format!("--exec-root={}/exec", run.display()))
            .arg(format!("--pidfile={}/dockerd.pid", run.display()))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .arg(format!("--containerd-namespace={prefix}"))
            .arg(format!("--containerd-plugins-namespace={prefix}-plugins"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| {
                let _ = fs::remove_dir_all(&run);
                format!("spawning dockerd: {e}")
            })?;
        let docker = Docker {
            host: Some(sock),
            daemon: Some(Daemon { child, run, data }),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match docker.run(&["info"]) {
                Ok(_) => return Ok(docker),
                Err(e) if Instant::now() > deadline => return Err(format!("dockerd did not answer: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
            if let Some(d) = &docker.daemon {
                let log = fs::read_to_string(d.run.join("dockerd.log")).unwrap_or_default();
                if log.contains("level=fatal") {
                    return Err(format!("dockerd failed:\n{log}"));
                }
            }
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("docker");
        if let Some(h) = &self.host {
            c.env("DOCKER_HOST", h);
        }
        c
    }

    /// `docker ARGS`: stdout, or what went wrong.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out: Output = self
            .command()
            .args(args)
            .output()
            .map_err(|e| format!("spawning docker: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "docker {}: {}\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            ))
        }
    }
}

/// An image or container of ours, removed on every exit path.
struct Removed<'a> {
    docker: &'a Docker,
    what: [&'static str; 2],
    name: String,
}

impl Drop for Removed<'_> {
    fn drop(&mut self) {
        let _ = self.docker.run(&[self.what[0], self.what[1], &self.name]);
    }
}

/// Builds the image with scripts/image.sh from the cgacct-pin under test.
fn build_image<'a>(docker: &'a Docker, tag: &str) -> Removed<'a> {
    let image = Removed {
        docker,
        what: ["rmi", "-f"],
        name: tag.to_string(),
    };
    let mut script = Command::new(format!("{REPO}/scripts/image.sh"));
    script.args(["--binary", crate::world::BIN, "--tag", tag]);
    if let Some(h) = &docker.host {
        script.env("DOCKER_HOST", h);
    }
    let out = script.output().expect("spawning scripts/image.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/image.sh failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().last(),
        Some(tag),
        "image.sh's last line is the reference"
    );
    image
}

/// A hostPath or ConfigMap volume mount as `docker run --mount`.
fn mount_arg(m: &Value, volumes: &[Value], configmap_dir: &Path) -> String {
    let name = text(&m["name"]);
    let v = volumes
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("volume {name} is not declared"));
    let source = if let Some(path) = v["hostPath"]["path"].as_str() {
        match v["hostPath"]["type"].as_str() {
            Some("Directory") => assert!(
                Path::new(path).is_dir(),
                "hostPath {path} (type Directory) is not a directory here"
            ),
            // The kubelet would create it on the host; the test does not
            // make directories of the host's: a directory of its own stands in.
            Some("DirectoryOrCreate") if !Path::new(path).exists() => {
                let dir = stand_ins(configmap_dir).join(name);
                fs::create_dir_all(&dir).expect("a stand-in for a DirectoryOrCreate hostPath");
                return mount_text(m, &dir);
            }
            _ => {}
        }
        PathBuf::from(path)
    } else if v.get("configMap").is_some() {
        configmap_dir.to_path_buf()
    } else {
        panic!("volume {name}: only hostPath and configMap volumes are mapped to Docker: {v}")
    };
    mount_text(m, &source)
}

/// Where the test's stand-ins for missing DirectoryOrCreate hostPaths live
/// (removed with the test, see [`daemonset_containers_count_under_docker`]).
fn stand_ins(configmap_dir: &Path) -> PathBuf {
    configmap_dir.with_extension("volumes")
}

/// `--mount` of `source` as the volume mount `m` says.
fn mount_text(m: &Value, source: &Path) -> String {
    let mut arg = format!(
        "type=bind,source={},target={}",
        source.display(),
        text(&m["mountPath"])
    );
    if m["readOnly"] == true {
        arg.push_str(",readonly");
    }
    match m["mountPropagation"].as_str() {
        None | Some("None") => {}
        Some("HostToContainer") => arg.push_str(",bind-propagation=rslave"),
        Some("Bidirectional") => arg.push_str(",bind-propagation=rshared"),
        Some(other) => panic!("unknown mountPropagation {other}"),
    }
    arg
}

/// "128Mi" -> "128m" (Docker's m is MiB).
fn memory(limit: &str) -> String {
    let (n, unit) = limit.split_at(limit.trim_end_matches(|c: char| c.is_ascii_alphabetic()).len());
    match unit {
        "Mi" => format!("{n}m"),
        "Gi" => format!("{n}g"),
        "" => format!("{n}b"),
        _ => panic!("memory limit {limit}: only Mi, Gi and bytes are mapped to Docker"),
    }
}

/// What each command needs where the host refuses `--privileged`:
/// CAP_SYS_ADMIN for bpf() (the kernel counts it as CAP_BPF and
/// CAP_PERFMON, and only it looks BPF objects up by id), CAP_NET_ADMIN for
/// TC, CAP_SYS_PTRACE to read /proc/PID/ns/net of processes with other
/// uids or more capabilities (owner discovery).
fn needed_capabilities(command: &str) -> &'static [&'static str] {
    match command {
        "watch" => &["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE"],
        "export" => &["SYS_ADMIN"],
        other => panic!("no capability list for cgacct-pin {other}"),
    }
}

fn apparmor_enabled() -> bool {
    fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.starts_with('Y'))
}

/// `docker run` of one container of the pod, as the manifest says; the
/// container, removed on every exit path.
struct Run<'a> {
    docker: &'a Docker,
    name: String,
    /// Everything but the security options, the image and the args.
    options: Vec<String>,
    image: String,
    args: Vec<String>,
}

impl<'a> Run<'a> {
    fn start(&self, security: &[String]) -> Result<Removed<'a>, String> {
        let mut argv: Vec<&str> = vec!["run", "-d", "--name", &self.name];
        argv.extend(self.options.iter().map(String::as_str));
        argv.extend(security.iter().map(String::as_str));
        argv.push(&self.image);
        argv.extend(self.args.iter().map(String::as_str));
        eprintln!("  docker {}", argv.join(" "));
        let container = Removed {
            docker: self.docker,
            what: ["rm", "-f"],
            name: self.name.clone(),
        };
        self.docker.run(&argv).map(|_| container)
    }

    /// `--privileged` first; where refused, the capabilities one by one.
    fn start_secure(&self, security_context: &Value) -> Removed<'a> {
        if security_context["privileged"] == true {
            // runc cannot give a capability the host's bounding set lacks
            // (here CAP_SYS_RESOURCE); any other refusal is a failure.
            match self.start(&["--privileged".to_string()]) {
                Ok(c) => return c,
                Err(e) if e.contains("unable to apply caps") => {
                    eprintln!("  the host refuses --privileged (unable to apply caps): granting capabilities")
                }
                Err(e) => panic!("{e}"),
            }
        }
        let command = self.args.first().map_or("", String::as_str);
        let mut security: Vec<String> = list(&security_context["capabilities"]["add"])
            .iter()
            .map(|c| text(c).to_string())
            .chain(needed_capabilities(command).iter().map(|c| c.to_string()))
            .flat_map(|c| ["--cap-add".to_string(), c])
            .collect();
        if apparmor_enabled() {
            // docker-default denies writes below /sys/fs/bpf and ptrace
            // reads of processes outside the profile.
            security.extend(["--security-opt".to_string(), "apparmor=unconfined".to_string()]);
        }
        self.start(&security).unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The docker runs of the pod template's containers, in order.
fn runs<'a>(
    docker: &'a Docker,
    daemonset: &Value,
    prefix: &str,
    configmap_dir: &Path,
    image: &str,
    listen: &str,
) -> Vec<(Run<'a>, Value)> {
    let pod = &daemonset["spec"]["template"]["spec"];
    let volumes = list(&pod["volumes"]);
    let want_image = format!("cgacct:{}", env!("CARGO_PKG_VERSION"));
    list(&pod["containers"])
        .iter()
        .map(|c| {
            assert_eq!(text(&c["image"]), want_image, "the image scripts/image.sh makes");
            let mut options = Vec::new();
            if pod["hostNetwork"] == true {
                options.extend(["--network".to_string(), "host".to_string()]);
            }
            if pod["hostPID"] == true {
                options.extend(["--pid".to_string(), "host".to_string()]);
            }
            if let Some(limit) = c["resources"]["limits"]["memory"].as_str() {
                options.extend(["--memory".to_string(), memory(limit)]);
            }
            for m in list(&c["volumeMounts"]) {
                options.extend(["--mount".to_string(), mount_arg(m, volumes, configmap_dir)]);
            }
            let mut args: Vec<String> = list(&c["args"]).iter().map(|a| text(a).to_string()).collect();
            if let Some(i) = args.iter().position(|a| a == "--listen") {
                args[i + 1] = listen.to_string();
            }
            let run = Run {
                docker,
                name: format!("{prefix}-{}", text(&c["name"])),
                options,
                image: image.to_string(),
                args,
            };
            (run, c["securityContext"].clone())
        })
        .collect()
}

/// Waits until the container's output contains `what`; fails with it if
/// the container stops first.
fn wait_for_output(docker: &Docker, name: &str, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let logs = docker
            .command()
            .args(["logs", name])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default();
        if logs.contains(what) {
            return logs;
        }
        let running = docker.run(&["inspect", "-f", "{{.State.Running}}", name]);
        assert!(
            running.as_deref().map(str::trim) == Ok("true") && Instant::now() < deadline,
            "container {name} ({running:?}) never printed {what:?}:\n{logs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of one sample of the exporter's text, by cgroup and direction.
fn sample(text: &str, metric: &str, cgroup: &str, direction: &str) -> Option<u64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .find(|l| {
            l.contains(&format!("cgroup=\"{cgroup}\"")) && l.contains(&format!("direction=\"{direction}\""))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A process living in the world's netns, in cgroup `rel`: a container's
/// process, for owner discovery.
fn resident(w: &World, rel: &str) -> Reaped {
    let procs = w.cgroup_mount.join(w.cgroup(rel)).join("cgroup.procs");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}; exec ip netns exec {} sleep 300",
            procs.display(),
            w.netns
        ))
        .spawn()
        .expect("spawn the resident");
    let pid = child.id();
    let resident = Reaped(child);
    let ns = fs::metadata(format!("/run/netns/{}", w.netns))
        .expect("netns")
        .ino();
    wait_until("the resident to enter the netns", Duration::from_secs(10), || {
        fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == ns)
    });
    resident
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

#[test]
fn daemonset_containers_count_under_docker() {
    require_kernel!();
    let started = Instant::now();
    let mut w = World::new(&["web.slice", "web.slice/a.scope"]);
    w.add_cgroup("ctr.scope");
    let Some(docker) = Docker::start(&w.prefix) else {
        return;
    };
    eprintln!("  docker ready in {:.1} s", started.elapsed().as_secs_f64());

    let docs = documents("daemonset.yaml");
    let set = the_daemonset(&docs);
    let pod = &set["spec"]["template"]["spec"];
    let cm_name = list(&pod["volumes"])
        .iter()
        .find_map(|v| v["configMap"]["name"].as_str())
        .expect("a ConfigMap volume");
    let cm = object(&docs, "ConfigMap", cm_name);
    let layout_text = text(&cm["data"]["pin-layout.toml"]);
    let shipped =
        fs::read_to_string(Path::new(REPO).join("deploy/pin-layout.toml")).expect("deploy/pin-layout.toml");
    assert_eq!(
        layout_text.parse::<toml::Table>().expect("ConfigMap layout"),
        shipped.parse::<toml::Table>().expect("deploy/pin-layout.toml"),
        "the ConfigMap carries deploy/pin-layout.toml (the image's default)"
    );

    let t = Instant::now();
    let tag = format!("{}-cgacct:selftest", w.prefix);
    let _image = build_image(&docker, &tag);
    eprintln!("  image {tag} built in {:.1} s", t.elapsed().as_secs_f64());

    // The world: a quiet veth (only our frames cross it), a process of the
    // "container" behind it, the ConfigMap's layout narrowed to us.
    quiet_link(&w);
    let _resident = resident(&w, "ctr.scope");
    let cm_dir = TempDir(std::env::temp_dir().join(format!("{}-configmap", w.prefix)));
    fs::create_dir_all(&cm_dir.0).expect("ConfigMap dir");
    let _stand_ins = TempDir(stand_ins(&cm_dir.0));
    for (key, value) in cm["data"].as_object().expect("ConfigMap data") {
        let value = if key == "pin-layout.toml" {
            narrowed_layout(text(value), &w)
        } else {
            text(value).to_string()
        };
        fs::write(cm_dir.0.join(key), value).expect("ConfigMap key");
    }
    let listen = format!("127.0.0.1:{}", free_port());

    let t = Instant::now();
    let mut containers = Vec::new();
    for (run, security) in runs(&docker, set, &w.prefix, &cm_dir.0, &tag, &listen) {
        let container = run.start_secure(&security);
        let ready = match run.args.first().map(String::as_str) {
            Some("watch") => " watching ",
            Some("export") => "listening on",
            other => panic!("no readiness line known for {other:?}"),
        };
        let logs = wait_for_output(&docker, &run.name, ready);
        containers.push((container, run.name, logs));
    }
    eprintln!("  containers ready in {:.1} s", t.elapsed().as_secs_f64());
    check_counts(&w, &docker, &containers, &listen);
    drop(containers);
    eprintln!("  total {:.1} s", started.elapsed().as_secs_f64());
}

/// Known traffic, then: the stats files `watch` made, the owner it found,
/// and the exporter's samples equal net.stat and what was sent.
fn check_counts(w: &World, docker: &Docker, containers: &[(Removed, String, String)], listen: &str) {
    let watch = &containers
        .iter()
        .find(|c| c.1.ends_with("-watch"))
        .expect("a watch container")
        .1;
    let pins = cgacct_pin::bpffs::names::Pins::new(&w.root, true);
    let a = w.cgroup("web.slice/a.scope");
    wait_until("watch's stats file of a.scope", Duration::from_secs(10), || {
        pins.stats_file(&a).exists()
    });
    let ctr = format!("/{}", w.cgroup("ctr.scope"));
    wait_for_output(
        docker,
        watch,
        &format!("owner of {} is {ctr} (discovered)", w.host_if),
    );

    // The receiver is the container's: in ctr.scope, in the netns.
    w.send_udp_to("web.slice/a.scope", Some("ctr.scope"), false, N, P);
    let (n, bytes) = (u64::from(N), u64::from(N) * (P as u64 + 28));
    let (sa, sc) = (w.stat("web.slice/a.scope"), w.stat("ctr.scope"));
    assert_eq!(sa["self_tx_packets"], n, "{sa:?}");
    assert_eq!(sa["self_tx_bytes"], bytes);
    assert_eq!(sa["self_tc_egress_packets"], n);
    assert_eq!(sa["self_tc_egress_bytes"], bytes);
    let logs = || docker.run(&["logs", watch]).unwrap_or_default();
    assert_eq!(sc["self_veth_rx_packets"], n, "{sc:?}\nwatch:\n{}", logs());
    assert_eq!(sc["self_veth_rx_bytes"], bytes);
    assert_eq!(sc["self_rx_bytes"], bytes, "its socket took them: {sc:?}");

    let metrics = http_get(listen, "/metrics").expect("scrape the export container");
    let a = format!("/{a}");
    // Each sample: its metric and labels, the net.stat key it mirrors, what was sent.
    let check =
        |metric: &str, cgroup: &str, dir: &str, stat: &BTreeMap<String, u64>, key: &str, sent: u64| {
            assert_eq!(stat[key], sent, "net.stat {key} of {cgroup}");
            let got = sample(&metrics, metric, cgroup, dir);
            assert_eq!(
                got,
                Some(sent),
                "{metric}{{cgroup={cgroup:?},direction={dir:?}}} in\n{metrics}"
            );
        };
    check("cgacct_socket_bytes_total", &a, "tx", &sa, "self_tx_bytes", bytes);
    check("cgacct_socket_packets_total", &a, "tx", &sa, "self_tx_packets", n);
    check("cgacct_socket_bytes_total", &a, "rx", &sa, "self_rx_bytes", 0);
    check("cgacct_socket_packets_total", &a, "rx", &sa, "self_rx_packets", 0);
    check(
        "cgacct_tc_bytes_total",
        &a,
        "egress",
        &sa,
        "self_tc_egress_bytes",
        bytes,
    );
    check(
        "cgacct_tc_packets_total",
        &a,
        "egress",
        &sa,
        "self_tc_egress_packets",
        n,
    );
    check(
        "cgacct_tc_bytes_total",
        &a,
        "ingress",
        &sa,
        "self_tc_ingress_bytes",
        0,
    );
    check(
        "cgacct_tc_packets_total",
        &a,
        "ingress",
        &sa,
        "self_tc_ingress_packets",
        0,
    );
    check(
        "cgacct_veth_bytes_total",
        &ctr,
        "rx",
        &sc,
        "self_veth_rx_bytes",
        bytes,
    );
    check(
        "cgacct_veth_packets_total",
        &ctr,
        "rx",
        &sc,
        "self_veth_rx_packets",
        n,
    );
    check(
        "cgacct_socket_bytes_total",
        &ctr,
        "rx",
        &sc,
        "self_rx_bytes",
        bytes,
    );
    check(
        "cgacct_socket_packets_total",
        &ctr,
        "rx",
        &sc,
        "self_rx_packets",
        n,
    );
}

/// deploy/prometheus-scrape.yaml's pod discovery finds the DaemonSet's pods
/// and their metrics port, which is where `export` listens.
#[test]
fn scrape_configmap_selects_the_daemonset() {
    let docs = documents("daemonset.yaml");
    let template = &the_daemonset(&docs)["spec"]["template"];
    let scrape = documents("prometheus-scrape.yaml");
    let [cm] = scrape.as_slice() else {
        panic!("one object in deploy/prometheus-scrape.yaml")
    };
    assert_eq!(cm["kind"], "ConfigMap");
    let config: Value = serde_yaml_ng::from_str(text(&cm["data"]["cgacct.yml"])).expect("cgacct.yml is YAML");
    let jobs = list(&config["scrape_configs"]);
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "cgacct")
        .expect("job cgacct");
    let sd = list(&job["kubernetes_sd_configs"])
        .first()
        .expect("kubernetes_sd_configs");
    assert_eq!(sd["role"], "pod");
    let namespace = &the_daemonset(&docs)["metadata"]["namespace"];
    assert!(list(&sd["namespaces"]["names"]).contains(namespace), "{sd}");
    let kept = |label: &str| {
        list(&job["relabel_configs"])
            .iter()
            .find(|r| r["action"] == "keep" && list(&r["source_labels"]).iter().any(|l| l == label))
            .map(|r| text(&r["regex"]).to_string())
    };
    assert_eq!(
        kept("__meta_kubernetes_pod_label_app_kubernetes_io_name").as_deref(),
        template["metadata"]["labels"]["app.kubernetes.io/name"].as_str()
    );
    let port_name = kept("__meta_kubernetes_pod_container_port_name").expect("a keep on the port name");
    let (export, port) = list(&template["spec"]["containers"])
        .iter()
        .find_map(|c| {
            let p = list(&c["ports"])
                .iter()
                .find(|p| p["name"] == port_name.as_str())?;
            Some((c, p["containerPort"].as_u64()?))
        })
        .unwrap_or_else(|| panic!("no container port named {port_name}"));
    let annotated = template["metadata"]["annotations"]["prometheus.io/port"].as_str();
    assert_eq!(annotated.and_then(|p| p.parse().ok()), Some(port));
    let args = list(&export["args"]);
    let listen = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1));
    let listen_port = listen.and_then(Value::as_str).and_then(|l| l.rsplit(':').next());
    assert_eq!(listen_port.and_then(|p| p.parse().ok()), Some(port), "{args:?}");
}
