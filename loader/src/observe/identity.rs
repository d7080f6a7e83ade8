//! Names people know for cgroup paths: systemd units, containers of the
//! usual runtimes, Kubernetes pods.
//!
//! Everything here is a pure function of the path below the cgroup2 mount,
//! so it is the same for the systemd and cgroupfs drivers of docker,
//! containerd, CRI-O and the kubelet:
//!
//! | path (examples)                                                  | what |
//! | --- | --- |
//! | `/system.slice/nginx.service`                                   | systemd unit `nginx.service` |
//! | `/system.slice/docker-<64 hex>.scope`, `/docker/<64 hex>`        | docker container |
//! | `/…/cri-containerd-<64 hex>.scope`                               | containerd (CRI) container |
//! | `/…/crio-<64 hex>.scope`, `/…/libpod-<64 hex>.scope`             | CRI-O, podman container |
//! | `/libpod_parent/libpod-<64 hex>`                                 | podman container (cgroupfs manager) |
//! | `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid with _>.slice` | Kubernetes pod |
//! | `/kubepods/burstable/pod<uid>/<64 hex>`                          | pod, and a container in it |
//!
//! A pod's UID is inherited by every cgroup below the pod's own.
use serde::Serialize;

/// What a cgroup path says about its owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    /// The systemd unit the cgroup is, when its name is one
    /// (`nginx.service`, `docker-<id>.scope`, `user-1000.slice`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// The container runtime (`docker`, `containerd`, `cri-o`, `podman`, or
    /// `container` when only the id's shape tells).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime: Option<&'static str>,
    /// The full container id (64 hex digits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The Kubernetes pod UID (dashed form), of this cgroup or an ancestor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Short name for tables: `docker:1a2b3c4d5e6f`, `pod:<uid>`, the unit,
    /// or the last path component; `/` for the root.
    pub name: String,
}

const UNIT_SUFFIXES: [&str; 7] = [
    ".service", ".scope", ".slice", ".socket", ".mount", ".swap", ".target",
];

/// Prefixes of container scopes (systemd driver) and their runtime.
const SCOPE_PREFIXES: [(&str, &str); 4] = [
    ("docker-", "docker"),
    ("cri-containerd-", "containerd"),
    ("crio-", "cri-o"),
    ("libpod-", "podman"),
];

/// Identity of the cgroup at `path` ("/a/b" or "a/b"; "" or "/" is the root).
pub fn identify(path: &str) -> Identity {
    let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut id = Identity::default();
    let mut in_kubepods = false;
    for comp in &comps {
        if *comp == "kubepods" || comp.starts_with("kubepods.slice") {
            in_kubepods = true;
        }
        if in_kubepods {
            if let Some(uid) = pod_uid(comp) {
                id.pod_uid = Some(uid);
            }
        }
    }
    let Some(last) = comps.last() else {
        id.name = "/".into();
        return id;
    };
    if UNIT_SUFFIXES.iter().any(|s| last.ends_with(s)) {
        id.unit = Some((*last).to_string());
    }
    let container = SCOPE_PREFIXES.iter().find_map(|(prefix, runtime)| {
        let hex = last.strip_prefix(prefix)?.strip_suffix(".scope")?;
        is_container_id(hex).then(|| (*runtime, hex.to_string()))
    });
    let container = container.or_else(|| {
        // podman's cgroupfs manager: `/libpod_parent/libpod-<id>`.
        if let Some(hex) = last.strip_prefix("libpod-").filter(|h| is_container_id(h)) {
            return Some(("podman", hex.to_string()));
        }
        // cgroupfs driver: a bare id, under /docker/ or a pod directory.
        if !is_container_id(last) {
            return None;
        }
        let parent = comps.len().checked_sub(2).map(|i| comps[i]);
        match parent {
            Some("docker") => Some(("docker", (*last).to_string())),
            _ if id.pod_uid.is_some() => Some(("container", (*last).to_string())),
            _ => None,
        }
    });
    if let Some((runtime, cid)) = container {
        id.name = format!("{runtime}:{}", &cid[..12]);
        id.runtime = Some(runtime);
        id.container_id = Some(cid);
    } else if in_kubepods && pod_uid(last).is_some() {
        id.name = format!("pod:{}", id.pod_uid.as_deref().unwrap_or_default());
    } else {
        id.name = id.unit.clone().unwrap_or_else(|| (*last).to_string());
    }
    id
}

/// 64 lower-case hex digits: the shape of docker, containerd and CRI-O ids.
fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The pod UID in a kubepods component: `pod<uid>` (cgroupfs driver) or
/// `kubepods[-<qos>]-pod<uid with '_' for '-'>.slice` (systemd driver).
fn pod_uid(comp: &str) -> Option<String> {
    let raw = if let Some(rest) = comp.strip_prefix("pod") {
        rest
    } else {
        let stem = comp.strip_suffix(".slice")?;
        let at = stem.rfind("-pod")?;
        stem[..at].starts_with("kubepods").then_some(&stem[at + 4..])?
    };
    let uid = raw.replace('_', "-");
    is_uid(&uid).then_some(uid)
}

/// A UUID: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: &str = "3f4e9c0d1b2a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e";
    const UID: &str = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";

    #[test]
    fn root_and_plain_names() {
        assert_eq!(identify("/").name, "/");
        assert_eq!(identify("").name, "/");
        let i = identify("/a/b");
        assert_eq!((i.name.as_str(), i.unit, i.container_id), ("b", None, None));
    }

    #[test]
    fn systemd_units() {
        let i = identify("/system.slice/nginx.service");
        assert_eq!(i.unit.as_deref(), Some("nginx.service"));
        assert_eq!(i.name, "nginx.service");
        assert_eq!(
            identify("/user.slice/user-1000.slice/session-3.scope").name,
            "session-3.scope"
        );
        assert_eq!(identify("system.slice").unit.as_deref(), Some("system.slice"));
    }

    #[test]
    fn docker_both_drivers() {
        let i = identify(&format!("/system.slice/docker-{CID}.scope"));
        assert_eq!(i.runtime, Some("docker"));
        assert_eq!(i.container_id.as_deref(), Some(CID));
        assert_eq!(i.unit, Some(format!("docker-{CID}.scope")));
        assert_eq!(i.name, format!("docker:{}", &CID[..12]));
        let i = identify(&format!("/docker/{CID}"));
        assert_eq!(
            (i.runtime, i.container_id.as_deref()),
            (Some("docker"), Some(CID))
        );
        // Not a container id: a unit that merely starts like one.
        let i = identify("/system.slice/docker-compose.scope");
        assert_eq!((i.runtime, i.name.as_str()), (None, "docker-compose.scope"));
        assert_eq!(identify(&format!("/elsewhere/{CID}")).container_id, None);
    }

    #[test]
    fn podman_both_managers() {
        for path in [
            format!("/machine.slice/libpod-{CID}.scope"),
            format!("/libpod_parent/libpod-{CID}"),
        ] {
            let i = identify(&path);
            assert_eq!(
                (i.runtime, i.container_id.as_deref()),
                (Some("podman"), Some(CID)),
                "{path}"
            );
            assert_eq!(i.name, format!("podman:{}", &CID[..12]));
        }
        assert_eq!(identify("/libpod_parent/libpod-conmon").container_id, None);
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let pod = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            UID.replace('-', "_")
        );
        let i = identify(&pod);
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(i.name, format!("pod:{UID}"));
        assert_eq!(i.container_id, None);
        let c = identify(&format!("{pod}/cri-containerd-{CID}.scope"));
        assert_eq!(c.pod_uid.as_deref(), Some(UID));
        assert_eq!(
            (c.runtime, c.container_id.as_deref()),
            (Some("containerd"), Some(CID))
        );
        assert_eq!(c.name, format!("containerd:{}", &CID[..12]));
        let crio = identify(&format!("{pod}/crio-{CID}.scope"));
        assert_eq!(crio.runtime, Some("cri-o"));
        // Guaranteed QoS pods sit directly below kubepods.slice.
        let g = identify(&format!(
            "/kubepods.slice/kubepods-pod{}.slice",
            UID.replace('-', "_")
        ));
        assert_eq!(g.pod_uid.as_deref(), Some(UID));
        // The QoS slices themselves are no pod.
        assert_eq!(
            identify("/kubepods.slice/kubepods-besteffort.slice").pod_uid,
            None
        );
    }

    #[test]
    fn kubernetes_cgroupfs_driver() {
        let i = identify(&format!("/kubepods/besteffort/pod{UID}/{CID}"));
        assert_eq!(i.pod_uid.as_deref(), Some(UID));
        assert_eq!(
            (i.runtime, i.container_id.as_deref()),
            (Some("container"), Some(CID))
        );
        assert_eq!(
            identify(&format!("/kubepods/pod{UID}")).name,
            format!("pod:{UID}")
        );
        // "pod…" outside kubepods is just a name.
        assert_eq!(identify(&format!("/x/pod{UID}")).pod_uid, None);
    }
}
