//! `[classes]`: destination classes, name = list of IPv4/IPv6 prefixes.
//! A packet's peer address picks the class of its longest matching prefix
//! over all classes; no match is the class `other`.
//!
//! Validation: names are `[a-z][a-z0-9_]*` of at most 31 bytes, `other` is
//! reserved, at most [`MAX_NAMED`] classes and [`classes::MAX_PREFIXES`]
//! prefixes per family. A prefix is `ADDR/LEN` or a bare address (a host:
//! /32 or /128); host bits must be zero (the error names the prefix to
//! write instead); a prefix in two classes, or twice in one, is an error
//! naming both.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use anyhow::{bail, Result};
use cgacct_common::classes;
use serde::Serialize;

/// Named classes at most (`other` is one more).
pub const MAX_NAMED: usize = classes::MAX as usize - 1;

/// An IPv4 or IPv6 prefix with its host bits zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl Serialize for Prefix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// `addr` with every bit after the first `len` cleared.
fn masked(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl Prefix {
    /// Parses `ADDR/LEN` or `ADDR`; refuses host bits.
    pub fn parse(text: &str) -> Result<Prefix> {
        let (a, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| {
            anyhow::anyhow!(
                "{text:?} is not an IPv4 or IPv6 prefix: write it like \"10.0.0.0/8\" or \"fd00::/8\""
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => match l.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => bail!("{text:?}: the prefix length must be a number from 0 to {max}"),
            },
        };
        let p = Prefix {
            addr: masked(addr, len),
            len,
        };
        if p.addr != addr {
            bail!("{text:?} has host bits set: write {:?}", p.to_string());
        }
        Ok(p)
    }

    /// The address bytes (4 or 16, network order).
    pub fn octets(&self) -> Vec<u8> {
        match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }
}

/// One class of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Class {
    pub name: String,
    pub prefixes: Vec<Prefix>,
}

fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() < classes::NAME_LEN;
    if !ok {
        bail!(
            "class name {name:?}: names are a lowercase letter, then lowercase letters, digits \
             or '_', at most {} bytes (they become keys like class_NAME_rx_bytes)",
            classes::NAME_LEN - 1
        );
    }
    if name == classes::OTHER_NAME {
        bail!("class name \"other\" is reserved for addresses no prefix matches: choose another name");
    }
    Ok(())
}

/// Validates the `[classes]` table.
pub fn parse(table: &BTreeMap<String, Vec<String>>) -> Result<Vec<Class>> {
    if table.len() > MAX_NAMED {
        bail!(
            "in classes: {} classes, at most {MAX_NAMED} are possible (\"other\" is one more): merge some",
            table.len()
        );
    }
    let mut seen: BTreeMap<Prefix, &str> = BTreeMap::new();
    let mut out = Vec::new();
    for (name, list) in table {
        check_name(name).map_err(|e| e.context("in classes"))?;
        let mut prefixes = Vec::new();
        for text in list {
            let p = Prefix::parse(text).map_err(|e| e.context(format!("in classes.{name}")))?;
            if let Some(other) = seen.insert(p, name) {
                bail!(
                    "in classes: {p} is in class {other:?} and in class {name:?}: a prefix belongs to \
                     one class; remove one of them"
                );
            }
            prefixes.push(p);
        }
        out.push(Class {
            name: name.clone(),
            prefixes,
        });
    }
    for (family, v4) in [("IPv4", true), ("IPv6", false)] {
        let n = seen.keys().filter(|p| p.addr.is_ipv4() == v4).count();
        if n > classes::MAX_PREFIXES as usize {
            bail!(
                "in classes: {n} {family} prefixes, at most {} are possible: merge adjacent prefixes",
                classes::MAX_PREFIXES
            );
        }
    }
    Ok(out)
}

/// The class tables the kernel holds (or should): index -> name (0 is
/// `other`, present whenever classes are on), prefix -> index, and the
/// number of indices the programs look at (0: off).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClassTable {
    pub names: BTreeMap<u32, String>,
    pub prefixes: BTreeMap<Prefix, u32>,
    pub indices: u32,
}

impl ClassTable {
    /// The table for `classes` (None: no `[classes]`), keeping the indices
    /// `have` gives to names that stay. A new name takes the lowest index
    /// no class had before; an index freed by this change is taken last.
    pub fn wanted(classes: Option<&[Class]>, have: Option<&ClassTable>) -> ClassTable {
        let Some(list) = classes else {
            return ClassTable::default();
        };
        let old: BTreeMap<&str, u32> = have
            .map(|h| h.names.iter().map(|(i, n)| (n.as_str(), *i)).collect())
            .unwrap_or_default();
        let mut names = BTreeMap::from([(classes::OTHER, classes::OTHER_NAME.to_string())]);
        for c in list {
            if let Some(i) = old.get(c.name.as_str()) {
                names.insert(*i, c.name.clone());
            }
        }
        let before: BTreeSet<u32> = old.values().copied().collect();
        let mut free: Vec<u32> = (1..classes::MAX).filter(|i| !before.contains(i)).collect();
        free.extend((1..classes::MAX).filter(|i| before.contains(i) && !names.contains_key(i)));
        let mut free = free.into_iter();
        let mut by_name: BTreeMap<&str, u32> = list
            .iter()
            .filter_map(|c| old.get(c.name.as_str()).map(|i| (c.name.as_str(), *i)))
            .collect();
        for c in list {
            if !by_name.contains_key(c.name.as_str()) {
                // parse() allows at most MAX_NAMED classes: an index is free.
                let i = free.next().unwrap_or(classes::MAX - 1);
                names.insert(i, c.name.clone());
                by_name.insert(&c.name, i);
            }
        }
        let prefixes = list
            .iter()
            .flat_map(|c| c.prefixes.iter().map(|p| (*p, by_name[c.name.as_str()])))
            .collect();
        let indices = names.keys().max().map_or(0, |m| m + 1);
        ClassTable {
            names,
            prefixes,
            indices,
        }
    }

    /// Whether the class keys are counted and printed.
    pub fn on(&self) -> bool {
        self.indices > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(n, l)| (n.to_string(), l.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn err(entries: &[(&str, &[&str])]) -> String {
        format!("{:#}", parse(&table(entries)).unwrap_err())
    }

    #[test]
    fn prefixes_parse_and_host_bits_are_refused() {
        let p = Prefix::parse("10.0.0.0/8").unwrap();
        assert_eq!(
            (p.to_string(), p.octets()),
            ("10.0.0.0/8".into(), vec![10, 0, 0, 0])
        );
        assert_eq!(Prefix::parse("::1").unwrap().to_string(), "::1/128");
        assert_eq!(Prefix::parse("0.0.0.0/0").unwrap().len, 0);
        let e = format!("{:#}", Prefix::parse("10.1.2.3/8").unwrap_err());
        assert!(e.contains("host bits") && e.contains("\"10.0.0.0/8\""), "{e}");
        let e = format!("{:#}", Prefix::parse("fd00::1/8").unwrap_err());
        assert!(e.contains("\"fd00::/8\""), "{e}");
        assert!(Prefix::parse("10.0.0.0/33").is_err());
        assert!(Prefix::parse("cluster").is_err());
    }

    #[test]
    fn names_duplicates_and_maxima() {
        let ok = parse(&table(&[
            ("cluster", &["10.0.0.0/8", "fd00::/8"]),
            ("node", &["127.0.0.0/8"]),
        ]));
        assert_eq!(ok.unwrap().len(), 2);
        assert!(err(&[("other", &[])]).contains("reserved"));
        assert!(err(&[("Cluster", &[])]).contains("lowercase"));
        assert!(err(&[("a-b", &[])]).contains("lowercase"));
        assert!(err(&[(&"a".repeat(32), &[])]).contains("at most 31"));
        let e = err(&[("a", &["10.0.0.0/8"]), ("b", &["10.0.0.0/8"])]);
        assert!(
            e.contains("\"a\"") && e.contains("\"b\"") && e.contains("10.0.0.0/8"),
            "{e}"
        );
        assert!(err(&[("a", &["10.0.0.0/8", "10.0.0.0/8"])]).contains("one class"));
        assert!(err(&[("a", &["10.0.0.1/8"])]).contains("classes.a"));
        let many: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
        let t: BTreeMap<String, Vec<String>> = many.iter().map(|n| (n.clone(), vec![])).collect();
        assert!(format!("{:#}", parse(&t).unwrap_err()).contains("at most 15"));
        let lots: Vec<String> = (0..1025)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let t = BTreeMap::from([("a".to_string(), lots)]);
        assert!(format!("{:#}", parse(&t).unwrap_err()).contains("at most 1024"));
    }

    #[test]
    fn indices_stay_with_names() {
        let first = parse(&table(&[("b", &["10.0.0.0/8"]), ("a", &["fd00::/8"])])).unwrap();
        let t1 = ClassTable::wanted(Some(&first), None);
        assert_eq!(t1.names[&0], "other");
        assert_eq!((t1.names[&1].as_str(), t1.names[&2].as_str()), ("a", "b"));
        assert_eq!(t1.indices, 3);
        // "a" removed, "c" added: "b" keeps 2, "c" takes 3 (1 was just freed).
        let next = parse(&table(&[("b", &["10.0.0.0/8"]), ("c", &["10.1.0.0/16"])])).unwrap();
        let t2 = ClassTable::wanted(Some(&next), Some(&t1));
        assert_eq!(t2.names.get(&2).map(String::as_str), Some("b"));
        assert_eq!(t2.names.get(&3).map(String::as_str), Some("c"));
        assert!(!t2.names.contains_key(&1));
        assert_eq!(t2.prefixes[&Prefix::parse("10.1.0.0/16").unwrap()], 3);
        assert_eq!(t2.indices, 4);
        assert_eq!(ClassTable::wanted(None, Some(&t2)), ClassTable::default());
        let empty = ClassTable::wanted(Some(&[]), None);
        assert_eq!((empty.indices, empty.names.len()), (1, 1));
    }
}
