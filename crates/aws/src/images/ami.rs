//! Snapshots and images through EC2: describe, register (idempotent by name), list by Tern's
//! tag, deregister, delete, tag.

use std::collections::HashMap;

use aws_sdk_ec2::types::{
    ArchitectureValues, BlockDeviceMapping, BootModeValues, EbsBlockDevice, Filter, Tag,
};
use tern_core::images::{
    Architecture, BlockDevice, BootMode, Image, ImagesError, RegisterImage, Snapshot,
};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{images_error, tags, to_time, Ec2Images};
use crate::sdk::classify;

/// What EC2 says of a snapshot beyond the port's [`Snapshot`].
#[derive(Debug, Clone)]
pub(super) struct SnapshotInfo {
    /// `pending`, `completed`, `error`, …
    pub state: String,
    pub state_message: Option<String>,
    pub progress: u8,
    pub tags: HashMap<String, String>,
}

const IMAGE_GONE: &[&str] = &["InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"];

fn image_from(i: &aws_sdk_ec2::types::Image) -> Result<Image, ImagesError> {
    let image_id = i.image_id().unwrap_or_default().to_string();
    // EC2 always names the architecture; emulators (moto) may not, and Tern registers x86_64
    // unless told otherwise.
    let architecture = match i.architecture() {
        None => Architecture::X86_64,
        Some(a) => Architecture::parse(a.as_str()).ok_or_else(|| {
            ImagesError::internal(format!(
                "image {image_id} has architecture {a}, which Tern does not make"
            ))
        })?,
    };
    let boot_mode = i
        .boot_mode()
        .and_then(|b| BootMode::parse(b.as_str()))
        .unwrap_or(BootMode::LegacyBios);
    let created_at = i
        .creation_date()
        .and_then(|d| OffsetDateTime::parse(d, &Rfc3339).ok())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let block_devices = i
        .block_device_mappings()
        .iter()
        .filter_map(|m| {
            let ebs = m.ebs()?;
            Some(BlockDevice {
                device_name: m.device_name()?.to_string(),
                snapshot_id: ebs.snapshot_id()?.to_string(),
                volume_size: ebs.volume_size().unwrap_or(0).max(0) as u64,
                delete_on_termination: ebs.delete_on_termination().unwrap_or(false),
            })
        })
        .collect();
    Ok(Image {
        image_id,
        name: i.name().unwrap_or_default().to_string(),
        description: i.description().unwrap_or_default().to_string(),
        created_at,
        architecture,
        boot_mode,
        ena_support: i.ena_support().unwrap_or(false),
        root_device_name: i.root_device_name().unwrap_or_default().to_string(),
        block_devices,
    })
}

fn arch_value(a: Architecture) -> ArchitectureValues {
    ArchitectureValues::from(a.as_str())
}

impl Ec2Images {
    pub(super) async fn snapshot(
        &self,
        snapshot_id: &str,
    ) -> Result<(Snapshot, SnapshotInfo), ImagesError> {
        let out = self
            .ec2
            .describe_snapshots()
            .snapshot_ids(snapshot_id)
            .send()
            .await
            .map_err(|e| images_error(classify("DescribeSnapshots", &e), &[]))?;
        let s = out
            .snapshots()
            .iter()
            .find(|s| s.snapshot_id() == Some(snapshot_id))
            .ok_or_else(|| ImagesError::NotFound(format!("no snapshot {snapshot_id}")))?;
        let tags: HashMap<String, String> = s
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect();
        let gib = s.volume_size().unwrap_or(0).max(0) as u64;
        let snapshot = Snapshot {
            snapshot_id: snapshot_id.to_string(),
            parent_snapshot_id: tags.get(tags::PARENT).cloned(),
            description: s.description().unwrap_or_default().to_string(),
            created_at: to_time(s.start_time()),
            volume_size_bytes: tags
                .get(tags::DISK_SIZE)
                .and_then(|v| v.parse().ok())
                .unwrap_or(gib << 30),
            stored_bytes: s.full_snapshot_size_in_bytes().unwrap_or(0).max(0) as u64,
        };
        let info = SnapshotInfo {
            state: s
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            state_message: s.state_message().map(str::to_string),
            progress: s
                .progress()
                .and_then(|p| p.trim_end_matches('%').parse().ok())
                .unwrap_or(0),
            tags,
        };
        Ok((snapshot, info))
    }

    /// A snapshot of ours started with `token` that has not failed.
    pub(super) async fn snapshot_by_token(
        &self,
        token: &str,
    ) -> Result<Option<String>, ImagesError> {
        let out = self
            .ec2
            .describe_snapshots()
            .owner_ids("self")
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", tags::CLIENT_TOKEN))
                    .values(token)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| images_error(classify("DescribeSnapshots", &e), &[]))?;
        Ok(out
            .snapshots()
            .iter()
            .filter(|s| s.state().map(|s| s.as_str()) != Some("error"))
            .find_map(|s| s.snapshot_id().map(str::to_string)))
    }

    pub(super) async fn tag(
        &self,
        resource: &str,
        pairs: &HashMap<&str, &str>,
    ) -> Result<(), ImagesError> {
        let mut call = self.ec2.create_tags().resources(resource);
        for (k, v) in pairs {
            call = call.tags(Tag::builder().key(*k).value(*v).build());
        }
        call.send()
            .await
            .map_err(|e| images_error(classify("CreateTags", &e), &[]))?;
        Ok(())
    }

    async fn image_named(&self, name: &str) -> Result<Option<Image>, ImagesError> {
        let out = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(Filter::builder().name("name").values(name).build())
            .send()
            .await
            .map_err(|e| images_error(classify("DescribeImages", &e), &[]))?;
        out.images()
            .iter()
            .find(|i| i.name() == Some(name))
            .map(image_from)
            .transpose()
    }

    pub(super) async fn register(&self, request: &RegisterImage) -> Result<Image, ImagesError> {
        let root = request.block_devices.first().ok_or_else(|| {
            ImagesError::InvalidParameter(format!("image {} has no disks", request.name))
        })?;
        let same_disks = |image: &Image| {
            image
                .block_devices
                .iter()
                .map(|d| (&d.device_name, &d.snapshot_id))
                .eq(request
                    .block_devices
                    .iter()
                    .map(|d| (&d.device_name, &d.snapshot_id)))
        };
        let found = match self.image_named(&request.name).await? {
            Some(existing) if same_disks(&existing) => existing,
            Some(existing) => {
                return Err(ImagesError::InvalidParameter(format!(
                    "the image name {} is taken by {}, over other snapshots",
                    request.name, existing.image_id
                )))
            }
            None => {
                let mut call = self
                    .ec2
                    .register_image()
                    .name(&request.name)
                    .description(&request.description)
                    .architecture(arch_value(request.architecture))
                    .boot_mode(BootModeValues::from(request.boot_mode.as_str()))
                    .ena_support(request.ena_support)
                    .virtualization_type("hvm")
                    .root_device_name(&root.device_name);
                for d in &request.block_devices {
                    call = call.block_device_mappings(
                        BlockDeviceMapping::builder()
                            .device_name(&d.device_name)
                            .ebs(
                                EbsBlockDevice::builder()
                                    .snapshot_id(&d.snapshot_id)
                                    .volume_size(d.volume_size as i32)
                                    .delete_on_termination(d.delete_on_termination)
                                    .volume_type("gp3".into())
                                    .build(),
                            )
                            .build(),
                    );
                }
                match call.send().await {
                    Ok(out) => {
                        let id = out.image_id.ok_or_else(|| {
                            ImagesError::internal("RegisterImage gave no image id")
                        })?;
                        self.image(&id).await?
                    }
                    Err(e) => {
                        let f = classify("RegisterImage", &e);
                        match f.code.as_deref() {
                            // A concurrent retry registered it first.
                            Some("InvalidAMIName.Duplicate") => {
                                match self.image_named(&request.name).await? {
                                    Some(i) if same_disks(&i) => i,
                                    _ => return Err(ImagesError::InvalidParameter(f.message)),
                                }
                            }
                            Some(c) if c.starts_with("InvalidSnapshot") => {
                                return Err(images_error(f, &[]))
                            }
                            Some(c) if c.starts_with("Invalid") && !f.transient => {
                                return Err(ImagesError::InvalidParameter(f.message))
                            }
                            _ => return Err(images_error(f, &[])),
                        }
                    }
                }
            }
        };
        // Tagged after registering, also when found by name: a registration whose tag call
        // was lost is listed again once its retry gets here.
        self.tag(
            &found.image_id,
            &HashMap::from([(tags::MANAGED_BY, self.settings.managed_by.as_str())]),
        )
        .await?;
        Ok(found)
    }

    pub(super) async fn image(&self, image_id: &str) -> Result<Image, ImagesError> {
        let out = self
            .ec2
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| images_error(classify("DescribeImages", &e), IMAGE_GONE))?;
        let image = out
            .images()
            .iter()
            .find(|i| i.image_id() == Some(image_id))
            .ok_or_else(|| ImagesError::NotFound(format!("no image {image_id}")))?;
        image_from(image)
    }

    pub(super) async fn tagged_images(&self) -> Result<Vec<Image>, ImagesError> {
        let out = self
            .ec2
            .describe_images()
            .owners("self")
            .filters(
                Filter::builder()
                    .name(format!("tag:{}", tags::MANAGED_BY))
                    .values(&self.settings.managed_by)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| images_error(classify("DescribeImages", &e), &[]))?;
        let mut images = out
            .images()
            .iter()
            .map(image_from)
            .collect::<Result<Vec<_>, _>>()?;
        images.sort_by(|a, b| (a.created_at, &a.image_id).cmp(&(b.created_at, &b.image_id)));
        Ok(images)
    }

    pub(super) async fn deregister(&self, image_id: &str) -> Result<(), ImagesError> {
        match self.ec2.deregister_image().image_id(image_id).send().await {
            Ok(_) => Ok(()),
            Err(e) => match images_error(classify("DeregisterImage", &e), IMAGE_GONE) {
                ImagesError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    pub(super) async fn remove_snapshot(&self, snapshot_id: &str) -> Result<(), ImagesError> {
        match self
            .ec2
            .delete_snapshot()
            .snapshot_id(snapshot_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let f = classify("DeleteSnapshot", &e);
                match f.code.as_deref() {
                    Some("InvalidSnapshot.InUse") => Err(ImagesError::InUse(f.message)),
                    _ => match images_error(f, &[]) {
                        ImagesError::NotFound(_) => Ok(()),
                        other => Err(other),
                    },
                }
            }
        }
    }
}
