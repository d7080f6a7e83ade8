//! The mount table (`/proc/self/mountinfo`): where cgroup2 and bpffs are.
use std::{fs, path::PathBuf};

/// Mount points of filesystems of type `fstype` (`cgroup2`, `bpf`) in this
/// process's mount namespace; none when the table cannot be read.
pub fn of_type(fstype: &str) -> std::io::Result<Vec<PathBuf>> {
    Ok(parse(&fs::read_to_string("/proc/self/mountinfo")?, fstype))
}

/// Mount points of filesystems of type `fstype` in mountinfo text.
pub fn parse(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| PathBuf::from(unescape(mount_point)))
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_by_type() {
        let info = "25 1 0:22 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                    26 1 0:23 / /sys/fs/bpf rw - bpf bpf rw\n\
                    27 1 0:24 / /mnt/with\\040space rw - bpf bpf rw\n";
        assert_eq!(parse(info, "cgroup2"), [PathBuf::from("/sys/fs/cgroup/unified")]);
        assert_eq!(
            parse(info, "bpf"),
            [PathBuf::from("/sys/fs/bpf"), PathBuf::from("/mnt/with space")]
        );
        assert!(parse(info, "ext4").is_empty());
    }
}
