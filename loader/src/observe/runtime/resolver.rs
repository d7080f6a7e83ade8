//! Names for commands that must never wait for a runtime (`watch`, `top`,
//! `export`): a thread of its own asks the runtimes when told to (a new
//! container's cgroup appeared), and readers take the latest table at once.
//! A container the refresh did not name yet is looked for again, 1 s and
//! 2 s later (the kubelet links a container's log after starting it).
use std::{
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{memory, query, Sources, Table};
use crate::observe::identity::Identity;

/// Refreshes that miss a container before it is given up on.
const ATTEMPTS: u32 = 3;

struct State {
    table: Arc<Table>,
    /// Refreshes asked for and done: one is due while `asked > done`.
    asked: u64,
    done: u64,
    /// Cgroups a refresh should name, and how many refreshes missed them.
    pending: Vec<(Identity, u32)>,
    retry_at: Option<Instant>,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere cannot leave the table half-written: it is
        // replaced whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Resolver {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Resolver {
    /// Starts asking (a first refresh at once). `memory`: the file where
    /// names are remembered ([`memory`]), if any.
    pub fn start(sources: Sources, memory: Option<PathBuf>) -> Resolver {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                table: Arc::new(Table::default()),
                asked: 1,
                done: 0,
                pending: Vec::new(),
                retry_at: None,
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("runtime-names".into())
            .spawn(move || run(&s, &sources, memory.as_deref()))
            .map_err(|e| eprintln!("cgacct-pin: warning: no thread to ask container runtimes: {e}"))
            .ok();
        Resolver { shared, thread }
    }

    /// Asks for a refresh; returns at once.
    pub fn refresh(&self) {
        let mut st = self.shared.lock();
        st.asked = st.done + 1;
        self.shared.changed.notify_all();
    }

    /// Asks for a refresh if the latest table does not name the container
    /// or pod of `id` (a cgroup that just appeared).
    pub fn look_for(&self, id: &Identity) {
        let mut st = self.shared.lock();
        if st.table.covers(id) || st.pending.iter().any(|(p, _)| p == id) {
            return;
        }
        st.pending.push((id.clone(), 0));
        st.asked = st.done + 1;
        self.shared.changed.notify_all();
    }

    /// The latest table, at once.
    pub fn table(&self) -> Arc<Table> {
        Arc::clone(&self.shared.lock().table)
    }

    /// The table once the refreshes asked for so far are done, or after
    /// `bound`, whichever comes first.
    pub fn wait(&self, bound: Duration) -> Arc<Table> {
        let deadline = Instant::now() + bound;
        let mut st = self.shared.lock();
        let want = st.asked;
        while st.done < want && self.thread.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            st = match self.shared.changed.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
        Arc::clone(&st.table)
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.changed.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Waits until a refresh is due (or a retry's time came); None: stop.
fn next(shared: &Shared) -> Option<u64> {
    let mut st = shared.lock();
    loop {
        if st.stop {
            return None;
        }
        if st.asked > st.done {
            return Some(st.asked);
        }
        let now = Instant::now();
        st = match st.retry_at {
            Some(t) if t <= now => {
                st.retry_at = None;
                st.asked = st.done + 1;
                continue;
            }
            Some(t) => match shared.changed.wait_timeout(st, t - now) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            },
            None => shared.changed.wait(st).unwrap_or_else(|e| e.into_inner()),
        };
    }
}

fn run(shared: &Shared, sources: &Sources, memory: Option<&std::path::Path>) {
    let mut warned = false;
    while let Some(target) = next(shared) {
        let mut t = query(sources);
        if let Some(file) = memory {
            if let Err(e) = memory::remember(file, &mut t) {
                if !warned {
                    eprintln!(
                        "cgacct-pin: warning: cannot remember container names in {}: {e}",
                        file.display()
                    );
                    warned = true;
                }
            }
        }
        let mut st = shared.lock();
        st.pending.retain_mut(|(id, misses)| {
            *misses += 1;
            !t.covers(id) && *misses < ATTEMPTS
        });
        st.retry_at = st
            .pending
            .iter()
            .map(|(_, m)| *m)
            .min()
            .map(|m| Instant::now() + Duration::from_secs(u64::from(m)));
        st.table = Arc::new(t);
        st.done = target;
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, os::unix::net::UnixListener};

    use super::*;
    use crate::observe::identity::identify;

    const A: &str = "4c4367d78267a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f607182930";

    #[test]
    fn a_silent_runtime_never_blocks_readers() {
        let d = std::env::temp_dir().join(format!("cgacct-resolver-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("docker/containers").join(A)).expect("mkdir");
        fs::write(
            d.join("docker/containers").join(A).join("config.v2.json"),
            r#"{"Name":"/hd-web"}"#,
        )
        .expect("config");
        let s = Sources::below(&d);
        // Both APIs listen and never answer.
        let _l1 = UnixListener::bind(&s.docker_socket).expect("bind");
        let _l2 = UnixListener::bind(&s.podman_socket).expect("bind");
        let r = Resolver::start(s, Some(d.join("names.json")));
        let t = Instant::now();
        for _ in 0..1000 {
            let _ = r.table();
            r.look_for(&identify(&format!("/docker/{A}")));
        }
        assert!(t.elapsed() < Duration::from_millis(100), "{:?}", t.elapsed());
        let table = r.wait(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(table.containers[A].container_name.as_deref(), Some("hd-web"));
        let docker = table
            .answers
            .iter()
            .find(|a| a.runtime == "docker")
            .expect("docker");
        assert_eq!(docker.source, "disk");
        drop(r);
        let remembered = memory::Memory::load(&d.join("names.json"));
        let mut empty = Table::default();
        remembered.fill(&mut empty);
        assert_eq!(empty.containers[A].container_name.as_deref(), Some("hd-web"));
        fs::remove_dir_all(&d).expect("cleanup");
    }
}
