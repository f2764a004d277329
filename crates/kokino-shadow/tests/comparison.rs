//! The public comparison API, as the service will call it. No test here asserts a timing: the
//! speed goal is measured by `examples/shadow_bench.rs`, where a slow machine cannot fail CI.

use std::borrow::Cow;
use std::time::Duration;

use kokino_shadow::{Comparator, Method, Normaliser, StripTuiDecorations, DEFAULT_DIFF_LIMIT};

/// A deterministic text of `lines` lines of about 50 characters, different for each `seed`.
fn text(lines: usize, seed: u64) -> String {
    const WORDS: [&str; 16] = [
        "broker", "agent", "session", "prompt", "answer", "process", "group", "signal", "store",
        "turn", "lock", "shadow", "tmux", "headless", "line", "event",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = String::new();
    for i in 0..lines {
        out.push_str(&format!("{i:05}"));
        while out.len() % 51 < 45 && !out.ends_with('\n') {
            out.push(' ');
            out.push_str(WORDS[(next() % 16) as usize]);
        }
        out.push('\n');
    }
    out
}

#[test]
fn exact_after_normalisation() {
    let c = Comparator::default().compare(
        "The build  completed in 3.2s at 2026-11-25T19:22:20.778Z.\r\n\r\n\r\nAll good.  ",
        "The build completed in 12.9s at 2026-11-26 08:01:02.\n\nAll good.",
    );
    assert!(c.exact && c.matched, "{c:?}");
    assert_eq!(c.similarity, 1.0);
    assert_eq!(c.method, Method::Exact);
    assert_eq!(c.diff, "");
}

#[test]
fn near_is_a_match_and_different_is_not() {
    let base = "The function parses every line of the CLI's output, counts malformed lines \
                instead of failing, and returns the final answer with its usage and cost.";
    let near = base.replace("returns", "gives back");
    let c = Comparator::default().compare(base, &near);
    assert!(!c.exact);
    assert!(c.matched, "{c:?}");
    assert!(c.similarity > 0.95 && c.similarity < 1.0);
    assert_eq!(c.method, Method::Chars);
    assert!(c.diff.contains("-The function") && c.diff.contains("+The function"));

    let other = "I could not find a file named broker.rs in this repository.";
    let c = Comparator::default().compare(base, other);
    assert!(!c.matched && !c.exact, "{c:?}");
    assert!(c.similarity < 0.6, "{c:?}");
}

#[test]
fn threshold_boundary() {
    // "abcd" against "abce": three characters in common out of eight, so exactly 0.75.
    let c = Comparator::default()
        .with_threshold(0.75)
        .compare("abcd", "abce");
    assert_eq!(c.similarity, 0.75);
    assert!(c.matched);
    let c = Comparator::default()
        .with_threshold(0.750_000_1)
        .compare("abcd", "abce");
    assert!(!c.matched);
    // The default threshold is the spec's 0.95.
    assert_eq!(Comparator::default().threshold(), 0.95);
    // Out-of-range thresholds are clamped; NaN means only an exact match will do.
    assert_eq!(Comparator::default().with_threshold(7.0).threshold(), 1.0);
    assert_eq!(
        Comparator::default().with_threshold(f64::NAN).threshold(),
        1.0
    );
}

#[test]
fn empty_strings() {
    let c = Comparator::default().compare("", "");
    assert!(c.exact && c.matched);
    let c = Comparator::default().compare("   \n\t", "");
    assert!(c.exact, "whitespace only normalises to empty");
    let c = Comparator::default().compare("", "an answer");
    assert!(!c.matched);
    assert_eq!(c.similarity, 0.0);
    assert_eq!(c.diff, "@@ -1 +1 @@\n+an answer");
}

#[test]
fn unicode() {
    let a = "日本語のテキストです。結果は正しいです。🎉 Ünïcödé ✓";
    let b = "日本語のテキストです。結果は正しいでした。🎉 Ünïcödé ✓";
    let c = Comparator::default().compare(a, b);
    assert!(!c.exact);
    // Counted in characters, not bytes: 2 of 31 characters differ on one side.
    assert!(c.similarity > 0.9 && c.similarity < 1.0, "{c:?}");
    assert!(Comparator::default().compare(a, &format!("  {a}\n")).exact);
}

#[test]
fn tui_decorated_answer_matches_the_plain_one() {
    let plain = "I renamed `parse_line` to `parse_event` in src/parser.rs.\n\n\
                 All 42 tests pass (1.8 s).";
    let pane = "\x1b[2m╭────────────────────────────────────────────╮\x1b[0m\n\
                │ > rename parse_line                        │\n\
                ╰────────────────────────────────────────────╯\n\
                \n\
                \x1b[1m⏺\x1b[0m I renamed `parse_line` to `parse_event` in src/parser.rs.\n\
                \n\
                \x20 All 42 tests pass (2.4 s).\n\
                ╭────────────────────────────────────────────╮\n\
                │ >                                          │\n\
                ╰────────────────────────────────────────────╯\n";
    // The pane still holds the echoed prompt, so this is a near match, not an exact one.
    let c = Comparator::terminal().compare(plain, pane);
    assert!(!c.exact);
    let prompt_free = pane.replace("rename parse_line", "");
    let c = Comparator::terminal().compare(plain, &prompt_free);
    assert!(c.exact, "{c:?}");
    // Without the TUI step the frame alone makes them differ.
    assert!(!Comparator::default().compare(plain, &prompt_free).exact);
    // And the step can be added to a chain by hand.
    let names = Comparator::default()
        .with(StripTuiDecorations)
        .normaliser_names();
    assert_eq!(names.last(), Some(&"strip-tui-decorations"));
}

#[test]
fn custom_normaliser() {
    struct Uuids;
    impl Normaliser for Uuids {
        fn name(&self) -> &'static str {
            "uuids"
        }
        fn apply<'a>(&self, s: &'a str) -> Cow<'a, str> {
            let re =
                regex::Regex::new("[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
                    .unwrap();
            re.replace_all(s, "<uuid>")
        }
    }
    let a = "session 0b8e7d3c-1f2a-4b5c-9d8e-7f6a5b4c3d2e started";
    let b = "session 9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d started";
    assert!(!Comparator::default().compare(a, b).exact);
    assert!(Comparator::default().with(Uuids).compare(a, b).exact);
    let only = Comparator::new(vec![Box::new(Uuids)]);
    assert_eq!(only.normaliser_names(), vec!["uuids"]);
    assert_eq!(only.normalise("x  y"), "x  y");
}

#[test]
fn diff_is_truncated_with_a_count() {
    let a = text(400, 1);
    let b = text(400, 2);
    let c = Comparator::default().compare(&a, &b);
    assert!(!c.matched);
    assert!(c.diff.len() <= DEFAULT_DIFF_LIMIT, "{}", c.diff.len());
    let last = c.diff.lines().last().unwrap();
    assert!(
        last.starts_with("… ") && last.ends_with(" more lines"),
        "{last}"
    );
    let more: usize = last
        .trim_start_matches("… ")
        .trim_end_matches(" more lines")
        .parse()
        .unwrap();
    // Every line of both texts is in the diff, either shown or counted.
    let shown = c
        .diff
        .lines()
        .filter(|l| l.starts_with('-') || l.starts_with('+'))
        .count();
    assert_eq!(shown + more, 800);

    let small = Comparator::default().with_diff_limit(100).compare(&a, &b);
    assert!(small.diff.len() <= 100, "{}", small.diff);
}

#[test]
fn long_diff_lines_are_cut() {
    let a = format!("{}\n", "x".repeat(5_000));
    let b = format!("{}\n", "y".repeat(5_000));
    let c = Comparator::default().compare(&a, &b);
    assert!(c.diff.len() < 400, "{}", c.diff);
    assert!(c.diff.contains('…'));
}

#[test]
fn large_near_inputs_use_lines_and_match() {
    let a = text(20_000, 7);
    // Change every hundredth line a little.
    let b: String = a
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i % 100 == 0 {
                format!("{}\n", l.replacen("e", "E", 2))
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let c = Comparator::default()
        .with_budget(Duration::from_secs(10))
        .compare(&a, &b);
    assert_eq!(c.method, Method::Lines);
    assert!(c.matched && c.similarity > 0.99, "{c:?}");
    assert!(c.diff.len() <= DEFAULT_DIFF_LIMIT);
}

#[test]
fn large_inputs_do_not_panic() {
    let comparator = Comparator::default();
    let a = text(20_000, 3);
    let unrelated = text(20_000, 4);
    // Unrelated texts, one huge line against many lines, a huge line without spaces, and a
    // text against its own prefix: none may panic, whatever the budget lets them finish.
    let one_line = a.replace('\n', " ");
    let blob = "z".repeat(1 << 20);
    let cases: [(&str, &str); 5] = [
        (&a, &unrelated),
        (&a, &one_line),
        (&blob, &a),
        (&blob, &blob[1..]),
        (&a, &a[..a.len() / 2]),
    ];
    for (x, y) in cases {
        let c = comparator.compare(x, y);
        assert!((0.0..=1.0).contains(&c.similarity), "{c:?}");
        assert!(c.diff.len() <= DEFAULT_DIFF_LIMIT);
    }
    // A zero budget still gives an answer (a lower bound), flagged as such.
    let c = Comparator::default()
        .with_budget(Duration::ZERO)
        .compare(&a, &unrelated);
    assert!(c.timed_out);
}

#[test]
fn every_line_changed_a_little_still_scores_high() {
    // A prefix on every line defeats the line diff entirely; pairing the lines of the one big
    // replaced hunk recovers the character-level similarity.
    let a = text(2_000, 9);
    let b: String = a.lines().map(|l| format!("~{l}\n")).collect();
    let c = Comparator::default()
        .with_budget(Duration::from_secs(10))
        .compare(&a, &b);
    assert_eq!(c.method, Method::Lines);
    assert!(c.similarity > 0.97, "{c:?}");
}

#[test]
fn comparison_serialises_for_the_store() {
    let c = Comparator::default().compare("a", "b");
    let json = serde_json::to_value(&c).unwrap();
    assert_eq!(json["method"], "chars");
    assert_eq!(json["timedOut"], false);
    assert_eq!(json["matched"], false);
}
