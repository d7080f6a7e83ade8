//! What is: the host ([`host`]: mounts, privileges, interfaces, cgroups),
//! the running kernel ([`kernel`]: BTF offsets, CPUs), what the kernel holds
//! under a root ([`held`]), names of cgroups from their paths
//! ([`identity`]), names container runtimes know for them ([`runtime`])
//! and rtnetlink requests ([`rtnl`]). Only reads (and remembers runtimes'
//! names in a cache file of its own, [`runtime::memory`]).
use std::path::PathBuf;

use anyhow::{anyhow, Context as _, Result};

use crate::{
    bpffs::{self, walk::Tree, Pins},
    spec::Layout,
    tc,
};

pub mod classes;
pub mod health;
pub mod held;
pub mod host;
pub mod identity;
pub mod kernel;
pub mod rtnl;
pub mod runtime;

pub use held::Held;
pub use host::{Cgroup, Interface};

/// Items below which [`par_map`] stays on the calling thread.
const PAR_MIN: usize = 256;

/// `f` over `items`, in order: on up to 4 threads (as many as this process
/// may run at once) each taking a contiguous share, when there are many
/// items, else on the calling thread. Reading what thousands of pins and
/// hooks hold is one bpf(2) call after another, each independent.
pub fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> Result<R> + Sync) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(4);
    if items.len() < PAR_MIN || threads < 2 {
        return items.iter().map(&f).collect();
    }
    let f = &f;
    std::thread::scope(|s| {
        let shares: Vec<_> = items
            .chunks(items.len().div_ceil(threads))
            .map(|share| s.spawn(move || share.iter().map(f).collect::<Result<Vec<R>>>()))
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for share in shares {
            out.extend(share.join().map_err(|_| anyhow!("a worker thread panicked"))??);
        }
        Ok(out)
    })
}

/// Everything a plan is made against: the host, the root's tree and what
/// the kernel holds there, and how TC attaches.
pub struct Observed {
    pub pins: Pins,
    pub cgroup_mount: PathBuf,
    pub interfaces: Vec<Interface>,
    pub cgroups: Vec<Cgroup>,
    /// Files and directories under the root.
    pub tree: Tree,
    pub held: Held,
    /// What the running kernel offers (probed; see [`kernel::Features`]).
    pub kernel: kernel::Features,
    /// What the layout asks of TC (`[tc] attach`).
    pub tc_preference: tc::Preference,
    /// How TC attaches, decided the first time it is needed: probing the
    /// kernel loads a program, which a no-op apply must not do.
    tc: std::sync::OnceLock<tc::Choice>,
}

impl Observed {
    /// Looks at the host and at what the kernel holds under the layout's
    /// root. Reads only.
    pub fn discover(layout: &Layout) -> Result<Observed> {
        let cgroup_mount = host::cgroup2_mount()?;
        bpffs::root::check_on_bpffs(&layout.root)?;
        let dots = if layout.root.is_dir() {
            bpffs::names::probe_dots(&layout.root)
                .with_context(|| format!("probing {}", layout.root.display()))?
        } else {
            // A root that does not exist yet must be one bpffs can create.
            bpffs::root::check_name(&layout.root)?;
            true
        };
        let pins = Pins::new(&layout.root, dots);
        // The cgroup walk, the interface list, the root's tree and the
        // kernel's BTF (what the health programs can hook) and features
        // (probed once per process, remembered) at once: each only reads,
        // and with a thousand containers each takes tens of milliseconds.
        let (cgroups, interfaces, tree, health) = std::thread::scope(|s| {
            let cgroups = s.spawn(|| host::cgroups(&cgroup_mount));
            let tree = s.spawn(|| Tree::read(&pins));
            let health = s.spawn(|| {
                if let Ok(btf) = kernel::kernel_btf() {
                    let mut names = health::btf_names();
                    names.extend(kernel::BTF_NAMES.map(String::from));
                    btf.prefetch(&names);
                }
                let h = health::probe();
                kernel::features();
                h
            });
            let interfaces = host::interfaces();
            let panicked = |what: &str| anyhow!("{what} panicked");
            Ok::<_, anyhow::Error>((
                cgroups.join().map_err(|_| panicked("the cgroup walk"))??,
                interfaces?,
                tree.join().map_err(|_| panicked("the walk of the root"))??,
                health
                    .join()
                    .map_err(|_| panicked("reading the kernel's BTF"))??,
            ))
        })?;
        let mut o = Observed {
            pins,
            cgroups,
            cgroup_mount,
            interfaces,
            tree,
            held: Held::default(),
            kernel: kernel::features(),
            tc_preference: layout.tc_attach,
            tc: std::sync::OnceLock::new(),
        };
        o.read_held_in_tree(health)?;
        Ok(o)
    }

    /// An observed state made by hand (tests of the planners), on a kernel
    /// with every feature (set `kernel` for another).
    pub fn new(
        pins: Pins,
        interfaces: Vec<Interface>,
        cgroups: Vec<Cgroup>,
        tree: Tree,
        held: Held,
    ) -> Observed {
        Observed {
            pins,
            cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
            interfaces,
            cgroups,
            tree,
            held,
            kernel: kernel::Features::ALL,
            tc_preference: tc::Preference::Auto,
            tc: std::sync::OnceLock::new(),
        }
    }

    /// How TC programs attach here (see [`tc::choose`]).
    pub fn tc(&self) -> Result<&tc::Choice> {
        if let Some(c) = self.tc.get() {
            return Ok(c);
        }
        let c = tc::choose(self.tc_preference)?;
        Ok(self.tc.get_or_init(|| c))
    }

    /// Reads the root's tree and what the kernel holds there again (after
    /// the host lists were refreshed).
    pub fn read_held(&mut self) -> Result<()> {
        self.tree = Tree::read(&self.pins)?;
        self.read_held_in_tree(health::probe()?)
    }

    /// What the kernel holds under the root, as the tree read last shows
    /// it; `health`: what the kernel offers the health programs.
    fn read_held_in_tree(&mut self, health: health::HealthKernel) -> Result<()> {
        self.held = held::read(
            &self.pins,
            &self.tree,
            &self.interfaces,
            &self.cgroups,
            &self.cgroup_mount,
            self.kernel.object(),
            health,
        )
        .context("reading what the kernel holds under the root")?;
        Ok(())
    }
}
