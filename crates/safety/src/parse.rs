//! Drives html5ever over the input in chunks under a work budget, with a filter on its
//! tokens that caps element nesting.
//!
//! html5ever's tree builder scans its stack of open elements on many start tags, so 100,000
//! unclosed `<div>`s (or many open formatting elements, which it re-opens after every block
//! boundary) take minutes. [`DepthLimiter`] sits between the tokenizer and the tree builder,
//! approximates the stack of open elements (void and raw-text elements, implied ends of
//! `p`/`li`/`td`/..., `/>` inside SVG/MathML) and swallows every token nested deeper than
//! the cap — tags and text alike, so nothing hidden by a dropped ancestor can be revealed —
//! reporting the dropped source. Filtering html5ever's own tokens means the input is
//! tokenised once, and quoting, comments and raw text are read exactly as the parser reads them.

use std::cell::{Cell, RefCell};

use html5ever::tendril::StrTendril;
use html5ever::tokenizer::states::{Rawtext, Rcdata, ScriptData};
use html5ever::tokenizer::{
    BufferQueue, EndTag, StartTag, Tag, Token, TokenSink, TokenSinkResult, Tokenizer, TokenizerOpts,
};
use html5ever::tree_builder::{TreeBuilder, TreeBuilderOpts, TreeSink};
use html5ever::{LocalName, TokenizerResult, local_name};

use crate::sink::{Dom, Handle, Sink};

/// Bytes fed to html5ever per step between budget checks.
const CHUNK: usize = 16 * 1024;
/// Parse work charged per tree node created, on top of one unit per input byte (html5ever
/// spends a few thousand instructions per node and a few per byte of text).
const PARSE_NODE_COST: usize = 64;
/// Parse work charged per tag swallowed inside a dropped region: the tokenizer still spends
/// ~1,700 instructions on it (a unit of work is ~33), so a flood of deep tags stops at the
/// budget like a flood of nodes would.
const DROPPED_TAG_COST: usize = 48;
/// Formatting elements that html5ever re-opens after block boundaries; many of them open at
/// once make its "reconstruct the active formatting elements" step blow up.
const MAX_OPEN_FORMATTING: usize = 40;
/// Bytes of dropped text kept for the finding.
const DROPPED_TEXT_KEEP: usize = 4096;

pub(crate) struct Parsed {
    pub dom: Dom,
    /// Parsing stopped at the work budget; the rest of the input was not read.
    pub cut: bool,
    /// Text of the dropped regions (tags stripped), capped.
    pub dropped_text: String,
    pub dropped_bytes: usize,
}

/// Parses `html` in chunks so a pathological document stops at the work budget instead of
/// running on (work is counted, not timed, so the result does not depend on the machine's
/// load), dropping content nested deeper than `max_depth` elements.
pub(crate) fn parse(html: &str, max_depth: usize, budget: usize) -> Parsed {
    let queue = BufferQueue::default();
    let tb_opts = TreeBuilderOpts::default();
    let limiter = DepthLimiter {
        inner: TreeBuilder::new(Sink::new(html.len()), tb_opts),
        src: html,
        queue: &queue,
        fed: Cell::new(0),
        swallowed_tags: Cell::new(0),
        max_depth,
        scripting: tb_opts.scripting_enabled,
        dropping: Cell::new(false),
        tracking: Cell::new(false),
        model: RefCell::new(Model::default()),
    };
    let tok = Tokenizer::new(limiter, TokenizerOpts::default());
    let mut rest = html;
    let mut fed = 0usize;
    let mut cut = false;
    while !rest.is_empty() {
        let mut end = rest.len().min(CHUNK);
        while end < rest.len() && !rest.is_char_boundary(end) {
            end += 1;
        }
        fed += end;
        tok.sink.fed.set(fed);
        queue.push_back(StrTendril::from_slice(&rest[..end]));
        // As html5ever's `Parser::process`: a `<script>` end or an encoding hint pauses
        // the tokenizer; carry on until the queue is drained.
        while !matches!(tok.feed(&queue), TokenizerResult::Done) {}
        rest = &rest[end..];
        let nodes = tok.sink.inner.sink.nodes();
        let work = fed
            .saturating_add(nodes.saturating_mul(PARSE_NODE_COST))
            .saturating_add(
                tok.sink
                    .swallowed_tags
                    .get()
                    .saturating_mul(DROPPED_TAG_COST),
            );
        if !rest.is_empty() && work > budget {
            cut = true;
            break;
        }
    }
    tok.end();
    let DepthLimiter { inner, model, .. } = tok.sink;
    let model = model.into_inner();
    Parsed {
        dom: inner.sink.finish(),
        cut,
        dropped_text: model.dropped_text,
        dropped_bytes: model.dropped_bytes,
    }
}

/// Element classes of the model (low bits) and the implied-end group (high bits).
const VOID: u8 = 1;
const RAW: u8 = 2;
const FMT: u8 = 4;
const FOREIGN: u8 = 8;
const GROUP_SHIFT: u8 = 4;
const G_P: u8 = 1;
const G_LI: u8 = 2;
const G_DTDD: u8 = 3;
const G_OPTION: u8 = 4;
const G_TR: u8 = 5;
const G_TDTH: u8 = 6;

/// Class bits of a (lowercase) tag name.
fn class(name: &LocalName) -> u8 {
    match *name {
        local_name!("area")
        | local_name!("base")
        | local_name!("br")
        | local_name!("col")
        | local_name!("embed")
        | local_name!("hr")
        | local_name!("img")
        | local_name!("input")
        | local_name!("link")
        | local_name!("meta")
        | local_name!("source")
        | local_name!("track")
        | local_name!("wbr")
        | local_name!("param")
        | local_name!("keygen")
        | local_name!("frame")
        | local_name!("basefont")
        | local_name!("bgsound")
        | local_name!("image")
        | local_name!("command") => VOID,
        local_name!("script")
        | local_name!("style")
        | local_name!("textarea")
        | local_name!("title")
        | local_name!("xmp")
        | local_name!("iframe")
        | local_name!("noembed")
        | local_name!("noframes")
        | local_name!("noscript") => RAW,
        local_name!("a")
        | local_name!("b")
        | local_name!("big")
        | local_name!("code")
        | local_name!("em")
        | local_name!("font")
        | local_name!("i")
        | local_name!("nobr")
        | local_name!("s")
        | local_name!("small")
        | local_name!("strike")
        | local_name!("strong")
        | local_name!("tt")
        | local_name!("u") => FMT,
        local_name!("svg") | local_name!("math") => FOREIGN,
        local_name!("p") => G_P << GROUP_SHIFT,
        local_name!("li") => G_LI << GROUP_SHIFT,
        local_name!("dt") | local_name!("dd") => G_DTDD << GROUP_SHIFT,
        local_name!("option") => G_OPTION << GROUP_SHIFT,
        local_name!("tr") => G_TR << GROUP_SHIFT,
        local_name!("td") | local_name!("th") => G_TDTH << GROUP_SHIFT,
        _ => 0,
    }
}

/// The approximate stack of open elements and what was dropped so far.
#[derive(Default)]
struct Model {
    /// Open elements with their class bits.
    stack: Vec<(LocalName, u8)>,
    open_formatting: usize,
    /// Open `<svg>`/`<math>`: `/>` really self-closes there.
    foreign: usize,
    /// Open elements inside the region being dropped (0: not dropping).
    skip_depth: usize,
    /// Source offset where the region being dropped starts.
    skip_start: usize,
    /// End offset of the last token, tracked only while the next start tag could be dropped.
    mark: usize,
    dropped_text: String,
    dropped_bytes: usize,
}

impl Model {
    /// Applies a start tag outside a dropped region; returns true when it is too deep.
    fn open(&mut self, tag: &Tag, max_depth: usize) -> bool {
        let class = class(&tag.name);
        if class & (VOID | RAW) != 0 || (tag.self_closing && self.foreign > 0) {
            return false;
        }
        if let Some(pos) = self.implied_end(class) {
            self.pop_to(pos);
        }
        let fmt = class & FMT != 0;
        if self.stack.len() >= max_depth || (fmt && self.open_formatting >= MAX_OPEN_FORMATTING) {
            return true;
        }
        self.open_formatting += usize::from(fmt);
        self.foreign += usize::from(class & FOREIGN != 0);
        self.stack.push((tag.name.clone(), class));
        false
    }

    /// Position of the open element a start tag of `class` implicitly closes (with everything
    /// above it): a sibling `p`/`li`/`dt`-`dd`/`option`/cell, or for `tr` the open row (else a
    /// cell). Only the top four entries are searched: a cheap stand-in for html5ever's scope rules.
    fn implied_end(&self, class: u8) -> Option<usize> {
        let top = self.stack.len().saturating_sub(4);
        let find = |group: u8| {
            self.stack[top..]
                .iter()
                .rposition(|(_, c)| c >> GROUP_SHIFT == group)
                .map(|p| top + p)
        };
        match class >> GROUP_SHIFT {
            0 => None,
            G_TR => find(G_TR).or_else(|| find(G_TDTH)),
            g => find(g),
        }
    }

    /// Applies an end tag outside a dropped region: closes the nearest open element of that name.
    fn close(&mut self, name: &LocalName) {
        if let Some(pos) = self.stack.iter().rposition(|(n, _)| n == name) {
            self.pop_to(pos);
        }
    }

    fn pop_to(&mut self, pos: usize) {
        while self.stack.len() > pos {
            let Some((_, c)) = self.stack.pop() else {
                break;
            };
            if c & FMT != 0 {
                self.open_formatting = self.open_formatting.saturating_sub(1);
            }
            if c & FOREIGN != 0 {
                self.foreign = self.foreign.saturating_sub(1);
            }
        }
    }

    /// True when the next start tag could be dropped (no token adds more than one element).
    fn at_limit(&self, max_depth: usize) -> bool {
        self.stack.len() >= max_depth || self.open_formatting >= MAX_OPEN_FORMATTING
    }

    fn drop_region(&mut self, src: &str, from: usize, to: usize) {
        self.dropped_bytes += to.saturating_sub(from);
        if self.dropped_text.len() < DROPPED_TEXT_KEEP
            && let Some(s) = src.get(from..to)
        {
            crate::text::strip_tags_into(s, &mut self.dropped_text, DROPPED_TEXT_KEEP);
        }
    }
}

/// Token filter in front of html5ever's tree builder that drops deep content (see the module doc).
struct DepthLimiter<'a> {
    inner: TreeBuilder<Handle, Sink>,
    /// The whole input, for the text of dropped regions.
    src: &'a str,
    /// The tokenizer's input queue: what is left in it gives the current source offset.
    queue: &'a BufferQueue,
    /// Bytes of `src` pushed into `queue` so far.
    fed: Cell<usize>,
    /// Tag tokens swallowed in dropped regions (parse work that creates no node).
    swallowed_tags: Cell<usize>,
    max_depth: usize,
    scripting: bool,
    /// Inside a dropped region (`model.skip_depth > 0`), kept outside the `RefCell` for the
    /// per-token fast path.
    dropping: Cell<bool>,
    /// The next start tag could be dropped, so token ends are tracked (`Model::at_limit`).
    tracking: Cell<bool>,
    model: RefCell<Model>,
}

impl DepthLimiter<'_> {
    /// Source offset up to which the tokenizer has consumed the input. When a token is
    /// emitted, that is its end (a tag's `>`), give or take one character of lookahead.
    fn pos(&self) -> usize {
        let Some(front) = self.queue.pop_front() else {
            return self.fed.get();
        };
        let mut left = front.len();
        if self.queue.is_empty() {
            self.queue.push_front(front);
        } else {
            // Rare: the tokenizer pushed characters back in front of the chunk.
            let mut held = vec![front];
            while let Some(b) = self.queue.pop_front() {
                left += b.len();
                held.push(b);
            }
            for b in held.into_iter().rev() {
                self.queue.push_front(b);
            }
        }
        self.fed.get().saturating_sub(left)
    }

    /// Offset of the `<` of a start tag whose preceding token ended at `mark`. Lookahead
    /// can leave `mark` one character past that `<` (`<<div>`) or before an ignored line
    /// feed (CR LF), never across another `<`.
    fn tag_start(&self, mark: usize) -> usize {
        let from = mark.saturating_sub(1);
        self.src
            .as_bytes()
            .get(from..)
            .and_then(|rest| memchr::memchr(b'<', rest))
            .map_or(mark, |p| from + p)
    }

    /// What the tree builder returns for a start tag it switches the tokenizer on, so the
    /// tokenizer reads a swallowed element's content exactly as it would have.
    fn swallowed_start(&self, name: &LocalName) -> TokenSinkResult<Handle> {
        match *name {
            local_name!("title") | local_name!("textarea") => TokenSinkResult::RawData(Rcdata),
            local_name!("style")
            | local_name!("xmp")
            | local_name!("iframe")
            | local_name!("noembed")
            | local_name!("noframes") => TokenSinkResult::RawData(Rawtext),
            local_name!("noscript") if self.scripting => TokenSinkResult::RawData(Rawtext),
            local_name!("script") => TokenSinkResult::RawData(ScriptData),
            local_name!("plaintext") => TokenSinkResult::Plaintext,
            _ => TokenSinkResult::Continue,
        }
    }

    /// A tag token: updates the model. Returns the result for a swallowed tag, `None` to
    /// forward it.
    #[inline]
    fn on_tag(&self, tag: &Tag) -> Option<TokenSinkResult<Handle>> {
        let mut m = self.model.borrow_mut();
        if m.skip_depth > 0 {
            return Some(self.swallow(&mut m, tag));
        }
        if tag.kind == EndTag {
            m.close(&tag.name);
        } else if m.open(tag, self.max_depth) {
            return Some(self.start_dropping(&mut m, tag));
        }
        let at_limit = m.at_limit(self.max_depth);
        self.tracking.set(at_limit);
        if at_limit {
            m.mark = self.pos();
        }
        None
    }

    /// The start tag `tag` is too deep: it and everything inside it are dropped.
    #[cold]
    #[inline(never)]
    fn start_dropping(&self, m: &mut Model, tag: &Tag) -> TokenSinkResult<Handle> {
        m.skip_depth = 1;
        m.skip_start = self.tag_start(m.mark);
        self.dropping.set(true);
        self.swallowed_start(&tag.name)
    }

    /// A token other than a tag while dropping or tracking; `Some` when it is swallowed.
    /// Ordinary documents never get here, so it is kept out of the per-token path.
    #[cold]
    #[inline(never)]
    fn on_other(&self, token: &Token) -> Option<TokenSinkResult<Handle>> {
        if self.dropping.get() {
            if !matches!(token, Token::EOFToken) {
                return Some(TokenSinkResult::Continue);
            }
            let mut m = self.model.borrow_mut();
            let start = m.skip_start;
            m.drop_region(self.src, start, self.fed.get());
            m.skip_depth = 0;
            self.dropping.set(false);
            return None;
        }
        // Parse errors can come mid-tag: not a token boundary.
        if !matches!(token, Token::ParseError(_)) {
            let end = self.pos();
            self.model.borrow_mut().mark = end;
        }
        None
    }

    /// A tag inside a dropped region: only tracks where the region ends.
    #[cold]
    #[inline(never)]
    fn swallow(&self, m: &mut Model, tag: &Tag) -> TokenSinkResult<Handle> {
        self.swallowed_tags
            .set(self.swallowed_tags.get().saturating_add(1));
        let class = class(&tag.name);
        if tag.kind == StartTag {
            // Void and raw-text elements have no end tag to wait for (a raw-text element's
            // end tag is not counted either).
            if class & (VOID | RAW) == 0 && !(tag.self_closing && m.foreign > 0) {
                m.skip_depth += 1;
            }
            return self.swallowed_start(&tag.name);
        }
        if class & (VOID | RAW) == 0 {
            m.skip_depth -= 1;
            if m.skip_depth == 0 {
                let end = self.pos();
                let start = m.skip_start;
                m.drop_region(self.src, start, end);
                m.mark = end;
                self.dropping.set(false);
                self.tracking.set(m.at_limit(self.max_depth));
            }
        }
        TokenSinkResult::Continue
    }
}

impl TokenSink for DepthLimiter<'_> {
    type Handle = Handle;

    fn process_token(&self, token: Token, line_number: u64) -> TokenSinkResult<Handle> {
        match &token {
            Token::TagToken(tag) => {
                if let Some(result) = self.on_tag(tag) {
                    return result;
                }
            }
            _ if self.dropping.get() || self.tracking.get() => {
                if let Some(result) = self.on_other(&token) {
                    return result;
                }
            }
            _ => {}
        }
        self.inner.process_token(token, line_number)
    }

    fn end(&self) {
        self.inner.end();
    }

    fn adjusted_current_node_present_but_not_in_html_namespace(&self) -> bool {
        self.inner
            .adjusted_current_node_present_but_not_in_html_namespace()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Data;

    /// All text the tree received, in creation order, and what was dropped.
    fn run(html: &str, max_depth: usize) -> (String, Parsed) {
        let p = parse(html, max_depth, usize::MAX);
        let text = p
            .dom
            .nodes()
            .filter_map(|(_, n)| match &n.data {
                Data::Text(t) => Some(t.to_string()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("|");
        (text, p)
    }

    fn element_count(p: &Parsed, name: &str) -> usize {
        p.dom
            .nodes()
            .filter(|(_, n)| n.as_element().is_some_and(|e| e.name() == name))
            .count()
    }

    #[test]
    fn shallow_input_is_untouched() {
        let h = "<div><p>a<p>b<ul><li>x<li>y</ul></div><br><img src=x><table><tr><td>1<td>2<tr><td>3</table>";
        let (text, p) = run(h, 4);
        assert_eq!(p.dropped_bytes, 0);
        assert_eq!(text, "a|b|x|y|1|2|3");
    }

    #[test]
    fn deep_input_is_cut_and_text_after_kept() {
        let region = format!("{}deep{}", "<div>".repeat(10), "</div>".repeat(10));
        let h = format!(
            "{}{region}{}<p>after</p>",
            "<div>".repeat(10),
            "</div>".repeat(10)
        );
        let (text, p) = run(&h, 10);
        assert!(!text.contains("deep"));
        assert!(text.contains("after"));
        assert_eq!(p.dropped_text, "deep ");
        // Exactly the source of the dropped region.
        assert_eq!(p.dropped_bytes, region.len());
        assert_eq!(element_count(&p, "div"), 10);
        assert_eq!(element_count(&p, "p"), 1);
    }

    #[test]
    fn region_offsets_hold_across_chunks_and_lookahead() {
        // The region starts past the first 16 KB chunk, after a CR LF and after `<<`.
        let pad = "x".repeat(CHUNK + 7);
        for before in ["\r\n", "a<", "&amp;", "<!-- c -->", "é"] {
            let region = "<div>deep<i>x</i></div>";
            let h = format!("<div>{pad}<div><div>{before}{region}</div></div><p>after</p>");
            let (text, p) = run(&h, 3);
            assert!(!text.contains("deep"), "{before:?}");
            assert!(text.contains("after"), "{before:?}");
            assert_eq!(
                p.dropped_bytes,
                region.len(),
                "{before:?} {:?}",
                p.dropped_text
            );
        }
    }

    #[test]
    fn quoted_gt_comments_and_raw_text_do_not_count() {
        // None of these `<div>`s is a tag, so nothing reaches depth 3.
        let h = concat!(
            "<div title=\"a > <div> b\"><span>",
            "<!-- <div><div><div> -->",
            "<script>if (a<b) { x = '<div><div><div>'; }</script>",
            "<style>p::after { content: '<div><div><div>' }</style>",
            "<textarea><div><div><div></textarea>",
            "<title><div><div></title>",
            "kept</span></div>",
        );
        let (text, p) = run(h, 2);
        assert_eq!(p.dropped_bytes, 0);
        assert!(text.contains("kept"));
    }

    #[test]
    fn tokenizer_stays_in_step_through_swallowed_raw_text() {
        // A dropped region holding raw-text elements whose content looks like end tags:
        // the region must end at the real `</div>`s, and markup after it must be parsed as
        // markup (not as script or textarea text).
        let region = concat!(
            "<div><script>a</div></div>b</script><textarea></div></textarea>",
            "<style></div></style><xmp></div></xmp><noscript></div></noscript>",
            "<title></div></title>secret</div>",
        );
        let h = format!("<div><div>{region}</div></div><p>after</p><b>bold</b>");
        let (text, p) = run(&h, 2);
        assert!(!text.contains("secret"));
        assert_eq!(
            p.dropped_bytes,
            region.len(),
            "{:?} {text:?}",
            p.dropped_text
        );
        assert_eq!(element_count(&p, "p"), 1);
        assert_eq!(element_count(&p, "b"), 1);
        assert_eq!(element_count(&p, "script"), 0);
    }

    #[test]
    fn swallowed_plaintext_drops_the_rest() {
        let h = "<div><div><div><plaintext></div></div><p>x</p>";
        let (text, p) = run(h, 2);
        assert!(!text.contains('x'));
        assert_eq!(p.dropped_bytes, h.len() - "<div><div>".len());
        assert_eq!(element_count(&p, "p"), 0);
    }

    #[test]
    fn swallowed_start_tags_switch_the_tokenizer_like_the_tree_builder() {
        // What the tree builder itself returns for each raw-text start tag in body.
        for name in [
            "script",
            "style",
            "textarea",
            "title",
            "xmp",
            "iframe",
            "noembed",
            "noframes",
            "noscript",
            "plaintext",
            "div",
        ] {
            let queue = BufferQueue::default();
            let limiter = DepthLimiter {
                inner: TreeBuilder::new(Sink::new(0), TreeBuilderOpts::default()),
                src: "",
                queue: &queue,
                fed: Cell::new(0),
                swallowed_tags: Cell::new(0),
                max_depth: 100,
                scripting: TreeBuilderOpts::default().scripting_enabled,
                dropping: Cell::new(false),
                tracking: Cell::new(false),
                model: RefCell::new(Model::default()),
            };
            let tag = |name: &str| Tag {
                kind: StartTag,
                name: LocalName::from(name),
                self_closing: false,
                attrs: Vec::new(),
                had_duplicate_attributes: false,
            };
            for open in ["html", "body"] {
                let _ = limiter.inner.process_token(Token::TagToken(tag(open)), 1);
            }
            let real = limiter.inner.process_token(Token::TagToken(tag(name)), 1);
            let ours = limiter.swallowed_start(&LocalName::from(name));
            let kind = |r: &TokenSinkResult<Handle>| match r {
                TokenSinkResult::RawData(k) => format!("raw {k:?}"),
                TokenSinkResult::Plaintext => "plaintext".to_string(),
                TokenSinkResult::Continue => "continue".to_string(),
                _ => "other".to_string(),
            };
            assert_eq!(kind(&real), kind(&ours), "{name}");
            // The model treats exactly the raw-text switches as raw elements.
            assert_eq!(
                class(&LocalName::from(name)) & RAW != 0,
                matches!(ours, TokenSinkResult::RawData(_)),
                "{name}"
            );
        }
    }

    #[test]
    fn implied_ends_and_voids_do_not_deepen() {
        let h = [
            "<div>",
            &"<p>a".repeat(50),
            "</p><ul>",
            &"<li>c".repeat(50),
            "</ul><dl>",
            &"<dt>f<dd>g".repeat(50),
            "</dl><table>",
            // Rows left open: each `<tr>` closes the previous row and its cell.
            &"<tr><td>h<th>i".repeat(600),
            "</table><select>",
            &"<option>o".repeat(50),
            "</select>",
            &"<br><img><input><hr><meta><link>".repeat(50),
            "<span>kept</span>",
        ]
        .concat();
        let (text, p) = run(&h, 4);
        assert_eq!(p.dropped_bytes, 0);
        assert!(text.contains("kept"));
    }

    #[test]
    fn foreign_self_closing_does_not_deepen() {
        let h = format!(
            "<div><svg>{}</svg><span>kept</span></div>",
            "<g/>".repeat(20)
        );
        let (_, p) = run(&h, 3);
        assert_eq!(p.dropped_bytes, 0);
        // Outside SVG/MathML `/>` is ignored, as html5ever ignores it.
        let h = format!("<div>{}<span>x</span>", "<div/>".repeat(5));
        let (text, p) = run(&h, 3);
        assert!(p.dropped_bytes > 0);
        assert!(!text.contains('x'));
    }

    #[test]
    fn formatting_elements_are_capped() {
        let h = format!(
            "{}{}<p>after</p>",
            "<b>".repeat(MAX_OPEN_FORMATTING),
            "<i>deep</i>".repeat(3)
        );
        let (text, p) = run(&h, 500);
        assert!(!text.contains("deep"));
        assert!(text.contains("after"));
        assert_eq!(p.dropped_bytes, "<i>deep</i>".len() * 3);
        assert_eq!(element_count(&p, "i"), 0);
    }

    #[test]
    fn dropped_tags_are_charged_to_the_budget() {
        let h = format!("<p>start</p>{}", "<div>".repeat(100_000));
        let p = parse(&h, 10, 1_000_000);
        assert!(p.cut);
        let p = parse(&h, 10_000_000, 1_000_000);
        assert!(p.cut);
        let p = parse(&h, 10, usize::MAX);
        assert!(!p.cut);
        assert_eq!(p.dropped_bytes, h.len() - "<p>start</p>".len() - 10 * 5);
    }
}
