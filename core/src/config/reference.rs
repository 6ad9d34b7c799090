//! The configuration reference, `docs/configuration.md`, generated from the declarations in
//! `sections.rs`; a test fails when the committed file and the code disagree.

use std::fmt::Write;

use super::{DEFAULT_CONFIG_PATH, Key, SectionDoc, sections};

/// The reference as Markdown.
pub fn markdown() -> String {
    let mut out = format!(
        "# Configuration reference\n\n\
         <!-- Generated from core/src/config/sections.rs: do not edit; regenerate with \
         `UPDATE_CONFIG_REFERENCE=1 cargo test -p externalsource-core --lib config::reference`. -->\n\n\
         Each key is read from, lowest precedence first: its built-in default, the TOML file \
         (`--config PATH`, by default `{DEFAULT_CONFIG_PATH}` when it exists), its environment \
         variable, its command-line flag. An empty environment variable counts as unset. \
         `--print-config` prints the effective configuration (secrets redacted) and checks it.\n\n\
         Durations are written like `30s`, `1h30m` or `250ms` (or an integer of seconds); sizes \
         like `64MiB`, `1GB` or an integer of bytes. An unknown key, a value that breaks its rule \
         or two keys that contradict each other stop start-up with exit code 2, naming the key, \
         the value, where it came from and the rule.\n\n\
         Each storage backend reads its own table, `[storage.<backend>]`, and its own environment \
         variables; `--list-backends` names the linked backends.\n"
    );
    for section in sections() {
        write_section(&mut out, &section);
    }
    out
}

fn write_section(out: &mut String, section: &SectionDoc) {
    let _ = write!(out, "\n## `[{}]`\n\n{}\n", section.name, one_line(section.doc));
    out.push_str("\n| key | environment | flag | type | default | description |\n|---|---|---|---|---|---|\n");
    for key in &section.keys {
        write_key(out, key);
    }
}

fn write_key(out: &mut String, key: &Key) {
    let code = |s: Option<&str>, prefix: &str| s.map_or_else(String::new, |s| format!("`{prefix}{s}`"));
    let _ = writeln!(
        out,
        "| `{}` | {} | {} | {} | {} | {} |",
        key.path,
        code(key.env, ""),
        code(key.flag, "--"),
        key.kind,
        key.default.as_deref().unwrap_or("unset"),
        one_line(key.doc).replace('|', "\\|"),
    );
}

/// A doc comment on one line.
fn one_line(doc: &str) -> String {
    doc.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_committed_reference_matches_the_declarations() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
        let generated = super::markdown();
        if std::env::var_os("UPDATE_CONFIG_REFERENCE").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/configuration.md does not match the declarations in core/src/config/sections.rs; \
             regenerate it with `UPDATE_CONFIG_REFERENCE=1 cargo test -p externalsource-core --lib config::reference`"
        );
    }
}
