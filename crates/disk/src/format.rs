//! Disk image formats and their names.
//!
//! Lifeboat names formats as users know them (`vhd`); qemu names VHD `vpc`. Any format
//! qemu reads can be backed up; restores write raw, qcow2, vhd or vhdx.

use std::fmt;
use std::str::FromStr;

/// A disk image format.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// A plain byte-for-byte image or block device, read directly.
    Raw,
    /// QEMU copy-on-write v2/v3, with compressed clusters, backing files, dirty bitmaps.
    Qcow2,
    /// Microsoft Virtual Hard Disk (fixed or dynamic); qemu's `vpc`.
    Vhd,
    /// Microsoft Hyper-V VHDX.
    Vhdx,
    /// Any other format qemu reads (vmdk, vdi, …), by its qemu name.
    Other(String),
}

impl Format {
    /// Maps a qemu format name.
    pub fn from_qemu(name: &str) -> Format {
        match name {
            "raw" => Format::Raw,
            "qcow2" => Format::Qcow2,
            "vpc" => Format::Vhd,
            "vhdx" => Format::Vhdx,
            other => Format::Other(other.to_string()),
        }
    }

    /// Maps Lifeboat's name of a format (as [`Format::name`] gives it).
    pub fn from_name(name: &str) -> Format {
        name.parse()
            .unwrap_or_else(|_| Format::Other(name.to_string()))
    }

    /// qemu's name for the format.
    pub fn qemu_name(&self) -> &str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vpc",
            Format::Vhdx => "vhdx",
            Format::Other(name) => name,
        }
    }

    /// Lifeboat's name for the format.
    pub fn name(&self) -> &str {
        match self {
            Format::Vhd => "vhd",
            other => other.qemu_name(),
        }
    }

    /// The usual file extension.
    pub fn extension(&self) -> &str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Vhd => "vhd",
            Format::Vhdx => "vhdx",
            Format::Other(name) => name,
        }
    }

    /// Options for `qemu-img create` so the image has exactly the requested size.
    /// VHD rounds sizes to a CHS geometry unless told otherwise.
    pub fn create_options(&self) -> Option<&'static str> {
        match self {
            Format::Vhd => Some("force_size=on"),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The formats a restore can write.
impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "vhd" | "vpc" => Ok(Format::Vhd),
            "vhdx" => Ok(Format::Vhdx),
            other => Err(format!(
                "unknown target format '{other}': choose raw, qcow2, vhd or vhdx"
            )),
        }
    }
}

/// The file name a disk gets when restored in `target` format: the original name, with its
/// extension replaced when the format changes (`db.qcow2` restored as raw is `db.raw`).
pub fn restored_file_name(original: &str, source: &Format, target: &Format) -> String {
    if source == target {
        return original.to_string();
    }
    let stem = match original.rsplit_once('.') {
        Some((stem, extension))
            if !stem.is_empty()
                && ["raw", "img", "qcow2", "vhd", "vpc", "vhdx", "vmdk", "vdi"]
                    .contains(&extension.to_ascii_lowercase().as_str()) =>
        {
            stem
        }
        _ => original,
    };
    format!("{stem}.{}", target.extension())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restored_names_keep_the_stem_and_change_the_extension_only_when_the_format_changes() {
        assert_eq!(
            restored_file_name("db.qcow2", &Format::Qcow2, &Format::Qcow2),
            "db.qcow2"
        );
        assert_eq!(
            restored_file_name("db.qcow2", &Format::Qcow2, &Format::Raw),
            "db.raw"
        );
        assert_eq!(
            restored_file_name("disk", &Format::Raw, &Format::Vhdx),
            "disk.vhdx"
        );
        assert_eq!(
            restored_file_name("a.b.img", &Format::Raw, &Format::Vhd),
            "a.b.vhd"
        );
        assert_eq!(
            restored_file_name("notes.txt", &Format::Raw, &Format::Qcow2),
            "notes.txt.qcow2"
        );
    }
}
