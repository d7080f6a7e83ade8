//! Builds the benchmark's own kernel-side programs (bench/progs: the floor
//! and the naive design) for the BPF target, like loader/build.rs does for
//! cgacct's programs. They are embedded in cgacct-bench only.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir);
    let progs = root.join("progs");
    // The programs compile cgacct's packet measurement from its source.
    let measure = root.join("../programs/src/measure.rs");
    println!("cargo:rerun-if-changed={}", measure.display());
    let progs_dir = progs.to_str().context("non-UTF-8 path to bench/progs/")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "cgacct-bench-progs",
            root_dir: progs_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the benchmark's BPF programs failed; run scripts/setup.sh (bpf-linker, nightly rust-src)",
    )
}
