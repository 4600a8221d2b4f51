//! The `runport` command line: parses arguments, calls the library, maps
//! outcomes to exit codes (0 all exported, 1 some runs failed, 2 usage,
//! 3 source unreadable).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use runport::export::{ExportOptions, list_runs, open, schema_json, schemas};
use runport::sources::SourceOption;
use runport::{Error, HistoryLayout};

const EXIT_PARTIAL: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_SOURCE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "runport",
    version,
    about = "Export experiment-tracking runs (W&B, MLflow, TensorBoard) into Parquet datasets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=runport=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum Layout {
    Long,
    Wide,
    None,
}

impl From<Layout> for HistoryLayout {
    fn from(l: Layout) -> Self {
        match l {
            Layout::Long => HistoryLayout::Long,
            Layout::Wide => HistoryLayout::Wide,
            Layout::None => HistoryLayout::None,
        }
    }
}

#[derive(clap::Args)]
struct Common {
    /// wandb://ENTITY/PROJECT, mlflow+http(s)://HOST:PORT (or `mlflow` for MLFLOW_TRACKING_URI),
    /// sqlite:///mlflow.db, a mlruns/ folder (or file://...), tensorboard:LOGDIR, or a wandb/ folder,
    /// a run folder or a .wandb file.
    source: String,
    /// Columns to export, comma-separated, `*` globs: name,state,config.*,summary.loss,history.loss
    /// (default: every run column and all history); system.* adds the system-metrics table (W&B).
    #[arg(long)]
    select: Option<String>,
    /// History layout.
    #[arg(long, value_enum, default_value_t = Layout::Long)]
    history: Layout,
    /// Runs read at once: CPU threads for local sources (W&B files, sqlite:///, mlruns/ or file://, tensorboard:;
    /// default: the number of CPUs), requests in flight for network sources (wandb://,
    /// mlflow+http(s)://; default 16, lowered automatically on 429).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: Option<u32>,
    /// W&B API: the API base URL (default: WANDB_BASE_URL, else https://api.wandb.ai).
    #[arg(long)]
    base_url: Option<String>,
    /// W&B API and MLflow REST: a filter the server evaluates (W&B: a MongoDB-like JSON filter;
    /// MLflow: a filter string).
    #[arg(long = "where")]
    filter: Option<String>,
    /// W&B API: listing order (+created_at, -heartbeat_at, +summary_metrics.loss ...).
    #[arg(long)]
    order: Option<String>,
    /// W&B API and MLflow REST: runs per listing page (W&B default 500; MLflow max_results,
    /// default 10000, at most 50000).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=50000))]
    per_page: Option<u32>,
    /// W&B API: sampled history, at most N rows per key and run (quick look; not a full export).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    samples: Option<u32>,
    /// MLflow: an experiment to export, by name or id (repeatable; default: every experiment in the view).
    #[arg(long = "experiment")]
    experiments: Vec<String>,
    /// MLflow: which runs (and experiments): active, deleted or all.
    #[arg(long, value_parser = ["active", "deleted", "all"])]
    view: Option<String>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Export runs into a Parquet dataset.
    Export {
        #[command(flatten)]
        common: Common,
        /// Output directory (created; a previous export there is replaced).
        #[arg(short, long)]
        out: PathBuf,
        /// Stop at the first failure, a run or a listing cut short (nothing is written).
        #[arg(long)]
        fail_fast: bool,
        /// Memory for the history of the runs being read (e.g. 256MiB, 1GiB);
        /// a run larger than a sixteenth of it is spilled to disk beside the
        /// output and merged back. At least 16MiB.
        #[arg(long, value_parser = parse_size, default_value = "256MiB")]
        memory_limit: usize,
    },
    /// Keep Delta Lake tables (TABLE/runs, TABLE/history) up to date with a source, reading only
    /// the runs that changed since the last sync.
    Sync {
        #[command(flatten)]
        common: Common,
        /// The folder of the two Delta tables (created on the first sync).
        table: PathBuf,
        /// Rewrite both tables from the source, whatever they hold (also needed to change
        /// --select, --history or the source).
        #[arg(long)]
        full_refresh: bool,
        /// Keep the rows of runs gone from the source (by default they are removed).
        #[arg(long)]
        keep_deleted: bool,
        /// Memory for the history of the runs being read (as for export).
        #[arg(long, value_parser = parse_size, default_value = "256MiB")]
        memory_limit: usize,
        /// Sync only the runs of shard K of N (K from 0, as JOB_COMPLETION_INDEX): N processes,
        /// one per shard, sync into the same tables at the same time.
        #[arg(long, value_name = "K/N", value_parser = runport::sync::Shard::parse)]
        shard: Option<runport::sync::Shard>,
    },
    /// Show what an export would read and write, without reading any run.
    Plan {
        #[command(flatten)]
        common: Common,
    },
    /// List runs: id, name, state, created.
    Ls {
        #[command(flatten)]
        common: Common,
    },
    /// Print the Arrow schemas an export would write.
    Schema {
        #[command(flatten)]
        common: Common,
    },
}

/// glibc's allocator gives each large buffer back to the kernel when it is
/// freed (above its mmap and trim thresholds), so every run's buffers are
/// faulted in again: a quarter of the CPU time of an export from the W&B
/// API went to page faults. Keeping freed memory for reuse bounds the
/// process by its peak use, which the pipeline already bounds.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // any other thread exists, and glibc accepts these values (the mmap
    // threshold is at most 32 MiB on 64-bit targets).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let json_logs = matches!(cli.log_format, LogFormat::Json);
    match run(cli.command, json_logs) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let code = match &e {
                Error::Usage(_) => EXIT_USAGE,
                Error::Source { .. } | Error::Storage { .. } => EXIT_SOURCE,
                _ => EXIT_PARTIAL,
            };
            if json_logs {
                tracing::error!(exit_code = code, "{e}");
            } else {
                eprintln!("runport: {e}");
            }
            ExitCode::from(code)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("runport=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn print_json(v: &impl serde::Serialize) {
    let line = serde_json::to_string(v).expect("invariant: summaries serialise");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

impl Common {
    /// `None`: the source kind's default.
    fn concurrency(&self) -> Option<usize> {
        self.concurrency.map(|c| c as usize)
    }

    /// The options only some sources take; the source refuses any it does not.
    fn options(&self) -> Vec<SourceOption> {
        let mut o = Vec::new();
        o.extend(self.base_url.clone().map(SourceOption::BaseUrl));
        o.extend(self.filter.clone().map(SourceOption::Where));
        o.extend(self.order.clone().map(SourceOption::Order));
        o.extend(self.per_page.map(|p| SourceOption::PerPage(p as usize)));
        o.extend(self.samples.map(|s| SourceOption::Samples(s as usize)));
        o.extend(self.experiments.iter().cloned().map(SourceOption::Experiment));
        o.extend(self.view.clone().map(SourceOption::View));
        o
    }
}

/// A size in bytes: a number with an optional unit (`KiB`, `MiB`, `GiB`,
/// `KB`, `MB`, `GB`, `K`, `M`, `G`; binary multiples whatever the spelling).
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: usize = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 256MiB, 1GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (KiB, MiB or GiB)")),
    };
    n.checked_mul(1usize << shift).ok_or_else(|| format!("{text:?} is too large"))
}

fn run(command: Command, json_logs: bool) -> Result<u8, Error> {
    match command {
        Command::Export { common, out, fail_fast, memory_limit } => {
            let opts = ExportOptions {
                source: common.source.clone(),
                out,
                selection: common.select.clone(),
                history: common.history.into(),
                fail_fast,
                concurrency: common.concurrency(),
                progress: std::io::stderr().is_terminal(),
                options: common.options(),
                memory_limit,
            };
            let summary = runport::export(&opts)?;
            // In JSON log mode the export already logged each failure as a record.
            for f in summary.failures.iter().filter(|_| !json_logs) {
                eprintln!("runport: run {} failed ({}): {}", f.run, f.stage, f.error);
            }
            let history = summary.rows.get("history").copied().unwrap_or(0);
            tracing::info!(
                runs = summary.runs,
                history_rows = history,
                files = summary.files,
                bytes = summary.bytes,
                failures = summary.failures.len(),
                warnings = summary.warnings.len(),
                seconds = summary.seconds,
                "export done"
            );
            if common.json {
                print_json(&summary);
            } else {
                println!(
                    "exported {} runs ({} history rows) into {}: {} files, {} bytes, {} failed, {} warnings, {:.2} s",
                    summary.runs,
                    history,
                    summary.out,
                    summary.files,
                    summary.bytes,
                    summary.failures.len(),
                    summary.warnings.len(),
                    summary.seconds
                );
            }
            Ok(if summary.failures.is_empty() { 0 } else { EXIT_PARTIAL })
        }
        Command::Sync { common, table, full_refresh, keep_deleted, memory_limit, shard } => {
            let opts = runport::sync::SyncOptions {
                source: common.source.clone(),
                table,
                selection: common.select.clone(),
                history: common.history.into(),
                full_refresh,
                keep_deleted,
                concurrency: common.concurrency(),
                options: common.options(),
                memory_limit,
                shard,
            };
            let summary = runport::sync::sync(&opts)?;
            for f in summary.failures.iter().filter(|_| !json_logs) {
                eprintln!("runport: run {} failed ({}): {}; its previous rows are kept", f.run, f.stage, f.error);
            }
            if common.json {
                print_json(&summary);
            } else {
                let r = &summary.runs;
                println!(
                    "synced {}: {} new, {} changed, {} unchanged, {} deleted, {} failed runs; {} history rows; \
                     {} files added, {} removed; {}; {:.2} s",
                    summary.table,
                    r.new,
                    r.changed,
                    r.unchanged,
                    r.deleted,
                    r.failed,
                    summary.history_rows,
                    summary.files_added,
                    summary.files_removed,
                    if summary.committed { "committed" } else { "nothing to commit" },
                    summary.seconds
                );
            }
            Ok(if summary.failures.is_empty() { 0 } else { EXIT_PARTIAL })
        }
        Command::Plan { common } => {
            let planned = open(
                &common.source,
                common.select.as_deref(),
                common.history.into(),
                common.concurrency(),
                &common.options(),
            )?;
            let plan = planned.describe()?;
            if common.json {
                print_json(&plan);
            } else {
                println!("{}", serde_json::to_string_pretty(&plan).expect("invariant: plans serialise"));
            }
            Ok(0)
        }
        Command::Ls { common } => {
            let (runs, failures) = list_runs(&common.source, common.concurrency(), &common.options())?;
            let mut out = std::io::stdout().lock();
            for r in &runs {
                if common.json {
                    let _ = writeln!(out, "{}", serde_json::to_string(r).expect("invariant: listings serialise"));
                } else {
                    let _ = writeln!(
                        out,
                        "{}\t{}\t{}\t{}",
                        r.run_id,
                        r.name.as_deref().unwrap_or("-"),
                        r.state.as_deref().unwrap_or("-"),
                        r.created_at.as_deref().unwrap_or("-")
                    );
                }
            }
            for f in &failures {
                eprintln!("runport: run {} failed ({}): {}", f.run, f.stage, f.error);
            }
            Ok(if failures.is_empty() { 0 } else { EXIT_PARTIAL })
        }
        Command::Schema { common } => {
            let (runs, history, system) = schemas(
                &common.source,
                common.select.as_deref(),
                common.history.into(),
                common.concurrency(),
                &common.options(),
            )?;
            if common.json {
                print_json(&serde_json::json!({
                    "runs": schema_json(&runs),
                    "history": history.as_ref().map(schema_json),
                    "system": system.as_ref().map(schema_json),
                }));
            } else {
                println!("runs.parquet");
                for f in runs.fields() {
                    println!("  {}: {}", f.name(), f.data_type());
                }
                for (name, schema) in [("history", history), ("system", system)] {
                    if let Some(s) = schema {
                        println!("{name}/part-NNNNN.parquet");
                        for f in s.fields() {
                            println!("  {}: {}", f.name(), f.data_type());
                        }
                    }
                }
            }
            Ok(0)
        }
    }
}
