//! `cgacct-pin`: per-cgroup network accounting pinned on bpffs.
fn main() -> std::process::ExitCode {
    cgacct_pin::cli::main()
}
