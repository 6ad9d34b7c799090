//! Packaging throughput: a JSON-like payload through `package()` (tar + gzip level 6 + sha256 in
//! one pass), the path every reconcile that sees new data takes.
//!
//! `cargo bench -p externalsource-core --no-default-features --bench package`
//!
//! Environment (used by `tests/bench/run.sh`, which compares against `tar | gzip -6 | sha256sum`):
//! - `PACKAGE_BENCH_SIZES`: comma-separated payload sizes in bytes (default 1 MiB, 10 MiB, 100 MiB).
//! - `PACKAGE_BENCH_OUT`: a directory; for each size `<label>` the bench writes the payload it
//!   measures as `<label>/data` and `<label>/ours.size` (bytes of our `.tar.gz`), so the shell
//!   side can time the CLI pipeline on exactly the same input.
//!
//! Results land where criterion puts them (`$CRITERION_HOME`, default `target/criterion`), as
//! `package/<label>/new/estimates.json`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput};
use externalsource_core::package::{DestinationPath, package};

const DEFAULT_SIZES: [usize; 3] = [1 << 20, 10 << 20, 100 << 20];

const WORDS: [&str; 32] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima",
    "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango", "uniform", "victor", "whiskey", "xray",
    "yankee", "zulu", "cluster", "region", "service", "enabled", "replica", "endpoint",
];

/// A deterministic xorshift64* stream: same size, same bytes, on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A JSON array of records that compresses like typical API output (about 4-6x with gzip -6),
/// exactly `size` bytes long.
fn payload(size: usize) -> Vec<u8> {
    use std::fmt::Write;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut out = String::with_capacity(size + 512);
    out.push('[');
    let mut id = 0u64;
    while out.len() < size {
        if id > 0 {
            out.push(',');
        }
        let w = |rng: &mut Rng| WORDS[rng.below(WORDS.len() as u64) as usize];
        let _ = write!(
            out,
            "{{\"id\":{id},\"name\":\"{}-{}-{:04x}\",\"region\":\"{}\",\"replicas\":{},\"enabled\":{},\
             \"weight\":{}.{:03},\"tags\":[\"{}\",\"{}\",\"{}\"],\"description\":\"{} {} {} {} {} {}\",\
             \"updated\":\"2025-{:02}-{:02}T{:02}:{:02}:{:02}Z\"}}",
            w(&mut rng),
            w(&mut rng),
            rng.below(0x10000),
            w(&mut rng),
            rng.below(64),
            rng.below(2) == 0,
            rng.below(1000),
            rng.below(1000),
            w(&mut rng),
            w(&mut rng),
            w(&mut rng),
            w(&mut rng),
            w(&mut rng),
            w(&mut rng),
            w(&mut rng),
            w(&mut rng),
            w(&mut rng),
            1 + rng.below(12),
            1 + rng.below(28),
            rng.below(24),
            rng.below(60),
            rng.below(60),
        );
        id += 1;
    }
    // Trim to the exact size and close the array so the bytes stay JSON-like.
    out.truncate(size.saturating_sub(1));
    out.push(']');
    out.into_bytes()
}

fn label(size: usize) -> String {
    if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{}MiB", size >> 20)
    } else if size >= 1 << 10 && size.is_multiple_of(1 << 10) {
        format!("{}KiB", size >> 10)
    } else {
        format!("{size}B")
    }
}

fn sizes() -> Vec<usize> {
    match std::env::var("PACKAGE_BENCH_SIZES") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("PACKAGE_BENCH_SIZES: {v:?} is not a byte count")))
            .collect(),
        _ => DEFAULT_SIZES.to_vec(),
    }
}

fn main() {
    let mut criterion = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let path = DestinationPath::parse("data").expect("valid path");
    let out_dir = std::env::var_os("PACKAGE_BENCH_OUT").map(std::path::PathBuf::from);
    let mut group = criterion.benchmark_group("package");
    // Each iteration of the large sizes takes long enough that criterion's linear sampling would
    // run for minutes; flat sampling keeps the iteration count fixed per sample.
    group.sampling_mode(SamplingMode::Flat);
    for size in sizes() {
        let label = label(size);
        let input = payload(size);
        let reference = package(&input, &path).expect("package");
        if let Some(dir) = &out_dir {
            let dir = dir.join(&label);
            std::fs::create_dir_all(&dir).expect("create PACKAGE_BENCH_OUT");
            std::fs::write(dir.join("data"), &input).expect("write payload");
            std::fs::write(dir.join("ours.size"), format!("{}\n", reference.size)).expect("write size");
        }
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(&label, |b| b.iter(|| package(black_box(&input), black_box(&path)).expect("package")));
    }
    group.finish();
    criterion.final_summary();
}
