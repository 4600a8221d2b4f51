//! A benchmark-only switch that turns off runport's own Parquet code, so that
//! `benches/ablation.py` can measure each component against the parquet
//! crate's own path in one build. `RUNPORT_BENCH_WITHOUT` holds a
//! comma-separated list of component names; unknown names are ignored. It is
//! read once per process. Not for production use: the data exported is the
//! same either way, only the time it takes differs.

use std::sync::OnceLock;

/// runport's own Parquet components that the switch can turn off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// Flat `Int64`, `Float64` and timestamp columns encoded page by page
    /// (`output/primitive.rs`, `output/pages.rs`); without them, parquet's
    /// `ArrowColumnWriter`.
    PageEncoders,
    /// Run-length dictionary chunks of `run_id` and `key`
    /// (`output/runlength.rs`); without them, the columns are expanded to
    /// strings and written by parquet's `ArrowColumnWriter`.
    RunLength,
}

impl Component {
    pub const ALL: [Component; 2] = [Component::PageEncoders, Component::RunLength];

    /// The component's name in `RUNPORT_BENCH_WITHOUT`.
    pub fn name(self) -> &'static str {
        match self {
            Component::PageEncoders => "page-encoders",
            Component::RunLength => "runlength",
        }
    }
}

/// The environment variable the benchmark scripts set.
pub const ENV: &str = "RUNPORT_BENCH_WITHOUT";

/// Whether the benchmark switch turned `component` off for this process.
pub fn disabled(component: Component) -> bool {
    static OFF: OnceLock<Vec<Component>> = OnceLock::new();
    OFF.get_or_init(|| std::env::var(ENV).map(|v| parse(&v)).unwrap_or_default()).contains(&component)
}

fn parse(list: &str) -> Vec<Component> {
    let names: Vec<&str> = list.split(',').map(str::trim).collect();
    Component::ALL.into_iter().filter(|c| names.contains(&c.name())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(parse("runlength, page-encoders"), [Component::PageEncoders, Component::RunLength]);
        assert_eq!(parse(""), []);
        assert_eq!(parse("page-encoders,page-reader"), [Component::PageEncoders], "a deleted component is ignored");
    }
}
