//! `get-history` answers as they arrive: pages read straight into points,
//! and a run's points held in memory up to a quarter of a history chunk (all
//! its keys together); past that, each page goes to a temporary file in the
//! spill folder, which the decode stage reads back point by point.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{MetricHistoryBuilder, MetricPoint, parse_metric_value};
use crate::output::spill::{SpillDir, SpillFile};
use crate::pipeline::HistoryTarget;
use crate::run::HistoryRow;

/// One `get-history` page, read straight into its points (no JSON tree).
#[derive(Default, serde::Deserialize)]
pub struct HistoryPage {
    #[serde(default)]
    pub metrics: Vec<PagePoint>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// A point of a `get-history` page, read straight into a [`MetricPoint`]:
/// numbers, or strings such as `"NaN"`; a missing timestamp or step is 0.
pub struct PagePoint(pub MetricPoint);

impl<'de> serde::Deserialize<'de> for PagePoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<PagePoint, D::Error> {
        #[derive(serde::Deserialize)]
        struct Fields {
            value: Scalar,
            #[serde(default)]
            timestamp: Option<Scalar>,
            #[serde(default)]
            step: Option<Scalar>,
        }
        /// A number or a string, as the server writes metric fields.
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Int(i64),
            Float(f64),
            Text(String),
        }
        let f = Fields::deserialize(d)?;
        let value = match f.value {
            Scalar::Int(i) => i as f64,
            Scalar::Float(v) => v,
            Scalar::Text(t) => parse_metric_value(&t)
                .ok_or_else(|| serde::de::Error::custom(format!("unreadable metric value {t:?}")))?,
        };
        // As `int` reads them: whole numbers, or their text.
        let int = |s: Option<Scalar>| match s {
            Some(Scalar::Int(i)) => i,
            Some(Scalar::Text(t)) => t.parse().unwrap_or(0),
            _ => 0,
        };
        Ok(PagePoint(MetricPoint { value, timestamp_ms: int(f.timestamp), step: int(f.step) }))
    }
}

/// Bytes a point stands for in a history chunk: its row and its value.
const CHUNK_BYTES_PER_POINT: usize = std::mem::size_of::<HistoryRow>() + std::mem::size_of::<f64>();
/// Bytes of a point in a temporary file: step, timestamp (ms) and the
/// value's bits, each 8 bytes little-endian.
const FILE_POINT_BYTES: usize = 24;

/// How many of a run's fetched points may stay in memory (a quarter of a
/// history chunk's worth, all keys together), and where the others go.
pub struct FetchBudget {
    spill: Option<Arc<SpillDir>>,
    max_points: usize,
    held: AtomicUsize,
}

impl FetchBudget {
    /// With no spill folder (no history target, or the wide layout's first
    /// pass, which keeps no rows), everything stays in memory.
    pub fn new(target: Option<&HistoryTarget>) -> FetchBudget {
        let spill = target.and_then(|t| t.spill.clone());
        let max_points = target.map_or(usize::MAX, |t| t.answer_bytes() / CHUNK_BYTES_PER_POINT);
        FetchBudget { spill, max_points, held: AtomicUsize::new(0) }
    }

    /// Takes `n` more points into memory, or says they must go to a file.
    fn take(&self, n: usize) -> bool {
        if self.spill.is_none() {
            return true;
        }
        let before = self.held.fetch_add(n, Ordering::Relaxed);
        if before + n <= self.max_points {
            return true;
        }
        self.held.fetch_sub(n, Ordering::Relaxed);
        false
    }

    fn release(&self, n: usize) {
        if self.spill.is_some() {
            self.held.fetch_sub(n, Ordering::Relaxed);
        }
    }
}

/// A metric's history as fetched: in memory, or in a temporary file.
pub enum FetchedSeries {
    Memory(Vec<MetricPoint>),
    File { file: SpillFile, points: u64 },
}

impl FetchedSeries {
    /// Hands every point to `out`, in the order fetched.
    pub fn read_into(self, what: &str, out: &mut MetricHistoryBuilder<'_>) -> Result<(), String> {
        match self {
            FetchedSeries::Memory(points) => points.into_iter().try_for_each(|p| out.push(p)),
            FetchedSeries::File { file, points } => {
                let failed = |e: std::io::Error| format!("{what}: reading {}: {e}", file.path().display());
                let mut reader = BufReader::with_capacity(256 * 1024, File::open(file.path()).map_err(failed)?);
                let mut buf = [0u8; FILE_POINT_BYTES];
                for _ in 0..points {
                    reader.read_exact(&mut buf).map_err(failed)?;
                    let field = |i: usize| {
                        u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().expect("invariant: 8 of 24 bytes"))
                    };
                    out.push(MetricPoint {
                        step: field(0) as i64,
                        timestamp_ms: field(1) as i64,
                        value: f64::from_bits(field(2)),
                    })?;
                }
                Ok(())
            }
        }
    }
}

/// A metric's pages as they arrive: in memory while the run's budget lasts,
/// then (those already held included) in a temporary file.
pub struct PagedSeries<'b> {
    budget: &'b FetchBudget,
    what: &'b str,
    memory: Vec<MetricPoint>,
    file: Option<(BufWriter<File>, SpillFile, u64)>,
}

impl<'b> PagedSeries<'b> {
    pub fn new(budget: &'b FetchBudget, what: &'b str) -> PagedSeries<'b> {
        PagedSeries { budget, what, memory: Vec::new(), file: None }
    }

    pub fn add(&mut self, page: Vec<MetricPoint>) -> Result<(), String> {
        if self.file.is_none() {
            if self.budget.take(page.len()) {
                self.memory.extend(page);
                return Ok(());
            }
            let dir = self.budget.spill.as_ref().expect("invariant: the budget spills only with a spill folder");
            let (file, spill) = dir.temp_file().map_err(|e| format!("{}: {e}", self.what))?;
            self.file = Some((BufWriter::with_capacity(256 * 1024, file), spill, 0));
            let held = std::mem::take(&mut self.memory);
            self.budget.release(held.len());
            self.write(&held)?;
        }
        self.write(&page)
    }

    fn write(&mut self, points: &[MetricPoint]) -> Result<(), String> {
        let (writer, spill, written) = self.file.as_mut().expect("invariant: writing to the file once it exists");
        let failed = |e: std::io::Error| format!("{}: writing {}: {e}", self.what, spill.path().display());
        for p in points {
            let mut buf = [0u8; FILE_POINT_BYTES];
            buf[..8].copy_from_slice(&p.step.to_le_bytes());
            buf[8..16].copy_from_slice(&p.timestamp_ms.to_le_bytes());
            buf[16..].copy_from_slice(&p.value.to_bits().to_le_bytes());
            writer.write_all(&buf).map_err(failed)?;
        }
        *written += points.len() as u64;
        spill.holds(*written * FILE_POINT_BYTES as u64);
        Ok(())
    }

    pub fn finish(self) -> Result<FetchedSeries, String> {
        match self.file {
            None => Ok(FetchedSeries::Memory(self.memory)),
            Some((writer, file, points)) => {
                writer.into_inner().map_err(|e| format!("{}: writing {}: {e}", self.what, file.path().display()))?;
                Ok(FetchedSeries::File { file, points })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::HistorySink;

    #[test]
    fn history_pages_read_into_points() {
        let body = br#"{"metrics":[{"key":"x","value":"NaN","timestamp":"5","step":2},
            {"key":"x","value":1,"timestamp":7},{"key":"x","value":1.7976931348623157e308,"step":3,"run_id":"r"}],
            "next_page_token":"t"}"#;
        let page: HistoryPage = serde_json::from_slice(body).unwrap();
        let points: Vec<MetricPoint> = page.metrics.into_iter().map(|p| p.0).collect();
        assert!(points[0].value.is_nan() && (points[0].timestamp_ms, points[0].step) == (5, 2));
        assert_eq!(points[1], MetricPoint { value: 1.0, timestamp_ms: 7, step: 0 });
        assert_eq!(points[2], MetricPoint { value: f64::MAX, timestamp_ms: 0, step: 3 });
        assert_eq!(page.next_page_token.as_deref(), Some("t"));
        let empty: HistoryPage = serde_json::from_slice(b"{}").unwrap();
        assert!(empty.metrics.is_empty() && empty.next_page_token.is_none());
        assert!(serde_json::from_slice::<HistoryPage>(br#"{"metrics":[{"value":"x"}]}"#).is_err());
        assert!(serde_json::from_slice::<HistoryPage>(br#"{"metrics":[{"step":1}]}"#).is_err());
    }

    /// Pages past the run's budget go to a temporary file (the points held
    /// before them too) and read back as fetched; within it, memory.
    #[test]
    fn pages_past_the_budget_go_to_a_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let spill = SpillDir::create(&dir.path().join("spill")).unwrap();
        let target = HistoryTarget {
            encoding: crate::pipeline::HistoryEncoding::Kinds,
            chunk_bytes: 4 * 1000 * CHUNK_BYTES_PER_POINT,
            spill: Some(Arc::clone(&spill)),
        };
        let budget = FetchBudget::new(Some(&target));
        let page = |from: i64| -> Vec<MetricPoint> {
            (from..from + 400)
                .map(|i| MetricPoint {
                    value: if i == 7 { f64::NAN } else { i as f64 / 3.0 },
                    timestamp_ms: i * 10,
                    step: -i,
                })
                .collect()
        };
        let read = |series: FetchedSeries| {
            let mut sink = HistorySink::whole();
            let mut out = MetricHistoryBuilder::new(&mut sink);
            out.start_key("k").unwrap();
            series.read_into("test", &mut out).unwrap();
            let h = out.finish();
            let values = h.series.first().map(|s| s.values.values().to_vec()).unwrap_or_default();
            h.rows.iter().zip(values).map(|(r, v)| (r.step, r.timestamp, v.to_bits())).collect::<Vec<_>>()
        };
        let expected = |n: i64| read(FetchedSeries::Memory((0..n).step_by(400).flat_map(page).collect()));

        let mut small = PagedSeries::new(&budget, "small");
        small.add(page(0)).unwrap();
        small.add(page(400)).unwrap();
        let small = small.finish().unwrap();
        assert!(matches!(small, FetchedSeries::Memory(ref p) if p.len() == 800));
        // Another key of the run: its first page would pass the run's 1,000 points.
        let mut large = PagedSeries::new(&budget, "large");
        for from in (0..2000).step_by(400) {
            large.add(page(from)).unwrap();
        }
        let large = large.finish().unwrap();
        let FetchedSeries::File { ref file, points } = large else { panic!("past the budget: a file") };
        assert_eq!(points, 2000);
        let path = file.path().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 2000 * FILE_POINT_BYTES as u64);
        assert!(spill.peak_bytes() >= 2000 * FILE_POINT_BYTES as u64);
        assert_eq!(read(large), expected(2000));
        assert!(!path.exists(), "the temporary file goes once read");
        assert_eq!(read(small), expected(800));
    }
}
