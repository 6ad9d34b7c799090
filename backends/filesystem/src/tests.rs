use externalsource_core::Storage;
use externalsource_core::backend::Hosted;
use externalsource_core::registry::{BackendContext, Env};
use externalsource_core::testing::{Fixture, PutBytes};

use super::*;

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage = FilesystemStorage::open_dir(dir.path(), false).await.unwrap();
    Fixture::hosted(storage, Some("http://svc.ns.svc.cluster.local:8080")).with_guard(dir)
}

/// The store as the controller calls it, without the artifact server.
async fn open(root: &Path, shared: bool) -> Hosted<FilesystemStorage> {
    Hosted::new(FilesystemStorage::open_dir(root, shared).await.unwrap(), None)
}

externalsource_core::behaviour_suite!(fixture);

fn key(s: &str) -> ObjectKey {
    ObjectKey::parse(s).unwrap()
}

#[tokio::test]
async fn objects_live_at_root_slash_key_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let body = Bytes::from_static(b"persisted");
    let k = key("artifacts/ns/src/file.bin");
    {
        let s = open(dir.path(), false).await;
        s.put_bytes(&k, body.clone()).await.unwrap();
        assert!(s.url(&k).starts_with("file://"));
    }
    assert_eq!(std::fs::read(dir.path().join("artifacts/ns/src/file.bin")).unwrap(), body);
    let reopened = open(dir.path(), false).await;
    assert_eq!(reopened.backend().scan_report().objects, 1);
    let meta = reopened.stat(&k).await.unwrap();
    assert_eq!(meta.digest, Digest::of(&body));
    assert_eq!(reopened.get(&k, None).await.unwrap().collect().await.unwrap(), body);
}

#[tokio::test]
async fn start_up_removes_temp_files_and_verification_removes_corrupt_artifacts() {
    let dir = tempfile::tempdir().unwrap();
    let good = Bytes::from_static(b"good");
    let good_key = format!("artifacts/ns/a/{}.tar.gz", Digest::of(&good).hex());
    let bad_key = format!("artifacts/ns/a/{}.tar.gz", Digest::of(b"other").hex());
    {
        let s = open(dir.path(), false).await;
        s.put_bytes(&key(&good_key), good.clone()).await.unwrap();
        s.put_bytes(&key(&bad_key), Bytes::from_static(b"tampered")).await.unwrap();
    }
    std::fs::write(dir.path().join("artifacts/ns/a/.~tmp-1-2-x.tar.gz"), b"half").unwrap();
    let s = open(dir.path(), false).await;
    let report = s.backend().scan_report().clone();
    assert_eq!(report.temp_files_removed, 1);
    assert_eq!(report.objects, 2, "the scan reads no content");
    let verified = s.backend().verification().await;
    assert_eq!(verified.corrupt_removed, vec![bad_key.clone()]);
    assert_eq!(verified.verified, 1);
    assert!(matches!(s.stat(&key(&bad_key)).await, Err(StorageError::NotFound(_))));
    assert!(!dir.path().join(&bad_key).exists());
    assert_eq!(s.list("artifacts/").await.unwrap().len(), 1);
}

/// A corrupt artifact is never served, even when asked for before the background verification
/// reaches it: an unverified entry is hashed on first access.
#[tokio::test]
async fn an_unverified_artifact_is_hashed_before_it_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let small_bad = format!("artifacts/ns/a/{}.tar.gz", Digest::of(b"promised").hex());
    let big = Bytes::from(vec![7u8; 1 << 20]);
    let big_bad = format!("artifacts/ns/b/{}.tar.gz", Digest::of(&big).hex());
    let big_good = format!("artifacts/ns/c/{}.tar.gz", Digest::of(&big).hex());
    for (k, body) in [(&small_bad, &b"tampered"[..]), (&big_bad, &vec![8u8; 1 << 20][..]), (&big_good, &big[..])] {
        std::fs::create_dir_all(dir.path().join(k).parent().unwrap()).unwrap();
        std::fs::write(dir.path().join(k), body).unwrap();
    }
    let s = open(dir.path(), false).await;
    assert!(matches!(s.get(&key(&small_bad), None).await, Err(StorageError::NotFound(_))));
    assert!(matches!(s.get(&key(&big_bad), None).await, Err(StorageError::NotFound(_))));
    let got = s.get(&key(&big_good), None).await.unwrap();
    assert_eq!(got.meta.digest, Digest::of(&big));
    assert_eq!(got.collect().await.unwrap(), big);
    assert!(!dir.path().join(&small_bad).exists() && !dir.path().join(&big_bad).exists());
}

/// On a volume other replicas write, a temporary file may be another replica's put in
/// progress: only old ones are removed.
#[tokio::test]
async fn a_shared_store_keeps_recent_temp_files_and_says_it_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("artifacts/ns/a")).unwrap();
    let temp = dir.path().join("artifacts/ns/a/.~tmp-1-2-x.tar.gz");
    std::fs::write(&temp, b"being written").unwrap();
    let s = open(dir.path(), true).await;
    assert!(s.capabilities().shared);
    assert_eq!(s.backend().scan_report().temp_files_removed, 0);
    assert!(temp.exists());
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 3600);
    std::fs::File::options().write(true).open(&temp).unwrap().set_modified(old).unwrap();
    let s = open(dir.path(), true).await;
    assert_eq!(s.backend().scan_report().temp_files_removed, 1);
    assert!(!temp.exists());
    let private = open(dir.path(), false).await;
    assert!(!private.capabilities().shared);
}

#[tokio::test]
async fn symlinks_never_lead_out_of_the_root() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"top secret").unwrap();
    std::fs::create_dir(outside.path().join("dir")).unwrap();
    std::fs::write(outside.path().join("dir/secret"), b"top secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), false).await;
    std::fs::create_dir_all(dir.path().join("artifacts/ns")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("artifacts/ns/link")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("dir"), dir.path().join("artifacts/ns/linkdir")).unwrap();
    for k in ["artifacts/ns/link", "artifacts/ns/linkdir/secret"] {
        assert!(matches!(s.get(&key(k), None).await, Err(StorageError::NotFound(_))), "{k} was readable");
        assert!(matches!(s.stat(&key(k)).await, Err(StorageError::NotFound(_))), "{k} was stat-able");
    }
    assert!(s.list("artifacts/ns/").await.unwrap().is_empty());
    assert!(s.list("artifacts/ns/linkdir/").await.unwrap().is_empty());
    assert!(s.put_bytes(&key("artifacts/ns/linkdir/new"), Bytes::from_static(b"x")).await.is_err());
    assert!(!outside.path().join("dir/new").exists(), "a put went through a symlink");
    s.delete(&key("artifacts/ns/linkdir/secret")).await.unwrap();
    assert!(outside.path().join("dir/secret").exists(), "a delete went through a symlink");
}

#[tokio::test]
async fn files_changed_behind_our_back_are_rehashed() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), false).await;
    let k = key("artifacts/ns/x/data");
    s.put_bytes(&k, Bytes::from_static(b"one")).await.unwrap();
    std::fs::write(dir.path().join("artifacts/ns/x/data.new"), b"twotwo").unwrap();
    std::fs::rename(dir.path().join("artifacts/ns/x/data.new"), dir.path().join("artifacts/ns/x/data")).unwrap();
    let got = s.get(&k, None).await.unwrap();
    assert_eq!(got.meta.digest, Digest::of(b"twotwo"), "get sees the replaced file, not the indexed one");
    assert_eq!(got.collect().await.unwrap(), Bytes::from_static(b"twotwo"));
    let meta = s.stat(&k).await.unwrap();
    assert_eq!(meta.digest, Digest::of(b"twotwo"));
    assert_eq!(meta.size, 6);
}

#[test]
fn settings_require_an_absolute_root_and_honour_the_predecessor_env() {
    let parse = |env: &[(&str, &str)]| {
        let (table, env) = (toml::Table::new(), Env::from_pairs(env.iter().copied()));
        externalsource_core::backend::parse::<FilesystemStorage>(&BackendContext { table: &table, env: &env })
    };
    let err = parse(&[("PVC_STORAGE_PATH", "relative/path")]).unwrap_err().to_string();
    assert!(
        err.contains("storage.filesystem.root")
            && err.contains("relative/path")
            && err.contains("env PVC_STORAGE_PATH"),
        "{err}"
    );
    assert!(err.contains("absolute"), "{err}");
    let ok = parse(&[("PVC_STORAGE_PATH", "/pvc")]).unwrap().redacted();
    assert_eq!(ok.get("root").unwrap().as_str(), Some("/pvc"));
    assert_eq!(ok.get("shared").unwrap().as_bool(), Some(false));
}

/// A downloaded artifact is served again from memory (no disk access: a file removed by hand is
/// still served until the entry is revalidated), our own delete drops it at once, and the cache
/// holds only bytes that match their name.
#[tokio::test]
async fn hot_artifacts_are_served_from_memory_and_only_verified_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = Hosted::new(FilesystemStorage::open_dir(dir.path(), false).await.unwrap().with_cache(1 << 20), None);
    let body = Bytes::from(vec![3u8; 100_000]);
    let k = key(&format!("artifacts/ns/hot/{}.tar.gz", Digest::of(&body).hex()));
    s.put_bytes(&k, body.clone()).await.unwrap();
    assert_eq!(s.backend().cached_bytes(), 100_000, "a put artifact is hot: consumers fetch it next");
    std::fs::remove_file(dir.path().join(k.as_str())).unwrap();
    assert_eq!(s.get(&k, Some(10..=19)).await.unwrap().collect().await.unwrap(), body.slice(10..20));
    s.delete(&k).await.unwrap();
    assert_eq!(s.backend().cached_bytes(), 0);
    assert!(matches!(s.get(&k, None).await, Err(StorageError::NotFound(_))));

    // Read from disk: admitted after the read checked it; a file that lies about its digest is not.
    let good = key(&format!("artifacts/ns/hot/{}.tar.gz", Digest::of(b"good bytes").hex()));
    let liar = key(&format!("artifacts/ns/hot/{}.tar.gz", Digest::of(b"promised").hex()));
    let plain = key("artifacts/ns/hot/not-a-digest.bin");
    for (k, bytes) in [(&good, &b"good bytes"[..]), (&liar, &b"tampered"[..]), (&plain, &b"plain"[..])] {
        std::fs::write(dir.path().join(k.as_str()), bytes).unwrap();
    }
    let s = Hosted::new(FilesystemStorage::open_dir(dir.path(), false).await.unwrap().with_cache(1 << 20), None);
    assert!(matches!(s.get(&liar, None).await, Err(StorageError::NotFound(_))));
    assert_eq!(s.get(&plain, None).await.unwrap().collect().await.unwrap(), "plain");
    assert_eq!(s.backend().cached_bytes(), 0, "neither a liar nor a key without a digest is cached");
    assert_eq!(s.get(&good, None).await.unwrap().collect().await.unwrap(), "good bytes");
    assert_eq!(s.backend().cached_bytes(), 10);
}

#[test]
fn the_cache_is_a_setting_counted_as_resident_memory() {
    let parse = |table: &str| {
        let (table, env) = (toml::from_str(table).unwrap(), Env::default());
        externalsource_core::backend::parse::<FilesystemStorage>(&BackendContext { table: &table, env: &env })
    };
    let default = parse("").unwrap();
    assert_eq!(default.resident_memory(), Some(("storage.filesystem.cache_bytes".to_owned(), 64 << 20)));
    let off = parse("cache_bytes = 0").unwrap();
    assert_eq!(off.redacted()["cache_bytes"].as_str(), Some("0"));
}

/// Objects too large to read whole are served from a mapping of the file (a store we alone
/// write) or streamed in positioned chunks (a shared store): either way whole and ranged reads
/// return exactly the bytes asked for, across chunk boundaries.
#[tokio::test]
async fn large_objects_stream_exact_ranges_from_disk() {
    for shared in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path(), shared).await;
        let body = Bytes::from(externalsource_core::testing::noise(9, 3 * CHUNK + 17));
        let k = key("artifacts/ns/large/blob.bin");
        s.put_bytes(&k, body.clone()).await.unwrap();
        let whole = s.get(&k, None).await.unwrap();
        assert_eq!(s.backend().mappings.live(), usize::from(!shared), "mapped only when not shared");
        assert_eq!(whole.collect().await.unwrap(), body);
        for (start, end) in [(0, 0), (CHUNK as u64 - 1, CHUNK as u64), (1000, 3 * CHUNK as u64 + 16)] {
            let got = s.get(&k, Some(start..=end)).await.unwrap().collect().await.unwrap();
            assert_eq!(got, body.slice(start as usize..=end as usize), "shared {shared}: {start}-{end}");
        }
        assert_eq!(s.backend().mappings.live(), 0, "no mapping outlives its downloads");
        // `collect` held the whole read's four chunk buffers at once; they came back and the
        // ranged reads after it took them again instead of allocating more.
        assert_eq!(s.backend().buffers.idle_bytes(), if shared { 4 * CHUNK } else { 0 }, "shared {shared}");
    }
}

/// Concurrent downloads of one version share one mapping; a download in progress keeps the bytes
/// it started with when the file is deleted or replaced, and the next download sees the new file.
#[tokio::test]
async fn mapped_downloads_share_a_mapping_and_survive_delete_and_replace() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path(), false).await;
    let one = Bytes::from(externalsource_core::testing::noise(1, 2 * SMALL_OBJECT as usize));
    let two = Bytes::from(externalsource_core::testing::noise(2, 2 * SMALL_OBJECT as usize));
    let k = key("artifacts/ns/large/data.bin");
    s.put_bytes(&k, one.clone()).await.unwrap();
    let (a, b) = (s.get(&k, None).await.unwrap(), s.get(&k, None).await.unwrap());
    assert_eq!(s.backend().mappings.live(), 1, "two downloads, one mapping");
    s.put_bytes(&k, two.clone()).await.unwrap();
    let c = s.get(&k, None).await.unwrap();
    assert_eq!(c.meta.digest, Digest::of(&two));
    s.delete(&k).await.unwrap();
    assert!(!dir.path().join("artifacts/ns/large/data.bin").exists());
    assert_eq!(a.collect().await.unwrap(), one, "a download outlives the replace and the delete");
    assert_eq!(b.collect().await.unwrap(), one);
    assert_eq!(c.collect().await.unwrap(), two);
    assert_eq!(s.backend().mappings.live(), 0);
    assert!(matches!(s.get(&k, None).await, Err(StorageError::NotFound(_))));
}
