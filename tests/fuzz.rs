//! Fuzzing the parsers of untrusted files, on stable Rust: a seeded mutation loop over valid
//! model files (safetensors) and `.npy` arrays.
//!
//! Every input is a valid file changed by one to four mutations: bit flips, byte edits,
//! truncation, extension, a wrong header length, and edits of the header's structure
//! (safetensors JSON: shapes, dtypes, offsets, huge and negative numbers, duplicate keys,
//! deep nesting, non-UTF-8, the metadata; .npy dict: shapes, descr, nesting, version). Each
//! is parsed under `catch_unwind` with limits: a panic, an input slower than `TIME_LIMIT`, or
//! an allocation peak above `MEMORY_LIMIT` fails the run and saves the input under
//! target/fuzz-failures/. A watchdog aborts the process (saving the input) on a hang. An
//! accepted model must hold a valid Gaussian, and a skip with it must succeed with finite
//! output or fail with an error.
//!
//! CI runs 100,000 executions per parser (`GAUSSSKIP_FUZZ_EXECS`, seed `GAUSSSKIP_FUZZ_SEED`);
//! scripts/fuzz.sh runs long campaigns. The test also checks that loading a model file
//! needs about the file's size in memory.

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use gaussskip::npy::NpyReader;
use gaussskip::rng::Rng;
use gaussskip::{Context, Error, Model, ModelMeta, Noise};

/// Slowest accepted parse of one input.
const TIME_LIMIT: Duration = Duration::from_secs(1);
/// Longest an input may run before the watchdog calls it a hang and aborts.
const HANG_LIMIT: Duration = Duration::from_secs(20);
/// Largest allocation peak while parsing one input.
const MEMORY_LIMIT: usize = 64 << 20;

// ---------------------------------------------------------------------------------------------
// An allocator that counts: live bytes and their peak since the last reset.

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            let now = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        System.dealloc(p, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated above the current level while `f` runs.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

/// The tests of this binary measure the process's allocations: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Valid inputs.

fn orthonormal(rng: &mut Rng, rank: usize, dim: usize) -> Vec<f32> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    while rows.len() < rank {
        let mut v = rng.normals(dim);
        for u in &rows {
            let p: f64 = u.iter().zip(&v).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(u).for_each(|(x, a)| *x -= p * a);
        }
        let n = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        rows.push(v.iter().map(|x| x / n).collect());
    }
    rows.iter().flatten().map(|&v| v as f32).collect()
}

fn model_bytes(dir: &Path, rng: &mut Rng, dim: usize, rank: usize, shape: Vec<usize>) -> Vec<u8> {
    let eigvals: Vec<f64> = (0..rank).map(|k| 4.0 * 0.5f64.powi(k as i32)).collect();
    let mean: Vec<f32> = rng.normals(dim).iter().map(|&v| v as f32).collect();
    let model = Model::from_parts(
        mean,
        eigvals,
        orthonormal(rng, rank, dim),
        0.125,
        ModelMeta {
            item_shape: shape,
            value_space: "[-1,1]".into(),
            sample_count: 77,
            source: "fuzz corpus".into(),
            ..ModelMeta::default()
        },
    )
    .expect("corpus model");
    let path = dir.join(format!("m{dim}x{rank}.safetensors"));
    model.save(&path).expect("save corpus model");
    std::fs::read(&path).expect("read corpus model")
}

fn model_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(99);
    vec![
        model_bytes(dir, &mut rng, 6, 6, vec![2, 3]),
        model_bytes(dir, &mut rng, 12, 4, vec![3, 2, 2]),
        model_bytes(dir, &mut rng, 9, 1, vec![]),
    ]
}

fn npy_bytes(version: u8, dict: &str, data: &[u8]) -> Vec<u8> {
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    let header = format!("{dict}\n");
    if version == 1 {
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn npy_corpus() -> Vec<Vec<u8>> {
    let dict = |descr: &str, shape: &str, fortran: bool| {
        let f = if fortran { "True" } else { "False" };
        format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape}, }}")
    };
    let f32s: Vec<u8> = (0..12)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let f64s: Vec<u8> = (0..6)
        .flat_map(|i| (i as f64 - 2.0).to_be_bytes())
        .collect();
    vec![
        npy_bytes(1, &dict("<f4", "(3, 4)", false), &f32s),
        npy_bytes(2, &dict(">f8", "(2, 3)", false), &f64s),
        npy_bytes(3, &dict("|u1", "(2, 2, 3)", false), &[7u8; 12]),
        npy_bytes(1, &dict("<i2", "(6, 1)", true), &[1u8; 12]),
        npy_bytes(1, &dict("<f2", "()", false), &[0, 60]),
        npy_bytes(1, &dict("<f4", "(0, 5)", false), &[]),
    ]
}

// ---------------------------------------------------------------------------------------------
// Mutations.

const INTERESTING: [&str; 14] = [
    "0",
    "1",
    "-1",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "4611686018427387905",
    "1e400",
    "-0",
    "null",
    "true",
    "\"x\"",
    "[]",
];

const DTYPES: [&str; 12] = [
    "F32", "F64", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "C64", "f32", "", "F32\u{0}",
];

const DESCRS: [&str; 14] = [
    "<f4", ">f8", "|u1", "<i8", "<f2", ">u4", "|b1", "<c8", "|O", "<U5", "<f16", "<M8[ns]", "f4",
    "=i4",
];

fn pick<'a>(rng: &mut Rng, from: &[&'a str]) -> &'a str {
    from[rng.below(from.len())]
}

/// One byte-level mutation, anywhere in the file.
fn mutate_bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    let len = b.len().max(1);
    match rng.below(7) {
        0 => {
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            if !b.is_empty() {
                let i = rng.below(b.len());
                b[i] = [0, 0xff, 0x7f, 0x80, b'[', b'{', b'"', b'9', b'-', 0xc3][rng.below(10)];
            }
        }
        2 => b.truncate(rng.below(len)),
        3 => {
            let n = 1 + rng.below(64);
            b.extend((0..n).map(|_| rng.next_u64() as u8));
        }
        4 => {
            // Repeat a slice (a chunk of header or data twice).
            let (s, n) = (rng.below(len), 1 + rng.below(32));
            let end = (s + n).min(b.len());
            let chunk = b[s.min(b.len())..end].to_vec();
            let at = rng.below(b.len() + 1);
            b.splice(at..at, chunk);
        }
        5 => {
            if !b.is_empty() {
                let s = rng.below(b.len());
                let e = (s + 1 + rng.below(16)).min(b.len());
                b.drain(s..e);
            }
        }
        _ => {
            // Non-UTF-8 in the first (header) part.
            let at = rng.below(len.min(256));
            let at = at.min(b.len());
            b.splice(at..at, [0xff, 0xfe, 0xc0]);
        }
    }
}

/// The JSON header of a safetensors image, or None when it is not readable.
fn st_header(b: &[u8]) -> Option<(String, Vec<u8>)> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?) as usize;
    let h = std::str::from_utf8(b.get(8..8usize.checked_add(n)?)?).ok()?;
    Some((h.to_string(), b[8 + n..].to_vec()))
}

fn st_rebuild(header: &str, data: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut n = header.len() as u64;
    if rng.below(8) == 0 {
        n = [0, n - n.min(1), n + 1, u64::MAX, 1 << 40][rng.below(5)];
    }
    let mut out = n.to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

/// The array `key` of header entry `name`, when there is one.
fn field<'a>(
    v: &'a mut serde_json::Value,
    name: &str,
    key: &str,
) -> Option<&'a mut Vec<serde_json::Value>> {
    v.get_mut(name)?.get_mut(key)?.as_array_mut()
}

/// One structural mutation of a safetensors header (falls back to bytes when unreadable).
fn mutate_safetensors(rng: &mut Rng, b: &mut Vec<u8>) {
    let Some((header, data)) = st_header(b) else {
        return mutate_bytes(rng, b);
    };
    let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&header) else {
        return mutate_bytes(rng, b);
    };
    let names: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    if names.is_empty() {
        return mutate_bytes(rng, b);
    }
    let name = names[rng.below(names.len())].clone();
    let text = match rng.below(9) {
        0 => {
            // A shape: sizes changed, added or removed.
            if let Some(shape) = field(&mut v, &name, "shape") {
                match rng.below(3) {
                    0 if !shape.is_empty() => {
                        let i = rng.below(shape.len());
                        shape[i] = serde_json::json!(rng.next_u64() >> rng.below(64));
                    }
                    1 => shape.push(serde_json::json!(rng.below(5))),
                    _ => {
                        shape.pop();
                    }
                }
            }
            v.to_string()
        }
        1 => {
            if let Some(entry) = v.get_mut(&name).and_then(|e| e.as_object_mut()) {
                entry.insert("dtype".into(), serde_json::json!(pick(rng, &DTYPES)));
            }
            v.to_string()
        }
        2 => {
            if let Some(off) = field(&mut v, &name, "data_offsets") {
                if !off.is_empty() {
                    let i = rng.below(off.len());
                    off[i] = serde_json::json!(rng.next_u64() >> rng.below(64));
                }
            }
            v.to_string()
        }
        3 => {
            // A huge, negative or wrongly typed number in place of any value of the entry.
            let text = v.to_string();
            let field = ["\"shape\":[", "\"data_offsets\":[", "\"sample_count\":\""][rng.below(3)];
            match text.find(field) {
                Some(at) => {
                    let at = at + field.len();
                    format!("{}{},{}", &text[..at], pick(rng, &INTERESTING), &text[at..])
                }
                None => text,
            }
        }
        4 => {
            // The same key twice, with the same value.
            let text = v.to_string();
            let entry = serde_json::json!({ &name: v.get(&name) }).to_string();
            format!("{{{},{}", &entry[1..entry.len() - 1], &text[1..])
        }
        5 => {
            // Deep nesting in place of a value.
            let depth = 1 + rng.below(2000);
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            if let Some(e) = v.get_mut(&name) {
                *e = serde_json::Value::Null;
            }
            v.to_string().replacen("null", &nested, 1)
        }
        6 => {
            // Metadata: item shape, sample count, format version, or a key removed.
            let key = ["item_shape", "sample_count", "format_version", "format"][rng.below(4)];
            let value = match rng.below(4) {
                0 => "4,4611686018427387905".to_string(),
                1 => format!("{},{}", rng.next_u64(), rng.next_u64()),
                2 => pick(rng, &INTERESTING).to_string(),
                _ => String::new(),
            };
            let remove = rng.below(4) == 0;
            if let Some(meta) = v.get_mut("__metadata__").and_then(|m| m.as_object_mut()) {
                if remove {
                    meta.remove(key);
                } else {
                    meta.insert(key.into(), serde_json::json!(value));
                }
            }
            v.to_string()
        }
        7 => {
            // A tensor removed, or renamed.
            if let Some(obj) = v.as_object_mut() {
                if let Some(entry) = obj.remove(&name) {
                    if rng.below(2) == 0 {
                        obj.insert(format!("{name}_"), entry);
                    }
                }
            }
            v.to_string()
        }
        _ => {
            // Padding (legal) or junk after the JSON.
            let pad = if rng.below(2) == 0 { "   " } else { "}x" };
            format!("{}{pad}", v)
        }
    };
    *b = st_rebuild(&text, &data, rng);
}

/// One structural mutation of a .npy header dict.
fn mutate_npy(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return mutate_bytes(rng, b);
    }
    let v = b[6];
    let start: usize = if v == 1 { 10 } else { 12 };
    let n = if v == 1 {
        u16::from_le_bytes([b[8], b[9]]) as usize
    } else if b.len() >= 12 {
        u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize
    } else {
        return mutate_bytes(rng, b);
    };
    let Some(dict) = b.get(start..start.saturating_add(n)) else {
        return mutate_bytes(rng, b);
    };
    let dict = String::from_utf8_lossy(dict).into_owned();
    let data = b[start + n..].to_vec();
    let dict = match rng.below(6) {
        0 => match dict.find("'shape': (") {
            Some(at) => {
                let at = at + "'shape': (".len();
                let size = [
                    (rng.next_u64() >> rng.below(64)).to_string(),
                    "-3".into(),
                    "0".into(),
                    "99999999999999999999".into(),
                    "1L".into(),
                ][rng.below(5)]
                .clone();
                format!("{}{size}, {}", &dict[..at], &dict[at..])
            }
            None => dict,
        },
        1 => {
            let descr = pick(rng, &DESCRS);
            match (dict.find("'descr': '"), dict.find("', 'fortran")) {
                (Some(a), Some(e)) if a + 10 <= e => {
                    format!("{}{descr}{}", &dict[..a + 10], &dict[e..])
                }
                _ => dict,
            }
        }
        2 => {
            let depth = 1 + rng.below(40_000);
            dict.replacen("'shape': ", &format!("'shape': {}", "[".repeat(depth)), 1)
        }
        3 => dict.replacen("False", "True", 1),
        4 => format!(
            "{}, 'descr': '<f8'}}",
            dict.trim_end().trim_end_matches('}')
        ),
        _ => dict.replacen(
            ", }",
            &format!(", 'x': '{}', }}", "y".repeat(rng.below(70_000))),
            1,
        ),
    };
    let version = [1u8, 2, 3, v, 9][rng.below(5)];
    let mut out = npy_bytes(version, dict.trim_end(), &data);
    if rng.below(8) == 0 {
        out[8] = rng.next_u64() as u8;
    }
    *b = out;
}

// ---------------------------------------------------------------------------------------------
// The loop.

#[derive(Debug, Default)]
struct Stats {
    executions: u64,
    accepted: u64,
    rejected: u64,
    panics: u64,
    slowest: Duration,
    peak: usize,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn failures_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// When the current input started (ms on `clock()`, plus 1; 0 between inputs).
static STARTED_MS: AtomicU64 = AtomicU64::new(0);
static WATCHING: AtomicBool = AtomicBool::new(false);
/// The current input and the name of its parser.
static CURRENT: Mutex<(Vec<u8>, &str)> = Mutex::new((Vec::new(), ""));

/// The one clock of the watchdog and the campaigns.
fn clock() -> Instant {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    clock().elapsed().as_millis() as u64 + 1
}

/// Aborts the process, saving the input, when one input runs longer than `HANG_LIMIT`.
fn start_watchdog() {
    if WATCHING.swap(true, Ordering::SeqCst) {
        return;
    }
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(200));
        let started = STARTED_MS.load(Ordering::SeqCst);
        if started == 0 {
            continue;
        }
        if now_ms().saturating_sub(started) > HANG_LIMIT.as_millis() as u64 {
            let (input, target) = CURRENT.lock().map(|c| c.clone()).unwrap_or_default();
            let path = failures_dir().join(format!("{target}-hang.bin"));
            let _ = std::fs::write(&path, input);
            eprintln!(
                "fuzz: an input hung for over {HANG_LIMIT:?}; saved to {}",
                path.display()
            );
            std::process::abort();
        }
    });
}

fn run_campaign(
    target: &'static str,
    corpus: &[Vec<u8>],
    mutate: fn(&mut Rng, &mut Vec<u8>),
    parse: fn(&[u8]) -> Result<(), Error>,
) -> Stats {
    let execs = env_u64("GAUSSSKIP_FUZZ_EXECS", 100_000);
    let seed = env_u64("GAUSSSKIP_FUZZ_SEED", 1);
    let start = Instant::now();
    start_watchdog();
    let mut rng = Rng::new(seed ^ target.len() as u64);
    let mut stats = Stats::default();
    let mut failed = Vec::new();
    for i in 0..execs {
        let mut input = corpus[rng.below(corpus.len())].clone();
        for _ in 0..1 + rng.below(4) {
            if rng.below(3) == 0 {
                mutate_bytes(&mut rng, &mut input);
            } else {
                mutate(&mut rng, &mut input);
            }
        }
        if let Ok(mut c) = CURRENT.lock() {
            c.0.clone_from(&input);
            c.1 = target;
        }
        STARTED_MS.store(now_ms(), Ordering::SeqCst);
        let t = Instant::now();
        let (outcome, peak) = peak_during(|| catch_unwind(AssertUnwindSafe(|| parse(&input))));
        let took = t.elapsed();
        STARTED_MS.store(0, Ordering::SeqCst);
        stats.executions += 1;
        stats.slowest = stats.slowest.max(took);
        stats.peak = stats.peak.max(peak);
        let problem = match outcome {
            Ok(Ok(())) => {
                stats.accepted += 1;
                None
            }
            Ok(Err(_)) => {
                stats.rejected += 1;
                None
            }
            Err(_) => {
                stats.panics += 1;
                Some("panic")
            }
        }
        .or((took > TIME_LIMIT).then_some("slow"))
        .or((peak > MEMORY_LIMIT).then_some("memory"));
        if let Some(kind) = problem {
            let path = failures_dir().join(format!("{target}-{seed}-{i}-{kind}.bin"));
            let _ = std::fs::write(&path, &input);
            failed.push(format!(
                "{kind}: {} ({took:?}, {peak} bytes)",
                path.display()
            ));
        }
    }
    println!(
        "{target}: {stats:?} in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failed.is_empty(),
        "{target}: {} failures:\n{}",
        failed.len(),
        failed.join("\n")
    );
    stats
}

/// Loads a model; an accepted one must be valid and usable.
fn parse_model(bytes: &[u8]) -> Result<(), Error> {
    let model = Model::from_bytes(bytes, "fuzz.safetensors")?;
    let (d, r) = (model.dim(), model.rank());
    assert!(d >= 1 && (1..=d).contains(&r));
    assert!(model.mean().iter().all(|v| v.is_finite()));
    assert!(model.eigvals().windows(2).all(|w| w[0] >= w[1]) && model.eigvals()[r - 1] >= 0.0);
    assert!(model.residual_var().is_finite() && model.residual_var() >= 0.0);
    let shape = &model.meta().item_shape;
    assert!(shape.is_empty() || gaussskip::npy::element_count(shape) == Some(d));
    if d <= 64 {
        let x: Vec<f32> = (0..2 * d).map(|i| (i % 7) as f32 - 3.0).collect();
        let mut out = vec![f32::NAN; 2 * d];
        match Context::cpu().skip(&model, &x, &mut out, Noise::edm(80.0), Noise::edm(10.0)) {
            Ok(()) => assert!(
                out.iter().all(|v| v.is_finite()),
                "accepted skip wrote {out:?}"
            ),
            Err(_) => assert!(
                out.iter().all(|v| v.is_nan()),
                "a failed skip wrote its output"
            ),
        }
    }
    Ok(())
}

/// Reads an array front to back.
fn parse_npy(bytes: &[u8]) -> Result<(), Error> {
    let mut r = NpyReader::from_reader(bytes, Path::new("fuzz.npy"))?;
    let mut out = Vec::new();
    loop {
        out.clear();
        if r.read_f64(4096, &mut out)? == 0 {
            return Ok(());
        }
    }
}

#[test]
fn mutated_model_files_never_panic_hang_or_exhaust_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-corpus");
    std::fs::create_dir_all(&dir).unwrap();
    let corpus = model_corpus(&dir);
    for good in &corpus {
        parse_model(good).expect("the corpus is valid");
    }
    let stats = run_campaign("model", &corpus, mutate_safetensors, parse_model);
    // Mutations must reach both outcomes, or the loop tests nothing.
    assert!(
        stats.accepted > 0 && stats.rejected > stats.executions / 2,
        "{stats:?}"
    );
}

#[test]
fn mutated_npy_files_never_panic_hang_or_exhaust_memory() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let corpus = npy_corpus();
    for good in &corpus {
        parse_npy(good).expect("the corpus is valid");
    }
    let stats = run_campaign("npy", &corpus, mutate_npy, parse_npy);
    assert!(
        stats.accepted > 0 && stats.rejected > stats.executions / 4,
        "{stats:?}"
    );
}

/// Loading reads tensors into place: the peak is about the model itself (the file's size),
/// not the file plus conversion copies (about 3x before).
#[test]
fn loading_a_model_needs_about_its_file_size() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-load");
    std::fs::create_dir_all(&dir).unwrap();
    let mut rng = Rng::new(4);
    let (d, r) = (768, 768);
    let bytes = model_bytes(&dir, &mut rng, d, r, vec![3, 16, 16]);
    let path = dir.join("big.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    // Caches that outlive the call (the GEMM's per-thread packing buffers, about twice the
    // L3 cache for each thread that first multiplies here; the thread pool) are not a cost
    // of loading: they are measured after the model is dropped and taken off the peak.
    let base = LIVE.load(Ordering::Relaxed);
    let (model, peak) = peak_during(|| Model::load(&path).unwrap());
    assert_eq!(model.dim(), d);
    drop(model);
    let kept = LIVE.load(Ordering::Relaxed).saturating_sub(base);
    let peak = peak - kept;
    let file = bytes.len();
    println!(
        "file {file} bytes, load peak {peak} bytes ({:.2}x; {kept} bytes of caches kept)",
        peak as f64 / file as f64
    );
    assert!(
        (peak as f64) < 1.3 * file as f64 + (1 << 20) as f64,
        "loading a {file}-byte file peaked at {peak} bytes"
    );
}
