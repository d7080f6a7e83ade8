//! Docker and podman: the Engine API (podman serves the same
//! `/containers/json`), else what they keep on disk.
use std::{
    collections::HashMap,
    fs,
    path::Path,
    time::{Duration, Instant},
};

use serde::Deserialize;

use super::{
    http::{self, Fail},
    Answer, Names, Sources,
};

const LIST: &str = "/containers/json?all=1";

/// One entry of `GET /containers/json`.
#[derive(Deserialize)]
struct ApiContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// Names from a container's name and labels. Docker names start with '/';
/// names with another '/' inside are links' aliases.
fn names_of<'a>(names: impl IntoIterator<Item = &'a str>, labels: Option<&HashMap<String, String>>) -> Names {
    let name = names
        .into_iter()
        .map(|n| n.trim_start_matches('/'))
        .find(|n| !n.is_empty() && !n.contains('/'));
    let label = |keys: &[&str]| -> Option<String> {
        let l = labels?;
        keys.iter()
            .find_map(|k| l.get(*k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    Names {
        // A container of a dockershim pod: its name in the pod, not
        // `k8s_<container>_<pod>_<namespace>_<uid>_<n>`.
        container_name: label(&["io.kubernetes.container.name"]).or(name.map(str::to_string)),
        compose_project: label(&["com.docker.compose.project", "io.podman.compose.project"]),
        compose_service: label(&["com.docker.compose.service", "io.podman.compose.service"]),
        pod_namespace: label(&["io.kubernetes.pod.namespace"]),
        pod_name: label(&["io.kubernetes.pod.name"]),
    }
}

/// The containers the API on `socket` lists, all of them (stopped too).
fn from_api(socket: &Path, bound: Duration) -> Result<HashMap<String, Names>, Fail> {
    let body = http::get(socket, LIST, bound)?;
    let list: Vec<ApiContainer> = serde_json::from_slice(&body)
        .map_err(|e| Fail::Failed(format!("{}: unexpected answer to {LIST}: {e}", socket.display())))?;
    Ok(list
        .into_iter()
        .map(|c| {
            let n = names_of(c.names.iter().map(String::as_str), c.labels.as_ref());
            (c.id, n)
        })
        .collect())
}

/// The parts of Docker's `config.v2.json` that name a container.
#[derive(Deserialize)]
struct DiskConfig {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: Option<DiskInner>,
}

#[derive(Deserialize)]
struct DiskInner {
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// Docker's own records, `<root>/containers/<id>/config.v2.json`, read until
/// `deadline`.
fn docker_disk(root: &Path, deadline: Instant) -> Option<HashMap<String, Names>> {
    let dir = fs::read_dir(root.join("containers")).ok()?;
    let mut out = HashMap::new();
    for entry in dir.flatten() {
        if Instant::now() >= deadline {
            break;
        }
        let id = entry.file_name().to_string_lossy().into_owned();
        let Ok(text) = fs::read(entry.path().join("config.v2.json")) else {
            continue;
        };
        let Ok(c) = serde_json::from_slice::<DiskConfig>(&text) else {
            continue;
        };
        let labels = c.config.and_then(|i| i.labels);
        out.insert(id, names_of([c.name.as_str()], labels.as_ref()));
    }
    Some(out)
}

/// One entry of containers/storage's `containers.json`.
#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// podman's containers as containers/storage lists them,
/// `<storage>/<driver>-containers/containers.json`: names, no labels.
fn podman_disk(storage: &Path) -> Option<HashMap<String, Names>> {
    let dir = fs::read_dir(storage).ok()?;
    let mut out = HashMap::new();
    for entry in dir.flatten() {
        if !entry.file_name().to_string_lossy().ends_with("-containers") {
            continue;
        }
        let Ok(text) = fs::read(entry.path().join("containers.json")) else {
            continue;
        };
        let Ok(list) = serde_json::from_slice::<Vec<StorageContainer>>(&text) else {
            continue;
        };
        for c in list {
            out.insert(c.id, names_of(c.names.iter().map(String::as_str), None));
        }
    }
    Some(out)
}

/// The API first; when it is absent or fails, the disk.
fn ask(
    runtime: &'static str,
    socket: &Path,
    bound: Duration,
    disk: impl FnOnce(Instant) -> Option<HashMap<String, Names>>,
) -> (HashMap<String, Names>, Answer) {
    let note = match from_api(socket, bound) {
        Ok(c) => {
            let containers = c.len();
            let answer = Answer {
                runtime,
                source: "api",
                containers,
                note: None,
            };
            return (c, answer);
        }
        Err(Fail::Absent) => None,
        Err(Fail::Failed(why)) => Some(why),
    };
    // A runtime that is not installed has no records either.
    let (c, source) = match disk(Instant::now() + bound) {
        Some(c) => (c, "disk"),
        None => (HashMap::new(), "none"),
    };
    let answer = Answer {
        runtime,
        source,
        containers: c.len(),
        note,
    };
    (c, answer)
}

pub fn docker(s: &Sources) -> (HashMap<String, Names>, Answer) {
    ask("docker", &s.docker_socket, s.bound, |deadline| {
        docker_disk(&s.docker_root, deadline)
    })
}

pub fn podman(s: &Sources) -> (HashMap<String, Names>, Answer) {
    ask("podman", &s.podman_socket, s.bound, |_| {
        podman_disk(&s.podman_storage)
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        os::unix::net::UnixListener,
        path::PathBuf,
    };

    use super::*;

    const A: &str = "4c4367d78267a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607182930";
    const B: &str = "9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e";

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("cgacct-rt-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("tmpdir");
        d
    }

    #[test]
    fn engine_api_names_and_labels() {
        let d = tmp("api");
        let s = Sources::below(&d);
        let l = UnixListener::bind(&s.docker_socket).expect("bind");
        let body = format!(
            r#"[{{"Id":"{A}","Names":["/hd-web"],"Labels":{{"com.docker.compose.project":"hd","com.docker.compose.service":"web"}}}},
               {{"Id":"{B}","Names":["/hd-web/db","/k8s_cart_cart-7d9f_shop_uid_0"],"Labels":{{"io.kubernetes.container.name":"cart","io.kubernetes.pod.name":"cart-7d9f","io.kubernetes.pod.namespace":"shop"}}}}]"#
        );
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().expect("accept");
            let mut req = [0u8; 1024];
            let _ = c.read(&mut req).expect("request");
            // Go's server chunks answers larger than its buffer.
            let mid = body.len() / 2;
            let (x, y) = body.split_at(mid);
            write!(
                c,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
                x.len(),
                y.len()
            )
            .expect("answer");
        });
        let (c, answer) = docker(&s);
        server.join().expect("server");
        assert_eq!((answer.source, answer.containers, answer.note), ("api", 2, None));
        assert_eq!(c[A].container_name.as_deref(), Some("hd-web"));
        assert_eq!(c[A].compose_project.as_deref(), Some("hd"));
        assert_eq!(c[A].compose_service.as_deref(), Some("web"));
        assert_eq!(c[B].container_name.as_deref(), Some("cart"));
        assert_eq!(c[B].pod_namespace.as_deref(), Some("shop"));
        fs::remove_dir_all(&d).expect("cleanup");
    }

    #[test]
    fn disk_when_the_api_is_silent_or_absent() {
        let d = tmp("disk");
        let s = Sources::below(&d);
        let ctr = s.docker_root.join("containers").join(A);
        fs::create_dir_all(&ctr).expect("mkdir");
        fs::write(
            ctr.join("config.v2.json"),
            r#"{"ID":"x","Name":"/hd-web","Config":{"Labels":{"com.docker.compose.project":"hd"}},"State":{}}"#,
        )
        .expect("config");
        fs::create_dir_all(s.docker_root.join("containers").join(B)).expect("no config: skipped");
        // Listens, never answers.
        let _l = UnixListener::bind(&s.docker_socket).expect("bind");
        let t = Instant::now();
        let (c, answer) = docker(&s);
        assert!(t.elapsed() < Duration::from_millis(600), "{:?}", t.elapsed());
        assert_eq!((answer.source, answer.containers), ("disk", 1));
        assert!(
            answer
                .note
                .as_deref()
                .is_some_and(|n| n.contains("within 200 ms")),
            "{answer:?}"
        );
        assert_eq!(c[A].container_name.as_deref(), Some("hd-web"));
        assert_eq!(c[A].compose_project.as_deref(), Some("hd"));

        let store = s.podman_storage.join("overlay-containers");
        fs::create_dir_all(&store).expect("mkdir");
        fs::write(
            store.join("containers.json"),
            format!(r#"[{{"id":"{B}","names":["p-web"],"image":"i","layer":"l","metadata":"{{}}"}}]"#),
        )
        .expect("containers.json");
        let (c, answer) = podman(&s);
        assert_eq!((answer.source, answer.containers, answer.note), ("disk", 1, None));
        assert_eq!(c[B].container_name.as_deref(), Some("p-web"));
        // Neither socket nor records: not on this host.
        fs::remove_dir_all(&s.podman_storage).expect("rm");
        assert_eq!(podman(&s).1.source, "none");
        fs::remove_dir_all(&d).expect("cleanup");
    }
}
