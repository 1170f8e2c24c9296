//! Reading a ListObjectsV2 page's XML ourselves. The SDK's generic XML decoder was 75% of
//! the sync's CPU on a no-op over 100,000 objects in Ceph RGW (`perf`: `aws_smithy_xml`,
//! `xmlparser` and the `memcmp`s of its name matching), and on two cores shared with the
//! store, that CPU is the listing's speed. This reads only the fields a listing uses.
//!
//! Anything it does not expect (another root element, CDATA, a character XML cannot
//! carry, a malformed tag) sends the page to the SDK's own deserializer instead, so errors
//! and odd pages are read exactly as before: this is a fast path, never a second opinion.
//!
//! Except in one way: the SDK reads XML leniently. Its decoder takes a tokenizer error as
//! the end of the document and returns what it read so far (measured: a page with
//! `<Kez>k05</Key>` came back `Ok` with 5 of its 20 objects and no `IsTruncated`, and with
//! `--remove` the sync deleted the other 15 from the output). So a successful page goes to
//! the SDK only if the SDK's own tokenizer reads it whole, with one root and every element
//! closed; any other page is an error (the listing asks once more, then fails).

use std::sync::OnceLock;

use aws_sdk_s3::operation::list_objects_v2::{ListObjectsV2, ListObjectsV2Output};
use aws_sdk_s3::types::{CommonPrefix, EncodingType, Object};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, Error, Output,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::{HttpResponse, OrchestratorError};
use aws_smithy_runtime_api::client::runtime_plugin::RuntimePlugin;
use aws_smithy_runtime_api::client::ser_de::{DeserializeResponse, SharedResponseDeserializer};
use aws_smithy_types::config_bag::{ConfigBag, FrozenLayer};
use aws_smithy_types::date_time::{DateTime, Format};

/// Installed on each ListObjectsV2 request (`customize().interceptor(..)`): puts
/// [`FastPage`] in place of the operation's deserializer for that request.
#[derive(Debug)]
pub(super) struct FastListing;

impl Intercept for FastListing {
    fn name(&self) -> &'static str {
        "egress-fast-listing"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // The operation's config layer, built once (it holds the SDK's deserializer).
        static SDK: OnceLock<Option<FrozenLayer>> = OnceLock::new();
        let Some(sdk) = SDK.get_or_init(|| ListObjectsV2::new().config()).clone() else {
            return Ok(());
        };
        cfg.interceptor_state()
            .store_put(SharedResponseDeserializer::new(FastPage { sdk }));
        Ok(())
    }
}

/// Reads a successful page with [`parse`], anything else with the SDK's deserializer
/// (kept in the operation's own config layer).
#[derive(Debug)]
struct FastPage {
    sdk: FrozenLayer,
}

impl DeserializeResponse for FastPage {
    fn deserialize_nonstreaming_with_config(
        &self,
        response: &HttpResponse,
        cfg: &ConfigBag,
    ) -> Result<Output, OrchestratorError<Error>> {
        // The SDK reads every 2xx as a page (a proxy may answer 203 or 206).
        if response.status().is_success() {
            let body = response.body().bytes().unwrap_or_default();
            if let Some(page) = parse(body) {
                return Ok(Output::erase(page));
            }
            match for_the_sdk(body) {
                ForTheSdk::Whole => {}
                ForTheSdk::Unreadable => return Err(OrchestratorError::other(UnreadablePage)),
                ForTheSdk::Damaged => return Err(OrchestratorError::other(DamagedPage)),
            }
        }
        match self.sdk.load::<SharedResponseDeserializer>() {
            Some(sdk) => sdk.deserialize_nonstreaming_with_config(response, cfg),
            None => Err(OrchestratorError::other(
                "the SDK's ListObjectsV2 deserializer is missing",
            )),
        }
    }
}

/// The page, or `None` where it is not a plain `ListBucketResult` this reader knows.
pub(super) fn parse(xml: &[u8]) -> Option<ListObjectsV2Output> {
    let mut reader = Reader {
        text: std::str::from_utf8(xml).ok()?,
        at: 0,
        pending_close: None,
    };
    let mut page = Page::default();
    let mut path: Vec<&str> = Vec::with_capacity(4);
    while let Some(token) = reader.next()? {
        match token {
            Token::Open(name) => {
                // One root, and no element inside a field (the SDK keeps only the text
                // before it).
                let root = path.is_empty() && !page.seen_root && name == "ListBucketResult";
                if (path.is_empty() && !root) || page.field.is_some() {
                    return None;
                }
                path.push(name);
                page.opened(&path);
            }
            Token::Close(name) => {
                if path.last() != Some(&name) {
                    return None;
                }
                page.closed(&path)?;
                path.pop();
            }
            Token::Text(raw) => page.text(raw)?,
        }
    }
    path.is_empty().then(|| page.finish())?
}

/// A 2xx page the SDK would read short: not one whole XML document (damaged or cut in
/// transit), or one the SDK misreads. The listing asks for it once more as it was.
#[derive(Debug, thiserror::Error)]
#[error("the listing page is not one whole XML document (damaged in transit?); nothing was decided from it: retry, and check any proxy in front of the endpoint if it repeats")]
pub(super) struct DamagedPage;

/// A 2xx page holding a character XML cannot carry (a key with U+0001): the listing asks
/// for it again with `encoding-type=url`.
#[derive(Debug, thiserror::Error)]
#[error("the listing page holds a character XML cannot carry (a key with a control character?)")]
pub(super) struct UnreadablePage;

/// What a page [`parse`] refused is to the SDK's lenient reading.
#[derive(Debug, PartialEq)]
enum ForTheSdk {
    /// Read whole, as written: the SDK may read it.
    Whole,
    /// A character XML cannot carry.
    Unreadable,
    /// The SDK would stop early or misread a value.
    Damaged,
}

/// An element open in [`for_the_sdk`]'s reading, and what it holds so far.
struct OpenElement<'a> {
    name: (&'a str, &'a str),
    text: bool,
    child: bool,
}

/// Judges a page with the SDK's own tokenizer (`xmlparser`): it must read to its end as one
/// root whose every element is closed by its own name. The SDK's decoder also keeps only a
/// field's first piece of text and skips CDATA (a key `a<!--x-->b` or `a<x/>b` reads as
/// `a`, a CDATA key as empty), and stops at an attribute value it cannot unescape: pages
/// with CDATA, a comment or processing instruction inside the root, an element holding both
/// text and elements, or such an attribute go no further.
fn for_the_sdk(xml: &[u8]) -> ForTheSdk {
    use xmlparser::{ElementEnd, Error as XmlError, StreamError, Token};
    let Ok(text) = std::str::from_utf8(xml) else {
        return ForTheSdk::Damaged;
    };
    let mut open: Vec<OpenElement> = Vec::new();
    let mut started: Option<(&str, &str)> = None;
    let mut roots = 0;
    for token in xmlparser::Tokenizer::from(text) {
        let whole = match token {
            Err(XmlError::InvalidCharData(StreamError::NonXmlChar(..), _)) => {
                return ForTheSdk::Unreadable
            }
            Err(_) | Ok(Token::Cdata { .. }) => false,
            Ok(Token::Comment { .. } | Token::ProcessingInstruction { .. }) => open.is_empty(),
            Ok(Token::Attribute { value, .. }) => unescape(value.as_str()).is_some(),
            Ok(Token::Text { text }) => match open.last_mut() {
                Some(parent) if !text.as_str().trim().is_empty() => {
                    parent.text = true;
                    !parent.child
                }
                _ => true,
            },
            Ok(Token::ElementStart { prefix, local, .. }) => {
                started = Some((prefix.as_str(), local.as_str()));
                match open.last_mut() {
                    Some(parent) => {
                        parent.child = true;
                        !parent.text
                    }
                    None => {
                        roots += 1;
                        true
                    }
                }
            }
            Ok(Token::ElementEnd { end, .. }) => match (end, started.take()) {
                (ElementEnd::Open, Some(name)) => {
                    open.push(OpenElement {
                        name,
                        text: false,
                        child: false,
                    });
                    true
                }
                (ElementEnd::Empty, Some(_)) => true,
                (ElementEnd::Close(prefix, local), None) => open
                    .pop()
                    .is_some_and(|e| e.name == (prefix.as_str(), local.as_str())),
                _ => false,
            },
            Ok(_) => true,
        };
        if !whole {
            return ForTheSdk::Damaged;
        }
    }
    match roots == 1 && open.is_empty() {
        true => ForTheSdk::Whole,
        false => ForTheSdk::Damaged,
    }
}

/// What the page says so far.
#[derive(Default)]
struct Page<'a> {
    objects: Vec<Object>,
    prefixes: Vec<CommonPrefix>,
    object: Option<ObjectFields>,
    /// Inside `CommonPrefixes`: its `Prefix` so far.
    prefix: Option<Option<String>>,
    /// Inside a field this reader keeps: its text so far (one piece at most).
    field: Option<Option<&'a str>>,
    truncated: Option<bool>,
    key_count: Option<i32>,
    token: Option<String>,
    encoding: Option<String>,
    seen_root: bool,
}

#[derive(Default)]
struct ObjectFields {
    key: Option<String>,
    size: Option<i64>,
    etag: Option<String>,
    modified: Option<DateTime>,
}

/// Whether the element at `path` holds a value this reader keeps.
fn is_field(path: &[&str]) -> bool {
    matches!(
        path,
        [_, "Contents", "Key" | "Size" | "ETag" | "LastModified"]
            | [_, "CommonPrefixes", "Prefix"]
            | [
                _,
                "IsTruncated" | "KeyCount" | "NextContinuationToken" | "EncodingType"
            ]
    )
}

impl<'a> Page<'a> {
    fn opened(&mut self, path: &[&str]) {
        match path {
            [_] => self.seen_root = true,
            [_, "Contents"] => self.object = Some(ObjectFields::default()),
            [_, "CommonPrefixes"] => self.prefix = Some(None),
            _ if is_field(path) => self.field = Some(None),
            _ => {}
        }
    }

    /// Text inside the current element (whitespace between elements included): a field's
    /// value, in one piece as the SDK reads it; elsewhere only checked.
    fn text(&mut self, raw: &'a str) -> Option<()> {
        match &mut self.field {
            Some(Some(_)) => None,
            Some(text) => {
                *text = Some(raw);
                Some(())
            }
            None => unescape(raw).map(|_| ()),
        }
    }

    /// The element at `path` ends: a field takes its value (empty when it had no text).
    fn closed(&mut self, path: &[&str]) -> Option<()> {
        if let Some(text) = self.field.take() {
            self.set(path, text.unwrap_or(""))?;
        }
        match path {
            [_, "Contents"] => {
                let o = self.object.take()?;
                self.objects.push(
                    Object::builder()
                        .set_key(o.key)
                        .set_size(o.size)
                        .set_e_tag(o.etag)
                        .set_last_modified(o.modified)
                        .build(),
                );
            }
            [_, "CommonPrefixes"] => {
                let prefix = self.prefix.take()?;
                self.prefixes
                    .push(CommonPrefix::builder().set_prefix(prefix).build());
            }
            _ => {}
        }
        Some(())
    }

    /// A field's value, read as the SDK reads it (numbers, dates and booleans exactly,
    /// without trimming: anything else gives up and lets the SDK say what is wrong).
    fn set(&mut self, path: &[&str], text: &str) -> Option<()> {
        match path {
            [_, "Contents", field] => {
                let o = self.object.as_mut()?;
                match *field {
                    "Key" => o.key = Some(unescape(text)?),
                    "Size" => o.size = Some(text.parse().ok()?),
                    "ETag" => o.etag = Some(unescape(text)?),
                    _ => o.modified = Some(DateTime::from_str(text, Format::DateTime).ok()?),
                }
            }
            [_, "CommonPrefixes", _] => self.prefix = Some(Some(unescape(text)?)),
            [_, "IsTruncated"] => {
                self.truncated = Some(match text {
                    "true" => true,
                    "false" => false,
                    _ => return None,
                })
            }
            [_, "KeyCount"] => self.key_count = Some(text.parse().ok()?),
            [_, "NextContinuationToken"] => self.token = Some(unescape(text)?),
            _ => self.encoding = Some(unescape(text)?),
        }
        Some(())
    }

    fn finish(self) -> Option<ListObjectsV2Output> {
        if !self.seen_root {
            return None;
        }
        Some(
            ListObjectsV2Output::builder()
                .set_contents((!self.objects.is_empty()).then_some(self.objects))
                .set_common_prefixes((!self.prefixes.is_empty()).then_some(self.prefixes))
                .set_is_truncated(self.truncated)
                .set_key_count(self.key_count)
                .set_next_continuation_token(self.token)
                .set_encoding_type(self.encoding.as_deref().map(EncodingType::from))
                .build(),
        )
    }
}

enum Token<'a> {
    Open(&'a str),
    Close(&'a str),
    Text(&'a str),
}

/// A tokenizer for the XML S3 writes: elements, attributes, text, the declaration and
/// comments; `None` (give up) on anything else.
struct Reader<'a> {
    text: &'a str,
    at: usize,
    /// A self-closing element's end, read next.
    pending_close: Option<&'a str>,
}

impl<'a> Reader<'a> {
    /// The next token, `Some(None)` at the end; `None` gives up.
    fn next(&mut self) -> Option<Option<Token<'a>>> {
        if let Some(name) = self.pending_close.take() {
            return Some(Some(Token::Close(name)));
        }
        loop {
            let rest = &self.text[self.at..];
            if rest.is_empty() {
                return Some(None);
            }
            if !rest.starts_with('<') {
                let len = rest.find('<').unwrap_or(rest.len());
                self.at += len;
                return Some(Some(Token::Text(&rest[..len])));
            }
            if let Some(body) = rest.strip_prefix("<?") {
                self.at += 2 + body.find("?>")? + 2;
                continue;
            }
            if let Some(body) = rest.strip_prefix("<!--") {
                self.at += 4 + body.find("-->")? + 3;
                continue;
            }
            return self.tag(rest).map(Some);
        }
    }

    /// An element's start or end; a self-closing element is its start now, its end next.
    fn tag(&mut self, rest: &'a str) -> Option<Token<'a>> {
        if let Some(close) = rest.strip_prefix("</") {
            let end = close.find('>')?;
            self.at += 2 + end + 1;
            let name = close[..end].trim_end();
            if name.contains(':') {
                return None;
            }
            return Some(Token::Close(name));
        }
        let inner = &rest[1..];
        let name_len = inner.find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')?;
        let name = &inner[..name_len];
        // `<!DOCTYPE`, CDATA, or a namespace prefix (the SDK matches local names only).
        if name.is_empty() || name.starts_with('!') || name.contains(':') {
            return None;
        }
        let end = tag_end(inner)?;
        self.at += 1 + end + 1;
        if inner[..end].ends_with('/') {
            self.pending_close = Some(name);
        }
        Some(Token::Open(name))
    }
}

/// Where a start tag's `>` is, quotes in attribute values skipped.
fn tag_end(inner: &str) -> Option<usize> {
    let mut quote = None;
    for (i, c) in inner.char_indices() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '>') => return Some(i),
            // Never inside a start tag, quoted or not: it could hide elements.
            (_, '<') => return None,
            _ => {}
        }
    }
    None
}

/// Text with XML's five entities and character references resolved; `None` for anything
/// else, or for a character XML 1.0 cannot carry (the page then goes to the SDK, which
/// reads it its own way or fails it, and the listing asks again with `encoding-type=url`).
fn unescape(raw: &str) -> Option<String> {
    if raw.chars().any(|c| !allowed(c)) {
        return None;
    }
    if !raw.contains('&') {
        return Some(raw.to_string());
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp + 1..];
        let semi = after.find(';')?;
        out.push(entity(&after[..semi])?);
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn entity(name: &str) -> Option<char> {
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        _ => {
            let code = match name.strip_prefix("#x") {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => name.strip_prefix('#')?.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    allowed(c).then_some(c)
}

/// XML 1.0's `Char`.
fn allowed(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    /// `xml` answered with `status`, read by `reader`.
    fn read_with(
        reader: &dyn DeserializeResponse,
        xml: &str,
        status: u16,
    ) -> Result<ListObjectsV2Output, String> {
        let status = StatusCode::try_from(status).unwrap();
        let response = HttpResponse::new(status, SdkBody::from(xml));
        reader
            .deserialize_nonstreaming_with_config(&response, &ConfigBag::base())
            .map(|o| o.downcast::<ListObjectsV2Output>().unwrap())
            .map_err(|e| format!("{e:?}"))
    }

    /// The SDK's own reading of a 200 page, for comparison.
    fn sdk_result(xml: &str) -> Result<ListObjectsV2Output, String> {
        let layer = ListObjectsV2::new().config().unwrap();
        let sdk = layer.load::<SharedResponseDeserializer>().unwrap();
        read_with(sdk, xml, 200)
    }

    fn sdk(xml: &str) -> ListObjectsV2Output {
        sdk_result(xml).unwrap()
    }

    /// What a listing reads from a page.
    fn fields(p: &ListObjectsV2Output) -> String {
        let objects: Vec<String> = p
            .contents()
            .iter()
            .map(|o| {
                format!(
                    "{:?} {:?} {:?} {:?}",
                    o.key(),
                    o.size(),
                    o.e_tag(),
                    o.last_modified()
                )
            })
            .collect();
        let prefixes: Vec<_> = p.common_prefixes().iter().map(|c| c.prefix()).collect();
        format!(
            "{objects:?} {prefixes:?} {:?} {:?} {:?} {:?}",
            p.is_truncated(),
            p.key_count(),
            p.next_continuation_token(),
            p.encoding_type()
        )
    }

    const AWS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>day/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated><NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken><Contents><Key>day/a &amp; b &lt;c&gt; &#x20AC;&#233;&quot;&apos;.csv</Key><LastModified>2024-07-04T10:11:12.345Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328-16&quot;</ETag><ChecksumAlgorithm>CRC64NVME</ChecksumAlgorithm><Size>134217728</Size><Owner><ID>abc</ID><DisplayName>me</DisplayName></Owner><StorageClass>STANDARD</StorageClass></Contents><Contents><Key>day/żółć 💾.bin</Key><LastModified>2024-07-04T10:11:13.000Z</LastModified><ETag>"d41d8cd98f00b204e9800998ecf8427e"</ETag><Size>0</Size><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"#;

    const CEPH: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n  <Name>lsrc</Name>\n  <Prefix></Prefix>\n  <Delimiter>/</Delimiter>\n  <IsTruncated>false</IsTruncated>\n  <Contents>\n    <Key>top.txt</Key>\n    <LastModified>2026-12-03T14:20:01.123Z</LastModified>\n    <ETag>&quot;5d41402abc4b2a76b9719d911017c592&quot;</ETag>\n    <Size>5</Size>\n    <StorageClass>STANDARD</StorageClass>\n    <Owner><ID>u</ID><DisplayName>u</DisplayName></Owner>\n    <Type>Normal</Type>\n  </Contents>\n  <CommonPrefixes>\n    <Prefix>2024-01-01/</Prefix>\n  </CommonPrefixes>\n  <CommonPrefixes><Prefix>a&amp;b/</Prefix></CommonPrefixes>\n  <!-- a comment -->\n</ListBucketResult>\n";

    const S3S_FS: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult><Contents><Key>k%2Bx+y</Key><LastModified>2024-01-01T00:00:00Z</LastModified><Size>12</Size></Contents><EncodingType>url</EncodingType><IsTruncated>false</IsTruncated><KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><Name>src</Name><Prefix/></ListBucketResult>";

    /// Empty fields, an empty CommonPrefixes, two Prefixes in one (the SDK keeps the last).
    const ODD: &str = "<ListBucketResult><IsTruncated>true</IsTruncated><NextContinuationToken/><Contents><Key></Key><ETag/><Size>1</Size></Contents><Contents><Key/></Contents><CommonPrefixes/><CommonPrefixes><Prefix>a/</Prefix><Prefix>b/</Prefix></CommonPrefixes><CommonPrefixes><Prefix/></CommonPrefixes></ListBucketResult>";

    #[test]
    fn pages_read_as_the_sdk_reads_them() {
        for xml in [AWS, CEPH, S3S_FS, ODD] {
            let ours = parse(xml.as_bytes()).unwrap_or_else(|| panic!("not read: {xml}"));
            assert_eq!(fields(&ours), fields(&sdk(xml)), "{xml}");
        }
        let page = parse(AWS.as_bytes()).unwrap();
        assert_eq!(page.contents()[0].key(), Some("day/a & b <c> €é\"'.csv"));
        assert_eq!(page.contents().len(), 2);
        assert_eq!(parse(CEPH.as_bytes()).unwrap().common_prefixes().len(), 2);
    }

    #[test]
    fn anything_unexpected_goes_to_the_sdk() {
        let control = AWS.replace("&#233;", "&#1;");
        let raw_control = AWS.replace("&#233;", "\u{1}");
        let cdata = AWS.replace("&#233;", "<![CDATA[x]]>");
        let unbalanced = AWS.replace("</Size>", "</Sise>");
        let error = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code></Error>";
        let truncated = &AWS[..AWS.len() - 10];
        // Found by review: each read differently by the SDK, or failed by it.
        let prefixed = AWS
            .replace("<Key>", "<s3:Key>")
            .replace("</Key>", "</s3:Key>");
        let capital = AWS.replace(">true<", ">True<");
        let split = AWS.replace("day/a &amp;", "day/a<!-- c -->&amp;");
        let child = AWS.replace("day/a &amp;", "day/a<b/>&amp;");
        let second_root = format!("{AWS}<ListBucketResult></ListBucketResult>");
        let upper_hex = AWS.replace("&#x20AC;", "&#X20AC;");
        let spaced_size = AWS.replace("<Size>0</Size>", "<Size> 0 </Size>");
        let empty_size = AWS.replace("<Size>0</Size>", "<Size/>");
        let odd = [
            &prefixed,
            &capital,
            &split,
            &child,
            &second_root,
            &upper_hex,
            &spaced_size,
            &empty_size,
        ];
        for xml in odd {
            assert!(parse(xml.as_bytes()).is_none(), "read: {xml}");
        }
        for xml in [
            &control,
            &raw_control,
            &cdata,
            &unbalanced,
            error,
            truncated,
            "",
        ] {
            assert!(parse(xml.as_bytes()).is_none(), "read: {xml}");
        }
        assert!(parse(&[0xff, 0xfe]).is_none());
    }

    /// A page through [`FastPage`] with this status, as the listing's requests read it.
    fn through_fast_page(xml: &str, status: u16) -> Result<ListObjectsV2Output, String> {
        let fast = FastPage {
            sdk: ListObjectsV2::new().config().unwrap(),
        };
        read_with(&fast, xml, status)
    }

    #[test]
    fn pages_the_sdk_would_read_short_are_errors() {
        let second = AWS.find("day/żół").unwrap();
        // Each read `Ok` by the SDK alone, with objects missing or a key cut short.
        let edits = [
            ("</Size>", "</Sise>"),
            ("day/żół", "day/<<żół"),
            ("<Key>day/żół", "<Kez>day/żół"),
            (
                "<Contents><Key>day/żół",
                "<Contents></Contents><Key>day/żół",
            ),
            // The SDK keeps a field's first piece of text and skips CDATA.
            ("day/żół", "day/<![CDATA[żół]]>"),
            ("day/żół", "day/<!-- x -->żół"),
            ("day/żół", "day/<?x y?>żół"),
            ("day/żół", "day/<x/>żół"),
        ];
        // An attribute the SDK cannot unescape ends its reading (the `s3:` prefix sends
        // the page to the SDK).
        let attribute = AWS
            .replace(
                "<Contents><Key>day/żół",
                "<Contents a=\"&amp\"><s3:Key>day/żół",
            )
            .replace("💾.bin</Key>", "💾.bin</s3:Key>");
        let short: Vec<String> = edits
            .iter()
            .map(|(from, to)| AWS.replace(from, to))
            .chain([AWS[..second].to_string(), attribute])
            .collect();
        for xml in &short {
            assert!(sdk_result(xml).is_ok(), "the SDK reads it leniently: {xml}");
        }
        let not_even_for_the_sdk = [
            AWS[..AWS.len() - 10].to_string(),
            format!("{AWS}<ListBucketResult></ListBucketResult>"),
            String::new(),
        ];
        for xml in short.iter().chain(&not_even_for_the_sdk) {
            for status in [200, 203, 206] {
                let err = through_fast_page(xml, status).expect_err(xml);
                assert!(err.contains("DamagedPage"), "{status} {err}");
            }
        }
        // Well-formed pages our reader leaves to the SDK are read by it, as before: whole,
        // or refused (`True` is not a boolean to it).
        let prefixed = AWS
            .replace("<Key>", "<s3:Key>")
            .replace("</Key>", "</s3:Key>");
        for xml in [&prefixed, &AWS.replace(">true<", ">True<")] {
            let sdk = sdk_result(xml).map(|o| fields(&o));
            assert_eq!(
                through_fast_page(xml, 200).map(|o| fields(&o)),
                sdk,
                "{xml}"
            );
        }
        assert_eq!(sdk_result(&prefixed).unwrap().contents().len(), 2);
        // A character XML cannot carry (a raw U+0001) is told apart: the listing asks
        // again with encoding-type=url (the store contract suite, on moto).
        let raw_control = AWS.replace("&#233;", "\u{1}");
        let err = through_fast_page(&raw_control, 200).expect_err("refused");
        assert!(err.contains("UnreadablePage"), "{err}");
        // Markup hidden in a quoted attribute value is not read as one empty element.
        let hidden = AWS.replace(
            "<Contents><Key>day/żół",
            "<Z a=\"><Contents><Key>day/x</Key></Contents><Z b=\"/><Contents><Key>day/żół",
        );
        assert!(parse(hidden.as_bytes()).is_none());
        assert!(through_fast_page(&hidden, 200).is_err());
    }
}
