//! Patterns of the layout: interface names and cgroup paths.
//!
//! Interface patterns are shell-style globs over the name (`veth*`,
//! `eth?`). Cgroup patterns are absolute paths below the cgroup2 mount whose
//! components are globs, plus `**` for "this cgroup and every descendant":
//! `/` (the root), `/system.slice`, `/kubepods/*`, `/system.slice/docker-*.scope`,
//! `/kubepods/**`. `**` may stand anywhere in a path, as one whole
//! component, and matches zero or more components: `/a/**/x` is `/a/x`,
//! `/a/b/x`, `/a/b/c/x`. Only `*` and `?` are wildcards: `[` and `]`
//! (character classes in other globs) are refused rather than matched
//! literally, and `**` inside a name (`a**b`) is refused, so that no
//! pattern means something else than it seems to.
use anyhow::{bail, Result};

/// A glob over one name: `*` any run of characters, `?` one character.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn parse(p: &str) -> Result<NamePattern> {
        if p.is_empty() {
            bail!("empty pattern: write a name or a glob such as \"veth*\"");
        }
        if p.contains('/') {
            bail!("a name pattern cannot contain '/'");
        }
        if p.contains(['[', ']']) {
            bail!(
                "character classes ([...]) are not supported: the wildcards are * (any run of \
                 characters) and ? (one character); write e.g. \"eth?\" or list the names"
            );
        }
        if p.contains("**") {
            bail!(
                "'**' inside a name: in a cgroup pattern, ** is a whole path component meaning \
                 any depth (/a/**/x); within a name, write a single *"
            );
        }
        Ok(NamePattern(p.to_string()))
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Name(NamePattern),
    AnyDepth,
}

/// A pattern over cgroup paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupPattern {
    text: String,
    parts: Vec<Part>,
}

impl CgroupPattern {
    pub fn parse(p: &str) -> Result<CgroupPattern> {
        let Some(rest) = p.strip_prefix('/') else {
            bail!("cgroup patterns are absolute paths below the cgroup2 mount: write \"/{p}\"");
        };
        let mut parts = Vec::new();
        for comp in rest.split('/').filter(|c| !c.is_empty()) {
            if comp == "." || comp == ".." {
                bail!("'.' and '..' are not allowed in cgroup patterns");
            }
            parts.push(if comp == "**" {
                Part::AnyDepth
            } else {
                Part::Name(NamePattern::parse(comp)?)
            });
        }
        Ok(CgroupPattern {
            text: p.to_string(),
            parts,
        })
    }

    /// `path` is relative to the cgroup2 mount, "" for the root.
    pub fn matches(&self, path: &str) -> bool {
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        match_parts(&self.parts, &comps)
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

fn match_parts(parts: &[Part], comps: &[&str]) -> bool {
    match parts.split_first() {
        None => comps.is_empty(),
        Some((Part::AnyDepth, rest)) => (0..=comps.len()).any(|i| match_parts(rest, &comps[i..])),
        Some((Part::Name(n), rest)) => comps
            .split_first()
            .is_some_and(|(c, tail)| n.matches(c) && match_parts(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let p = NamePattern::parse("veth*").unwrap();
        assert!(p.matches("veth0") && p.matches("veth") && !p.matches("eth0"));
        assert!(NamePattern::parse("e?h*1").unwrap().matches("eth0.1"));
        assert!(NamePattern::parse("a/b").is_err());
    }

    #[test]
    fn cgroups() {
        let root = CgroupPattern::parse("/").unwrap();
        assert!(root.matches("") && !root.matches("a"));
        let sub = CgroupPattern::parse("/a/**").unwrap();
        assert!(sub.matches("a") && sub.matches("a/b/c") && !sub.matches("b") && !sub.matches(""));
        let kids = CgroupPattern::parse("/system.slice/docker-*.scope").unwrap();
        assert!(kids.matches("system.slice/docker-1a2b.scope"));
        assert!(!kids.matches("system.slice/docker-1a2b.scope/x"));
        assert!(CgroupPattern::parse("/**").unwrap().matches(""));
        assert!(CgroupPattern::parse("a").is_err());
        assert!(CgroupPattern::parse("/a/../b").is_err());
        // `**` in the middle: any number of components between.
        let mid = CgroupPattern::parse("/a/**/x").unwrap();
        assert!(mid.matches("a/x") && mid.matches("a/b/x") && mid.matches("a/b/c/x"));
        assert!(!mid.matches("a") && !mid.matches("a/x/y") && !mid.matches("b/x"));
        // What other globs read otherwise is refused, with the way out named.
        let e = format!("{:#}", CgroupPattern::parse("/[abc").unwrap_err());
        assert!(e.contains("character classes") && e.contains('?'), "{e}");
        assert!(NamePattern::parse("eth[01]").is_err());
        let e = format!("{:#}", CgroupPattern::parse("/a**b").unwrap_err());
        assert!(e.contains("single *"), "{e}");
    }
}
