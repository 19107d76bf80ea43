//! The command line: every operation Lifeboat runs, as clap parses it.
//!
//! This one definition is what the `lifeboat` binary runs and what the control plane
//! parses a job's command with, so the role a job needs is decided from the command that
//! will run (see `role.rs`), never from its words.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::role::Role;

/// Disaster recovery for QEMU/KVM virtual machines: consistent recovery points of all
/// disks of a VM in a deduplicated, compressed, encrypted repository.
#[derive(Debug, Parser)]
#[command(name = "lifeboat", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalOptions {
    /// The repository: a directory, or s3://BUCKET/PREFIX (endpoint, region and
    /// credentials from the AWS_* environment variables). Overrides --region.
    #[arg(long = "repo", short = 'r', env = "LIFEBOAT_REPO", global = true)]
    pub repository: Option<String>,

    /// The configuration file with the regions (default: ./lifeboat.toml if it exists).
    #[arg(long, env = "LIFEBOAT_CONFIG", global = true)]
    pub config: Option<PathBuf>,

    /// Use this region's active repository (from the configuration file).
    #[arg(long, env = "LIFEBOAT_REGION", global = true)]
    pub region: Option<String>,

    /// Read the repository password from this file (first line). Otherwise the password
    /// comes from the environment variable LIFEBOAT_PASSWORD.
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,

    /// Print one JSON document on standard output instead of text, and no progress bar.
    /// May be repeated (a job's command may carry it, and the daemon adds it).
    #[arg(long, global = true, overrides_with = "json")]
    pub json: bool,

    /// Act through a `lifeboat serve` daemon at this URL (http:// or https://): the
    /// command runs there, on its configuration, as a job of the token's user.
    #[arg(long, env = "LIFEBOAT_REMOTE", global = true)]
    pub remote: Option<String>,

    /// The API token for --remote (`lifeboat user add` prints one).
    #[arg(long, env = "LIFEBOAT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,

    /// Trust the CA in this PEM file (the one that issued the daemon's certificate) for an
    /// https:// --remote, instead of the system's.
    #[arg(long, env = "LIFEBOAT_CA_CERTIFICATE", global = true)]
    pub ca_certificate: Option<PathBuf>,

    /// More log output on standard error (-v info, -vv debug); LIFEBOAT_LOG overrides.
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a repository (encrypted unless --encryption none).
    Init(InitArguments),
    /// Make one recovery point of all given disks of a VM.
    Backup(BackupArguments),
    /// List recovery points.
    Points(PointsArguments),
    /// Write every disk of a point into a directory.
    Restore(RestoreArguments),
    /// Check the repository; with --read-data, every stored byte.
    Verify(VerifyArguments),
    /// Remove points by a retention policy (their data goes with the next prune).
    Forget(ForgetArguments),
    /// Delete data no point needs any more; safe while backups run.
    Prune(PruneArguments),
    /// Serve a point read-only over NBD, one export per disk.
    Export(ExportArguments),
    /// Copy every point the geo copy lacks, whole and checked (once, or with --follow).
    GeoSync(GeoSyncArguments),
    /// Show each region: reachable, points and bytes behind, last sync time.
    Status(StatusArguments),
    /// Storage failover and reprotect of a region.
    #[command(subcommand)]
    Region(RegionCommand),
    /// Serve a group's VM disks read-write over NBD and replicate every write to --repo
    /// (the recovery region's repository) in consistent cuts.
    Protect(ProtectArguments),
    /// Apply a group's replicated cuts to replica disks and make recovery points from them
    /// in --repo (once, or with --follow).
    Receive(ReceiveArguments),
    /// The built-in authoritative DNS server: names of VMs and repository endpoints.
    #[command(subcommand)]
    Dns(DnsCommand),
    /// Start a VM or a recovery plan in another region from recovery points there; their
    /// names follow (--test: isolated copies; --planned: stop the source first, no loss).
    Failover(FailoverArguments),
    /// Remove a test failover: stop the test copies and every trace of them.
    Cleanup(TargetArguments),
    /// Make a failover final: the VMs keep their disks (waits for instant disks to be
    /// copied) and no other point can be chosen.
    Commit(TargetArguments),
    /// Replicate failed-over VMs back to their home region: each restarts once on a
    /// capture that ships its writes home (the receiver there, started first with
    /// --digest, makes the first sync send only blocks that differ).
    Reprotect(ReprotectArguments),
    /// Bring reprotected VMs home: a planned failover to their home region (stop, fence,
    /// final sync, start there), no data lost.
    Failback(FailbackArguments),
    /// A failover drill: a test failover of a plan, its copies kept running a while, then
    /// cleaned up; passed only when both succeed (for schedules).
    Drill(DrillArguments),
    /// Runs of recovery plans: continue one after a manual step or an interruption, show
    /// them.
    #[command(subcommand)]
    Plan(PlanCommand),
    /// The audit log: every step of every failover, who ran it, when, and how it ended.
    Audit(AuditArguments),
    /// VMs started by failovers.
    #[command(subcommand)]
    Vm(VmCommand),
    /// The control plane: probes regions (incidents, availability against the SLA) and
    /// serves the HTTP API (/api/status, /api/openapi.json) and /metrics.
    Serve(ServeArguments),
    /// Users of the API served by lifeboat serve.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (or change its role) and print a new API token for it.
    Add(UserAddArguments),
}

#[derive(Debug, Args)]
pub struct UserAddArguments {
    pub name: String,
    /// reader (reads), operator (also acts: fails over, forgets, prunes, cancels jobs),
    /// admin (also manages users).
    #[arg(long, value_enum, default_value = "reader")]
    pub role: Role,
    /// Also set the user's password for the dashboard's login, read from this file (its
    /// first line; at least 8 characters).
    #[arg(long)]
    pub login_password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArguments {
    /// Where to answer HTTP (default: [settings] listen, or 127.0.0.1:8400).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

/// A recovery plan, or one VM (a plan of its own).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// A recovery plan, as declared in the configuration.
    #[arg(long)]
    pub plan: Option<String>,
    /// One VM, as declared in the configuration.
    #[arg(long)]
    pub vm: Option<String>,
}

#[derive(Debug, Args)]
pub struct TargetArguments {
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, Args)]
pub struct FailbackArguments {
    #[command(flatten)]
    pub target: Target,
    /// Start at once from the home region's newest points, disks copied in the background.
    #[arg(long)]
    pub instant: bool,
    /// Seconds a guest gets to power off by itself before it is stopped hard.
    #[arg(long, default_value_t = 60)]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct ReprotectArguments {
    #[command(flatten)]
    pub target: Target,
    /// Seconds a guest gets to power off by itself before it is stopped hard.
    #[arg(long, default_value_t = 60)]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct FailoverArguments {
    #[command(flatten)]
    pub target: Target,
    /// The region to start the VMs in (its repository holds the points).
    #[arg(long)]
    pub to: String,
    /// Which point: `latest` (waits for the recovery region to process what it has
    /// received), `processed` (the newest point made already), `app` (the newest
    /// app-consistent point), or a point id or prefix (one VM only).
    #[arg(long, default_value = "latest", conflicts_with = "at")]
    pub point: String,
    /// The point of each VM at this wall-clock time (RFC 3339, or `YYYY-MM-DD HH:MM[:SS]`
    /// UTC).
    #[arg(long, value_parser = parse_time)]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// A test failover: copies on the region's isolated test network and the DNS test
    /// view; production and replication go on untouched. Remove with `lifeboat cleanup`.
    #[arg(long, conflicts_with = "planned")]
    pub test: bool,
    /// A planned failover: stop the VMs at the source and wait until the recovery region
    /// holds their last write before starting them (no data loss).
    #[arg(long)]
    pub planned: bool,
    /// Start at once from the points' exports through copy-on-write overlays; the disks
    /// are copied in the background (`lifeboat commit` waits for that). The time to a
    /// running VM does not grow with the disks' size.
    #[arg(long)]
    pub instant: bool,
    /// Run the pre-flight checks and print the steps, without doing them.
    #[arg(long)]
    pub dry_run: bool,
    /// With --planned: seconds a guest gets to power off by itself before it is stopped
    /// hard.
    #[arg(long, default_value_t = 60)]
    pub grace: u64,
}

#[derive(Debug, Args)]
pub struct DrillArguments {
    #[command(flatten)]
    pub target: Target,
    /// The region to test in.
    #[arg(long)]
    pub to: String,
    /// Which point: latest, processed, app (as for failover).
    #[arg(long, default_value = "latest")]
    pub point: String,
    /// Start the copies from the points' exports at once (as for failover).
    #[arg(long)]
    pub instant: bool,
    /// Seconds the copies run before they are cleaned up.
    #[arg(long, default_value_t = 0)]
    pub keep: u64,
}

#[derive(Debug, Subcommand)]
pub enum PlanCommand {
    /// Go on with a plan's run: past the manual step it waits at (recording who
    /// confirmed it), or from where it was interrupted or failed.
    Continue(PlanNameArguments),
    /// Give up a plan's unfinished run (what it did stays; a new run can start).
    Abandon(PlanNameArguments),
    /// Show a plan's latest run, step by step.
    Status(PlanNameArguments),
}

#[derive(Debug, Args)]
pub struct PlanNameArguments {
    /// The plan (or `vm:NAME` for a run of one VM).
    pub plan: String,
}

#[derive(Debug, Args)]
pub struct AuditArguments {
    /// Only events of this plan (or `vm:NAME`).
    #[arg(long)]
    pub plan: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Stop a VM where it runs now (power button, then a hard stop after --grace).
    Stop(VmStopArguments),
    /// Copy an instant VM's disks from its point's export while it runs, then stop the
    /// export (started in the background by failover --instant).
    #[command(hide = true)]
    Hydrate(VmHydrateArguments),
}

#[derive(Debug, Args)]
pub struct VmHydrateArguments {
    /// The VM's home directory (disks, runtime files, export).
    #[arg(long)]
    pub home: std::path::PathBuf,
    /// How many disks it has.
    #[arg(long)]
    pub disks: usize,
}

#[derive(Debug, Args)]
pub struct VmStopArguments {
    #[arg(long)]
    pub vm: String,
    /// Seconds the guest gets to power off by itself.
    #[arg(long, default_value_t = 30)]
    pub grace: u64,
}

#[derive(Debug, Subcommand)]
pub enum DnsCommand {
    /// Answer for the configured zones over UDP and TCP; names follow failovers.
    Serve(DnsServeArguments),
    /// Print every name and the address it has now.
    Records(DnsRecordsArguments),
    /// Push every name to the DNS server of [dns.update] by RFC 2136 updates signed with
    /// TSIG (once, or on every change with --follow).
    Push(DnsPushArguments),
}

#[derive(Debug, Args)]
pub struct DnsPushArguments {
    /// Keep pushing: every name again whenever its address changes.
    #[arg(long)]
    pub follow: bool,
}

#[derive(Debug, Args)]
pub struct DnsServeArguments {
    /// Where to answer (default: the [dns] section's listen, else 127.0.0.1:5353).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct DnsRecordsArguments {}

#[derive(Debug, Args)]
pub struct ProtectArguments {
    /// The consistency group: every point made from its cuts is consistent across all its
    /// VMs and disks.
    #[arg(long)]
    pub group: String,
    /// A VM and its disks (raw images): NAME=DISK[,DISK...]. Repeat for every VM of the group.
    #[arg(long = "vm", value_name = "NAME=DISK[,DISK...]", required = true)]
    pub vms: Vec<String>,
    /// Serve the exports on this Unix socket; each is named VM/DISK (the disk's file name).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Serve the exports on this TCP address too (unauthenticated: keep it on a private network).
    #[arg(long)]
    pub listen: Option<String>,
    /// Seconds between cuts (the recovery point objective to aim for).
    #[arg(long, default_value_t = 5.0)]
    pub interval: f64,
    /// MiB of writes kept in memory until shipped; past it, changed ranges are read again
    /// from the images when shipping can go on (resync). The memory of shipped writes is
    /// kept for the next ones while writes go on, up to this size too.
    #[arg(long, default_value_t = 1024)]
    pub journal_mib: u64,
    /// Ship every write as journaled, even those overwritten whole later in the same cut
    /// (for measurements; the default ships each cut's end state).
    #[arg(long, hide = true)]
    pub ship_every_write: bool,
    /// A freeze/thaw hook, run as `HOOK freeze GROUP` and `HOOK thaw GROUP`, for
    /// application-consistent points.
    #[arg(long)]
    pub freeze_hook: Option<PathBuf>,
    /// How often to make an application-consistent point with --freeze-hook.
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub app_consistent_every: u64,
    /// Longest a freeze or thaw may take before it counts as failed.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub freeze_timeout: u64,
    /// Directory of the disks' persistent dirty maps (default: beside each image, as
    /// IMAGE.lifeboat-dirty). After a restart only what they mark is sent again.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Seconds of RPO above which the group is in alert (logged, and flagged in
    /// `lifeboat status`).
    #[arg(long, default_value_t = 30.0)]
    pub rpo_threshold: f64,
    /// Fence the VMs (refuse their writes) after this long without reaching the recovery
    /// repository, as a failover there could have happened meanwhile (a failover waits out
    /// the same lease). Without it, writes go on while cut off and only a failover's new
    /// epoch fences them.
    #[arg(long, value_parser = parse_duration)]
    pub fence_lease: Option<u64>,
    /// Take the VMs' newest epochs as this side's own (after a failback brought them back
    /// here), lifting a fence for good.
    #[arg(long)]
    pub accept_epoch: bool,
}

#[derive(Debug, Args)]
pub struct ReceiveArguments {
    /// The consistency group to receive.
    #[arg(long)]
    pub group: String,
    /// Directory of the replica disks and the receiver's state.
    #[arg(long)]
    pub replicas: PathBuf,
    /// Keep receiving: a round every --interval seconds until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Seconds between rounds with --follow.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,
    /// Seconds of RPO above which the group is in alert (logged).
    #[arg(long, default_value_t = 30.0)]
    pub rpo_threshold: f64,
    /// Keep every point made within this long before the newest.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub keep_within: u64,
    /// Beyond that, keep the newest point of each of the last N hours.
    #[arg(long, default_value_t = 7 * 24)]
    pub keep_hourly: usize,
    /// And the newest point of each of the last N days.
    #[arg(long, default_value_t = 365)]
    pub keep_daily: usize,
    /// Thin the history at most this often.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub thin_every: u64,
    /// Keep every point: never thin the history.
    #[arg(long)]
    pub keep_all: bool,
    /// First publish a digest of the replicas already in --replicas (`VM/DISK` files, e.g.
    /// the old primary's disks after a failover), so that the capture sends only the
    /// blocks that differ from them.
    #[arg(long)]
    pub digest: bool,
}

#[derive(Debug, Args)]
pub struct GeoSyncArguments {
    /// Copy --repo (or the --region's active repository) to this location instead of the
    /// region's configured copy.
    #[arg(long)]
    pub to: Option<String>,
    /// Keep copying: a round every --interval seconds until interrupted.
    #[arg(long)]
    pub follow: bool,
    /// Seconds between rounds with --follow.
    #[arg(long, default_value_t = 2.0)]
    pub interval: f64,
    /// Packs copied at once.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
}

#[derive(Debug, Args)]
pub struct StatusArguments {}

#[derive(Debug, Subcommand)]
pub enum RegionCommand {
    /// Promote the region's geo copy to be its repository (its primary is unreachable).
    Failover(RegionFailoverArguments),
    /// Make the old primary of a failed-over region its geo copy again and copy to it.
    Reprotect(RegionReprotectArguments),
}

#[derive(Debug, Args)]
pub struct RegionFailoverArguments {
    /// Fail over even though the primary repository answers (points not yet copied are lost).
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct RegionReprotectArguments {
    /// Packs copied at once.
    #[arg(long, default_value_t = 8)]
    pub threads: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EncryptionChoice {
    /// AES-256-GCM; keys wrapped with an Argon2id-derived key.
    #[value(name = "aes-256-gcm")]
    Aes256Gcm,
    /// No encryption (objects are still checksummed).
    None,
}

#[derive(Debug, Args)]
pub struct InitArguments {
    /// How to protect the repository's contents.
    #[arg(long, value_enum, default_value = "aes-256-gcm")]
    pub encryption: EncryptionChoice,
    /// Chunk size: a power of two from 4KiB to 16MiB (e.g. 65536, 64KiB, 4MiB).
    #[arg(long, default_value = "64KiB", value_parser = parse_size)]
    pub chunk_size: u64,
}

#[derive(Debug, Args)]
pub struct BackupArguments {
    /// The VM the disks belong to.
    #[arg(long)]
    pub vm: String,
    /// Its disk images (raw, qcow2, VHD, VHDX, …) or block devices; all go into one point.
    #[arg(required = true)]
    pub disks: Vec<PathBuf>,
    /// Read every disk in full, ignoring and leaving no change information (dirty bitmaps).
    #[arg(long)]
    pub full: bool,
    /// zstd compression level for new chunks (default: the repository's, level 3).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub compression_level: Option<i32>,
}

#[derive(Debug, Args)]
pub struct PointsArguments {
    /// Only this VM's points.
    #[arg(long)]
    pub vm: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatChoice {
    Raw,
    Qcow2,
    Vhd,
    Vhdx,
}

#[derive(Debug, Args)]
pub struct RestoreArguments {
    /// A point id, a unique prefix of one, or `latest` (with --vm); or none with --at.
    #[arg(required_unless_present = "at", conflicts_with = "at")]
    pub point: Option<String>,
    /// The VM's point at this wall-clock time (RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in
    /// UTC): its newest point made at or before then. Needs --vm.
    #[arg(long, value_parser = parse_time, requires = "vm")]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// The VM, for `latest` or to check the point belongs to it.
    #[arg(long)]
    pub vm: Option<String>,
    /// Directory to write the disks into (created if missing).
    #[arg(long)]
    pub target: PathBuf,
    /// Format of the restored disks (default: each disk's original format).
    #[arg(long, value_enum)]
    pub format: Option<FormatChoice>,
}

#[derive(Debug, Args)]
pub struct VerifyArguments {
    /// Read and check every stored chunk, not only the structure.
    #[arg(long)]
    pub read_data: bool,
}

#[derive(Debug, Args)]
pub struct ForgetArguments {
    /// The VM whose points the policy applies to.
    #[arg(long)]
    pub vm: String,
    /// Keep the newest N points.
    #[arg(long, default_value_t = 0)]
    pub keep_last: usize,
    /// Keep the newest point of each of the last N hours that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_hourly: usize,
    /// Keep the newest point of each of the last N days that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_daily: usize,
    /// Keep the newest point of each of the last N weeks (ISO weeks) that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_weekly: usize,
    /// Keep the newest point of each of the last N months that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_monthly: usize,
    /// Keep the newest point of each of the last N years that have points.
    #[arg(long, default_value_t = 0)]
    pub keep_yearly: usize,
    /// Keep every point made within this long before the newest (e.g. `24h`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    pub keep_within: Option<u64>,
    /// Show what would be removed without removing it.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct PruneArguments {}

#[derive(Debug, Args)]
pub struct ExportArguments {
    /// A point id, a unique prefix of one, or `latest` (with --vm); or none with --at.
    #[arg(required_unless_present = "at", conflicts_with = "at")]
    pub point: Option<String>,
    /// The VM's point at this wall-clock time (RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` in
    /// UTC): its newest point made at or before then. Needs --vm.
    #[arg(long, value_parser = parse_time, requires = "vm")]
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    /// The VM, for `latest`.
    #[arg(long)]
    pub vm: Option<String>,
    /// Where to listen: HOST:PORT for TCP, or unix:PATH for a Unix socket. The export is
    /// read-only and unauthenticated: listen on localhost or a trusted network.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub listen: String,
}

/// Parses sizes like `65536`, `64KiB`, `64K`, `4MiB`, `1G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size"))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("unknown size unit '{other}' (use KiB, MiB or GiB)")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("'{text}' is too large"))
}

/// Parses durations like `90s`, `30m`, `24h`, `7d`, `2w`, `1d12h`; to seconds.
pub fn parse_duration(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("a duration is empty; write it like 90s, 30m, 24h or 7d".to_string());
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(format!("'{text}' is not a duration (use s, m, h, d or w)")),
        };
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("'{text}' is not a duration: a number must come before '{c}'"))?;
        total = number
            .checked_mul(unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(|| format!("'{text}' is too long"))?;
        digits.clear();
    }
    if !digits.is_empty() {
        // A bare number is seconds.
        let number: u64 = digits
            .parse()
            .map_err(|_| format!("'{text}' is too long"))?;
        total = total
            .checked_add(number)
            .ok_or_else(|| format!("'{text}' is too long"))?;
    }
    Ok(total)
}

/// Parses a wall-clock time: RFC 3339, or `YYYY-MM-DD HH:MM[:SS]` / `YYYY-MM-DDTHH:MM[:SS]`
/// taken as UTC.
pub fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    let text = text.trim();
    if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&chrono::Utc));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(time) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Ok(time.and_utc());
        }
    }
    Err(format!(
        "'{text}' is not a time: use RFC 3339 (2026-11-26T10:00:05Z) or 'YYYY-MM-DD HH:MM:SS' in UTC"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("24h"), Ok(86400));
        assert_eq!(parse_duration("1d12h"), Ok(129600));
        assert_eq!(parse_duration("2w"), Ok(14 * 86400));
        assert_eq!(parse_duration("45"), Ok(45));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("3 fortnights").is_err());
        assert_eq!(
            parse_time("2026-11-26 10:00:05").unwrap().to_rfc3339(),
            "2026-11-26T10:00:05+00:00"
        );
        assert_eq!(
            parse_time("2026-11-26T11:00:05+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-11-26T10:00:05+00:00"
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("4M"), Ok(4 << 20));
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
