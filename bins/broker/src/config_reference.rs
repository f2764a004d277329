//! `docs/reference/config.md` lists every flag, variable and TOML key the broker accepts. The
//! flags and variables are read from clap's description of [`Args`], the TOML keys from serde's
//! description of [`FileConfig`] and its sections, so a new flag or key fails this test until it
//! is documented, and a documented key that no longer exists fails it too (the document's TOML
//! example must load with `deny_unknown_fields`).

use clap::CommandFactory;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::config::{Args, Cluster, Doctor, FileConfig, Limits, Maintenance};

const DOC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/reference/config.md"
);

fn doc() -> String {
    std::fs::read_to_string(DOC_PATH).expect("read docs/reference/config.md")
}

/// The document's TOML example (the first ```` ```toml ```` block).
fn toml_example(doc: &str) -> String {
    let start = doc.find("```toml\n").expect("a ```toml block") + "```toml\n".len();
    let len = doc[start..].find("```").expect("the block ends");
    doc[start..start + len].to_owned()
}

/// The field names of a struct, as serde's derive declares them (after renaming): a
/// deserializer that only records what `deserialize_struct` is told.
fn serde_fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Probe<'a>(&'a mut Option<&'static [&'static str]>);

    impl<'de> Deserializer<'de> for Probe<'_> {
        type Error = de::value::Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = Some(fields);
            Err(de::Error::custom("fields recorded"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields = None;
    let _ = T::deserialize(Probe(&mut fields));
    fields.expect("a struct with named fields")
}

/// The keys of each TOML table of the example: "" for the top level, then each `[section]`.
fn example_keys(example: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut keys = Vec::new();
    for line in example.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(name) = line.strip_prefix('[') {
            section = name.trim_matches(|c| c == '[' || c == ']').to_owned();
            keys.push((String::new(), section.clone()));
        } else if let Some((key, _)) = line.split_once('=') {
            keys.push((section.clone(), key.trim().to_owned()));
        }
    }
    keys
}

#[test]
fn every_flag_and_variable_is_documented() {
    let doc = doc();
    let mut missing = Vec::new();
    for arg in Args::command().get_arguments() {
        if let Some(long) = arg.get_long() {
            if !matches!(long, "help" | "version") && !doc.contains(&format!("`--{long}")) {
                missing.push(format!("--{long}"));
            }
        }
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            if !doc.contains(&format!("`{env}`")) {
                missing.push(env.into_owned());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/reference/config.md does not document {missing:?}"
    );
}

#[test]
fn every_toml_key_is_documented_and_every_documented_key_exists() {
    let example = toml_example(&doc());
    // Documented keys that do not exist: the example must load as a config file.
    let parsed: Result<FileConfig, _> = toml::from_str(&example);
    assert!(
        parsed.is_ok(),
        "the TOML example in docs/reference/config.md does not load: {}",
        parsed.err().map(|e| e.to_string()).unwrap_or_default()
    );
    // Keys that exist but are not documented.
    let keys = example_keys(&example);
    let documented = |section: &str, key: &str| keys.iter().any(|(s, k)| s == section && k == key);
    let sections: [(&str, &[&str]); 4] = [
        ("limits", serde_fields::<Limits>()),
        ("maintenance", serde_fields::<Maintenance>()),
        ("doctor", serde_fields::<Doctor>()),
        ("cluster", serde_fields::<Cluster>()),
    ];
    let mut missing = Vec::new();
    for field in serde_fields::<FileConfig>() {
        // A table is documented by its header (`[limits]`, `[[agents]]`), a value by its key.
        if !documented("", field) {
            missing.push((*field).to_owned());
        }
    }
    for (section, fields) in sections {
        for field in fields {
            if !documented(section, field) {
                missing.push(format!("{section}.{field}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/reference/config.md's TOML example lacks {missing:?}"
    );
}

#[test]
fn the_field_probe_reads_serde_names() {
    assert!(serde_fields::<Cluster>().contains(&"lease_ttl_ms"));
    assert!(serde_fields::<FileConfig>().contains(&"limits"));
    let keys = example_keys("a = 1\n[b]\nc = 2 # d = 3\n[[e]]\nf = 4\n");
    let want = [("", "a"), ("", "b"), ("b", "c"), ("", "e"), ("e", "f")];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(s, k)| ((*s).to_owned(), (*k).to_owned()))
        .collect();
    assert_eq!(keys, want);
}
