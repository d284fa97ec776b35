//! The integration tests of tern-connector, in one binary: replication runs against a real S3
//! protocol server (moto, started per test on a free port) with disks made by `qemu-img`, OVA
//! archives built here, and the agent against an in-process `tern serve`.

mod agent;
mod bitmap;
#[cfg(feature = "libvirt")]
mod libvirt;
mod ova;
mod replicate;
mod support;
