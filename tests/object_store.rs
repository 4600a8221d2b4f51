//! `runport sync` into an object store: S3 through the moto server
//! (`moto[server]` from PyPI, in `target/s3-venv`, on a free loopback port).
//! The tables, read back over the same endpoint with Python `deltalake` and
//! polars, equal an export on local disk; shards race their commits there
//! as on local disk; a missing bucket and an unreachable endpoint fail
//! clearly (exit 3) with nothing written.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// A moto S3 server on a free loopback port, with the bucket `lake`.
struct Moto {
    child: Child,
    endpoint: String,
    /// The access key id and secret runport is given.
    key: (String, String),
}

/// Starts a server with `spawn(port)` on a free loopback port and waits
/// until it answers HTTP at `path` with `server` in its `Server` header. A
/// port found free can be taken before the server binds it (by another
/// test's server; ours then exits): another port is tried, up to three. A
/// bare TCP connect proves nothing: it may reach that other server, or,
/// into the ephemeral range with nothing listening, the connecting socket
/// itself.
fn spawn_serving(what: &str, path: &str, server: &str, spawn: impl Fn(u16) -> Child) -> (Child, u16) {
    use std::io::{Read, Write};
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = spawn(port);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                eprintln!("{what} exited ({status}) before serving on port {port}; trying another port");
                break;
            }
            assert!(Instant::now() < deadline, "{what} did not answer on port {port} within 60 s");
            let head = std::net::TcpStream::connect(("127.0.0.1", port)).ok().and_then(|mut conn| {
                let mut head = Vec::new();
                let asked = conn.local_addr().ok() != conn.peer_addr().ok()
                    && conn.set_read_timeout(Some(Duration::from_secs(10))).is_ok()
                    && conn.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes()).is_ok();
                let mut buf = [0u8; 1024];
                while asked && head.len() < 16 << 10 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(n) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => break,
                    }
                }
                asked.then(|| String::from_utf8_lossy(&head).into_owned())
            });
            match head {
                Some(h)
                    if h.starts_with("HTTP/") && h.lines().any(|l| l.starts_with("Server:") && l.contains(server)) =>
                {
                    return (child, port);
                }
                Some(h) if h.starts_with("HTTP/") => {
                    eprintln!("another server answers on port {port}: {:?}", h.lines().next());
                }
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    panic!("{what} could not start on a free port (three tries)");
}

/// Creates the bucket; with keys checked, also a user allowed everything,
/// and prints its access key id and secret.
const MOTO_SETUP: &str = r#"
import sys, json, boto3
endpoint, auth = sys.argv[1], sys.argv[2] == "auth"
kw = dict(endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
boto3.client("s3", **kw).create_bucket(Bucket="lake")
if auth:
    iam = boto3.client("iam", **kw)
    iam.create_user(UserName="runport")
    allow = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName="runport", PolicyName="all", PolicyDocument=json.dumps(allow))
    key = iam.create_access_key(UserName="runport")["AccessKey"]
    print(key["AccessKeyId"], key["SecretAccessKey"])
else:
    print("testing testing")
"#;

impl Moto {
    fn start() -> Moto {
        Moto::start_checking(false)
    }

    /// With `auth`, moto checks keys after the setup's first 4 requests.
    fn start_checking(auth: bool) -> Moto {
        let python = venv_python("s3-venv", "requirements-s3.txt");
        // `/moto-api/` is moto's own: it is not an S3 action, so it does not
        // count among the ones let through unchecked.
        let (child, port) = spawn_serving("moto_server", "/moto-api/", "Werkzeug", |port| {
            let mut server = Command::new(python.with_file_name("moto_server"));
            if auth {
                server.env("INITIAL_NO_AUTH_ACTION_COUNT", "4");
            }
            server.args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null());
            server.spawn().expect("start moto_server")
        });
        let endpoint = format!("http://127.0.0.1:{port}");
        let mut moto = Moto { child, endpoint, key: Default::default() };
        let out = run_checked(
            Command::new(&python).arg("-c").arg(MOTO_SETUP).arg(&moto.endpoint).arg(if auth { "auth" } else { "open" }),
            "creating the bucket",
        );
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let (id, secret) = out.trim().split_once(' ').expect("a key id and secret");
        moto.key = (id.to_string(), secret.to_string());
        moto
    }

    /// The environment runport reads its S3 settings from.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.key.1.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }

    fn runport(&self) -> Command {
        let mut c = runport();
        c.envs(self.env());
        c
    }

    fn sync(&self, source: &Path, table: &str, args: &[&str], want: i32) -> (serde_json::Value, String) {
        let out = self
            .runport()
            .args(["sync".as_ref(), source.as_os_str()])
            .arg(table)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(want), "sync {table} {args:?}\n{stdout}\n{stderr}");
        let summary = if want <= 1 { last_json_line(&stdout) } else { serde_json::Value::Null };
        (summary, stderr.into_owned())
    }

    /// The tables at `table` (read over S3 with deltalake and polars) equal
    /// an export of `source` on local disk.
    fn assert_same_as_export(&self, source: &Path, table: &str, scratch: &Path, what: &str) {
        let export = scratch.join(format!("export-{what}"));
        let _ = std::fs::remove_dir_all(&export);
        export_json(source, &export, &[], 0);
        let options = serde_json::json!(self.env().into_iter().collect::<std::collections::BTreeMap<_, _>>());
        let out = run_checked(
            Command::new(python()).arg("-c").arg(SAME_OVER_S3).arg(table).arg(&export).arg(options.to_string()),
            &format!("comparing {table} with an export ({what})"),
        );
        eprintln!("{what}: {}", String::from_utf8_lossy(&out.stdout).trim());
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads both tables over S3 (`storage_options`) and compares them with an
/// export, sync columns aside, rows sorted by every column.
const SAME_OVER_S3: &str = r#"
import sys, json
import polars as pl
from polars.testing import assert_frame_equal
from deltalake import DeltaTable

table, export, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

def same(got, want, what, by):
    assert sorted(got.columns) == sorted(want.columns), (what, sorted(set(got.columns) ^ set(want.columns)))
    got = got.select(want.columns)
    assert got.schema == want.schema, (what, [(n, got.schema[n], want.schema[n]) for n in want.columns if got.schema[n] != want.schema[n]])
    assert_frame_equal(got.sort(by, nulls_last=True), want.sort(by, nulls_last=True), check_exact=True)

runs = pl.read_delta(f"{table}/runs", storage_options=options)
runs = runs.drop([c for c in runs.columns if c.startswith("_sync_")])
same(runs, pl.read_parquet(f"{export}/runs.parquet"), "runs", ["run_id"])
dt = DeltaTable(f"{table}/history", storage_options=options)
assert dt.protocol().min_reader_version == 1 and dt.protocol().min_writer_version == 2, dt.protocol()
hist = pl.read_delta(f"{table}/history", storage_options=options)
cols = ["run_id", "key", "step", "timestamp", "runtime_s", "value", "value_json"]
same(hist, pl.read_parquet(f"{export}/history/*.parquet"), "history", cols)
print(f"runs {runs.height}, history {hist.height}, files {len(dt.file_uris())}, version {dt.version()}")
"#;

/// A sync into `s3://lake/project` follows the source as on local disk: the
/// first sync, an unchanged one (no commit), and one after a run was added,
/// one grew and one was deleted; the tables equal a local export each time.
#[test]
fn sync_into_s3_follows_the_source_as_on_local_disk() {
    let moto = Moto::start();
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let held = crate::sync::Held::copy_standard(&source);
    let table = "s3://lake/project";
    let (first, _) = moto.sync(&source, table, &[], 0);
    assert_eq!((&first["committed"], &first["table"]), (&true.into(), &table.into()), "{first}");
    moto.assert_same_as_export(&source, table, tmp.path(), "s3-first");
    let (again, _) = moto.sync(&source, table, &[], 0);
    assert_eq!(again["committed"], false, "{again}");
    held.apply(&source);
    let (changed, _) = moto.sync(&source, table, &[], 0);
    let runs = &changed["runs"];
    // A new run, a resumed run's second folder, a deleted run.
    assert_eq!((&runs["new"], &runs["changed"], &runs["deleted"]), (&1.into(), &1.into(), &1.into()), "{changed}");
    moto.assert_same_as_export(&source, table, tmp.path(), "s3-changed");
}

/// With keys checked, the right key syncs and a wrong secret fails with
/// exit 3, naming the location and not the secret, with nothing written.
#[test]
fn a_wrong_s3_key_fails_clearly_and_writes_nothing() {
    let moto = Moto::start_checking(true);
    let source = wandb_runs("standard").join("wandb");
    moto.sync(&source, "s3://lake/right", &[], 0);
    let mut wrong = moto.runport();
    wrong.env("AWS_SECRET_ACCESS_KEY", "not-the-secret-0123456789");
    let out = wrong.args(["sync".as_ref(), source.as_os_str(), "s3://lake/wrong".as_ref()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("s3://lake/wrong") && stderr.contains("SignatureDoesNotMatch"), "{stderr}");
    assert!(!stderr.contains("not-the-secret") && !stderr.contains(&moto.key.1), "secret printed: {stderr}");
    let out = moto
        .runport()
        .args(["sync".as_ref(), source.as_os_str(), "s3://lake/wrong".as_ref(), "--json".as_ref()])
        .output()
        .unwrap();
    // The right key finds no table there: nothing was written by the refused sync.
    let first = last_json_line(&String::from_utf8_lossy(&out.stdout));
    assert_eq!((&first["versions"]["runs"], &first["runs"]["unchanged"]), (&0.into(), &0.into()), "{first}");
}

/// An export into an S3 prefix equals one on local disk (read back over
/// S3), `_manifest.json` uploaded last; a prefix that holds objects is
/// refused (exit 2).
#[test]
fn export_into_s3_equals_a_local_export() {
    let moto = Moto::start();
    let tmp = tempdir();
    let source = wandb_runs("standard").join("wandb");
    let out = moto
        .runport()
        .args(["export".as_ref(), source.as_os_str(), "-o".as_ref(), "s3://lake/export".as_ref(), "--json".as_ref()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(last_json_line(&stdout)["out"], "s3://lake/export/");
    let local = tmp.path().join("local");
    export_json(&source, &local, &[], 0);
    let options = serde_json::json!(moto.env().into_iter().collect::<std::collections::BTreeMap<_, _>>());
    const SAME: &str = r#"
import sys, json
import polars as pl
from polars.testing import assert_frame_equal
remote, local, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
opts = {k.lower(): v for k, v in options.items()}
for name, by in [("runs.parquet", ["run_id"]), ("history/*.parquet", ["run_id", "key", "step"])]:
    got = pl.read_parquet(f"{remote}/{name}", storage_options=opts)
    want = pl.read_parquet(f"{local}/{name}")
    assert_frame_equal(got.sort(by), want.sort(by), check_exact=True)
print("same")
"#;
    run_checked(
        Command::new(python()).arg("-c").arg(SAME).arg("s3://lake/export").arg(&local).arg(options.to_string()),
        "comparing the S3 export with the local one",
    );
    let again = moto
        .runport()
        .args(["export".as_ref(), source.as_os_str(), "-o".as_ref(), "s3://lake/export".as_ref()])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2), "{}", String::from_utf8_lossy(&again.stderr));
}

/// A missing bucket and an unreachable endpoint each fail with exit 3 and a
/// message naming the location, before anything is written; the secret
/// key is never printed.
#[test]
fn s3_errors_name_the_location_and_write_nothing() {
    let moto = Moto::start();
    let source = wandb_runs("standard").join("wandb");
    let (_, stderr) = moto.sync(&source, "s3://missing-bucket/project", &[], 3);
    assert!(stderr.contains("s3://missing-bucket/project") && stderr.contains("NoSuchBucket"), "{stderr}");
    let mut unreachable = moto.runport();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    unreachable.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}"));
    let out = unreachable.args(["sync".as_ref(), source.as_os_str(), "s3://lake/p".as_ref()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("s3://lake/p") && stderr.contains("error sending request"), "{stderr}");
    assert!(!stderr.contains("testing"), "credentials printed: {stderr}");
    // Nothing was written into the bucket.
    let list = format!(
        "import boto3; c = boto3.client('s3', endpoint_url='{}', aws_access_key_id='testing', \
         aws_secret_access_key='testing', region_name='us-east-1'); print(c.list_objects_v2(Bucket='lake').get('KeyCount'))",
        moto.endpoint
    );
    let out = run_checked(Command::new(venv_python("s3-venv", "requirements-s3.txt")).arg("-c").arg(list), "listing");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

/// Four shard processes started together (random delays) into one S3
/// table, 10 rounds, one shard killed at a random point and run again in
/// each: the tables equal an export every time.
#[test]
fn four_shards_into_s3_equal_an_export() {
    let moto = Moto::start();
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    crate::sync::Held::copy_standard(&source);
    let mut next = seeded_rng("delays and kills");
    let mut retries = 0;
    for round in 0..10 {
        let table = format!("s3://lake/shards-{round}");
        let (killed, more) = crate::sync::race_shards(&mut next, &format!("round {round}"), |k| {
            moto.runport()
                .args(["sync".as_ref(), source.as_os_str()])
                .args([table.as_str(), "--json", "--shard", k])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        });
        retries += more;
        moto.sync(&source, &table, &["--shard", &format!("{killed}/4")], 0);
        moto.assert_same_as_export(&source, &table, tmp.path(), &format!("s3-shards-{round}"));
    }
    eprintln!("commit retries over the rounds: {retries}");
}

/// Azurite's well-known development account.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azure Blob through Azurite (npm), in memory on a free loopback port,
/// with the container `lake`.
struct Azurite {
    child: Child,
    url: String,
}

impl Azurite {
    fn start() -> Azurite {
        let bin = azurite_blob();
        let (child, port) = spawn_serving("azurite-blob", "/", "Azurite", |port| {
            Command::new(&bin)
                .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                .args(["--inMemoryPersistence", "--skipApiVersionCheck", "--loose", "--disableTelemetry"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start azurite-blob")
        });
        let azurite = Azurite { child, url: format!("http://127.0.0.1:{port}") };
        let create = "import sys; from azure.storage.blob import BlobServiceClient; \
             BlobServiceClient.from_connection_string(sys.argv[1]).create_container('lake')";
        let conn = format!(
            "DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};BlobEndpoint={}/{AZURITE_ACCOUNT};",
            azurite.url
        );
        run_checked(
            Command::new(venv_python("s3-venv", "requirements-s3.txt")).arg("-c").arg(create).arg(conn),
            "creating the container",
        );
        azurite
    }

    /// The environment runport (and delta-rs in Python) read Azure settings from.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AZURE_STORAGE_ACCOUNT_NAME", AZURITE_ACCOUNT.into()),
            ("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into()),
            ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
            ("AZURITE_BLOB_STORAGE_URL", self.url.clone()),
        ]
    }

    fn sync(&self, source: &Path, table: &str) -> serde_json::Value {
        let out = runport()
            .envs(self.env())
            .args(["sync".as_ref(), source.as_os_str(), table.as_ref(), "--json".as_ref()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        last_json_line(&stdout)
    }

    /// The tables (read over Azure with Python `deltalake`) equal an export.
    fn assert_same_as_export(&self, source: &Path, table: &str, scratch: &Path, what: &str) {
        const SAME: &str = r#"
import sys
import polars as pl
from polars.testing import assert_frame_equal
from deltalake import DeltaTable
table, export = sys.argv[1], sys.argv[2]
def read(name):
    return pl.from_arrow(DeltaTable(f"{table}/{name}").to_pyarrow_table())
def same(got, want, by):
    assert sorted(got.columns) == sorted(want.columns), sorted(set(got.columns) ^ set(want.columns))
    got = got.select(want.columns)
    assert got.schema == want.schema, [(n, got.schema[n], want.schema[n]) for n in want.columns if got.schema[n] != want.schema[n]]
    assert_frame_equal(got.sort(by, nulls_last=True), want.sort(by, nulls_last=True), check_exact=True)
runs = read("runs")
same(runs.drop([c for c in runs.columns if c.startswith("_sync_")]), pl.read_parquet(f"{export}/runs.parquet"), ["run_id"])
cols = ["run_id", "key", "step", "timestamp", "runtime_s", "value", "value_json"]
same(read("history"), pl.read_parquet(f"{export}/history/*.parquet"), cols)
print("runs", runs.height)
"#;
        let export = scratch.join(format!("export-{what}"));
        let _ = std::fs::remove_dir_all(&export);
        export_json(source, &export, &[], 0);
        run_checked(
            Command::new(python()).envs(self.env()).arg("-c").arg(SAME).arg(table).arg(&export),
            &format!("comparing {table} with an export ({what})"),
        );
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sync into `az://lake/project` (Azurite) follows the source: the first
/// sync, an unchanged one, and one after a run was added, one grew and one
/// was deleted; the tables equal a local export each time.
#[test]
fn sync_into_azure_blob_follows_the_source() {
    let azurite = Azurite::start();
    let tmp = tempdir();
    let source = tmp.path().join("wandb");
    let held = crate::sync::Held::copy_standard(&source);
    let table = "az://lake/project";
    assert_eq!(azurite.sync(&source, table)["committed"], true);
    azurite.assert_same_as_export(&source, table, tmp.path(), "az-first");
    assert_eq!(azurite.sync(&source, table)["committed"], false);
    held.apply(&source);
    let changed = azurite.sync(&source, table);
    assert_eq!(changed["runs"]["deleted"], 1, "{changed}");
    azurite.assert_same_as_export(&source, table, tmp.path(), "az-changed");
}
