//! Kubernetes pods and containers from the kubelet's log layout, the same
//! for every CRI runtime:
//!
//! - `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<restart>.log`
//! - `/var/log/containers/<pod>_<namespace>_<container>-<container id>.log`,
//!   links to the former.
//!
//! Namespaces, pod and container names are DNS names (no `_`), so the
//! separators are unambiguous. Only directory listings are read.
use std::{collections::HashMap, fs, path::Path};

use super::{Answer, Names, Sources};

/// `<namespace>_<pod>_<uid>` -> (uid, names).
fn pod_dir(name: &str) -> Option<(String, Names)> {
    let mut parts = name.split('_');
    let (ns, pod, uid) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || ns.is_empty() || pod.is_empty() || uid.is_empty() {
        return None;
    }
    Some((
        uid.to_string(),
        Names {
            pod_namespace: Some(ns.into()),
            pod_name: Some(pod.into()),
            ..Names::default()
        },
    ))
}

/// `<pod>_<namespace>_<container>-<64 hex>.log` -> (id, names).
fn container_log(name: &str) -> Option<(String, Names)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut parts = rest.split('_');
    let (pod, ns, ctr) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || [pod, ns, ctr].iter().any(|p| p.is_empty()) {
        return None;
    }
    Some((
        id.to_string(),
        Names {
            container_name: Some(ctr.into()),
            pod_namespace: Some(ns.into()),
            pod_name: Some(pod.into()),
            ..Names::default()
        },
    ))
}

fn names_in(dir: &Path) -> Option<Vec<String>> {
    Some(
        fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    )
}

/// Containers by id and pods by UID.
pub fn read(s: &Sources) -> (HashMap<String, Names>, HashMap<String, Names>, Answer) {
    let pod_dirs = names_in(&s.pod_logs);
    let logs = names_in(&s.container_logs);
    let pods: HashMap<String, Names> = pod_dirs.iter().flatten().filter_map(|n| pod_dir(n)).collect();
    let containers: HashMap<String, Names> = logs.iter().flatten().filter_map(|n| container_log(n)).collect();
    let answer = Answer {
        runtime: "kubernetes",
        source: if pod_dirs.is_some() || logs.is_some() {
            "logs"
        } else {
            "none"
        },
        containers: containers.len(),
        note: None,
    };
    (containers, pods, answer)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const CID: &str = "3f4e9c0d1b2a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e";
    const UID: &str = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e";

    #[test]
    fn the_kubelet_log_layout() {
        let d = std::env::temp_dir().join(format!("cgacct-kube-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let s = Sources {
            docker_socket: d.join("none"),
            docker_root: d.join("none"),
            podman_socket: d.join("none"),
            podman_storage: d.join("none"),
            pod_logs: d.join("pods"),
            container_logs: d.join("containers"),
            bound: Duration::from_millis(200),
        };
        assert_eq!(read(&s).2.source, "none");
        fs::create_dir_all(d.join(format!("pods/shop_cart-7d9f.x_{UID}/cart"))).expect("mkdir");
        fs::create_dir_all(d.join("pods/not-a-pod")).expect("mkdir");
        fs::create_dir_all(d.join("containers")).expect("mkdir");
        for f in [
            format!("cart-7d9f.x_shop_cart-{CID}.log"),
            "cart_shop_x-123.log".to_string(),
            "random.log".to_string(),
        ] {
            fs::write(d.join("containers").join(f), "").expect("log");
        }
        let (containers, pods, answer) = read(&s);
        assert_eq!((answer.source, answer.containers), ("logs", 1));
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[UID].pod_namespace.as_deref(), Some("shop"));
        assert_eq!(pods[UID].pod_name.as_deref(), Some("cart-7d9f.x"));
        let c = &containers[CID];
        assert_eq!(
            (
                c.container_name.as_deref(),
                c.pod_name.as_deref(),
                c.pod_namespace.as_deref()
            ),
            (Some("cart"), Some("cart-7d9f.x"), Some("shop"))
        );
        fs::remove_dir_all(&d).expect("cleanup");
    }
}
