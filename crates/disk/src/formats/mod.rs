//! One module per image format. Each exposes its images as a [`crate::VirtualDisk`].

pub mod qcow2;
pub mod raw;
pub mod vhd;
pub mod vhdx;
pub mod vmdk;
