//! Measures `Comparator::compare` on two ~1 MB answers that differ in 1 % of their lines, against
//! the spec's goal of 50 ms, and a plain O(n·m) Levenshtein distance on 20 KB for scale.
//!
//! Run it in release: `cargo run --release -p kokino-shadow --example shadow_bench`.
//! `cargo xtask bench` parses the output, one figure per line as `NAME VALUE`, so names and the
//! format of this output must stay stable.

use std::hint::black_box;
use std::time::Instant;

use kokino_shadow::Comparator;

const RUNS: usize = 15;

/// A xorshift generator: deterministic figures without a dependency on `rand`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: [&str; 24] = [
    "broker", "agent", "session", "prompt", "answer", "process", "group", "signal", "store",
    "turn", "lock", "shadow", "tmux", "headless", "line", "event", "the", "a", "of", "runs",
    "with", "timeout", "parser", "usage",
];

/// `lines` lines of about 50 characters of prose-like text.
fn answer(rng: &mut Rng, lines: usize) -> Vec<String> {
    (0..lines)
        .map(|i| {
            let mut line = format!("{i:05}");
            while line.len() < 48 {
                line.push(' ');
                line.push_str(WORDS[(rng.next() % WORDS.len() as u64) as usize]);
            }
            line
        })
        .collect()
}

/// The same answer with one line in a hundred changed: one word replaced by another.
fn with_changes(rng: &mut Rng, lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            if i % 100 != 37 {
                return line.clone();
            }
            let word = WORDS[(rng.next() % WORDS.len() as u64) as usize];
            match line.rsplit_once(' ') {
                Some((head, _)) => format!("{head} {word}x"),
                None => format!("{line}x"),
            }
        })
        .collect()
}

fn join(lines: &[String]) -> String {
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Wagner–Fischer with two rows, over bytes: the textbook O(n·m) edit distance, kept here to
/// show what the comparison avoids.
fn levenshtein(a: &[u8], b: &[u8]) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, &x) in a.iter().enumerate() {
        current[0] = i + 1;
        for (j, &y) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(x != y);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Median and maximum of `RUNS` timed calls of `f`, in milliseconds.
fn time_runs(mut f: impl FnMut()) -> (f64, f64) {
    let mut times: Vec<f64> = (0..RUNS)
        .map(|_| {
            let start = Instant::now();
            f();
            ms(start)
        })
        .collect();
    times.sort_by(f64::total_cmp);
    (times[RUNS / 2], times[RUNS - 1])
}

fn main() {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let lines = answer(&mut rng, 20_000);
    let changed = with_changes(&mut rng, &lines);
    let (a, b) = (join(&lines), join(&changed));
    let comparator = Comparator::default();

    // One warm-up call compiles the normalisers' regexes, which a long-running broker pays once.
    let result = comparator.compare(&a, &b);
    let (median, max) = time_runs(|| {
        black_box(comparator.compare(black_box(&a), black_box(&b)));
    });
    println!("shadow_compare_1mb_bytes {}", a.len());
    println!("shadow_compare_1mb_median_ms {median:.1}");
    println!("shadow_compare_1mb_max_ms {max:.1}");
    println!("shadow_similarity_1mb {:.4}", result.similarity);
    println!("shadow_matched_1mb {}", u8::from(result.matched));
    println!("shadow_timed_out_1mb {}", u8::from(result.timed_out));

    // Two unrelated 1 MB answers: the worst realistic case, bounded by the time budget.
    let unrelated = join(&answer(&mut rng, 20_000));
    let (median, max) = time_runs(|| {
        black_box(comparator.compare(black_box(&a), black_box(&unrelated)));
    });
    println!("shadow_compare_1mb_unrelated_median_ms {median:.1}");
    println!("shadow_compare_1mb_unrelated_max_ms {max:.1}");

    // 20 KB of each text: the comparison and the quadratic edit distance on the same input.
    let cut = |s: &str| {
        let mut end = 20 * 1024;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_owned()
    };
    let (a20, b20) = (cut(&a), cut(&b));
    let (median, _) = time_runs(|| {
        black_box(comparator.compare(black_box(&a20), black_box(&b20)));
    });
    println!("shadow_compare_20kb_median_ms {median:.2}");
    let start = Instant::now();
    let distance = levenshtein(black_box(a20.as_bytes()), black_box(b20.as_bytes()));
    println!("levenshtein_20kb_ms {:.1}", ms(start));
    let longest = a20.len().max(b20.len());
    println!(
        "levenshtein_20kb_similarity {:.4}",
        1.0 - distance as f64 / longest as f64
    );
}
