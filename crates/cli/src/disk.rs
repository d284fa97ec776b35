//! `tern disk`: inspect, convert and diff disk images with the `tern-disk` library.

use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tern_disk::blockmap::BlockMap;
use tern_disk::delta::{self, DeltaReader};
use tern_disk::inspect::{self, InspectionReport};
use tern_disk::{Format, OpenOptions, VirtualDisk};

#[derive(clap::Subcommand)]
pub enum DiskCommand {
    /// Show an image's format, virtual size, allocated bytes, partitions and filesystems.
    ///
    /// The format is detected from the content (never the file name) unless --format says it.
    Info {
        /// The image: raw, qcow2, VMDK (sparse, stream-optimized or a descriptor), VHD or VHDX.
        file: PathBuf,
        /// Print the report as JSON (the shape the connector ships in the server inventory).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Convert an image to raw (sparse), stream-optimized VMDK (for EC2 ImportSnapshot) or qcow2.
    Convert {
        /// Input image, any supported format.
        input: PathBuf,
        /// Output file; overwritten if it exists.
        output: PathBuf,
        /// Output format.
        #[arg(long, value_enum)]
        to: Target,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Compute the 512 KiB block map of an image (all-zero flag and BLAKE3 digest per block).
    Blockmap {
        file: PathBuf,
        /// Where to write the block map.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Write the blocks of FILE that changed since MAP was taken as a delta object.
    ///
    /// Blocks that became all-zero are included (as zero entries): on an incremental snapshot
    /// they must still be written.
    Delta {
        /// Block map of the previous state (from `tern disk blockmap` or an earlier delta).
        map: PathBuf,
        /// The image as it is now.
        file: PathBuf,
        /// Where to write the delta object.
        #[arg(short, long)]
        output: PathBuf,
        /// Also write the block map of FILE as read now, the base for the next delta.
        #[arg(long, value_name = "MAP")]
        new_map: Option<PathBuf>,
        #[command(flatten)]
        open: OpenArgs,
    },
    /// Apply a delta object onto BASE and write the result as a raw image.
    Apply {
        /// The image the delta's block map was taken from (any supported format).
        base: PathBuf,
        /// The delta object.
        delta: PathBuf,
        /// Output raw image; overwritten if it exists.
        #[arg(short, long)]
        output: PathBuf,
        #[command(flatten)]
        open: OpenArgs,
    },
}

#[derive(clap::Args)]
pub struct OpenArgs {
    /// State the input format instead of detecting it: raw, qcow2, vmdk, vhd, vhdx.
    #[arg(long = "format", short = 'f', value_name = "FORMAT")]
    format: Option<Format>,
    /// Backing file of a qcow2 input; repeat for each level of a chain, nearest first. Backing
    /// references inside images are never followed unless given here.
    #[arg(long = "backing", value_name = "FILE")]
    backing: Vec<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Target {
    /// Raw image, sparse where the disk is zero.
    Raw,
    /// Stream-optimized VMDK: compressed grains, zero grains omitted.
    VmdkStream,
    /// qcow2 v3, 64 KiB clusters, zero clusters omitted.
    Qcow2,
}

impl OpenArgs {
    fn open(&self, path: &Path) -> anyhow::Result<Box<dyn VirtualDisk>> {
        let opts = OpenOptions {
            format: self.format,
            backing_chain: self.backing.clone(),
        };
        tern_disk::open(path, &opts).with_context(|| format!("cannot open {}", path.display()))
    }
}

/// A progress bar on a terminal, nothing when stderr is piped or redirected.
pub(crate) fn progress_bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

#[derive(Serialize)]
struct InfoReport {
    file: String,
    format: Format,
    variant: String,
    virtual_size: u64,
    allocated_bytes: u64,
    #[serde(flatten)]
    inspection: InspectionReport,
}

pub fn run(cmd: DiskCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DiskCommand::Info { file, json, open } => {
            let disk = open.open(&file)?;
            let allocated = disk.allocated()?.iter().map(|e| e.length).sum();
            let inspection =
                inspect::inspect(disk.as_ref()).context("cannot read the partition table")?;
            let report = InfoReport {
                file: file.display().to_string(),
                format: disk.format(),
                variant: disk.variant(),
                virtual_size: disk.size(),
                allocated_bytes: allocated,
                inspection,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_info(&report);
            }
        }
        DiskCommand::Convert {
            input,
            output,
            to,
            open,
        } => {
            let disk = open.open(&input)?;
            let pb = progress_bar(disk.size(), "converting");
            let tick = |n: u64| pb.inc(n);
            match to {
                Target::Raw => tern_disk::write::write_raw(disk.as_ref(), &output, &tick)?,
                Target::VmdkStream => {
                    let name = output
                        .file_name()
                        .map_or("disk.vmdk".into(), |n| n.to_string_lossy().into_owned());
                    let f = create(&output)?;
                    tern_disk::write::write_vmdk_stream(
                        disk.as_ref(),
                        BufWriter::with_capacity(1 << 20, f),
                        &name,
                        &tick,
                    )?;
                }
                Target::Qcow2 => tern_disk::write::write_qcow2(disk.as_ref(), &output, &tick)?,
            }
            pb.finish_and_clear();
            eprintln!("wrote {}", output.display());
        }
        DiskCommand::Blockmap { file, output, open } => {
            let disk = open.open(&file)?;
            let pb = progress_bar(disk.size(), "hashing");
            let map = BlockMap::compute(disk.as_ref(), &|n| pb.inc(n))?;
            pb.finish_and_clear();
            map.write_to(BufWriter::new(create(&output)?))?;
            println!(
                "{} blocks of {} bytes, {} non-zero; block map written to {}",
                map.blocks.len(),
                map.block_size,
                map.nonzero_blocks(),
                output.display()
            );
        }
        DiskCommand::Delta {
            map,
            file,
            output,
            new_map,
            open,
        } => {
            let old = BlockMap::read_from(std::io::BufReader::new(
                File::open(&map).with_context(|| format!("cannot open {}", map.display()))?,
            ))
            .with_context(|| format!("cannot read block map {}", map.display()))?;
            let disk = open.open(&file)?;
            let pb = progress_bar(disk.size(), "comparing");
            let s = delta::create(
                &old,
                disk.as_ref(),
                BufWriter::with_capacity(1 << 20, create(&output)?),
                &|n| pb.inc(n),
            )?;
            pb.finish_and_clear();
            if let Some(p) = new_map {
                s.new_map.write_to(BufWriter::new(create(&p)?))?;
            }
            println!(
                "{} changed blocks ({} now zero), {} data bytes; delta object of {} bytes written to {}",
                s.changed_blocks,
                s.zero_blocks,
                s.data_bytes,
                s.object_bytes,
                output.display()
            );
        }
        DiskCommand::Apply {
            base,
            delta: delta_path,
            output,
            open,
        } => {
            let disk = open.open(&base)?;
            let f = File::open(&delta_path)
                .with_context(|| format!("cannot open {}", delta_path.display()))?;
            let mut reader = DeltaReader::new(std::io::BufReader::new(f))
                .with_context(|| format!("cannot read delta {}", delta_path.display()))?;
            let pb = progress_bar(disk.size(), "applying");
            delta::apply(disk.as_ref(), &mut reader, &output, &|n| pb.inc(n))?;
            pb.finish_and_clear();
            println!(
                "applied {} blocks; wrote {}",
                reader.entries().len(),
                output.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn create(path: &Path) -> anyhow::Result<File> {
    File::create(path).with_context(|| format!("cannot create {}", path.display()))
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {} ({n} bytes)", UNITS[u])
    }
}

fn print_info(r: &InfoReport) {
    println!("file:            {}", r.file);
    println!("format:          {} ({})", r.format, r.variant);
    println!("virtual size:    {}", human(r.virtual_size));
    println!("allocated:       {}", human(r.allocated_bytes));
    let i = &r.inspection;
    println!(
        "partition table: {}",
        match i.partition_table {
            inspect::PartitionTable::None => "none",
            inspect::PartitionTable::Mbr => "MBR",
            inspect::PartitionTable::Gpt => "GPT",
        }
    );
    if let Some(fs) = i.whole_disk_filesystem {
        println!("filesystem:      {} (whole disk)", fs.name());
    }
    println!(
        "EFI system partition: {}",
        if i.efi_system_partition { "yes" } else { "no" }
    );
    if !i.partitions.is_empty() {
        println!(
            "{:>3}  {:>5}  {:>14}  {:>14}  {:<10}  type",
            "#", "boot", "start", "size", "filesystem"
        );
        for p in &i.partitions {
            let ty = match &p.type_name {
                Some(n) => format!("{n} ({})", p.type_id),
                None => p.type_id.clone(),
            };
            println!(
                "{:>3}  {:>5}  {:>14}  {:>14}  {:<10}  {}",
                p.number,
                if p.bootable { "*" } else { "" },
                p.start,
                p.size,
                p.filesystem.map_or("-", |f| f.name()),
                ty
            );
        }
    }
    for w in &i.warnings {
        println!("warning: {w}");
    }
}
