//! One large config file parsed on every core: its `sites:` list cut into runs of whole
//! items, each run parsed on its own thread, the rest of the file on another, the sites
//! joined in order. A load of 100,000 sites from one YAML file is mostly libyaml's
//! scanner and serde_yaml's event list, which use one core.
//!
//! The cut is a fast path, never a second meaning: it is taken only for the plain form (one
//! block `sites:` key at the start of a line, its items at one indentation, one document;
//! no anchors, explicit or tagged keys, tabs, or line ends other than `\n`). The text above
//! the list and the text below it must each parse alone, and the rest of the file keeps
//! `sites: []` in the list's place, so another `sites` key is a duplicate there as in the
//! whole. Any failure (a part that does not parse, a mistake) falls back to parsing the
//! whole file in one piece, which names the mistake with its path and line as ever. A cut
//! at a line that is not a new item (inside a quoted string or a flow collection) leaves
//! the part before it unterminated, so that part fails and the whole file is parsed instead.

use super::raw::{RawConfig, RawSite};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Files smaller than this are parsed in one piece (threads cost more than they save).
pub const PARALLEL_MIN_BYTES: usize = 1 << 20;

/// `f` of every item on up to one thread per CPU; results in the items' order.
pub fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut out: Vec<Option<R>> = items.iter().map(|_| None).collect();
    std::thread::scope(|s| {
        // This thread works too: a thread that cannot be made leaves its share to it.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().spawn_scoped(s, work).ok())
            .collect();
        let mut all = work();
        for h in helpers {
            all.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        for (i, r) in all {
            out[i] = Some(r);
        }
    });
    out.into_iter().flatten().collect()
}

/// One part of a cut file.
enum Part<'a> {
    /// The file without its `sites:` list.
    Rest(String),
    /// Whole items of the list, as a YAML block sequence.
    Sites(&'a str),
}

/// Parse `text` in parts on every core, the rest of the file with `rest` (the parser of
/// a whole file); `None` when it is not in the plain form or any part fails (the caller
/// parses it whole).
pub fn parse_in_parts(
    text: &str,
    runs: usize,
    rest: impl Fn(&str) -> Option<RawConfig> + Sync,
) -> Option<RawConfig> {
    let (others, sites) = cut(text, runs)?;
    let mut parts = vec![Part::Rest(others)];
    parts.extend(sites.into_iter().map(Part::Sites));
    let parsed = parallel_map(&parts, |part| match part {
        Part::Rest(t) => rest(t).map(|raw| (Some(raw), Vec::new())),
        Part::Sites(t) => serde_yaml::from_str::<Vec<RawSite>>(t)
            .ok()
            .map(|sites| (None, sites)),
    });
    let mut raw: Option<RawConfig> = None;
    let mut sites = Vec::new();
    for part in parsed {
        let (r, s) = part?;
        if r.is_some() {
            raw = r;
        }
        sites.push(s);
    }
    let mut raw = raw?;
    // The rest keeps `sites: []` in the list's place: any other `sites` key in it (however
    // written) is a duplicate there, as in the whole file.
    if !raw.sites.is_empty() {
        return None;
    }
    raw.sites = Vec::with_capacity(sites.iter().map(Vec::len).sum());
    for s in sites {
        raw.sites.extend(s);
    }
    Some(raw)
}

/// The file without its `sites:` list, and the list's items in up to `runs` runs of whole
/// items; `None` unless the file is in the plain form.
fn cut(text: &str, runs: usize) -> Option<(String, Vec<&str>)> {
    // Anchors (an alias may name the last of several anchors of one name, above, inside or
    // below the list), line ends other than `\n` (libyaml also ends lines at `\r`, NEL,
    // U+2028 and U+2029, which would hide a line from this scan) and byte order marks
    // (libyaml skips one at the start of any line): not the plain form.
    if text.contains(['&', '\r', '\u{85}', '\u{2028}', '\u{2029}', '\u{feff}']) {
        return None;
    }
    let mut at = 0;
    let mut key_at = None; // where the `sites:` line starts
    let mut end = text.len(); // where the list ends
    let mut indent = None; // the items' indentation
    let mut items = Vec::new(); // where each item starts
    for line in text.split_inclusive('\n') {
        let start = at;
        at += line.len();
        let body = line.trim_end_matches(['\n', '\r']);
        // One document, no directives: a part must mean what it means in the whole.
        if body.starts_with("---") || body.starts_with("...") || body.starts_with('%') {
            return None;
        }
        if body.contains('\t') {
            return None;
        }
        if body.trim_start_matches(' ').starts_with(['?', '!']) {
            return None;
        }
        if key_at.is_none() {
            if let Some(tail) = body.strip_prefix("sites:") {
                let tail = tail.trim_start();
                if !(tail.is_empty() || tail.starts_with('#')) {
                    return None; // a flow list, or not a list
                }
                key_at = Some(start);
            }
            continue;
        }
        let content = body.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        if content.starts_with("- ?") || content.starts_with("- !") {
            return None;
        }
        let depth = body.len() - content.len();
        let item = content == "-" || content.starts_with("- ");
        match indent {
            None if item => indent = Some(depth),
            Some(n) if depth == n && item => {}
            Some(n) if depth > n => continue,
            // At the start of a line again: the next top-level key ends the list.
            Some(_) if depth == 0 && !item => {
                end = start;
                break;
            }
            _ => return None,
        }
        items.push(start);
    }
    let key_at = key_at?;
    if items.len() < runs || runs < 2 {
        return None;
    }
    let (head, tail) = (&text[..key_at], &text[end..]);
    // The text above the list and the text below it each parse on their own: a `sites:`
    // line inside a quoted string or a flow collection begun above leaves the text above
    // unterminated, and a value below that belonged to a key above does not parse alone.
    for side in [head, tail] {
        serde_yaml::from_str::<serde::de::IgnoredAny>(side).ok()?;
    }
    let per = items.len().div_ceil(runs);
    let parts = items
        .chunks(per)
        .enumerate()
        .map(|(k, run)| &text[run[0]..items.get((k + 1) * per).copied().unwrap_or(end)])
        .collect();
    Some((format!("{head}sites: []\n{tail}"), parts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_whole;
    use proptest::prelude::*;

    fn in_parts(text: &str, runs: usize) -> Option<RawConfig> {
        parse_in_parts(text, runs, |t| parse_whole(t).ok())
    }

    const HEAD: &str = "server:\n  listen: [{ addr: \"127.0.0.1:8080\" }]\ntiers:\n  free: { requests_per_minute: 10 }\n";
    const TAIL: &str = "routes:\n  - { prefix: \"/openai/\", upstream: openai }\n";

    /// Everything parsed, key material included (`RawKey`'s Debug hides it).
    fn seen(raw: &RawConfig) -> String {
        let keys: Vec<_> = raw
            .sites
            .iter()
            .flat_map(|s| &s.keys)
            .map(|k| (&k.secret, &k.hash, &k.expires_at))
            .collect();
        format!("{raw:?} {keys:?}")
    }

    /// Parsed in parts (it must be taken) and in one piece: the same.
    fn same_in_parts(text: &str, runs: usize) {
        let parts = in_parts(text, runs).expect("cut");
        let whole = parse_whole(text).expect("parses whole");
        assert_eq!(seen(&parts), seen(&whole));
    }

    /// Not cut: the whole file decides, mistakes and all.
    fn whole_only(text: &str) {
        assert!(in_parts(text, 2).is_none(), "{text}");
    }

    fn site(i: usize) -> String {
        format!("  - id: s{i}\n    tier: free\n    keys: [{{ id: k{i}, auth: bearer, hash: \"h{i}\" }}]\n")
    }

    #[test]
    fn the_sites_of_a_plain_file_parse_in_parts_as_in_one() {
        let sites: String = (0..10).map(site).collect();
        for runs in [2, 3, 4, 10] {
            same_in_parts(&format!("{HEAD}sites:\n{sites}{TAIL}"), runs);
            // Sites last, items at the start of the line, comments and blank lines.
            let flush: String = sites.lines().map(|l| format!("{}\n", &l[2..])).collect();
            same_in_parts(&format!("{HEAD}sites: # ours\n# first\n\n{flush}"), runs);
        }
        // The sites first, flow items, a quoted key, an item on several lines.
        let text = format!(
            "sites:\n  - {{ id: a, tier: free,\n      keys: [] }}\n  - \"id\": b\n    tier: free\n  -\n    id: c\n    tier: free\n{HEAD}"
        );
        same_in_parts(&text, 3);
        // A string over two lines, a block scalar with an item-like line inside.
        let text = format!(
            "{HEAD}sites:\n  - id: \"d\n    e\"\n    tier: free\n  - id: |\n      l\n      - m\n    tier: free\n{}",
            site(1)
        );
        same_in_parts(&text, 3);
    }

    #[test]
    fn a_file_not_in_the_plain_form_is_parsed_whole() {
        let sites: String = (0..4).map(site).collect();
        let plain = format!("{HEAD}sites:\n{sites}{TAIL}");
        // An alias to an anchor in another part.
        let alias = plain
            .replace("id: s0\n", "id: &first s0\n")
            .replace("id: s3\n", "id: *first\n");
        whole_only(&alias);
        // A quoted string that runs over the `sites:` line: not a key at all.
        whole_only(&format!(
            "server:\n  listen: []\nnote: \"a\nsites:\n{sites}b\"\n"
        ));
        // A duplicate key, quoted or not.
        whole_only(&format!("{plain}\"sites\": []\n"));
        whole_only(&format!("{plain}sites:\n{sites}"));
        // Flow lists, documents, directives, tabs, a list item out of line.
        whole_only(&format!(
            "{HEAD}sites: [{{ id: a, tier: free }}, {{ id: b, tier: free }}]\n"
        ));
        whole_only(&format!("---\n{plain}"));
        whole_only(&format!("%YAML 1.2\n---\n{plain}"));
        whole_only(&plain.replace("    tier: free\n", "\ttier: free\n"));
        whole_only(&plain.replace("  - id: s2", " - id: s2"));
        // Found in review: an explicit key above the list whose value is below it (the
        // whole file is refused; the parts would have set `sites_dir`).
        whole_only(&format!("{HEAD}? sites_dir\nsites:\n{sites}: /tmp/other\n"));
        // A line end libyaml sees and a `\n` scan does not: a site would have been lost.
        whole_only(&format!(
            "{HEAD}sites: #\r  - {{id: x, tier: free}}\n{sites}"
        ));
        whole_only(&format!(
            "{HEAD}sites: #\u{2028}  - {{id: x, tier: free}}\n{sites}"
        ));
        // A second `sites` key, however written, with an empty list.
        for dup in [
            "&a sites: []",
            "!!str sites: []",
            "\"\\x73ites\": []",
            "\u{feff}sites: []",
        ] {
            let text = format!("{plain}{dup}\n");
            whole_only(&text);
            assert!(crate::config::parse(&text).is_err() || dup.starts_with('\u{feff}'));
        }
        // The escaped duplicate gets past the line scan: the rest's `sites: []` refuses it.
        let escaped = format!("{plain}\"\\x73ites\": []\n");
        assert!(cut(&escaped, 2).is_some());
        assert!(in_parts(&escaped, 2).is_none());
        // An alias below the list to an anchor redefined inside it.
        let redefined = format!(
            "server: {{listen: [{{addr: &a \"127.0.0.1:8080\"}}]}}\ntiers: {{free: {{requests_per_minute: 10}}}}\nsites:\n  - {{id: &a s0, tier: free}}\n{}log: {{audit_path: *a}}\n",
            site(1)
        );
        whole_only(&redefined);
        // Too few items to cut.
        whole_only(&format!("{HEAD}sites:\n{}", site(0)));
        // Through `parse`: the same mistake as ever.
        let bad = format!("{plain}sites:\n{sites}");
        let e = crate::config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("duplicate"), "{e}");
        // A part that does not parse: the whole file's error, with its line.
        let broken = plain.replace("id: s3\n", "id: [s3\n");
        assert!(in_parts(&broken, 2).is_none());
    }

    #[test]
    fn items_are_split_into_runs_in_order() {
        let sites: String = (0..5).map(site).collect();
        let text = format!("{HEAD}sites:\n{sites}{TAIL}");
        let (rest, parts) = cut(&text, 2).unwrap();
        assert_eq!(rest, format!("{HEAD}sites: []\n{TAIL}"));
        assert_eq!(parts.len(), 2);
        assert_eq!(parts.concat(), sites);
        assert!(parts[1].starts_with("  - id: s3\n"));
    }

    #[test]
    fn many_sites_through_parse_are_the_same_as_in_one_piece() {
        let sites: String = (0..30_000).map(site).collect();
        let text = format!("{HEAD}sites:\n{sites}{TAIL}");
        assert!(text.len() >= PARALLEL_MIN_BYTES);
        let a = crate::config::parse(&text).unwrap();
        let b = parse_whole(&text).unwrap();
        assert_eq!(a.sites.len(), 30_000);
        assert_eq!(seen(&a), seen(&b));
    }

    /// Items in plain forms: files of these are always cut.
    const PLAIN: [&str; 6] = [
        "  - id: a\n    tier: free\n",
        "  - { id: b, tier: free }\n",
        "  - { id: c,\n      tier: free }\n",
        "  - id: \"d\n    e\"\n    tier: free\n",
        "  - id: j\n    tier: free # - not an item\n\n",
        "  - id: |\n      l\n      - m\n    tier: free\n",
    ];

    /// Items in the other forms YAML allows, some running over several lines in ways that
    /// put an item-like line inside a string.
    const OTHER: [&str; 6] = [
        "  - id: 'f\n  - g'\n    tier: free\n",
        "  - id: \"h\n  - i\"\n    tier: free\n",
        "  # - id: k\n",
        "  - id: &x n\n    tier: free\n",
        "  - id: *x\n    tier: free\n",
        "  - id: o\n    tier: free\n    keys:\n      - { id: p, hash: \"q\" }\n",
    ];

    fn plain_item() -> impl Strategy<Value = String> {
        prop::sample::select(PLAIN.to_vec()).prop_map(String::from)
    }

    fn item() -> impl Strategy<Value = String> {
        prop::sample::select([PLAIN, OTHER].concat()).prop_map(String::from)
    }

    proptest! {
        #[test]
        fn plain_files_are_cut_and_read_as_in_one_piece(
            items in prop::collection::vec(plain_item(), 6..12),
            runs in 2usize..6,
        ) {
            let text = format!("{HEAD}sites:\n{}{TAIL}", items.concat());
            let parts = in_parts(&text, runs);
            prop_assert!(parts.is_some(), "not cut: {}", text);
            let whole = parse_whole(&text).expect("parses whole");
            prop_assert_eq!(seen(&parts.unwrap()), seen(&whole));
        }

        /// Whenever a file is cut, its parts say what the whole says; whenever the whole
        /// fails, so does the cut (it is not taken).
        #[test]
        fn a_cut_never_changes_what_the_file_says(
            items in prop::collection::vec(item(), 2..12),
            runs in 2usize..6,
            tail in any::<bool>(),
        ) {
            let text = format!("{HEAD}sites:\n{}{}", items.concat(), if tail { TAIL } else { "" });
            let whole = parse_whole(&text);
            if let Some(parts) = in_parts(&text, runs) {
                let whole = whole.expect("the whole parses where the parts do");
                prop_assert_eq!(seen(&parts), seen(&whole));
            }
        }
    }
}
