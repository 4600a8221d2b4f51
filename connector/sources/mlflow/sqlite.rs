//! `sqlite:///PATH/mlflow.db`, read directly and read-only (the database
//! may be in use by a server or a client: readers never block its writers in
//! WAL mode, and nothing is written).
//!
//! Tables: `experiments`, `runs` (`run_uuid`, `name`, `status`, times in ms,
//! `lifecycle_stage`, `experiment_id`, `user_id`, `artifact_uri`),
//! `latest_metrics`, `params`, `tags`, and `metrics` (history; NaN stored as
//! 0 with `is_nan = 1`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, params};

use super::{MetricHistoryBuilder, MetricPoint, MlflowRun, RunView};

/// Opens the database read-only.
pub fn open(path: &Path) -> Result<Connection, String> {
    if !path.is_file() {
        return Err(format!("{}: no such database file", path.display()));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| format!("{}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(conn)
}

/// The file of a SQLAlchemy SQLite URI, as MLflow reads it: `sqlite:///mlflow.db`
/// is relative to the working directory, `sqlite:////abs/mlflow.db` absolute.
pub fn path_of(uri: &str) -> Option<PathBuf> {
    let rest = uri.strip_prefix("sqlite:///")?;
    (!rest.is_empty()).then(|| PathBuf::from(rest))
}

fn err(path: &Path) -> impl Fn(rusqlite::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Every run of the selected experiments (all when `experiments` is empty)
/// in the view, with latest metrics, params and tags.
pub fn list_runs(path: &Path, experiments: &[String], view: RunView) -> Result<Vec<MlflowRun>, String> {
    let conn = open(path)?;
    let e = err(path);
    // One snapshot for the whole listing.
    conn.execute_batch("BEGIN").map_err(&e)?;
    let mut exps: Vec<(String, String, String)> = Vec::new();
    {
        let mut st = conn.prepare("SELECT experiment_id, name, lifecycle_stage FROM experiments").map_err(&e)?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?.to_string(),
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                ))
            })
            .map_err(&e)?;
        for row in rows {
            exps.push(row.map_err(&e)?);
        }
    }
    let wanted: Vec<String> = if experiments.is_empty() {
        exps.iter().filter(|(_, _, stage)| view.includes(stage)).map(|(id, _, _)| id.clone()).collect()
    } else {
        let mut ids = Vec::new();
        for w in experiments {
            let id = exps
                .iter()
                .find(|(_, name, _)| name == w)
                .or_else(|| exps.iter().find(|(id, _, _)| id == w))
                .map(|(id, _, _)| id.clone())
                .ok_or_else(|| format!("{}: no experiment named or numbered {w:?}", path.display()))?;
            ids.push(id);
        }
        ids
    };
    let names: HashMap<String, String> = exps.iter().map(|(id, n, _)| (id.clone(), n.clone())).collect();
    let mut runs: Vec<MlflowRun> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    {
        let mut st = conn
            .prepare(
                "SELECT run_uuid, name, user_id, status, start_time, end_time, lifecycle_stage, experiment_id, artifact_uri \
                 FROM runs ORDER BY run_uuid",
            )
            .map_err(&e)?;
        let rows = st
            .query_map([], |r| {
                Ok(MlflowRun {
                    run_id: r.get(0)?,
                    run_name: r.get(1)?,
                    user_id: r.get(2)?,
                    status: r.get(3)?,
                    start_time_ms: r.get(4)?,
                    end_time_ms: r.get(5)?,
                    lifecycle_stage: r.get(6)?,
                    experiment_id: r.get::<_, Option<i64>>(7)?.map(|i| i.to_string()).unwrap_or_default(),
                    artifact_uri: r.get(8)?,
                    ..Default::default()
                })
            })
            .map_err(&e)?;
        for row in rows {
            let mut run = row.map_err(&e)?;
            if !wanted.contains(&run.experiment_id)
                || !view.includes(run.lifecycle_stage.as_deref().unwrap_or("active"))
            {
                continue;
            }
            run.experiment_name = names.get(&run.experiment_id).cloned();
            index.insert(run.run_id.clone(), runs.len());
            runs.push(run);
        }
    }
    {
        let mut st =
            conn.prepare("SELECT run_uuid, key, value, is_nan, step, timestamp FROM latest_metrics").map_err(&e)?;
        let rows = st
            .query_map([], |r| {
                let nan: bool = r.get(3)?;
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    if nan { f64::NAN } else { r.get(2)? },
                    r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                    r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                ))
            })
            .map_err(&e)?;
        for row in rows {
            let (run, key, value, step, timestamp) = row.map_err(&e)?;
            if let Some(i) = index.get(&run) {
                runs[*i].latest_marks.push((key.clone(), step, timestamp));
                runs[*i].metrics.push((key, value));
            }
        }
    }
    for (table, params) in [("params", true), ("tags", false)] {
        let mut st = conn.prepare(&format!("SELECT run_uuid, key, value FROM {table}")).map_err(&e)?;
        let rows = st
            .query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?.unwrap_or_default()))
            })
            .map_err(&e)?;
        for row in rows {
            let (run, key, value) = row.map_err(&e)?;
            if let Some(i) = index.get(&run) {
                if params {
                    runs[*i].params.push((key, value));
                } else {
                    runs[*i].tags.push((key, value));
                }
            }
        }
    }
    conn.execute_batch("COMMIT").map_err(&e)?;
    Ok(runs)
}

/// MLflow's index of the metrics table by (run_uuid, key, step).
const RUN_KEY_INDEX: &str = "index_metrics_run_uuid_key_step";

/// The histories of `keys` of one run, key after key (in the order given),
/// each in (step, timestamp, value) order: the rows are read from SQLite
/// one at a time and handed to `out`, which flushes them in chunks. The
/// index on (run_uuid, key, step) yields a key's points in step order, so
/// SQLite sorts only the points of one step at a time by timestamp and value.
pub fn read_histories(
    conn: &Connection,
    path: &Path,
    run_id: &str,
    keys: &[String],
    out: &mut MetricHistoryBuilder<'_>,
) -> Result<(), String> {
    let e = err(path);
    // MLflow's schema indexes (run_uuid, key, step), but without statistics
    // (ANALYZE) recent SQLite versions prefer the primary key, which starts
    // with `key`: every query would then scan the key's rows of all runs.
    let indexed: bool = conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?1)")
        .and_then(|mut st| st.query_row([RUN_KEY_INDEX], |r| r.get(0)))
        .map_err(&e)?;
    let query = format!(
        "SELECT value, timestamp, step, is_nan FROM metrics {} WHERE run_uuid = ?1 AND key = ?2 ORDER BY step, timestamp, value",
        if indexed { format!("INDEXED BY {RUN_KEY_INDEX}") } else { String::new() }
    );
    let mut st = conn.prepare_cached(&query).map_err(&e)?;
    for key in keys {
        let what = |e: rusqlite::Error| format!("{}: history of metric {key:?} of run {run_id}: {e}", path.display());
        out.start_key(key)?;
        let mut rows = st.query(params![run_id, key]).map_err(what)?;
        while let Some(r) = rows.next().map_err(what)? {
            let nan: bool = r.get(3).map_err(what)?;
            out.push(MetricPoint {
                value: if nan { f64::NAN } else { r.get(0).map_err(what)? },
                timestamp_ms: r.get(1).map_err(what)?,
                step: r.get(2).map_err(what)?,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::HistorySink;

    #[test]
    fn histories_with_and_without_the_run_key_index() {
        for indexed in [true, false] {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(
                "CREATE TABLE metrics (key VARCHAR(250) NOT NULL, value FLOAT NOT NULL, timestamp BIGINT NOT NULL, \
                 run_uuid VARCHAR(32) NOT NULL, step BIGINT DEFAULT '0' NOT NULL, is_nan BOOLEAN DEFAULT '0' NOT NULL, \
                 CONSTRAINT metric_pk PRIMARY KEY (key, timestamp, step, run_uuid, value, is_nan));
                 INSERT INTO metrics VALUES ('loss', 2.0, 20, 'r1', 1, 0), ('loss', 1.0, 10, 'r1', 0, 0),
                   ('loss', 0.0, 30, 'r1', 2, 1), ('loss', 9.0, 10, 'r2', 0, 0), ('acc', 0.5, 10, 'r1', 0, 0);",
            )
            .unwrap();
            if indexed {
                conn.execute_batch(&format!("CREATE INDEX {RUN_KEY_INDEX} ON metrics (run_uuid, key, step)")).unwrap();
            }
            let mut sink = HistorySink::whole();
            let mut out = MetricHistoryBuilder::new(&mut sink);
            let keys = ["loss".to_string(), "none".to_string()];
            read_histories(&conn, Path::new("mlflow.db"), "r1", &keys, &mut out).unwrap();
            let h = out.finish();
            assert_eq!(h.keys, keys);
            let loss: Vec<(i64, Option<i64>)> = h.rows.iter().map(|r| (r.step, r.timestamp)).collect();
            assert_eq!(loss, vec![(0, Some(10_000)), (1, Some(20_000)), (2, Some(30_000))]);
            assert_eq!(h.series.len(), 1, "no points of `none`");
            let values = &h.series[0].values;
            assert_eq!((values.value(0), values.value(1)), (1.0, 2.0));
            assert!(values.value(2).is_nan(), "is_nan rows read as NaN");
        }
    }

    #[test]
    fn uris_to_paths() {
        assert_eq!(path_of("sqlite:////tmp/a/mlflow.db"), Some(PathBuf::from("/tmp/a/mlflow.db")));
        assert_eq!(path_of("sqlite:///mlflow.db"), Some(PathBuf::from("mlflow.db")));
        assert_eq!(path_of("sqlite:///"), None);
        assert_eq!(path_of("http://x"), None);
    }
}
