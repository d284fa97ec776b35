//! OVA archives: a tar file holding an OVF descriptor and the VM's disk files. The disks are
//! read in place, from their byte range inside the archive, never unpacked.
//!
//! [`read`] lists the archive's members (offset and size of each), parses the descriptor (the
//! first `.ovf` member) for the VM name and its disks in `DiskSection` order, and resolves each
//! disk's `fileRef` through `References/File` to the member holding it. [`open_disk`] opens
//! one of those disks through tern-disk.
//!
//! The archive is untrusted input: member ranges are checked against the file's length, the
//! descriptor's size is capped before it is read, and every reference must resolve.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tern_disk::{OpenOptions, VirtualDisk};

/// OVF descriptors are a few KiB; anything this large is not one.
const MAX_DESCRIPTOR: u64 = 16 << 20;
/// More members than any real OVA has; stops a crafted archive from making us list forever.
const MAX_MEMBERS: usize = 100_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OvaVm {
    pub name: String,
    pub disks: Vec<OvaDisk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OvaDisk {
    /// The member's name in the archive (the `ovf:href` of its File).
    pub file: String,
    /// The `ovf:diskId` of the Disk.
    pub disk_id: String,
    /// Virtual size in bytes (`ovf:capacity` times its allocation units).
    pub capacity: u64,
    /// Where the member's bytes start in the archive, and how many there are.
    pub offset: u64,
    pub length: u64,
    /// The `ovf:format` URI, e.g. VMware's stream-optimized VMDK, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OvaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable tar archive: {source}")]
    Tar {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Malformed { path: PathBuf, detail: String },
    #[error("{path}: OVF descriptor {descriptor}: {source}")]
    Xml {
        path: PathBuf,
        descriptor: String,
        #[source]
        source: roxmltree::Error,
    },
    #[error("{path}: {detail}")]
    Unsupported { path: PathBuf, detail: String },
}

struct Member {
    name: String,
    offset: u64,
    length: u64,
}

fn list_members(path: &Path, file: &File, file_len: u64) -> Result<Vec<Member>, OvaError> {
    let tar_err = |source| OvaError::Tar {
        path: path.to_path_buf(),
        source,
    };
    let mut archive = tar::Archive::new(file);
    let mut members = Vec::new();
    for entry in archive.entries_with_seek().map_err(tar_err)? {
        let entry = entry.map_err(tar_err)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()
            .map_err(tar_err)?
            .to_string_lossy()
            .into_owned();
        let offset = entry.raw_file_position();
        let length = entry.size();
        if offset.checked_add(length).is_none_or(|end| end > file_len) {
            return Err(OvaError::Malformed {
                path: path.to_path_buf(),
                detail: format!(
                    "member {name:?} claims {length} bytes at offset {offset}, past the end of the {file_len}-byte archive"
                ),
            });
        }
        members.push(Member {
            name,
            offset,
            length,
        });
        if members.len() > MAX_MEMBERS {
            return Err(OvaError::Malformed {
                path: path.to_path_buf(),
                detail: format!("more than {MAX_MEMBERS} members"),
            });
        }
    }
    Ok(members)
}

/// Attributes are matched by local name: OVF 1.x and 2.x use different namespace URIs, and
/// exporters disagree on prefixes.
fn attr<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name() == name)
        .map(|a| a.value())
}

fn children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

/// Bytes per unit of `ovf:capacityAllocationUnits`: `byte`, `byte * 2^30`, `byte * 1024 * 1024`
/// and the like (DMTF DSP0004 programmatic units), or absent for bytes.
fn allocation_units(units: Option<&str>) -> Option<u64> {
    let Some(units) = units else { return Some(1) };
    let mut factor = 1u64;
    for term in units.split('*').map(str::trim) {
        let v = if term.eq_ignore_ascii_case("byte") {
            1
        } else if let Some((base, exp)) = term.split_once('^') {
            base.trim()
                .parse::<u64>()
                .ok()?
                .checked_pow(exp.trim().parse().ok()?)?
        } else {
            term.parse::<u64>().ok()?
        };
        factor = factor.checked_mul(v)?;
    }
    Some(factor)
}

/// Lists the VM in an OVA and where each of its disks lies in the archive.
pub fn read(path: &Path) -> Result<OvaVm, OvaError> {
    let io_err = |source| OvaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let malformed = |detail: String| OvaError::Malformed {
        path: path.to_path_buf(),
        detail,
    };
    let unsupported = |detail: String| OvaError::Unsupported {
        path: path.to_path_buf(),
        detail,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let file_len = file.metadata().map_err(io_err)?.len();
    let members = list_members(path, &file, file_len)?;
    let desc = members
        .iter()
        .find(|m| m.name.to_ascii_lowercase().ends_with(".ovf"))
        .ok_or_else(|| malformed("no .ovf descriptor in the archive".into()))?;
    if desc.length > MAX_DESCRIPTOR {
        return Err(malformed(format!(
            "descriptor {} is {} bytes; descriptors are at most {MAX_DESCRIPTOR}",
            desc.name, desc.length
        )));
    }
    let mut xml = vec![0u8; desc.length as usize];
    file.seek(SeekFrom::Start(desc.offset)).map_err(io_err)?;
    file.read_exact(&mut xml).map_err(io_err)?;
    let xml = String::from_utf8(xml)
        .map_err(|_| malformed(format!("descriptor {} is not UTF-8", desc.name)))?;
    let doc = roxmltree::Document::parse(&xml).map_err(|source| OvaError::Xml {
        path: path.to_path_buf(),
        descriptor: desc.name.clone(),
        source,
    })?;
    let envelope = doc.root_element();
    if envelope.tag_name().name() != "Envelope" {
        return Err(malformed(format!(
            "descriptor {} is not an OVF Envelope",
            desc.name
        )));
    }

    let references: Vec<_> = children(envelope, "References")
        .flat_map(|r| children(r, "File"))
        .collect();
    let system = envelope
        .descendants()
        .find(|n| n.is_element() && n.tag_name().name() == "VirtualSystem")
        .ok_or_else(|| malformed("the descriptor has no VirtualSystem".into()))?;
    if envelope
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "VirtualSystem")
        .count()
        > 1
    {
        return Err(unsupported(
            "the descriptor holds several virtual systems; export one VM per OVA".into(),
        ));
    }
    let name = children(system, "Name")
        .next()
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .or_else(|| attr(system, "id"))
        .unwrap_or_default()
        .to_string();

    let mut disks = Vec::new();
    for d in children(envelope, "DiskSection").flat_map(|s| children(s, "Disk")) {
        let disk_id = attr(d, "diskId").unwrap_or_default().to_string();
        let file_ref = attr(d, "fileRef").ok_or_else(|| {
            unsupported(format!(
                "disk {disk_id:?} has no fileRef (blank disks are not supported)"
            ))
        })?;
        let capacity = attr(d, "capacity")
            .and_then(|c| c.trim().parse::<u64>().ok())
            .ok_or_else(|| malformed(format!("disk {disk_id:?}: missing or bad ovf:capacity")))?;
        let units = allocation_units(attr(d, "capacityAllocationUnits")).ok_or_else(|| {
            malformed(format!(
                "disk {disk_id:?}: unknown ovf:capacityAllocationUnits {:?}",
                attr(d, "capacityAllocationUnits")
            ))
        })?;
        let capacity = capacity
            .checked_mul(units)
            .ok_or_else(|| malformed(format!("disk {disk_id:?}: capacity overflows")))?;
        let fref = references
            .iter()
            .find(|f| attr(**f, "id") == Some(file_ref))
            .ok_or_else(|| {
                malformed(format!(
                    "disk {disk_id:?}: fileRef {file_ref:?} is not in References"
                ))
            })?;
        let href = attr(*fref, "href")
            .ok_or_else(|| malformed(format!("File {file_ref:?} has no ovf:href")))?;
        if attr(*fref, "compression").is_some_and(|c| !c.is_empty() && c != "identity") {
            return Err(unsupported(format!(
                "File {href:?} is compressed ({}); only uncompressed disk files can be read in place",
                attr(*fref, "compression").unwrap_or_default()
            )));
        }
        if attr(*fref, "chunkSize").is_some() {
            return Err(unsupported(format!(
                "File {href:?} is split into chunks, which are not supported"
            )));
        }
        let member = members
            .iter()
            .find(|m| m.name == href || m.name.strip_prefix("./") == Some(href))
            .ok_or_else(|| malformed(format!("disk file {href:?} is not in the archive")))?;
        if let Some(size) = attr(*fref, "size").and_then(|s| s.trim().parse::<u64>().ok()) {
            if size != member.length {
                return Err(malformed(format!(
                    "File {href:?} is declared as {size} bytes but the archive holds {}",
                    member.length
                )));
            }
        }
        disks.push(OvaDisk {
            file: href.to_string(),
            disk_id,
            capacity,
            offset: member.offset,
            length: member.length,
            format: attr(d, "format").map(str::to_string),
        });
    }
    Ok(OvaVm { name, disks })
}

/// Opens one disk of an OVA (as listed by [`read`]) from its byte range in the archive.
pub fn open_disk(path: &Path, disk: &OvaDisk) -> tern_disk::Result<Box<dyn VirtualDisk>> {
    tern_disk::open_range(path, disk.offset, disk.length, &OpenOptions::default())
}

#[cfg(test)]
mod tests {
    use super::allocation_units;

    #[test]
    fn allocation_units_parse() {
        assert_eq!(allocation_units(None), Some(1));
        assert_eq!(allocation_units(Some("byte")), Some(1));
        assert_eq!(allocation_units(Some("byte * 2^30")), Some(1 << 30));
        assert_eq!(allocation_units(Some("byte * 1024 * 1024")), Some(1 << 20));
        assert_eq!(allocation_units(Some("byte * 2^99")), None);
        assert_eq!(allocation_units(Some("furlongs")), None);
    }
}
