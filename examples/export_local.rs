//! Exports the sample W&B runs with the library API and prints the summary.
//!
//! `cargo run --example export_local [SOURCE] [OUT]`

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let source = args.next().unwrap_or_else(|| "examples/data/wandb".to_string());
    let out = args.next().unwrap_or_else(|| "out/example".to_string());

    let mut opts = runport::ExportOptions::new(source, out);
    opts.selection = Some("name,state,created_at,config.*,summary.*,history.loss".to_string());
    let summary = runport::export(&opts)?;

    println!(
        "{} runs, {} history rows, {} files in {}",
        summary.runs, summary.rows["history"], summary.files, summary.out
    );
    for f in &summary.failures {
        println!("failed: {} ({}): {}", f.run, f.stage, f.error);
    }
    Ok(())
}
