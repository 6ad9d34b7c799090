//! What each page gives and how the pages become one document.
//!
//! Each page goes through one run of the transform sandbox (tenant jq is never compiled in the
//! controller) of a program built from the source's `next` and `items` expressions: it writes
//! two values, the next page's URL (or null) and the page's items, which must be one array. The
//! merged document is one JSON array: every page's items in page order, nothing else of the
//! pages kept. The items are spliced as the sandbox wrote them (compact JSON), never parsed here.

/// The sandbox program over one page. `next` is `None` when the `Link` header names the next
/// page. Each expression sits on lines of its own, so a `#` comment in it ends with it.
pub fn page_program(next: Option<&str>, items: &str) -> String {
    let next = next.unwrap_or("null");
    format!(
        "def __es_next: (\n{next}\n);\ndef __es_items: (\n{items}\n);\n\
         ([__es_next] | if length > 1 then error(\"the next expression yielded \\(length) values; it must yield one URL or null\") \
         else (.[0] // null) end \
         | if . == null or type == \"string\" then . \
         else error(\"the next expression yielded \\(type); it must yield a URL string or null\") end),\n\
         ([__es_items] | if length != 1 then error(\"the items expression yielded \\(length) values; it must yield one array\") \
         else .[0] end \
         | if type == \"array\" then . else error(\"the items expression yielded \\(type); it must yield an array\") end)\n"
    )
}

/// One page's answer from the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageOutput {
    /// The next page's URL as the expression gave it (relative or absolute), `None` at the end.
    pub next: Option<String>,
    /// The items array, compact JSON.
    pub items: Vec<u8>,
}

/// The sandbox's output was not the two values [`page_program`] writes (it always does, unless
/// the worker misbehaved).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the page program's output is not a next URL and an items array")]
pub struct UnexpectedOutput;

/// Reads the two lines [`page_program`] writes.
pub fn read_output(mut out: Vec<u8>) -> Result<PageOutput, UnexpectedOutput> {
    let newline = out.iter().position(|b| *b == b'\n').ok_or(UnexpectedOutput)?;
    let next: Option<String> = serde_json::from_slice(&out[..newline]).map_err(|_| UnexpectedOutput)?;
    let mut items = out.split_off(newline + 1);
    if items.last() == Some(&b'\n') {
        items.pop();
    }
    if items.first() != Some(&b'[') || items.last() != Some(&b']') || items.contains(&b'\n') {
        return Err(UnexpectedOutput);
    }
    Ok(PageOutput { next, items })
}

/// The merged array, built page by page.
#[derive(Debug)]
pub struct Merged {
    buf: Vec<u8>,
    items_seen: bool,
}

impl Default for Merged {
    fn default() -> Self {
        Self { buf: b"[".to_vec(), items_seen: false }
    }
}

impl Merged {
    /// Appends a page's items array (compact JSON, as [`read_output`] checked it).
    pub fn push(&mut self, array: &[u8]) {
        let inner = array.get(1..array.len().saturating_sub(1)).unwrap_or_default();
        if inner.is_empty() {
            return;
        }
        if self.items_seen {
            self.buf.push(b',');
        }
        self.buf.extend_from_slice(inner);
        self.items_seen = true;
    }

    /// Bytes the document will have once finished.
    pub fn finished_len(&self) -> u64 {
        self.buf.len() as u64 + 1
    }

    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b']');
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolated::transform::{Transform, TransformError};

    /// The program as the sandbox's worker runs it (compiled here only in the test).
    fn run(next: Option<&str>, items: &str, page: &str) -> Result<PageOutput, String> {
        let out = Transform::compile(&page_program(next, items))
            .and_then(|t| t.apply(page.as_bytes(), 1 << 20, 64))
            .map_err(|e| e.to_string())?;
        read_output(out).map_err(|e| e.to_string())
    }

    #[test]
    fn a_cursor_page_gives_its_next_url_and_items() {
        let page = r#"{"data":[{"id":1},{"id":2}],"meta":{"next":"/items?cursor=b"}}"#;
        let out = run(Some(".meta.next"), ".data", page).unwrap();
        assert_eq!(out.next.as_deref(), Some("/items?cursor=b"));
        assert_eq!(out.items, br#"[{"id":1},{"id":2}]"#);
        let last = run(Some(".meta.next # null on the last page"), ".data", r#"{"data":[],"meta":{}}"#).unwrap();
        assert_eq!(last, PageOutput { next: None, items: b"[]".to_vec() });
        let link = run(None, ".", "[1, 2]").unwrap();
        assert_eq!(link, PageOutput { next: None, items: b"[1,2]".to_vec() });
    }

    #[test]
    fn wrong_shapes_are_named() {
        let e = run(Some(".next"), ".", r#"{"next":"x"}"#).unwrap_err();
        assert!(e.contains("the items expression yielded object; it must yield an array"), "{e}");
        let e = run(Some(".n[]"), ".d", r#"{"n":["a","b"],"d":[]}"#).unwrap_err();
        assert!(e.contains("the next expression yielded 2 values"), "{e}");
        let e = run(Some(".n"), ".d", r#"{"n":3,"d":[]}"#).unwrap_err();
        assert!(e.contains("yielded number; it must yield a URL string or null"), "{e}");
        let compile = Transform::compile(&page_program(Some(".[ |"), ".")).unwrap_err();
        assert!(matches!(compile, TransformError::Compile(_)));
    }

    #[test]
    fn pages_merge_into_one_array_in_page_order() {
        let mut merged = Merged::default();
        for page in [&b"[1,{\"a\":[2]}]"[..], b"[]", b"[\"x\"]"] {
            merged.push(page);
        }
        assert_eq!(merged.finished_len(), 17);
        let doc = merged.finish();
        assert_eq!(doc, br#"[1,{"a":[2]},"x"]"#);
        assert_eq!(Merged::default().finish(), b"[]", "no items at all is an empty array");
        assert!(read_output(b"null\n{\"a\":1}\n".to_vec()).is_err());
        assert!(read_output(b"[1]\n".to_vec()).is_err());
    }
}
