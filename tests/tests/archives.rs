//! `format: archive` against the real controller: archives made by real tools (GNU tar, Python's
//! tarfile and zipfile) served on loopback become deterministic trees; hostile ones (zip-slip, a
//! symlink out of the tree, a 1 GiB gzip bomb, zips whose end records declare or hide too many
//! entries, over-long names and long-name records) are refused naming the entry or record, the
//! value and the limit, and the last good artifact stays published.

use std::path::Path;
use std::process::Command;

use externalsource_core::controller::api::ExternalSource;
use externalsource_tests::controller::Options;
use externalsource_tests::sources::{WAIT, artifact, download, ready, request_reconcile, source, wait_ready};
use externalsource_tests::{ControlPlane, Reply, TestController, Upstream, eventually, sha256};
use kube::api::{Api, PostParams};
use serde_json::json;

/// Runs a Python script that writes archives into `dir`; Python's tarfile and zipfile write
/// what real tools write, hostile names included.
fn python(dir: &Path, script: &str) {
    let out = Command::new("python3").arg("-c").arg(script).current_dir(dir).output().expect("python3");
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
}

/// A chart directory tarred by GNU tar, with this run's mtimes and owner names.
fn tar_chart(dir: &Path, values: &str, name: &str) -> Vec<u8> {
    let chart = dir.join("src/podinfo");
    std::fs::create_dir_all(chart.join("templates")).unwrap();
    std::fs::write(chart.join("Chart.yaml"), "apiVersion: v2\nname: podinfo\nversion: 6.5.0\n").unwrap();
    std::fs::write(chart.join("values.yaml"), values).unwrap();
    std::fs::write(chart.join("templates/configmap.yaml"), "kind: ConfigMap\n").unwrap();
    let status = Command::new("tar")
        .arg("-czf")
        .arg(dir.join(name))
        .arg("-C")
        .arg(dir.join("src"))
        .arg("podinfo")
        .status()
        .expect("tar");
    assert!(status.success());
    std::fs::read(dir.join(name)).unwrap()
}

/// (name, mode, mtime, uid, is_dir) of every entry, read by Python's tarfile.
fn entries(artifact: &[u8], dir: &Path) -> String {
    std::fs::write(dir.join("artifact.tar.gz"), artifact).unwrap();
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            "import tarfile\n\
             t = tarfile.open('artifact.tar.gz', 'r:gz')\n\
             print(';'.join(f'{m.name} {m.mode:o} {m.mtime} {m.uid} {m.isdir()}' for m in t.getmembers()))\n",
        )
        .current_dir(dir)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn wait_refused(api: &Api<ExternalSource>, name: &str, token: &str) -> String {
    request_reconcile(api, name, token).await;
    eventually(&format!("{name} Ready=False ArchiveRefused"), WAIT, || async {
        let (s, r, m) = ready(&api.get(name).await.ok()?)?;
        (s == "False" && r == "ArchiveRefused").then_some(m)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archives_become_deterministic_trees_and_hostile_ones_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let cp = ControlPlane::start().await;
    let ns = cp.namespace("archives").await;
    // 8 MiB of payload: room for a 1 GiB gzip bomb (about 1 MiB compressed) to be fetched whole.
    let ctl = TestController::start(cp.client(), Options { max_size: 8 << 20, ..Options::default() }).await;
    let api: Api<ExternalSource> = Api::namespaced(cp.client(), &ns);

    // A chart tarball: the artifact keeps its one top-level directory, sorted and normalised.
    let chart = tar_chart(dir, "replicaCount: 1\n", "chart-1.tgz");
    let upstream = Upstream::start(Reply::ok(chart).with_header("content-type", "application/gzip")).await;
    let spec = json!({"format": "archive", "maxSize": "8MiB"});
    api.create(&PostParams::default(), &source("chart", &upstream.url("/podinfo-6.5.0.tgz"), spec)).await.unwrap();
    let first = artifact(&wait_ready(&api, "chart", "True").await);
    let (code, bytes) = download(&first.url).await;
    assert_eq!((code, sha256(&bytes)), (200, first.digest.clone()));
    assert_eq!(
        entries(&bytes, dir),
        "podinfo 755 0 0 True;podinfo/Chart.yaml 644 0 0 False;podinfo/templates 755 0 0 True;\
         podinfo/templates/configmap.yaml 644 0 0 False;podinfo/values.yaml 644 0 0 False"
    );

    // The same chart tarred again later (other mtimes, another gzip stream): same revision.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let again = tar_chart(dir, "replicaCount: 1\n", "chart-2.tgz");
    assert_ne!(sha256(&again), sha256(&std::fs::read(dir.join("chart-1.tgz")).unwrap()), "the upstream bytes differ");
    upstream.set(Reply::ok(again));
    let es = request_reconcile(&api, "chart", "retar").await;
    assert_eq!(artifact(&es).revision, first.revision, "a re-tarred identical chart is the same revision");

    // Hostile archives: each refused naming the entry; the chart stays published.
    python(
        dir,
        "import io, tarfile, zipfile, gzip\n\
         with zipfile.ZipFile('slip.zip', 'w') as z:\n\
         \x20   z.writestr('podinfo/Chart.yaml', 'name: x\\n')\n\
         \x20   z.writestr('../../etc/cron.d/evil', '* * * * * root sh\\n')\n\
         with tarfile.open('symlink.tgz', 'w:gz') as t:\n\
         \x20   link = tarfile.TarInfo('podinfo/passwd'); link.type = tarfile.SYMTYPE; link.linkname = '/etc/passwd'\n\
         \x20   t.addfile(link)\n\
         class Zeros(io.RawIOBase):\n\
         \x20   left = 1 << 30\n\
         \x20   def readable(self): return True\n\
         \x20   def readinto(self, b):\n\
         \x20       n = min(len(b), self.left); b[:n] = bytes(n); self.left -= n; return n\n\
         with tarfile.open('bomb.tgz', 'w:gz', compresslevel=9) as t:\n\
         \x20   info = tarfile.TarInfo('podinfo/zeros'); info.size = 1 << 30\n\
         \x20   t.addfile(info, io.BufferedReader(Zeros(), 1 << 20))\n",
    );
    // Shapes that cost memory in proportion to what they declare, written record by record by
    // the memory benchmark's generator (tests/bench/archive_shapes.py).
    python(
        dir,
        &format!(
            "import sys\n\
             sys.path.insert(0, {bench:?})\n\
             from archive_shapes import Zip, TarGz, deflated_zeros, MiB\n\
             z = Zip('many.zip')\n\
             for i in range(20000): z.stored(b'f%07d' % i)\n\
             z.finish()\n\
             z = Zip('hidden.zip')\n\
             for i in range(20000): z.stored(b'f%07d' % i)\n\
             z.finish(count=10)\n\
             z = Zip('hidden-size.zip')\n\
             for i in range(20000): z.stored(b'f%07d' % i)\n\
             z.finish(count=10, size=10 * 54)\n\
             z = Zip('zip64.zip')\n\
             z.stored(b'podinfo/Chart.yaml', b'name: x\\n')\n\
             z.finish(count=4000000000, zip64=True)\n\
             z = Zip('long-name.zip')\n\
             for i in range(10): z.stored(b'podinfo/f%d' % i)\n\
             z.stored(b'a' * 60000)\n\
             z.finish()\n\
             z = Zip('deflate-bomb.zip')\n\
             z.entry(b'podinfo/zeros', deflated_zeros(256 * MiB), 8, None, 10, 0)\n\
             z.finish()\n\
             t = TarGz('long-name.tgz')\n\
             t.zeros(b'././@LongLink', 64 * MiB, b'L')\n\
             t.record(b'fine', b'x')\n\
             t.finish()\n",
            bench = concat!(env!("CARGO_MANIFEST_DIR"), "/bench"),
        ),
    );
    let a64 = "a".repeat(64);
    let cases = [
        ("slip.zip", "\"../../etc/cron.d/evil\" contains a '..' segment".to_owned()),
        ("symlink.tgz", "\"podinfo/passwd\" is a link (to \"/etc/passwd\")".to_owned()),
        ("bomb.tgz", "unpacks to more than 8388608 bytes".to_owned()),
        ("many.zip", "its end of central directory record declares 20000 entries; the limit is 10000".to_owned()),
        ("hidden.zip", "declares a central directory of 1080000 bytes; 10 entries take at most 92620".to_owned()),
        (
            "hidden-size.zip",
            "its central directory holds more than the 10 records its end of central directory record declares"
                .to_owned(),
        ),
        (
            "zip64.zip",
            "its zip64 end of central directory record declares 4000000000 entries; the limit is 10000".to_owned(),
        ),
        ("long-name.zip", format!("the name of entry \"{a64}…\" is 60000 bytes; the limit is 1024")),
        ("deflate-bomb.zip", "unpacks to more than 8388608 bytes".to_owned()),
        ("long-name.tgz", format!("the GNU long-name record of entry \"{a64}…\" is 67108864 bytes; the limit is 1025")),
    ];
    for (file, expected) in cases {
        let payload = std::fs::read(dir.join(file)).unwrap();
        if file == "bomb.tgz" {
            assert!(payload.len() < 8 << 20, "the bomb fits the fetch limit: {} bytes", payload.len());
        }
        upstream.set(Reply::ok(payload));
        let message = wait_refused(&api, "chart", file).await;
        assert!(message.contains(&expected), "{file}: {message}");
        let es = api.get("chart").await.unwrap();
        assert_eq!(artifact(&es).digest, first.digest, "{file}: the last good artifact is kept");
        let (code, served) = download(&artifact(&es).url).await;
        assert_eq!((code, sha256(&served)), (200, first.digest.clone()), "{file}: and still served");
    }

    // Not an archive at all: said so, with its first bytes.
    upstream.set(Reply::ok("{\"json\": true}"));
    let message = wait_refused(&api, "chart", "json").await;
    assert!(message.contains("is not a gzip tarball, a tar or a zip archive"), "{message}");

    // A release zip: stripComponents and path pick one directory; a fixed payload recovers.
    python(
        dir,
        "import zipfile\n\
         with zipfile.ZipFile('release.zip', 'w', zipfile.ZIP_DEFLATED) as z:\n\
         \x20   z.writestr('app-1.2.0/README.md', 'readme')\n\
         \x20   z.writestr('app-1.2.0/deploy/base/kustomization.yaml', 'resources: [cm.yaml]\\n')\n\
         \x20   z.writestr('app-1.2.0/deploy/base/cm.yaml', 'kind: ConfigMap\\n')\n",
    );
    let release = Upstream::start(Reply::ok(std::fs::read(dir.join("release.zip")).unwrap())).await;
    let spec = json!({"format": "archive", "archive": {"stripComponents": 1, "path": "deploy/base"}, "destinationPath": "app"});
    api.create(&PostParams::default(), &source("release", &release.url("/v1.2.0.zip"), spec)).await.unwrap();
    let es = wait_ready(&api, "release", "True").await;
    let (_, bytes) = download(&artifact(&es).url).await;
    assert_eq!(entries(&bytes, dir), "app 755 0 0 True;app/cm.yaml 644 0 0 False;app/kustomization.yaml 644 0 0 False");
    ctl.stop().await;
}
