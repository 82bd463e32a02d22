//! What every crate's fuzz tests share (each includes this file with `#[path]`, under
//! `#[cfg(test)]`): the number of cases, a runner that fails a case that panics or runs too
//! long, and generators of hostile text and bytes.
//!
//! `AGENTKERNEL_FUZZ_CASES` sets the cases per target (default [`DEFAULT_CASES`], the smoke that
//! runs with every `cargo test`; `bench/fuzz.sh` asks for a million). A case that returns but
//! took over [`CASE_LIMIT`] fails like a panic, with its (shrunk) input; a case that never
//! returns is caught by a watchdog thread, which names the target and ends the process after
//! [`HANG_LIMIT`].

#![allow(
    dead_code,
    reason = "each crate's fuzz tests use the part of this file they need"
)]

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Cases per target when `AGENTKERNEL_FUZZ_CASES` is not set.
pub const DEFAULT_CASES: u32 = 2000;
/// Cases when `AGENTKERNEL_FUZZ_CASES` is not set, for a target whose case touches the disk
/// (a temporary directory and its files, a `syncfs`): a few ms each in a debug build.
pub const DEFAULT_DISK_CASES: u32 = 300;
/// The longest one case may take.
pub const CASE_LIMIT: Duration = Duration::from_secs(5);
/// How long a case may run before the watchdog ends the process (a hang, not a slow case).
pub const HANG_LIMIT: Duration = Duration::from_secs(30);

/// Cases per target: `AGENTKERNEL_FUZZ_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("AGENTKERNEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Ends the process when one case has run longer than [`HANG_LIMIT`].
struct Watchdog {
    /// Milliseconds since `base` at which the running case started, plus one; 0 between cases.
    started: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    base: Instant,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn new(target: &str) -> Watchdog {
        let started = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let base = Instant::now();
        let thread = {
            let (started, stop, target) = (started.clone(), stop.clone(), target.to_string());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(200));
                    let at = started.load(Ordering::Relaxed);
                    let now = u64::try_from(base.elapsed().as_millis()).unwrap_or(u64::MAX);
                    if at != 0 && now.saturating_sub(at - 1) > HANG_LIMIT.as_millis() as u64 {
                        eprintln!(
                            "fuzz {target}: a case has run for over {} s: a hang",
                            HANG_LIMIT.as_secs()
                        );
                        std::process::abort();
                    }
                }
            })
        };
        Watchdog {
            started,
            stop,
            base,
            thread: Some(thread),
        }
    }

    fn begin(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.started.store(now + 1, Ordering::Relaxed);
    }

    fn end(&self) {
        self.started.store(0, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `body` on `AGENTKERNEL_FUZZ_CASES` (else [`DEFAULT_CASES`]) inputs from `strategy`. A panic, or a case over [`CASE_LIMIT`],
/// fails the test with the smallest input found that does the same; the count and time go to
/// stderr (`fuzz NAME: N cases in S s`), which `bench/fuzz.sh` reports.
pub fn check<S: Strategy>(target: &str, strategy: S, body: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    run(target, cases(DEFAULT_CASES), strategy, body);
}

/// [`check`] for a target whose cases touch the disk: [`DEFAULT_DISK_CASES`] by default.
pub fn check_on_disk<S: Strategy>(target: &str, strategy: S, body: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    run(target, cases(DEFAULT_DISK_CASES), strategy, body);
}

fn run<S: Strategy>(target: &str, cases: u32, strategy: S, body: impl Fn(S::Value))
where
    S::Value: std::fmt::Debug,
{
    let config = Config {
        cases,
        // Nothing is written beside the sources: a failure prints its input instead.
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let watchdog = Watchdog::new(target);
    let start = Instant::now();
    let result = runner.run(&strategy, |input| {
        watchdog.begin();
        let t = Instant::now();
        body(input);
        let took = t.elapsed();
        watchdog.end();
        if took > CASE_LIMIT {
            return Err(TestCaseError::fail(format!(
                "one case took {took:?}, over the limit of {CASE_LIMIT:?}"
            )));
        }
        Ok(())
    });
    watchdog.end();
    if let Err(e) = result {
        panic!("fuzz {target}: {e}");
    }
    eprintln!(
        "fuzz {target}: {cases} cases in {:.3} s",
        start.elapsed().as_secs_f64()
    );
}

/// One of `seeds`, changed by up to a dozen byte edits: flips, inserts, deletes, repeats and
/// splices of `tokens` (bytes that mean something to the parser under test).
pub fn mutated(
    seeds: &'static [&'static [u8]],
    tokens: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    #[derive(Debug, Clone)]
    enum Edit {
        Set(usize, u8),
        Insert(usize, u8),
        Delete(usize, usize),
        Repeat(usize, usize, usize),
        Token(usize, usize),
        Truncate(usize),
    }
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), 1usize..32, 1usize..8).prop_map(|(i, n, k)| Edit::Repeat(i, n, k)),
        (any::<usize>(), any::<usize>()).prop_map(|(i, t)| Edit::Token(i, t)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    (
        prop::sample::select(seeds),
        prop::collection::vec(edit, 0..12),
    )
        .prop_map(move |(seed, edits)| {
            let mut b = seed.to_vec();
            for e in edits {
                let at = |i: usize, b: &Vec<u8>| if b.is_empty() { 0 } else { i % (b.len() + 1) };
                match e {
                    Edit::Set(i, v) => {
                        if !b.is_empty() {
                            let i = i % b.len();
                            b[i] = v;
                        }
                    }
                    Edit::Insert(i, v) => {
                        let i = at(i, &b);
                        b.insert(i, v);
                    }
                    Edit::Delete(i, n) => {
                        let i = at(i, &b);
                        let end = (i + n).min(b.len());
                        b.drain(i..end);
                    }
                    Edit::Repeat(i, n, k) => {
                        let i = at(i, &b);
                        let end = (i + n).min(b.len());
                        let piece = b[i..end].to_vec();
                        for _ in 0..k {
                            b.splice(end..end, piece.iter().copied());
                        }
                    }
                    Edit::Token(i, t) => {
                        if !tokens.is_empty() {
                            let i = at(i, &b);
                            let tok = tokens[t % tokens.len()].as_bytes();
                            b.splice(i..i, tok.iter().copied());
                        }
                    }
                    Edit::Truncate(i) => {
                        let i = at(i, &b);
                        b.truncate(i);
                    }
                }
            }
            b
        })
}

/// Text made of `tokens`, short runs of letters and digits, and any characters.
pub fn soup(tokens: &'static [&'static str], max_pieces: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(tokens).prop_map(str::to_string),
        2 => "[a-z0-9]{1,8}",
        1 => any::<char>().prop_map(String::from),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..max_pieces).prop_map(|p| p.concat())
}

/// Any JSON value whose objects mostly use the `keys` given, with strings from [`soup`] of
/// `tokens`: what a hostile client sends a typed endpoint.
pub fn json(
    keys: &'static [&'static str],
    tokens: &'static [&'static str],
) -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![Just(0u64), Just(1), Just(u64::from(u32::MAX) + 1)].prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        soup(tokens, 6).prop_map(Value::String),
    ];
    let key = prop_oneof![
        6 => prop::sample::select(keys).prop_map(str::to_string),
        1 => soup(tokens, 3),
    ];
    leaf.prop_recursive(4, 48, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bytes for a JSON parser: a generated value (as written, or mutated), or any bytes.
pub fn json_bytes(
    keys: &'static [&'static str],
    tokens: &'static [&'static str],
) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => json(keys, tokens).prop_map(|v| v.to_string().into_bytes()),
        2 => (json(keys, tokens), prop::collection::vec((any::<usize>(), any::<u8>()), 1..4))
            .prop_map(|(v, edits)| {
                let mut b = v.to_string().into_bytes();
                for (i, x) in edits {
                    let n = b.len();
                    b[i % n] = x;
                }
                b
            }),
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
}
