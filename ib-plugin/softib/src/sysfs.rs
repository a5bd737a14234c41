//! A sysfs-like tree describing the node's devices, for programs that look
//! for InfiniBand devices in sysfs before (or besides) asking libibverbs.
//!
//! The kernel has no RDMA devices here, so `/sys/class/infiniband` does not
//! exist. rdma-core's `ibv_get_sysfs_path()` (and the drop-in library's)
//! returns `$SYSFS_PATH` when set, and programs build their sysfs paths
//! from it: OpenMPI's openib BTL gives up unless
//! `<sysfs>/class/infiniband` is a directory
//! (`opal_common_verbs_check_basics`). `softib exec` writes this tree under
//! the node's service directory and points `SYSFS_PATH` at it.
//!
//! The files are those the kernel's ib_core and ib_uverbs show, with the
//! same formats, for the fields the device has:
//!
//! ```text
//! class/infiniband/<dev>/{node_type,node_guid,sys_image_guid,fw_ver,hw_rev,
//!                         hca_type,board_id,node_desc}
//! class/infiniband/<dev>/ports/1/{lid,lid_mask_count,sm_lid,sm_sl,state,
//!                         phys_state,rate,cap_mask,link_layer}
//! class/infiniband/<dev>/ports/1/{gids/0,pkeys/0,gid_attrs/types/0}
//! class/infiniband_verbs/abi_version
//! class/infiniband_verbs/uverbs<i>/{ibdev,abi_version}
//! ```
//! Values the service does not report (firmware, rates, state) are the ones
//! the drop-in library's `ibv_query_device`/`ibv_query_port` give.

use crate::proto::DevInfo;
use std::io;
use std::path::Path;

/// `fe80:0000:...`-style: the 16 bytes as eight 4-digit hex groups.
fn gid_text(g: &[u8; 16]) -> String {
    g.chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(":")
}

/// `0002:c903:0010:1234`: a GUID as the kernel prints it.
fn guid_text(guid: u64) -> String {
    let b = guid.to_be_bytes();
    b.chunks(2)
        .map(|c| format!("{:02x}{:02x}", c[0], c[1]))
        .collect::<Vec<_>>()
        .join(":")
}

/// The files of one device, as (path below the tree, contents).
fn device_files(index: usize, d: &DevInfo, host: &str) -> Vec<(String, String)> {
    let dev = format!("class/infiniband/{}", d.name);
    let port = format!("{dev}/ports/1");
    let uverbs = format!("class/infiniband_verbs/uverbs{index}");
    vec![
        (format!("{dev}/node_type"), "1: CA".into()),
        (format!("{dev}/node_guid"), guid_text(d.guid)),
        (format!("{dev}/sys_image_guid"), guid_text(d.guid)),
        (format!("{dev}/fw_ver"), "softib 1.0".into()),
        (format!("{dev}/hw_rev"), "0x1".into()),
        (format!("{dev}/hca_type"), "softib".into()),
        (format!("{dev}/board_id"), "SOFTIB0001".into()),
        (format!("{dev}/node_desc"), format!("{host} {}", d.name)),
        (format!("{port}/lid"), format!("0x{:x}", d.lid)),
        (format!("{port}/lid_mask_count"), "0".into()),
        (format!("{port}/sm_lid"), format!("0x{:x}", d.lid)),
        (format!("{port}/sm_sl"), "0".into()),
        (format!("{port}/state"), "4: ACTIVE".into()),
        (format!("{port}/phys_state"), "5: LinkUp".into()),
        (format!("{port}/rate"), "100 Gb/sec (4X EDR)".into()),
        (format!("{port}/cap_mask"), "0x00000000".into()),
        (format!("{port}/link_layer"), "InfiniBand".into()),
        (format!("{port}/gids/0"), gid_text(&d.gid)),
        (format!("{port}/pkeys/0"), "0xffff".into()),
        (format!("{port}/gid_attrs/types/0"), "IB/RoCE v1".into()),
        (format!("{uverbs}/ibdev"), d.name.clone()),
        (format!("{uverbs}/abi_version"), "1".into()),
    ]
}

/// Writes `path` with `text` and a newline, replacing it atomically, so a
/// program reading while another `softib exec` rewrites the tree sees
/// either version, never a partial file.
fn put(path: &Path, text: &str) -> io::Result<()> {
    if std::fs::read(path).ok().as_deref() == Some(format!("{text}\n").as_bytes()) {
        return Ok(());
    }
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, format!("{text}\n"))?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes the entries of `dir` that `keep` rejects (devices the service
/// no longer has, from an earlier service with more devices).
fn prune(dir: &Path, keep: impl Fn(&str) -> bool) -> io::Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !keep(&name) {
            let p = e.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(())
}

/// Makes `root` describe exactly `devs` (the service's list, in order: the
/// i-th is `uverbs<i>`); `host` goes into each `node_desc`. Safe to run
/// concurrently for the same service.
pub fn write_tree(root: &Path, devs: &[DevInfo], host: &str) -> io::Result<()> {
    std::fs::create_dir_all(root.join("class/infiniband"))?;
    std::fs::create_dir_all(root.join("class/infiniband_verbs"))?;
    put(&root.join("class/infiniband_verbs/abi_version"), "6")?;
    for (i, d) in devs.iter().enumerate() {
        if d.name.is_empty() || d.name.contains('/') || d.name.starts_with('.') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad device name {:?}", d.name),
            ));
        }
        for (rel, text) in device_files(i, d, host) {
            put(&root.join(rel), &text)?;
        }
    }
    prune(&root.join("class/infiniband"), |n| {
        devs.iter().any(|d| d.name == n)
    })?;
    prune(&root.join("class/infiniband_verbs"), |n| {
        n == "abi_version"
            || n.strip_prefix("uverbs")
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i < devs.len())
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(name: &str, lid: u16) -> DevInfo {
        let guid = 0x0002_c903_0010_1234 + lid as u64;
        let mut gid = [0u8; 16];
        gid[0] = 0xfe;
        gid[1] = 0x80;
        gid[8..].copy_from_slice(&guid.to_be_bytes());
        DevInfo {
            name: name.into(),
            guid,
            lid,
            gid,
        }
    }

    fn read(root: &Path, rel: &str) -> String {
        std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    #[test]
    fn tree_has_kernel_formats_and_follows_the_device_list() {
        let root = std::env::temp_dir().join(format!("softib-sysfs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        write_tree(&root, &[dev("softib0", 0x1a2b), dev("softib1", 7)], "node0").unwrap();
        assert!(root.join("class/infiniband").is_dir());
        assert_eq!(read(&root, "class/infiniband/softib0/node_type"), "1: CA\n");
        assert_eq!(
            read(&root, "class/infiniband/softib0/node_guid"),
            "0002:c903:0010:2c5f\n"
        );
        assert_eq!(
            read(&root, "class/infiniband/softib0/ports/1/lid"),
            "0x1a2b\n"
        );
        assert_eq!(read(&root, "class/infiniband/softib1/ports/1/lid"), "0x7\n");
        assert_eq!(
            read(&root, "class/infiniband/softib0/ports/1/state"),
            "4: ACTIVE\n"
        );
        assert_eq!(
            read(&root, "class/infiniband/softib0/ports/1/gids/0"),
            "fe80:0000:0000:0000:0002:c903:0010:2c5f\n"
        );
        assert_eq!(
            read(&root, "class/infiniband/softib1/node_desc"),
            "node0 softib1\n"
        );
        assert_eq!(
            read(&root, "class/infiniband_verbs/uverbs1/ibdev"),
            "softib1\n"
        );
        // A later service with one device and another LID: the tree follows.
        write_tree(&root, &[dev("softib0", 0x99)], "node0").unwrap();
        assert_eq!(
            read(&root, "class/infiniband/softib0/ports/1/lid"),
            "0x99\n"
        );
        assert!(!root.join("class/infiniband/softib1").exists());
        assert!(!root.join("class/infiniband_verbs/uverbs1").exists());
        assert!(root.join("class/infiniband_verbs/uverbs0/ibdev").exists());
        assert!(write_tree(&root, &[dev("../x", 1)], "n").is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
