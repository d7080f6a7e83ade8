//! Builds the kernel-side programs (programs/) for the BPF target with the
//! nightly toolchain, so that `cargo build` embeds a fresh object in
//! `cgacct-pin`. Needs bpf-linker and nightly's rust-src: see scripts/setup.sh.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .context("loader/ has no parent directory")?;
    let programs = root.join("programs");
    let common = root.join("common");
    println!("cargo:rerun-if-changed={}", common.display());
    let programs_dir = programs.to_str().context("non-UTF-8 path to programs/")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "cgacct-programs",
            root_dir: programs_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the BPF programs failed; run scripts/setup.sh (bpf-linker, nightly rust-src)")
}
