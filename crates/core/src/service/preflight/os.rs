//! The guest operating system as the inventory tells it, and VM Import's list of systems.

use serde_json::Value;

use crate::enums::OsType;
use crate::model::Server;

/// The guest OS as far as the inventory knows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct GuestOs {
    pub os_type: Option<OsType>,
    /// `inspection.os.name`, e.g. "Ubuntu", "Windows Server 2019".
    pub name: Option<String>,
    /// `inspection.os.version`, e.g. "22.04", "2019".
    pub version: Option<String>,
}

impl GuestOs {
    pub(super) fn of(server: &Server) -> Self {
        let os = server.inspection.as_ref().and_then(|i| i.get("os"));
        let text = |k: &str| {
            os.and_then(|o| o.get(k))
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let name = text("name");
        let os_type = server.os_type.or_else(|| {
            let n = name.as_deref()?.to_ascii_lowercase();
            Some(if n.contains("windows") {
                OsType::Windows
            } else {
                OsType::Linux
            })
        });
        Self {
            os_type,
            name,
            version: text("version"),
        }
    }

    pub(super) fn describe(&self) -> String {
        match (&self.name, &self.version) {
            // A name that carries its version ("Windows Server 2019") says enough.
            (Some(n), Some(v)) if !n.contains(|c: char| c.is_ascii_digit()) => format!("{n} {v}"),
            (Some(n), _) => n.clone(),
            (None, Some(v)) => v.clone(),
            (None, None) => "an unknown version".into(),
        }
    }

    /// Known well enough to be checked against VM Import's list.
    pub(super) fn release(&self) -> Option<Release> {
        release(self.name.as_deref()?, self.version.as_deref())
    }
}

/// A system of VM Import's list and the version found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Release {
    pub family: &'static Family,
    pub version: (u32, u32),
}

pub(super) struct Family {
    /// Lower-case words that identify it in `os.name`.
    keys: &'static [&'static str],
    pub display: &'static str,
    pub windows: bool,
    /// Windows client editions are licensed only as BYOL.
    pub client: bool,
    /// Oldest and newest version VM Import lists (`(major, minor)`).
    pub oldest: (u32, u32),
    pub newest: (u32, u32),
    /// Versions inside the range VM Import excludes, with why.
    pub excluded: &'static [((u32, u32), &'static str)],
    /// Oldest version that boots with UEFI after import (`None`: UEFI not supported).
    pub uefi_from: Option<(u32, u32)>,
}

impl std::fmt::Debug for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display)
    }
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

/// VM Import's operating systems (vmie_prereqs.md as SMS used it, newest versions as listed
/// in 2019; a newer version only warns). Windows Server versions are years; client versions
/// are the edition number (8.1 = (8, 1)).
static FAMILIES: &[Family] = &[
    Family {
        keys: &["windows server"],
        display: "Windows Server",
        windows: true,
        client: false,
        oldest: (2003, 0),
        newest: (2019, 0),
        excluded: &[],
        uefi_from: Some((2003, 0)),
    },
    Family {
        keys: &["windows"],
        display: "Windows",
        windows: true,
        client: true,
        oldest: (7, 0),
        newest: (10, 0),
        excluded: &[],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["ubuntu"],
        display: "Ubuntu",
        windows: false,
        client: false,
        oldest: (12, 4),
        newest: (18, 4),
        excluded: &[],
        uefi_from: Some((16, 4)),
    },
    Family {
        keys: &["red hat", "rhel"],
        display: "Red Hat Enterprise Linux",
        windows: false,
        client: false,
        oldest: (5, 1),
        newest: (7, 6),
        excluded: &[((6, 0), "6.0 lacks required drivers")],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["centos"],
        display: "CentOS",
        windows: false,
        client: false,
        oldest: (5, 1),
        newest: (7, 6),
        excluded: &[((6, 0), "6.0 lacks required drivers")],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["oracle"],
        display: "Oracle Linux",
        windows: false,
        client: false,
        oldest: (5, 10),
        newest: (7, 6),
        excluded: &[],
        uefi_from: Some((7, 0)),
    },
    Family {
        keys: &["suse", "sles"],
        display: "SUSE Linux Enterprise Server",
        windows: false,
        client: false,
        oldest: (11, 1),
        newest: (12, 3),
        excluded: &[],
        uefi_from: Some((12, 3)),
    },
    Family {
        keys: &["debian"],
        display: "Debian",
        windows: false,
        client: false,
        oldest: (6, 0),
        newest: (8, 0),
        excluded: &[],
        uefi_from: Some((10, 0)),
    },
    Family {
        keys: &["fedora"],
        display: "Fedora Server",
        windows: false,
        client: false,
        oldest: (19, 0),
        newest: (21, 0),
        excluded: &[],
        uefi_from: None,
    },
    Family {
        keys: &["amazon linux"],
        display: "Amazon Linux",
        windows: false,
        client: false,
        oldest: (2, 0),
        newest: (2, 0),
        excluded: &[],
        uefi_from: Some((2, 0)),
    },
];

/// `"22.04"` → (22, 4); `"7"` → (7, 0); `"SP3"`-style suffixes are ignored.
pub(super) fn parse_version(text: &str) -> Option<(u32, u32)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut parts = text[start..]
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

fn release(name: &str, version: Option<&str>) -> Option<Release> {
    let lower = name.to_ascii_lowercase();
    let family = FAMILIES
        .iter()
        .find(|f| f.keys.iter().any(|k| lower.contains(k)))?;
    let version = if family.windows {
        // The name says it ("Windows Server 2012 R2", "Windows 8.1 Pro"); a version alone
        // counts when it is one the list uses (a year for servers, not the kernel's "10.0").
        let numeric = |t: &str| {
            t.starts_with(|c: char| c.is_ascii_digit())
                .then(|| parse_version(t))
                .flatten()
        };
        let from_name = lower.split_whitespace().find_map(numeric);
        let from_version = version
            .and_then(numeric)
            .filter(|v| family.client || v.0 >= 2000);
        from_name.or(from_version)?
    } else {
        parse_version(version?)?
    };
    Some(Release { family, version })
}

/// A version as the family writes it: "2019", "8.1", "12.04", "7.6".
pub(super) fn show((major, minor): (u32, u32), family: &Family) -> String {
    if family.windows && minor == 0 {
        major.to_string()
    } else if family.display == "Ubuntu" {
        format!("{major}.{minor:02}")
    } else {
        format!("{major}.{minor}")
    }
}
