//! Names of everything a rig creates, all derived from its id.
//!
//! Interfaces live in the root namespace and are limited to 15 characters
//! (IFNAMSIZ - 1): `trig255v249` is the longest the rig produces.

use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Directory holding the allocation locks and the rigs' working directories.
pub const STATE_DIR: &str = "/tmp/testrig";
/// Rig ids are 0..MAX_RIGS: the id is the third octet of the subnet.
pub const MAX_RIGS: u32 = 256;
/// Node k gets host address k + 1 in the /24.
pub const MAX_NODES: usize = 250;
/// First two octets of every rig subnet: 10.231.<id>.0/24.
pub const SUBNET_PREFIX: [u8; 2] = [10, 231];
/// Prefix of every interface and namespace name.
pub const PREFIX: &str = "trig";

pub fn netns(id: u32, k: usize) -> String {
    format!("{PREFIX}{id}n{k}")
}

pub fn veth(id: u32, k: usize) -> String {
    format!("{PREFIX}{id}v{k}")
}

pub fn bridge(id: u32) -> String {
    format!("{PREFIX}{id}br")
}

pub fn node_name(k: usize) -> String {
    format!("node{k}")
}

pub fn addr(id: u32, k: usize) -> Ipv4Addr {
    let [a, b] = SUBNET_PREFIX;
    Ipv4Addr::new(a, b, id as u8, (k + 1) as u8)
}

pub fn subnet(id: u32) -> String {
    let [a, b] = SUBNET_PREFIX;
    format!("{a}.{b}.{id}.0/24")
}

pub fn rig_dir(id: u32) -> PathBuf {
    PathBuf::from(format!("{STATE_DIR}/rig{id}"))
}

pub fn lock_file(id: u32) -> PathBuf {
    PathBuf::from(format!("{STATE_DIR}/rig{id}.lock"))
}

pub fn alloc_lock() -> PathBuf {
    PathBuf::from(format!("{STATE_DIR}/alloc.lock"))
}

/// What kind of rig object a name is.
#[derive(Debug, PartialEq, Eq)]
pub enum Object {
    Netns(usize),
    Veth(usize),
    Bridge,
}

/// Parses a namespace or interface name made by this module.
pub fn parse(name: &str) -> Option<(u32, Object)> {
    let rest = name.strip_prefix(PREFIX)?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || (digits > 1 && rest.starts_with('0')) {
        return None;
    }
    let id: u32 = rest[..digits].parse().ok()?;
    if id >= MAX_RIGS {
        return None;
    }
    let tail = &rest[digits..];
    let index = |s: &str| -> Option<usize> {
        if s.is_empty()
            || !s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() > 1 && s.starts_with('0'))
        {
            return None;
        }
        s.parse().ok()
    };
    let obj = if tail == "br" {
        Object::Bridge
    } else if let Some(k) = tail.strip_prefix('n') {
        Object::Netns(index(k)?)
    } else if let Some(k) = tail.strip_prefix('v') {
        Object::Veth(index(k)?)
    } else {
        return None;
    };
    Some((id, obj))
}

/// Parses `rig<id>` / `rig<id>.lock` entries of [`STATE_DIR`].
pub fn parse_state_entry(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("rig")?;
    let rest = rest.strip_suffix(".lock").unwrap_or(rest);
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok().filter(|id| *id < MAX_RIGS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_ifnamsiz() {
        let id = MAX_RIGS - 1;
        assert!(bridge(id).len() <= 15);
        assert!(veth(id, MAX_NODES - 1).len() <= 15);
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse(&netns(12, 3)), Some((12, Object::Netns(3))));
        assert_eq!(parse(&veth(0, 10)), Some((0, Object::Veth(10))));
        assert_eq!(parse(&bridge(255)), Some((255, Object::Bridge)));
        assert_eq!(parse("trig1"), None);
        assert_eq!(parse("trig256br"), None);
        assert_eq!(parse("trig01br"), None);
        assert_eq!(parse("trig1x0"), None);
        assert_eq!(parse("eth0"), None);
        assert_eq!(parse_state_entry("rig7.lock"), Some(7));
        assert_eq!(parse_state_entry("rig7"), Some(7));
        assert_eq!(parse_state_entry("alloc.lock"), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(addr(5, 0), Ipv4Addr::new(10, 231, 5, 1));
        assert_eq!(addr(5, MAX_NODES - 1), Ipv4Addr::new(10, 231, 5, 250));
        assert_eq!(subnet(5), "10.231.5.0/24");
    }
}
