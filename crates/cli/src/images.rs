//! `tern images`: list the machine images of a data directory and export their disks. Reads the
//! directory through `tern_local::images::ImageCatalog`, which starts no task, so it is safe to
//! run next to `tern serve`.

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use tern_core::images::{Image, ImagesError};
use tern_local::images::ImageCatalog;

use crate::disk::{create, progress_bar, Target};

#[derive(clap::Subcommand)]
pub enum ImagesCommand {
    /// List the registered images, oldest first.
    List {
        #[command(flatten)]
        data: DataDir,
        /// Print the images as a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Write one disk of an image to a file: raw (sparse), stream-optimized VMDK or qcow2.
    ///
    /// The file holds the snapshot's exact bytes (a volume size larger than the snapshot is
    /// what a launched instance would get, not what is exported).
    Export {
        /// The image id (ami-…), as `tern images list` shows it.
        image_id: String,
        /// Which disk: its position in the image's block devices, 0 being the root disk.
        #[arg(long, value_name = "N", default_value_t = 0)]
        disk: usize,
        /// Output format.
        #[arg(long, value_enum)]
        to: Target,
        /// Output file; overwritten if it exists.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        #[command(flatten)]
        data: DataDir,
    },
}

#[derive(clap::Args)]
pub struct DataDir {
    /// Tern's data directory (the one `tern serve` uses).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./tern-data",
        env = "TERN_DATA_DIR"
    )]
    pub data_dir: PathBuf,
}

fn open(dir: &Path) -> anyhow::Result<ImageCatalog> {
    ImageCatalog::open(dir).map_err(|e| match e {
        ImagesError::NotFound(m) => anyhow::anyhow!("{m}"),
        other => anyhow::Error::new(other)
            .context(format!("cannot read the images of {}", dir.display())),
    })
}

pub fn run(cmd: ImagesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImagesCommand::List { data, json } => {
            let catalog = open(&data.data_dir)?;
            let images = catalog.list_images()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&images)?);
            } else {
                print_list(&images);
            }
        }
        ImagesCommand::Export {
            image_id,
            disk,
            to,
            output,
            data,
        } => {
            let catalog = open(&data.data_dir)?;
            let image = match catalog.describe_image(&image_id) {
                Ok(i) => i,
                Err(ImagesError::NotFound(_)) => bail!(
                    "no image {image_id} in {}; `tern images list` shows the images",
                    catalog.db_path().display()
                ),
                Err(e) => return Err(e.into()),
            };
            let Some(device) = image.block_devices.get(disk) else {
                let disks: Vec<String> = image
                    .block_devices
                    .iter()
                    .enumerate()
                    .map(|(i, b)| format!("{i}: {}", b.device_name))
                    .collect();
                bail!(
                    "image {image_id} has {} disk(s) ({}); --disk {disk} is not one of them",
                    disks.len(),
                    disks.join(", ")
                );
            };
            let snapshot = catalog
                .snapshot_disk(&device.snapshot_id)
                .with_context(|| {
                    format!(
                        "cannot read snapshot {} of {image_id} ({})",
                        device.snapshot_id, device.device_name
                    )
                })?;
            let size = tern_disk::VirtualDisk::size(&snapshot);
            let pb = progress_bar(size, "exporting");
            let tick = |n: u64| pb.inc(n);
            match to {
                Target::Raw => tern_disk::write::write_raw(&snapshot, &output, &tick)?,
                Target::VmdkStream => {
                    let name = output
                        .file_name()
                        .map_or("disk.vmdk".into(), |n| n.to_string_lossy().into_owned());
                    tern_disk::write::write_vmdk_stream(
                        &snapshot,
                        BufWriter::with_capacity(1 << 20, create(&output)?),
                        &name,
                        &tick,
                    )?;
                }
                Target::Qcow2 => tern_disk::write::write_qcow2(&snapshot, &output, &tick)?,
            }
            pb.finish_and_clear();
            eprintln!(
                "wrote {} ({} of {image_id}, snapshot {}, {size} bytes)",
                output.display(),
                device.device_name,
                device.snapshot_id
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_list(images: &[Image]) {
    if images.is_empty() {
        println!("no images");
        return;
    }
    println!(
        "{:<21}  {:<20}  {:<7}  {:<12}  {:<30}  disks",
        "image id", "created", "arch", "boot", "name"
    );
    for i in images {
        let created = i
            .created_at
            .replace_nanosecond(0)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        let disks: Vec<String> = i
            .block_devices
            .iter()
            .map(|b| {
                format!(
                    "{}={} ({} GiB)",
                    b.device_name, b.snapshot_id, b.volume_size
                )
            })
            .collect();
        println!(
            "{:<21}  {:<20}  {:<7}  {:<12}  {:<30}  {}",
            i.image_id,
            created,
            i.architecture.as_str(),
            i.boot_mode.as_str(),
            i.name,
            disks.join(", ")
        );
    }
}
