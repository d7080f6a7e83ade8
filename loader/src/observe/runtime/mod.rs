//! Names the container runtimes and the kubelet know for the containers
//! and pods behind cgroups: what `docker ps`, `podman ps` and `kubectl get
//! pods` show, where the cgroup path only holds an id.
//!
//! | runtime | asked | fallback | names |
//! | --- | --- | --- | --- |
//! | Docker | Engine API on `/var/run/docker.sock` (`DOCKER_HOST=unix://…`), `GET /containers/json?all=1` | `/var/lib/docker/containers/<id>/config.v2.json` | container name; compose project and service (`com.docker.compose.*` labels); pod, namespace and container of dockershim containers (`io.kubernetes.*` labels) |
//! | podman | its Docker-compatible API on `/run/podman/podman.sock` (`CONTAINER_HOST=unix://…`) | `/var/lib/containers/storage/<driver>-containers/containers.json` (names only) | the same |
//! | Kubernetes | `/var/log/pods/<namespace>_<pod>_<uid>/<container>/`, `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` (the kubelet's log layout) | | namespace, pod, container |
//!
//! Every source answers within [`BOUND`] or is skipped for that refresh
//! (the three are asked in parallel). Callers that must never wait use a
//! [`resolver::Resolver`], which asks in a thread of its own; names it saw
//! are remembered on disk ([`memory`]) for the records of removed cgroups.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::identity::Identity;

mod docker;
pub mod http;
mod kube;
pub mod memory;
pub mod resolver;

/// How long one runtime may take to answer.
pub const BOUND: Duration = Duration::from_millis(200);

/// What a runtime or the kubelet says about one container or pod.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Names {
    /// `docker ps`/`podman ps` NAMES, or the container's name in its pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    /// Label `com.docker.compose.project`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_project: Option<String>,
    /// Label `com.docker.compose.service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compose_service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

impl Names {
    pub fn is_empty(&self) -> bool {
        *self == Names::default()
    }

    /// Takes the fields this one lacks from `other`.
    fn fill(&mut self, other: &Names) {
        let take = |a: &mut Option<String>, b: &Option<String>| {
            if a.is_none() {
                a.clone_from(b);
            }
        };
        take(&mut self.container_name, &other.container_name);
        take(&mut self.compose_project, &other.compose_project);
        take(&mut self.compose_service, &other.compose_service);
        take(&mut self.pod_namespace, &other.pod_namespace);
        take(&mut self.pod_name, &other.pod_name);
    }

    /// The name for tables: `namespace/pod/container` for a container of a
    /// pod, `namespace/pod` for the pod, else the container name.
    fn display(&self, id: &Identity) -> Option<String> {
        match (&self.pod_namespace, &self.pod_name) {
            (Some(ns), Some(pod)) if id.container_id.is_some() => Some(format!(
                "{ns}/{pod}/{}",
                self.container_name.as_deref().unwrap_or(&id.name)
            )),
            (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
            _ => self.container_name.clone(),
        }
    }
}

/// A cgroup's identity from its path, with what the runtimes say; `name`
/// is the runtime's when it has one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Known {
    #[serde(flatten)]
    pub identity: Identity,
    #[serde(flatten)]
    pub names: Names,
}

/// How one runtime answered a refresh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Answer {
    pub runtime: &'static str,
    /// Where the names came from: `api`, `disk`, `logs`, or `none` (the
    /// runtime is not on this host, or did not answer).
    pub source: &'static str,
    pub containers: usize,
    /// Why the preferred source was not used, when it is there but failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Names by container id (64 hex digits) and by pod UID.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub containers: HashMap<String, Names>,
    pub pods: HashMap<String, Names>,
    pub answers: Vec<Answer>,
}

impl Table {
    /// What the runtimes say about the cgroup of `id`.
    pub fn names(&self, id: &Identity) -> Names {
        let mut n = id
            .container_id
            .as_ref()
            .and_then(|c| self.containers.get(c))
            .cloned()
            .unwrap_or_default();
        if let Some(p) = id.pod_uid.as_ref().and_then(|u| self.pods.get(u)) {
            n.fill(p);
        }
        n
    }

    /// `id` with the runtimes' names, `name` the one people know.
    pub fn known(&self, id: &Identity) -> Known {
        let names = self.names(id);
        let mut identity = id.clone();
        if let Some(n) = names.display(id) {
            identity.name = n;
        }
        Known { identity, names }
    }

    /// Whether the runtimes named the container or pod of `id`, or it has
    /// neither (nothing to look for).
    pub fn covers(&self, id: &Identity) -> bool {
        match (&id.container_id, &id.pod_uid) {
            (None, None) => true,
            (Some(c), _) => self.containers.contains_key(c),
            (None, Some(p)) => self.pods.contains_key(p),
        }
    }
}

/// Where the runtimes are asked.
#[derive(Clone, Debug)]
pub struct Sources {
    pub docker_socket: PathBuf,
    pub docker_root: PathBuf,
    pub podman_socket: PathBuf,
    pub podman_storage: PathBuf,
    pub pod_logs: PathBuf,
    pub container_logs: PathBuf,
    pub bound: Duration,
}

impl Sources {
    /// The standard places; `DOCKER_HOST` and `CONTAINER_HOST` (podman's)
    /// name other sockets when they are `unix://` addresses.
    pub fn host() -> Sources {
        let socket = |var: &str, default: &str| {
            std::env::var(var)
                .ok()
                .and_then(|v| v.strip_prefix("unix://").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(default))
        };
        Sources {
            docker_socket: socket("DOCKER_HOST", "/var/run/docker.sock"),
            docker_root: PathBuf::from("/var/lib/docker"),
            podman_socket: socket("CONTAINER_HOST", "/run/podman/podman.sock"),
            podman_storage: PathBuf::from("/var/lib/containers/storage"),
            pod_logs: PathBuf::from("/var/log/pods"),
            container_logs: PathBuf::from("/var/log/containers"),
            bound: BOUND,
        }
    }

    /// Every place below one directory (unit tests' fake hosts).
    #[cfg(test)]
    pub fn below(d: &std::path::Path) -> Sources {
        Sources {
            docker_socket: d.join("docker.sock"),
            docker_root: d.join("docker"),
            podman_socket: d.join("podman.sock"),
            podman_storage: d.join("storage"),
            pod_logs: d.join("pods"),
            container_logs: d.join("containers"),
            bound: Duration::from_millis(200),
        }
    }
}

/// Asks every runtime at once; each has `sources.bound` to answer.
pub fn query(sources: &Sources) -> Table {
    let (docker, podman, kube) = std::thread::scope(|s| {
        let d = s.spawn(|| docker::docker(sources));
        let p = s.spawn(|| docker::podman(sources));
        let k = kube::read(sources);
        (d.join().ok(), p.join().ok(), k)
    });
    let mut t = Table::default();
    for (runtime, part) in [("docker", docker), ("podman", podman)] {
        match part {
            Some((containers, answer)) => {
                t.containers.extend(containers);
                t.answers.push(answer);
            }
            None => t.answers.push(Answer {
                runtime,
                source: "none",
                containers: 0,
                note: Some("the query panicked".into()),
            }),
        }
    }
    let (containers, pods, answer) = kube;
    // A container both a runtime and the kubelet name keeps the runtime's
    // fields and gains the pod's.
    for (id, n) in containers {
        t.containers.entry(id).or_default().fill(&n);
    }
    t.pods = pods;
    t.answers.push(answer);
    t
}

/// Asks every runtime now (bounded, for one-shot commands), remembers what
/// they said for `root`, and adds what was remembered.
pub fn ask_for(root: &Path) -> Table {
    let mut t = query(&Sources::host());
    let file = memory::path(root);
    if let Err(e) = memory::remember(&file, &mut t) {
        eprintln!(
            "cgacct-pin: warning: cannot remember container names in {}: {e}",
            file.display()
        );
    }
    t
}

/// A resolver for `root` (long-running commands): asks in its own thread
/// and remembers what it learns.
pub fn resolver_for(root: &Path) -> resolver::Resolver {
    resolver::Resolver::start(Sources::host(), Some(memory::path(root)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::identity::identify;

    const CID: &str = "3f4e9c0d1b2a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e";
    const UID: &str = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";

    #[test]
    fn names_for_tables() {
        let mut t = Table::default();
        let web = Names {
            container_name: Some("hd-web".into()),
            compose_project: Some("hd".into()),
            compose_service: Some("web".into()),
            ..Names::default()
        };
        t.containers.insert(CID.into(), web.clone());
        let k = t.known(&identify(&format!("/docker/{CID}")));
        assert_eq!(k.identity.name, "hd-web");
        assert_eq!(k.identity.container_id.as_deref(), Some(CID));
        assert_eq!(k.names, web);
        // Unknown to the runtimes: the name from the path stays.
        let other = CID.replace('3', "4");
        let k = t.known(&identify(&format!("/docker/{other}")));
        assert_eq!(k.identity.name, format!("docker:{}", &other[..12]));
        assert!(k.names.is_empty());
        assert!(!t.covers(&identify(&format!("/docker/{other}"))));
        assert!(t.covers(&identify("/system.slice/nginx.service")));
        // A pod and its containers.
        let pod = format!("/kubepods/besteffort/pod{UID}");
        t.pods.insert(
            UID.into(),
            Names {
                pod_namespace: Some("shop".into()),
                pod_name: Some("cart-7d9f".into()),
                ..Names::default()
            },
        );
        assert_eq!(t.known(&identify(&pod)).identity.name, "shop/cart-7d9f");
        let sandbox = t.known(&identify(&format!("{pod}/{other}")));
        assert_eq!(
            sandbox.identity.name,
            format!("shop/cart-7d9f/container:{}", &other[..12])
        );
        t.containers.insert(
            other.clone(),
            Names {
                container_name: Some("cart".into()),
                ..Names::default()
            },
        );
        let c = t.known(&identify(&format!("{pod}/{other}")));
        assert_eq!(c.identity.name, "shop/cart-7d9f/cart");
        assert_eq!(c.names.pod_namespace.as_deref(), Some("shop"));
        let json = serde_json::to_value(&c).expect("json");
        assert_eq!(json["pod_name"], "cart-7d9f");
        assert_eq!(json["pod_uid"], UID);
        assert_eq!(json["name"], "shop/cart-7d9f/cart");
        assert!(json.get("compose_project").is_none(), "{json}");
    }
}
