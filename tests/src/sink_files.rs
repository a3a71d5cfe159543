//! Reading what a file sink wrote: its JSON lines, one record per line.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Every JSON object in the `.jsonl` files under `dir` (files in name order,
/// blank lines skipped; a line that is not JSON panics).
pub fn read_jsonl(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
            .collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("sink file readable");
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            out.push(serde_json::from_str(line).expect("sink line is JSON"));
        }
    }
    out
}

/// Count of each `(source_id, seq)` among the records in `dir`.
pub fn delivered_keys(dir: &Path) -> HashMap<(String, u64), u32> {
    let mut out = HashMap::new();
    for v in read_jsonl(dir) {
        let source = v["source_id"].as_str().unwrap_or_default().to_owned();
        let seq = v["seq"].as_u64().unwrap_or(0);
        *out.entry((source, seq)).or_insert(0) += 1;
    }
    out
}

/// The sequence numbers of `source` among `keys`, sorted, each repeated as
/// often as it was delivered.
pub fn seqs_of(keys: &HashMap<(String, u64), u32>, source: &str) -> Vec<u64> {
    let mut seqs: Vec<u64> = keys
        .iter()
        .filter(|((s, _), _)| s == source)
        .flat_map(|((_, q), c)| std::iter::repeat_n(*q, *c as usize))
        .collect();
    seqs.sort_unstable();
    seqs
}

/// Asserts that `source` delivered exactly seqs `1..=n`, each once.
pub fn assert_exactly_once(keys: &HashMap<(String, u64), u32>, source: &str, n: u64) {
    let mut seqs: Vec<(u64, u32)> = keys
        .iter()
        .filter(|((s, _), _)| s == source)
        .map(|((_, q), c)| (*q, *c))
        .collect();
    seqs.sort_unstable();
    let dupes: Vec<_> = seqs.iter().filter(|(_, c)| *c != 1).take(10).collect();
    assert!(dupes.is_empty(), "{source}: duplicates {dupes:?}");
    let got: Vec<u64> = seqs.iter().map(|(q, _)| *q).collect();
    if got != (1..=n).collect::<Vec<_>>() {
        let missing: Vec<u64> = (1..=n)
            .filter(|q| got.binary_search(q).is_err())
            .take(10)
            .collect();
        panic!(
            "{source}: {} records delivered, want {n}; first missing {missing:?}",
            got.len()
        );
    }
}
