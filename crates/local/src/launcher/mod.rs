//! The local `Launcher` of `tern serve`: runs each `AWS::EC2::Instance` of an application's
//! template as a QEMU guest, in the order the template's `DependsOn` gives.
//!
//! A stack is a directory under `<data dir>/instances/` ([`instances`]). Creating one plans the
//! template ([`plan`]), then, level by level, exports each image's disks from the local image
//! store once (qcow2, shared by every instance of that image), gives every instance a qcow2
//! overlay on them (sized as the image's volume), a NoCloud seed with its user data (a read-only
//! FAT drive labelled `cidata`, as cloud-init looks for), and starts QEMU detached with the
//! instance type's vCPUs and memory (memory capped by [`LauncherOptions::max_memory_mib`],
//! `tern serve --launch-max-memory-mib`). Legacy-BIOS images boot under SeaBIOS; UEFI images
//! (boot mode `uefi`, and `uefi-preferred` where UEFI firmware is found) under OVMF, the boot
//! kit's or else the system's, with a UEFI variable store of their own; a UEFI image with no
//! OVMF anywhere is refused saying what to install. An instance runs once its serial console
//! shows output (the firmware prints first, whatever the OS); the next level starts only then,
//! as CloudFormation starts a resource once those it depends on are complete. KVM when `/dev/kvm` may be opened, TCG otherwise; a KVM that shows
//! nothing within 10 s (seen in nested sandboxes) is given up for TCG, and the instance record
//! says so.
//!
//! A failed create removes what it started and ends as `ROLLBACK_COMPLETE` with the reason
//! (LaunchApp's LAUNCH_FAILED). A stack left half-made by a stopped `tern serve` is rolled back
//! (or its delete finished) the next time its state is asked for. QEMU missing: LaunchApp is
//! refused with what to install, before anything is written.

mod commands;
mod instances;
mod plan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tern_core::enums::ScriptType;
use tern_core::images::BootMode;
use tern_core::launcher::{
    CommandRequest, CommandStatus, LaunchError, Launcher, StackState, VALIDATION_INSTANCE_TAG,
};

pub use instances::{find, list, status, stop as stop_instance, InstanceRecord, StackRecord};
pub use plan::{instance_size, plan, InstancePlan};

use crate::guest::{Accel, BootKit, Qemu, UefiFirmware};
use crate::images::ImageCatalog;

/// The QEMU binary the launcher runs.
pub const QEMU: &str = crate::guest::QEMU_SYSTEM;

/// An instance's own copy of the UEFI variable store, in its directory.
const UEFI_VARS: &str = "uefi-vars.fd";

/// How the local launcher runs guests.
#[derive(Debug, Clone)]
pub struct LauncherOptions {
    /// The QEMU to run; `None` finds one as `tern demo --boot` does (`$TERN_QEMU_SYSTEM`, the
    /// boot kit's, `PATH`).
    pub qemu: Option<PathBuf>,
    /// The boot kit whose QEMU to use when none is named (`None`: its default place).
    pub boot_kit: Option<PathBuf>,
    pub accel: Accel,
    /// The most memory one guest gets, whatever its instance type has.
    pub max_memory_mib: u32,
    /// How long a TCG guest may take to show console output before its launch fails.
    pub console_timeout: Duration,
}

impl Default for LauncherOptions {
    fn default() -> Self {
        Self {
            qemu: None,
            boot_kit: None,
            accel: Accel::Auto,
            max_memory_mib: 2048,
            console_timeout: Duration::from_secs(60),
        }
    }
}

/// A create or delete in progress in this process.
#[derive(Default)]
struct StackCtl {
    cancel: AtomicBool,
    deleting: AtomicBool,
    /// Held by whichever task changes the stack's record.
    busy: Arc<tokio::sync::Mutex<()>>,
}

pub struct QemuLauncher {
    data_dir: PathBuf,
    region: String,
    qemu: Result<Qemu, String>,
    opts: LauncherOptions,
    stacks: Mutex<HashMap<String, Arc<StackCtl>>>,
    commands: Arc<commands::Commands>,
}

/// What LaunchApp answers on a host without QEMU.
pub fn missing_qemu_message(why: &str) -> String {
    format!(
        "LaunchApp on tern serve runs each instance of the application as a QEMU guest, and {why}. Install QEMU (Debian/Ubuntu: apt-get install qemu-system-x86; Fedora: dnf install qemu-system-x86; macOS: brew install qemu) or build Tern's private one with scripts/boot-kit.sh, restart tern serve and LaunchApp again. GenerateTemplate writes the application's CloudFormation template meanwhile."
    )
}

impl QemuLauncher {
    /// A launcher for the stacks of `data_dir`, running the QEMU `opts` names or finds.
    pub fn new(data_dir: PathBuf, region: String, opts: LauncherOptions) -> Self {
        let qemu = BootKit::find(opts.boot_kit.as_deref())
            .and_then(|kit| Qemu::locate(opts.qemu.as_deref(), kit.as_ref()))
            .map_err(|e| e.to_string());
        Self::with_qemu(data_dir, region, qemu, opts)
    }

    /// A launcher running `qemu` (an `Err` is the reason there is none). The tools are looked
    /// for once, here: `qemu-img` too, which makes each instance's disk overlays.
    pub fn with_qemu(
        data_dir: PathBuf,
        region: String,
        qemu: Result<Qemu, String>,
        opts: LauncherOptions,
    ) -> Self {
        let qemu = qemu.and_then(|q| {
            let img = std::process::Command::new("qemu-img")
                .arg("--version")
                .output();
            if img.is_ok_and(|o| o.status.success()) {
                Ok(q)
            } else {
                Err("qemu-img, which makes each instance's disk overlays, is not installed (Debian/Ubuntu: apt-get install qemu-utils)".to_string())
            }
        });
        Self {
            data_dir,
            region,
            qemu,
            opts,
            stacks: Mutex::new(HashMap::new()),
            commands: Arc::default(),
        }
    }

    pub fn qemu(&self) -> Option<&Qemu> {
        self.qemu.as_ref().ok()
    }

    /// One line for `tern serve`'s banner: what LaunchApp runs, or why it cannot.
    pub fn summary(&self) -> String {
        match &self.qemu {
            Ok(q) => format!(
                "LaunchApp runs each instance as a QEMU guest: {} ({}, at most {} MiB each; {}); `tern instances list` shows them",
                q.binary.display(),
                match self.opts.accel {
                    Accel::Auto => "KVM when /dev/kvm opens, else TCG",
                    Accel::Kvm => "KVM",
                    Accel::Tcg => "TCG",
                },
                self.opts.max_memory_mib,
                match &q.uefi {
                    Some(fw) => format!("UEFI images under {}", fw.code.display()),
                    None => "no UEFI firmware, so UEFI images are refused: apt-get install ovmf, or run scripts/boot-kit.sh".into(),
                }
            ),
            Err(e) => format!("LaunchApp is unavailable: {e}"),
        }
    }

    fn ctl(&self, name: &str) -> Arc<StackCtl> {
        let mut m = self.stacks.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(name.to_string()).or_default().clone()
    }

    fn running_ctl(&self, name: &str) -> Option<Arc<StackCtl>> {
        let m = self.stacks.lock().unwrap_or_else(|p| p.into_inner());
        m.get(name).cloned()
    }

    /// The instance `instance_id` of any local stack.
    fn instance(&self, instance_id: &str) -> Result<InstanceRecord, LaunchError> {
        let stacks = instances::list(&self.data_dir).map_err(LaunchError::Transient)?;
        stacks
            .into_iter()
            .filter(|s| s.status != status::DELETE_COMPLETE)
            .flat_map(|s| s.instances)
            .find(|i| i.instance_id == instance_id)
            .ok_or_else(|| {
                failed(format!(
                    "there is no instance {instance_id} on this host (`tern instances list` shows them)"
                ))
            })
    }

    fn stack_dir(&self, name: &str) -> PathBuf {
        instances::root(&self.data_dir).join(name)
    }

    fn job(&self) -> Job {
        Job {
            data_dir: self.data_dir.clone(),
            qemu: self.qemu.clone(),
            opts: self.opts.clone(),
        }
    }
}

/// A stack's name from its id (`arn:…:stack/<name>/<uuid>`).
fn stack_name(stack_id: &str) -> Result<&str, LaunchError> {
    stack_id
        .rsplit_once(":stack/")
        .and_then(|(_, rest)| rest.split('/').next())
        .filter(|n| !n.is_empty() && !n.contains(['.', '\\']))
        .ok_or_else(|| LaunchError::Failed(format!("{stack_id} is not a local stack id")))
}

fn failed(e: String) -> LaunchError {
    LaunchError::Failed(e)
}

#[async_trait]
impl Launcher for QemuLauncher {
    async fn check(&self) -> Result<(), LaunchError> {
        match &self.qemu {
            Ok(_) => Ok(()),
            Err(e) => Err(LaunchError::Unavailable(missing_qemu_message(e))),
        }
    }

    async fn create_stack(
        &self,
        stack_name: &str,
        template: &Value,
        _role_name: Option<&str>,
    ) -> Result<String, LaunchError> {
        self.check().await?;
        if stack_name.is_empty()
            || !stack_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(failed(format!("{stack_name:?} is not a stack name")));
        }
        let dir = self.stack_dir(stack_name);
        let existing = |dir: &Path| {
            StackRecord::load(dir)
                .ok()
                .filter(|r| r.status != status::DELETE_COMPLETE)
                .map(|r| r.stack_id)
        };
        if let Some(id) = existing(&dir) {
            return Ok(id);
        }
        let ctl = self.ctl(stack_name);
        let Ok(guard) = ctl.busy.clone().try_lock_owned() else {
            return Err(LaunchError::Transient(format!(
                "stack {stack_name} is being changed; try again in a moment"
            )));
        };
        if let Some(id) = existing(&dir) {
            return Ok(id);
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .map_err(|e| failed(format!("cannot clear {}: {e}", dir.display())))?;
        }
        let plans = plan(template).map_err(failed)?;
        let stack_id = format!(
            "arn:aws:cloudformation:{}:{}:stack/{stack_name}/{}",
            self.region,
            crate::s3::LOCAL_ACCOUNT_ID,
            uuid::Uuid::new_v4()
        );
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let instances = plans
            .iter()
            .map(|p| -> Result<InstanceRecord, LaunchError> {
                let h = blake3::hash(format!("{stack_id}/{}", p.logical_id).as_bytes());
                let instance_id = format!("i-{}", &h.to_hex()[..17]);
                let vcpus = p.vcpus.min(cores);
                let memory_mib = p.memory_mib.min(self.opts.max_memory_mib);
                let size_note = (vcpus < p.vcpus || memory_mib < p.memory_mib).then(|| {
                    format!(
                        "{} has {} vCPUs and {} MiB; this host gives {vcpus} vCPUs (its cores) and {memory_mib} MiB (tern serve --launch-max-memory-mib)",
                        p.instance_type, p.vcpus, p.memory_mib
                    )
                });
                let command_socket = if p.validation_target {
                    Some(commands::socket_path(&instance_id).map_err(|e| {
                        failed(format!("cannot make the command channel of {instance_id}: {e}"))
                    })?)
                } else {
                    None
                };
                Ok(InstanceRecord {
                    dir: dir.join(&instance_id),
                    command_socket,
                    instance_id,
                    logical_id: p.logical_id.clone(),
                    name: p.name.clone(),
                    image_id: p.image_id.clone(),
                    instance_type: p.instance_type.clone(),
                    vcpus,
                    memory_mib,
                    size_note,
                    launch_level: p.level,
                    accel: None,
                    accel_note: None,
                    pid: None,
                    running_since: None,
                    uefi: None,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let record = StackRecord {
            stack_id: stack_id.clone(),
            stack_name: stack_name.to_string(),
            status: status::CREATE_IN_PROGRESS.into(),
            reason: None,
            instances,
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        record.save(&dir).map_err(failed)?;
        ctl.cancel.store(false, Ordering::SeqCst);
        let job = self.job();
        let user_data: Vec<Option<String>> = plans.into_iter().map(|p| p.user_data).collect();
        let task_ctl = ctl.clone();
        tokio::spawn(async move {
            let _held = guard;
            let work = tokio::task::spawn_blocking(move || {
                job.create(&dir, record, &user_data, &task_ctl)
            });
            if let Err(e) = work.await {
                tracing::error!(error = %e, "the local launch task failed");
            }
        });
        Ok(stack_id)
    }

    async fn stack_state(&self, stack_id: &str) -> Result<StackState, LaunchError> {
        let name = stack_name(stack_id)?;
        let dir = self.stack_dir(name);
        let record = match StackRecord::load(&dir) {
            Ok(r) if r.stack_id == stack_id => r,
            // A stack made again under the same name: the old one was deleted.
            Ok(_) => return Ok(StackState::DeleteComplete),
            Err(_) if !dir.exists() => return Ok(StackState::DeleteComplete),
            Err(e) => return Err(LaunchError::Transient(e)),
        };
        let ctl = self.running_ctl(name);
        if ctl
            .as_ref()
            .is_some_and(|c| c.deleting.load(Ordering::SeqCst))
            && !matches!(
                record.status.as_str(),
                status::DELETE_COMPLETE | status::DELETE_FAILED
            )
        {
            return Ok(StackState::DeleteInProgress);
        }
        let busy = ctl.as_ref().is_some_and(|c| c.busy.try_lock().is_err());
        Ok(match record.status.as_str() {
            status::CREATE_IN_PROGRESS if !busy => {
                // Left so by a tern serve that stopped mid-launch: roll it back now.
                let reason = "tern serve stopped while the stack was being created; its instances were stopped".to_string();
                self.job().remove(
                    &dir,
                    record,
                    status::ROLLBACK_COMPLETE,
                    Some(reason.clone()),
                );
                StackState::CreateFailed(reason)
            }
            status::DELETE_IN_PROGRESS if !busy => {
                self.job()
                    .remove(&dir, record, status::DELETE_COMPLETE, None);
                StackState::DeleteComplete
            }
            status::CREATE_IN_PROGRESS => StackState::CreateInProgress,
            status::CREATE_COMPLETE => StackState::CreateComplete,
            status::ROLLBACK_COMPLETE => {
                StackState::CreateFailed(record.reason.unwrap_or_default())
            }
            status::DELETE_IN_PROGRESS => StackState::DeleteInProgress,
            status::DELETE_COMPLETE => StackState::DeleteComplete,
            _ => StackState::DeleteFailed(record.reason.unwrap_or_default()),
        })
    }

    async fn delete_stack(&self, stack_id: &str) -> Result<(), LaunchError> {
        let name = stack_name(stack_id)?.to_string();
        let dir = self.stack_dir(&name);
        match StackRecord::load(&dir) {
            Ok(r) if r.stack_id == stack_id && r.status != status::DELETE_COMPLETE => {}
            _ => return Ok(()),
        }
        let ctl = self.ctl(&name);
        ctl.cancel.store(true, Ordering::SeqCst);
        ctl.deleting.store(true, Ordering::SeqCst);
        let job = self.job();
        let stack_id = stack_id.to_string();
        tokio::spawn(async move {
            let _held = ctl.busy.clone().lock_owned().await;
            let work = tokio::task::spawn_blocking(move || {
                if let Ok(mut r) = StackRecord::load(&dir) {
                    if r.stack_id == stack_id && r.status != status::DELETE_COMPLETE {
                        r.status = status::DELETE_IN_PROGRESS.into();
                        let _ = r.save(&dir);
                        job.remove(&dir, r, status::DELETE_COMPLETE, None);
                    }
                }
            });
            let _ = work.await;
            ctl.deleting.store(false, Ordering::SeqCst);
        });
        Ok(())
    }

    async fn console_output(
        &self,
        stack_id: &str,
        logical_id: &str,
    ) -> Result<Option<String>, LaunchError> {
        let dir = self.stack_dir(stack_name(stack_id)?);
        let record = match StackRecord::load(&dir) {
            Ok(r) if r.stack_id == stack_id => r,
            _ => return Ok(None),
        };
        let Some(inst) = record.instances.iter().find(|i| i.logical_id == logical_id) else {
            return Ok(None);
        };
        match tokio::fs::read(inst.console()).await {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LaunchError::Transient(format!(
                "reading the console of instance {}: {e}",
                inst.instance_id
            ))),
        }
    }
    async fn send_command(&self, req: &CommandRequest) -> Result<String, LaunchError> {
        let inst = self.instance(&req.instance_id)?;
        if inst.command_socket.is_none() {
            return Err(failed(format!(
                "instance {} does not carry the tag {VALIDATION_INSTANCE_TAG}=true; tag the application (its tags go onto every instance it launches) and launch it again",
                inst.instance_id
            )));
        }
        if req.script_type == ScriptType::PowershellScript {
            return Err(failed(
                "a POWERSHELL_SCRIPT needs a Windows instance; the local launcher's instances run shell scripts (SHELL_SCRIPT)".into(),
            ));
        }
        if !inst.running() {
            return Err(failed(format!(
                "instance {} is not running (`tern instances list` shows it)",
                inst.instance_id
            )));
        }
        self.commands.start(&inst, req).map_err(failed)
    }

    async fn command_status(
        &self,
        command_id: &str,
        instance_id: &str,
    ) -> Result<CommandStatus, LaunchError> {
        let inst = self.instance(instance_id)?;
        self.commands.status(&inst, command_id).map_err(failed)
    }
}

/// The blocking work of a create or delete.
struct Job {
    data_dir: PathBuf,
    qemu: Result<Qemu, String>,
    opts: LauncherOptions,
}

impl Job {
    fn create(
        &self,
        dir: &Path,
        mut record: StackRecord,
        user_data: &[Option<String>],
        ctl: &StackCtl,
    ) {
        match self.start_all(dir, &mut record, user_data, ctl) {
            Ok(true) => {
                record.status = status::CREATE_COMPLETE.into();
                if let Err(e) = record.save(dir) {
                    tracing::error!(error = %e, "cannot record a launched stack");
                }
            }
            // Cancelled: the delete that cancelled it removes everything.
            Ok(false) => {
                let _ = record.save(dir);
            }
            Err(e) => {
                tracing::warn!(stack = %record.stack_name, error = %e, "local launch failed; rolling back");
                self.remove(dir, record, status::ROLLBACK_COMPLETE, Some(e));
            }
        }
    }

    /// Starts every instance level by level; `Ok(false)` when cancelled.
    fn start_all(
        &self,
        dir: &Path,
        record: &mut StackRecord,
        user_data: &[Option<String>],
        ctl: &StackCtl,
    ) -> Result<bool, String> {
        let qemu = self.qemu.clone()?;
        // One read-only view of the image store for every instance of the stack.
        let catalog = ImageCatalog::open(&self.data_dir).map_err(|e| e.to_string())?;
        let levels = record
            .instances
            .iter()
            .map(|i| i.launch_level)
            .max()
            .unwrap_or(0);
        for level in 0..=levels {
            let members: Vec<usize> = (0..record.instances.len())
                .filter(|&i| record.instances[i].launch_level == level)
                .collect();
            for &i in &members {
                if ctl.cancel.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                let mut inst = record.instances[i].clone();
                let label = format!("instance {} ({})", inst.logical_id, inst.instance_id);
                let what = |e: String| format!("{label}: {e}");
                let (disks, uefi) = self
                    .prepare(&catalog, &qemu, &inst, user_data[i].as_deref())
                    .map_err(what)?;
                inst.uefi = uefi;
                record.instances[i].uefi = inst.uefi.clone();
                let accel = self.opts.accel.resolve();
                let pid = instances::start(&instances::Start {
                    qemu: &qemu,
                    instance: &inst,
                    disks: &disks,
                    seed: &inst.dir.join("seed"),
                    accel,
                })
                .map_err(what)?;
                let r = &mut record.instances[i];
                r.pid = Some(pid);
                r.accel = Some(accel.label().into());
                record.save(dir)?;
            }
            for &i in &members {
                if ctl.cancel.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                self.await_console(&qemu, &mut record.instances[i])?;
                record.instances[i].running_since = Some(now());
                record.save(dir)?;
            }
        }
        Ok(true)
    }

    /// Waits for the instance's console; a silent KVM guest is started again under TCG.
    fn await_console(&self, qemu: &Qemu, inst: &mut InstanceRecord) -> Result<(), String> {
        let kvm = inst.accel.as_deref() == Some(Accel::Kvm.label());
        let wait = if kvm {
            Duration::from_secs(10)
        } else {
            self.opts.console_timeout
        };
        if instances::wait_for_console(inst, wait) {
            return Ok(());
        }
        let said = std::fs::read_to_string(inst.dir.join("qemu.log")).unwrap_or_default();
        if !inst.running() {
            return Err(format!(
                "instance {}: QEMU exited before its console showed anything: {}",
                inst.logical_id,
                said.trim()
            ));
        }
        if !kvm || self.opts.accel == Accel::Kvm {
            instances::stop(inst)?;
            return Err(format!(
                "instance {}: its console showed nothing in {} s under {}",
                inst.logical_id,
                wait.as_secs(),
                inst.accel.as_deref().unwrap_or("QEMU")
            ));
        }
        instances::stop(inst)?;
        let disks = disk_paths(inst);
        let pid = instances::start(&instances::Start {
            qemu,
            instance: inst,
            disks: &disks,
            seed: &inst.dir.join("seed"),
            accel: Accel::Tcg,
        })?;
        inst.pid = Some(pid);
        inst.accel = Some(Accel::Tcg.label().into());
        inst.accel_note = Some("KVM showed no console output in 10 s; running under TCG".into());
        if instances::wait_for_console(inst, self.opts.console_timeout) {
            Ok(())
        } else {
            instances::stop(inst)?;
            Err(format!(
                "instance {}: its console showed nothing under KVM or TCG",
                inst.logical_id
            ))
        }
    }

    /// The instance's disks (overlays on its image's exported disks), its NoCloud seed, and
    /// for a UEFI image its firmware with a variable store of its own.
    fn prepare(
        &self,
        catalog: &ImageCatalog,
        qemu: &Qemu,
        inst: &InstanceRecord,
        user_data: Option<&str>,
    ) -> Result<(Vec<PathBuf>, Option<UefiFirmware>), String> {
        let image = catalog.describe_image(&inst.image_id).map_err(|_| {
            format!(
                "image {} is not in this Tern's image store (`tern images list` shows them)",
                inst.image_id
            )
        })?;
        let bases = instances::root(&self.data_dir).join("images");
        std::fs::create_dir_all(&inst.dir)
            .and_then(|()| std::fs::create_dir_all(&bases))
            .map_err(|e| e.to_string())?;
        let uefi = match (image.boot_mode, &qemu.uefi) {
            (BootMode::LegacyBios, _) | (BootMode::UefiPreferred, None) => None,
            (BootMode::Uefi | BootMode::UefiPreferred, Some(fw)) => {
                let vars = inst.dir.join(UEFI_VARS);
                if !vars.is_file() {
                    std::fs::copy(&fw.vars, &vars).map_err(|e| {
                        format!(
                            "cannot copy the UEFI variable store {}: {e}",
                            fw.vars.display()
                        )
                    })?;
                }
                Some(UefiFirmware {
                    code: fw.code.clone(),
                    vars,
                })
            }
            (BootMode::Uefi, None) => {
                return Err(format!(
                    "image {} boots with UEFI, and no UEFI firmware (OVMF) was found: run scripts/boot-kit.sh, whose kit carries OVMF, or install it (Debian/Ubuntu: apt-get install ovmf)",
                    image.image_id
                ))
            }
        };
        let mut disks = Vec::new();
        for (n, dev) in image.block_devices.iter().enumerate() {
            let base = bases.join(format!("{}.qcow2", dev.snapshot_id));
            if !base.is_file() {
                let snapshot = catalog
                    .snapshot_disk(&dev.snapshot_id)
                    .map_err(|e| e.to_string())?;
                let tmp = bases.join(format!("{}.{}.tmp", dev.snapshot_id, uuid::Uuid::new_v4()));
                tern_disk::write::write_qcow2(&snapshot, &tmp, &|_| {})
                    .and_then(|()| std::fs::rename(&tmp, &base).map_err(Into::into))
                    .map_err(|e| format!("cannot export snapshot {}: {e}", dev.snapshot_id))?;
            }
            let overlay = inst.dir.join(format!("disk{n}.qcow2"));
            if !overlay.is_file() {
                let size = dev.volume_size.saturating_mul(1 << 30);
                let out = std::process::Command::new("qemu-img")
                    .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                    .arg(&base)
                    .arg(&overlay)
                    .arg(size.to_string())
                    .output()
                    .map_err(|e| format!("cannot run qemu-img (install qemu-utils): {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "qemu-img create {}: {}",
                        overlay.display(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
            }
            disks.push(overlay);
        }
        let seed = inst.dir.join("seed");
        std::fs::create_dir_all(&seed).map_err(|e| e.to_string())?;
        let mut meta = format!(
            "instance-id: {}\nlocal-hostname: {}\n",
            inst.instance_id,
            inst.logical_id.to_ascii_lowercase()
        );
        if inst.command_socket.is_some() {
            meta.push_str(&format!(
                "tern-command-channel: {}\n",
                commands::GUEST_DEVICE
            ));
        }
        std::fs::write(seed.join("meta-data"), meta)
            .and_then(|()| std::fs::write(seed.join("user-data"), user_data.unwrap_or("")))
            .map_err(|e| format!("cannot write the NoCloud seed in {}: {e}", seed.display()))?;
        Ok((disks, uefi))
    }

    /// Stops every instance of the stack, removes their disks and seeds (keeping the console
    /// logs), and records `final_status`.
    fn remove(
        &self,
        dir: &Path,
        mut record: StackRecord,
        final_status: &str,
        reason: Option<String>,
    ) {
        let mut failures = Vec::new();
        for inst in &mut record.instances {
            if let Err(e) = instances::stop(inst) {
                failures.push(e);
                continue;
            }
            inst.pid = None;
            for d in disk_paths(inst) {
                let _ = std::fs::remove_file(d);
            }
            let _ = std::fs::remove_dir_all(inst.dir.join("seed"));
            let _ = std::fs::remove_file(inst.dir.join(UEFI_VARS));
            if let Some(socket) = &inst.command_socket {
                let _ = std::fs::remove_file(socket);
            }
        }
        if failures.is_empty() {
            record.status = final_status.into();
            record.reason = reason;
        } else {
            record.status = status::DELETE_FAILED.into();
            record.reason = Some(failures.join("; "));
        }
        if let Err(e) = record.save(dir) {
            tracing::error!(error = %e, "cannot record a removed stack");
        }
    }
}

fn disk_paths(inst: &InstanceRecord) -> Vec<PathBuf> {
    let mut d = Vec::new();
    while inst.dir.join(format!("disk{}.qcow2", d.len())).is_file() {
        d.push(inst.dir.join(format!("disk{}.qcow2", d.len())));
    }
    d
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_qemu_launch_says_what_to_install_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let l = QemuLauncher::with_qemu(
            dir.path().to_path_buf(),
            "us-east-1".into(),
            Err(format!("{QEMU} was not found")),
            LauncherOptions::default(),
        );
        assert!(l.qemu().is_none());
        let e = l.check().await.unwrap_err();
        let LaunchError::Unavailable(m) = &e else {
            panic!("{e:?}")
        };
        assert!(
            m.contains(QEMU) && m.contains("apt-get install qemu-system-x86"),
            "{m}"
        );
        assert!(l.create_stack("s", &Value::Null, None).await.is_err());
        assert!(!instances::root(dir.path()).exists());
    }

    #[test]
    fn stack_ids_name_their_stack() {
        let id = "arn:aws:cloudformation:us-east-1:000000000000:stack/sms-app-0123/5f0e";
        assert_eq!(stack_name(id).unwrap(), "sms-app-0123");
        for bad in [
            "",
            "stack/x",
            "arn:aws:cloudformation:r:a:stack//u",
            "arn:x:stack/../u",
        ] {
            assert!(stack_name(bad).is_err(), "{bad}");
        }
    }
}
