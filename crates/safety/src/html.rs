//! Renders HTML to the text a human sees: parses with html5ever into our own arena tree
//! (`sink.rs`), computes inherited visibility per element, and reports every hidden piece as
//! a finding.
//!
//! The tree walk is iterative (explicit stack); selector matching (`select.rs`) is bounded
//! by the rule index in `css.rs`, a per-element candidate cap and per-document budgets.

use std::cell::Cell;
use std::rc::Rc;

use crate::ancestors::AncestorFilter;
use crate::color::{ColorValue, ContrastCache, Rgba, parse_attr_color};
use crate::css::{self, Decl, DisplayKind, Len, Position, Sheet, Val};
use crate::findings::{Collector, truncate_bytes};
use crate::sink::{Data, Dom, Element, NodeId};
use html5ever::local_name;

use crate::tag::{self, Kind, Tag};
use crate::text::TextBuf;
use crate::{FindingKind, Link, MAX_DOM_DEPTH, MAX_HTML_BYTES, links, risk, unicode};

/// Output of rendering one HTML or text body.
#[derive(Debug, Default)]
pub(crate) struct Rendered {
    pub text: String,
    /// Text without quote containers (Gmail/Apple/Outlook history).
    pub reply: String,
    pub links: Vec<Link>,
}

/// Parse work after which the rest of the input is dropped, with a finding. Work is counted
/// rather than timed, so the output does not depend on the machine's load; this is about
/// 200 million instructions, roughly 40 ms of parsing in a release build (html5ever: 2,000-3,000
/// per node).
const PARSE_BUDGET: usize = 6_000_000;
/// Walk work after which rendering stops, with a finding: one unit per node entered, per
/// `WALK_TEXT_BYTES` of text and per selector match (about 1,500 instructions each, so the
/// budget is roughly 45 ms in a release build).
const WALK_BUDGET: usize = 150_000;
/// Bytes of a text node charged as one unit of walk work.
const WALK_TEXT_BYTES: usize = 64;
/// Selector match calls per document (each also counts as one unit of walk work).
const MATCH_BUDGET: usize = 60_000;
/// Candidate rules tried per element.
const MAX_CANDIDATES: usize = 128;
/// CSS bytes read from all `<style>` blocks.
const MAX_CSS_BYTES: usize = 1024 * 1024;
/// Bytes of one `style` attribute parsed.
const MAX_STYLE_ATTR: usize = 16 * 1024;
/// Contrast ratio below which text counts as invisible (WCAG ratio; #999 on white is 2.8).
const MIN_CONTRAST: f32 = 1.25;
/// Font size (px) below which text counts as invisible.
const MIN_FONT_PX: f32 = 4.0;
/// Offsets beyond this (px) put a box off the screen.
const OFFSCREEN_PX: f32 = 500.0;

/// Renders `html`, recording findings into `acc`.
pub(crate) fn render(html: &str, location: &str, acc: &mut Collector) -> Rendered {
    let limited = truncate_bytes(html, MAX_HTML_BYTES);
    if limited.len() < html.len() {
        acc.note(
            FindingKind::Truncated,
            format!(
                "HTML over 5 MB: {} bytes dropped",
                html.len() - limited.len()
            ),
            location,
        );
    }
    let parsed = crate::parse::parse(limited, MAX_DOM_DEPTH - 12, PARSE_BUDGET);
    if parsed.dropped_bytes > 0 {
        acc.removed(
            FindingKind::Truncated,
            &format!(
                "content nested deeper than {MAX_DOM_DEPTH} elements dropped ({} bytes): {}",
                parsed.dropped_bytes, parsed.dropped_text
            ),
            location,
        );
    }
    if parsed.cut {
        acc.note(
            FindingKind::Truncated,
            "parsing stopped at the work budget; the rest was dropped".to_string(),
            location,
        );
    }
    let doc = parsed.dom;
    let sheet = collect_styles(&doc, location, acc);
    let mut w = Walker {
        doc: &doc,
        sheet: &sheet,
        acc,
        text: TextBuf::with_capacity(limited.len().saturating_sub(parsed.dropped_bytes) / 4),
        reply: TextBuf::default(),
        reply_shared: true,
        reply_cut: false,
        links: Vec::new(),
        hidden: None,
        match_budget: MATCH_BUDGET,
        budget_hit: false,
        cand: Vec::new(),
        matched: Vec::new(),
        ancestors: AncestorFilter::new(&sheet),
        style_cache: HashMap::default(),
        class_buf: Vec::new(),
        work: 0,
        depth_hit: false,
        has_budget: Cell::new(HAS_BUDGET),
        marker_buf: String::new(),
        contrast: ContrastCache::default(),
    };
    let stopped = w.walk();
    w.flush_hidden();
    if stopped {
        w.acc.note(
            FindingKind::Truncated,
            "rendering stopped at the work budget; the rest was dropped".to_string(),
            location,
        );
    }
    if w.budget_hit || w.has_budget.get() == 0 {
        w.acc.note(
            FindingKind::Truncated,
            "selector matching budget exhausted; later style rules were not applied".to_string(),
            location,
        );
    }
    let Walker {
        text,
        reply,
        reply_shared,
        links,
        ..
    } = w;
    let text = text.finish();
    let reply = if reply_shared {
        text.clone()
    } else {
        reply.finish()
    };
    Rendered { text, reply, links }
}

/// Reads every `<style>` element (they apply wherever they are) into one indexed sheet.
fn collect_styles(doc: &Dom, location: &str, acc: &mut Collector) -> Sheet {
    let mut sheet = Sheet::default();
    let mut css_bytes = 0usize;
    // Every `<style>` element in the arena, attached or not (as scraper's `nodes()` did).
    for (id, node) in doc.nodes() {
        let Some(el) = node.as_element() else {
            continue;
        };
        if el.local != local_name!("style") {
            continue;
        }
        let mut css = String::new();
        for child in doc.children(id) {
            if let Some(Data::Text(t)) = doc.get(child).map(|c| &c.data) {
                css.push_str(t);
            }
        }
        if css_bytes >= MAX_CSS_BYTES {
            sheet.dropped += 1;
            continue;
        }
        let css = truncate_bytes(&css, MAX_CSS_BYTES - css_bytes);
        css_bytes += css.len();
        // CSS comments and strings are invisible; only report them when they read like instructions.
        if risk::scan(css).is_some() {
            acc.removed(
                FindingKind::NonRenderedElement,
                css,
                &format!("{location}:style"),
            );
        }
        sheet.add_stylesheet(css);
    }
    for (selector, content) in &sheet.generated {
        acc.removed(
            FindingKind::CssGeneratedContent,
            &format!("{selector} {{ content: \"{content}\" }}"),
            "style",
        );
    }
    if sheet.dropped > 0 {
        acc.note(
            FindingKind::Truncated,
            format!(
                "{} style rules over the cap of {} were ignored",
                sheet.dropped,
                css::MAX_RULES
            ),
            "style",
        );
    }
    sheet
}

/// Inherited state of one element.
#[derive(Debug, Clone, Copy)]
struct Computed {
    /// Hidden with no way back for descendants: cause and the element that hid it.
    hidden: Option<(FindingKind, NodeId)>,
    /// `visibility: hidden` (inherited, but a descendant may set it back to visible).
    vis_hidden: Option<NodeId>,
    opacity: f32,
    font_px: f32,
    font_src: NodeId,
    color: Rgba,
    fill: Option<Rgba>,
    color_src: NodeId,
    bg: Rgba,
    bg_src: NodeId,
    bg_unknown: bool,
    low_contrast: bool,
    text_indent: Len,
    pre: bool,
    /// Inside a quote container: left out of the reply text.
    quote: bool,
    /// A `<details>` without `open`: children other than `<summary>` are not rendered.
    closed_details: bool,
    /// Element depth, and the depths at which colour/background were last set.
    depth: u32,
    color_depth: u32,
    bg_depth: u32,
}

/// Specified values for one element after the cascade.
#[derive(Debug, Default)]
struct Specified {
    display: Option<DisplayKind>,
    visibility: Option<bool>,
    opacity: Option<f32>,
    font_size: Option<Len>,
    color: Option<ColorValue>,
    fill: Option<ColorValue>,
    bg: Option<Rgba>,
    bg_image: Option<bool>,
    position: Option<Position>,
    left: Option<Len>,
    top: Option<Len>,
    right: Option<Len>,
    margin_left: Option<Len>,
    margin_top: Option<Len>,
    text_indent: Option<Len>,
    clip: Option<bool>,
    clip_path: Option<bool>,
    height: Option<Len>,
    max_height: Option<Len>,
    width: Option<Len>,
    max_width: Option<Len>,
    overflow_hidden: Option<bool>,
    transform_zero: Option<bool>,
    mso_hide: Option<bool>,
    pre: Option<bool>,
}

impl Specified {
    fn apply(&mut self, v: &Val) {
        match v {
            Val::Display(d) => self.display = Some(*d),
            Val::Visibility(h) => self.visibility = Some(*h),
            Val::Opacity(o) => self.opacity = Some(*o),
            Val::FontSize(l) => self.font_size = Some(*l),
            Val::Color(c) => self.color = Some(*c),
            Val::TextFill(c) => self.fill = Some(*c),
            Val::Background(c, img) => {
                self.bg = Some(c.unwrap_or(Rgba::TRANSPARENT));
                self.bg_image = Some(*img);
            }
            Val::BackgroundColor(c) => self.bg = Some(*c),
            Val::BackgroundImage(i) => self.bg_image = Some(*i),
            Val::Position(p) => self.position = Some(*p),
            Val::Left(l) => self.left = Some(*l),
            Val::Top(l) => self.top = Some(*l),
            Val::Right(l) => self.right = Some(*l),
            Val::MarginLeft(l) => self.margin_left = Some(*l),
            Val::MarginTop(l) => self.margin_top = Some(*l),
            Val::TextIndent(l) => self.text_indent = Some(*l),
            Val::ClipZero(z) => self.clip = Some(*z),
            Val::ClipPathZero(z) => self.clip_path = Some(*z),
            Val::Height(l) => self.height = Some(*l),
            Val::MaxHeight(l) => self.max_height = Some(*l),
            Val::Width(l) => self.width = Some(*l),
            Val::MaxWidth(l) => self.max_width = Some(*l),
            Val::OverflowHidden(h) => self.overflow_hidden = Some(*h),
            Val::TransformZero(z) => self.transform_zero = Some(*z),
            Val::MsoHide(h) => self.mso_hide = Some(*h),
            Val::WhiteSpacePre(p) => self.pre = Some(*p),
            Val::Content(_) => {}
        }
    }
}

/// The attributes that matter, read in one pass (`Element::attr` interns the name on every call).
#[derive(Default)]
struct Attrs<'a> {
    style: Option<&'a str>,
    hidden: bool,
    bgcolor: Option<&'a str>,
    background: Option<&'a str>,
    color: Option<&'a str>,
    size: Option<&'a str>,
    text: Option<&'a str>,
    width: Option<&'a str>,
    height: Option<&'a str>,
    class: Option<&'a str>,
    /// The first `id` attribute (what `Element::id` returns), read once per element.
    id: Option<&'a str>,
    kind: Option<&'a str>,
    open: bool,
    href: Option<&'a str>,
}

impl<'a> Attrs<'a> {
    fn read(el: &'a Element) -> Self {
        let mut a = Attrs::default();
        // Names are interned: comparing atoms is comparing the strings.
        for attr in &el.attrs {
            let v = &*attr.value;
            match attr.name.local {
                local_name!("style") => a.style = Some(v),
                local_name!("hidden") => a.hidden = true,
                local_name!("bgcolor") => a.bgcolor = Some(v),
                local_name!("background") => a.background = Some(v),
                local_name!("color") => a.color = Some(v),
                local_name!("size") => a.size = Some(v),
                local_name!("text") => a.text = Some(v),
                local_name!("width") => a.width = Some(v),
                local_name!("height") => a.height = Some(v),
                local_name!("class") => a.class = Some(v),
                local_name!("id") if a.id.is_none() => a.id = Some(v),
                local_name!("type") => a.kind = Some(v),
                local_name!("open") => a.open = true,
                local_name!("href") => a.href = Some(v),
                _ => {}
            }
        }
        a
    }
}

/// What to do when leaving an element.
struct ExitInfo<'a> {
    newlines: u8,
    /// Mark of the ancestor-filter keys this element pushed (`AncestorFilter::leave`).
    keys_from: u32,
    /// Text offset where the link starts, whether the reply view saw it, and the target.
    link: Option<(usize, bool, &'a str, NodeId)>,
}

/// The walk's work list: nodes to enter, and element ends (whose `ExitInfo` waits on a
/// stack of its own, so that the many `Enter` frames stay 8 bytes).
enum Frame {
    Enter(NodeId),
    Exit,
}

struct HiddenBuf {
    kind: FindingKind,
    anchor: NodeId,
    text: String,
}

/// Fast, randomly seeded hasher for maps keyed by input-derived values.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Distinct inline `style` attributes whose parsed declarations are cached per document.
const MAX_CACHED_STYLES: usize = 4096;

/// Nodes `:has()` may visit per document (each is one selector match).
const HAS_BUDGET: usize = 1_000_000;

struct Walker<'a> {
    doc: &'a Dom,
    sheet: &'a Sheet,
    acc: &'a mut Collector,
    text: TextBuf,
    /// Text without quoted history; unused while `reply_shared`.
    reply: TextBuf,
    /// True while the reply text has received exactly what `text` received (usually until
    /// the first quote container): it is then `text` itself and is not built separately.
    reply_shared: bool,
    reply_cut: bool,
    links: Vec<Link>,
    hidden: Option<HiddenBuf>,
    match_budget: usize,
    budget_hit: bool,
    cand: Vec<usize>,
    /// Reused list of (specificity, order, block) of the rules the current element matched.
    matched: Vec<(u32, u32, usize)>,
    /// Keys of the open elements that rules require of an ancestor (`None`: no rule does).
    ancestors: Option<AncestorFilter>,
    /// Parsed inline `style` declarations by attribute text (newsletters repeat a few dozen).
    style_cache: HashMap<&'a str, Rc<[Decl]>>,
    /// Reused list of the current element's classes.
    class_buf: Vec<&'a str>,
    /// Walk work done so far (see `WALK_BUDGET`).
    work: usize,
    depth_hit: bool,
    /// Nodes `:has()` may still visit (see `HAS_BUDGET`).
    has_budget: Cell<usize>,
    /// Reused buffer for link markers (`<href>`).
    marker_buf: String,
    /// Recent contrast ratios (colour pairs repeat from element to element).
    contrast: ContrastCache,
}

fn has_class(classes: &[&str], needle: &str) -> bool {
    classes.iter().any(|c| c.eq_ignore_ascii_case(needle))
}

/// Classes of an element, in attribute order; past 16 entries, the first 16 of the sorted,
/// deduplicated set (the list scraper produced, which earlier versions used there).
fn class_list<'e>(raw: Option<&'e str>, out: &mut Vec<&'e str>) {
    out.clear();
    let Some(raw) = raw else { return };
    out.extend(raw.split_ascii_whitespace().take(17));
    if out.len() > 16 {
        out.clear();
        out.extend(raw.split_ascii_whitespace());
        out.sort_unstable();
        out.dedup();
        out.truncate(16);
    }
}

/// Gmail, Apple Mail, Thunderbird, Yahoo and Proton quote containers.
fn is_quote_container(tag: Tag, a: &Attrs<'_>, classes: &[&str]) -> bool {
    if tag.kind == Kind::Blockquote && a.kind.is_some_and(|t| t.eq_ignore_ascii_case("cite")) {
        return true;
    }
    classes.iter().any(|c| {
        c.get(..11)
            .is_some_and(|p| p.eq_ignore_ascii_case("gmail_quote"))
            || [
                "gmail_attr",
                "moz-cite-prefix",
                "yahoo_quoted",
                "protonmail_quote",
                "zmail_extra",
                "ms-outlook-mobile-reference-message",
            ]
            .iter()
            .any(|q| c.eq_ignore_ascii_case(q))
    })
}

/// Outlook markers after which everything is quoted history.
fn is_history_start(a: &Attrs<'_>, classes: &[&str]) -> bool {
    a.id.is_some_and(|id| {
        id.get(..13)
            .is_some_and(|p| p.eq_ignore_ascii_case("divrplyfwdmsg"))
            || id.eq_ignore_ascii_case("appendonsend")
            || id.eq_ignore_ascii_case("mail-editor-reference-message-container")
            || id.eq_ignore_ascii_case("x_divrplyfwdmsg")
    }) || has_class(classes, "OutlookMessageHeader")
}

fn attr_is_zero(v: &str) -> bool {
    // Common case first: `600`, `100%`, `24px` (a positive integer) without a float parse.
    let b = v.as_bytes();
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if b.first().is_some_and(|&c| c != b'0')
        && digits > 0
        && matches!(&b[digits..], b"" | b"%" | b"px")
    {
        return false;
    }
    let v = v.trim().trim_end_matches("px").trim_end_matches('%').trim();
    v.parse::<f32>().is_ok_and(|n| n <= 0.0)
}

/// Legacy `<font size=1..7>` in px.
fn font_attr_px(v: &str) -> Option<f32> {
    let digits: String = v.trim().chars().filter(|c| c.is_ascii_digit()).collect();
    let n: i32 = digits.parse().ok()?;
    let n = if v.trim().starts_with('+') {
        3 + n
    } else if v.trim().starts_with('-') {
        3 - n
    } else {
        n
    };
    Some(match n.clamp(1, 7) {
        1 => 10.0,
        2 => 13.0,
        3 => 16.0,
        4 => 18.0,
        5 => 24.0,
        6 => 32.0,
        _ => 48.0,
    })
}

impl<'a> Walker<'a> {
    /// Walks the whole document; returns true if it stopped at the work budget.
    fn walk(&mut self) -> bool {
        let root = Dom::ROOT;
        let root_style = Computed {
            hidden: None,
            vis_hidden: None,
            opacity: 1.0,
            font_px: 16.0,
            font_src: root,
            color: Rgba::BLACK,
            fill: None,
            color_src: root,
            bg: Rgba::WHITE,
            bg_src: root,
            bg_unknown: false,
            low_contrast: false,
            text_indent: Len::Px(0.0),
            pre: false,
            quote: false,
            closed_details: false,
            depth: 0,
            color_depth: 0,
            bg_depth: 0,
        };
        let mut styles: Vec<Computed> = vec![root_style];
        let mut stack: Vec<Frame> = Vec::with_capacity(256);
        let mut exits: Vec<ExitInfo> = Vec::with_capacity(64);
        for child in self.doc.children_rev(root) {
            stack.push(Frame::Enter(child));
        }
        while let Some(frame) = stack.pop() {
            let id = match frame {
                Frame::Exit => {
                    if let Some(info) = exits.pop() {
                        self.exit(info);
                    }
                    styles.pop();
                    continue;
                }
                Frame::Enter(id) => id,
            };
            let doc = self.doc;
            let Some(node) = doc.get(id) else {
                continue;
            };
            self.work += 1;
            if self.work > WALK_BUDGET {
                return true;
            }
            let parent = styles.last().unwrap_or(&root_style);
            match &node.data {
                Data::Text(t) => {
                    self.work += t.len() / WALK_TEXT_BYTES;
                    self.on_text(t, parent, node.parent())
                }
                Data::Comment(c) => self.on_comment(c, node.parent()),
                Data::Element(el) => {
                    if styles.len() > MAX_DOM_DEPTH {
                        self.too_deep(id);
                        continue;
                    }
                    let tag = tag::of(&el.local);
                    // The element's state starts as a copy of its parent's, made in place.
                    let n = styles.len();
                    if n == 0 {
                        continue;
                    }
                    styles.extend_from_within(n - 1..);
                    let (done, new) = styles.split_at_mut(n);
                    let (Some(parent), Some(c)) = (done.last(), new.first_mut()) else {
                        continue;
                    };
                    let info = self.enter(id, el, tag, parent, c);
                    exits.push(info);
                    stack.push(Frame::Exit);
                    if tag.kind == Kind::Style {
                        continue; // already read into the sheet
                    }
                    for child in doc.children_rev(id) {
                        stack.push(Frame::Enter(child));
                    }
                }
                Data::Document | Data::Fragment => {
                    for child in doc.children_rev(id) {
                        stack.push(Frame::Enter(child));
                    }
                }
                _ => {}
            }
        }
        false
    }

    /// An element nested deeper than [`MAX_DOM_DEPTH`]: dropped, reported once.
    #[cold]
    #[inline(never)]
    fn too_deep(&mut self, id: NodeId) {
        if !self.depth_hit {
            self.depth_hit = true;
            self.acc.note(
                FindingKind::Truncated,
                format!("elements nested deeper than {MAX_DOM_DEPTH} dropped"),
                &self.path(id),
            );
        }
    }

    /// Applies `f` to the visible text, and to the reply text too when `to_reply`.
    fn emit(&mut self, to_reply: bool, f: impl Fn(&mut TextBuf)) {
        if !to_reply && self.reply_shared {
            // First difference: from here on the reply text is built on its own.
            self.reply = self.text.clone();
            self.reply_shared = false;
        }
        f(&mut self.text);
        if to_reply && !self.reply_shared {
            f(&mut self.reply);
        }
    }

    fn reply_active(&self, st: &Computed) -> bool {
        !self.reply_cut && !st.quote
    }

    fn enter(
        &mut self,
        id: NodeId,
        el: &'a Element,
        tag: Tag,
        parent: &Computed,
        c: &mut Computed,
    ) -> ExitInfo<'a> {
        let name = el.name();
        let attrs = Attrs::read(el);
        let mut classes = std::mem::take(&mut self.class_buf);
        class_list(attrs.class, &mut classes);
        let spec = self.cascade(&attrs, &classes, id, name, tag);
        c.closed_details = false;
        c.depth = parent.depth.saturating_add(1);

        // Text colour and background first: contrast needs both.
        let mut colour_changed = false;
        match spec.color {
            Some(ColorValue::Rgba(rgba)) => {
                c.color = rgba;
                c.color_src = id;
                c.color_depth = c.depth;
                colour_changed = true;
            }
            Some(ColorValue::CurrentColor) | Some(ColorValue::Inherit) | None => {}
        }
        if let Some(fill) = spec.fill {
            c.fill = match fill {
                ColorValue::Rgba(r) => Some(r),
                ColorValue::CurrentColor => None,
                ColorValue::Inherit => parent.fill,
            };
            c.color_src = id;
            c.color_depth = c.depth;
            colour_changed = true;
        }
        if let Some(bg) = spec.bg
            && bg.a > 0.0
        {
            c.bg = bg.over(parent.bg);
            c.bg_src = id;
            c.bg_depth = c.depth;
            c.bg_unknown = false;
            colour_changed = true;
        } else if spec.bg_image == Some(true) {
            // An image behind the text: its colour is unknown, so contrast cannot be judged.
            c.bg_unknown = true;
        }
        if let Some(o) = spec.opacity {
            c.opacity = parent.opacity * o;
            colour_changed = true;
        }
        if colour_changed {
            let paint = c.fill.unwrap_or(c.color);
            let paint = Rgba {
                a: paint.a * c.opacity,
                ..paint
            };
            c.low_contrast = paint.a < 0.1 || self.contrast.get(paint, c.bg) < MIN_CONTRAST;
        }
        if let Some(fs) = spec.font_size
            && let Some(px) = fs.px(parent.font_px, parent.font_px)
        {
            c.font_px = px.max(0.0);
            c.font_src = id;
        }
        match spec.visibility {
            Some(true) => c.vis_hidden = Some(id),
            Some(false) => c.vis_hidden = None,
            None => {}
        }
        if let Some(p) = spec.pre {
            c.pre = p;
        } else if tag.has(tag::PRE) {
            c.pre = true;
        }
        if let Some(ti) = spec.text_indent {
            c.text_indent = ti;
        }
        if is_quote_container(tag, &attrs, &classes) {
            c.quote = true;
        }
        if is_history_start(&attrs, &classes) {
            self.reply_cut = true;
        }

        let display = spec.display.unwrap_or(if tag.has(tag::BLOCK) {
            DisplayKind::Block
        } else if tag.has(tag::INLINE_BLOCK) {
            DisplayKind::InlineBlock
        } else {
            DisplayKind::Inline
        });
        if c.hidden.is_none() {
            c.hidden = self
                .hiding_cause(&attrs, tag, &spec, display, parent, c)
                .map(|k| (k, id));
        }
        if tag.kind == Kind::Details && !attrs.open {
            c.closed_details = true;
        }

        if c.hidden.is_none() {
            self.check_attributes(el, tag, id);
        }

        let visible = c.hidden.is_none();
        let mut info = ExitInfo {
            newlines: 0,
            keys_from: 0,
            link: None,
        };
        if let Some(f) = &mut self.ancestors {
            info.keys_from = f.enter(name, attrs.id, &classes);
        }
        if visible {
            let reply = self.reply_active(c);
            let n = tag.breaks();
            if n > 0 || display == DisplayKind::Block {
                let n = n.max(1);
                self.emit(reply, |t| t.newline(n));
                info.newlines = n;
            }
            match tag.kind {
                Kind::Br => {
                    self.emit(reply, TextBuf::br);
                }
                Kind::Li => {
                    self.emit(reply, |t| t.marker("- "));
                }
                Kind::Cell => {
                    self.emit(reply, TextBuf::space);
                }
                Kind::A => {
                    if let Some(href) = attrs.href {
                        info.link = Some((
                            self.text.len(),
                            reply,
                            truncate_bytes(href.trim(), 4096),
                            id,
                        ));
                    }
                }
                _ => {}
            }
        }
        self.class_buf = classes;
        info
    }

    /// The reason this element hides its subtree, if any.
    fn hiding_cause(
        &self,
        el: &Attrs<'_>,
        tag: Tag,
        spec: &Specified,
        display: DisplayKind,
        parent: &Computed,
        c: &Computed,
    ) -> Option<FindingKind> {
        if parent.closed_details && tag.kind != Kind::Summary {
            return Some(FindingKind::NonRenderedElement);
        }
        if tag.has(tag::NON_RENDERED)
            || (tag.kind == Kind::Dialog && !el.open)
            || (tag.kind == Kind::Input
                && el.kind.is_some_and(|t| t.eq_ignore_ascii_case("hidden")))
        {
            return Some(FindingKind::NonRenderedElement);
        }
        if display == DisplayKind::None || spec.mso_hide == Some(true) {
            return Some(FindingKind::HiddenCss);
        }
        if c.opacity < 0.05 {
            return Some(FindingKind::HiddenCss);
        }
        let font = c.font_px;
        let px = |l: Option<Len>, base: f32| l.and_then(|l| l.px(font, base));
        let positioned = matches!(
            spec.position,
            Some(Position::Absolute | Position::Fixed | Position::Relative)
        );
        if positioned {
            let far = |v: Option<f32>| v.is_some_and(|v| v <= -OFFSCREEN_PX);
            if far(px(spec.left, 1024.0))
                || far(px(spec.top, 768.0))
                || far(px(spec.right, 1024.0))
                || px(spec.left, 1024.0).is_some_and(|v| v >= 5000.0)
            {
                return Some(FindingKind::Offscreen);
            }
        }
        let far_margin = |v: Option<f32>| v.is_some_and(|v| v <= -OFFSCREEN_PX * 2.0);
        if far_margin(px(spec.margin_left, 1024.0)) || far_margin(px(spec.margin_top, 768.0)) {
            return Some(FindingKind::Offscreen);
        }
        if display != DisplayKind::Inline
            && c.text_indent
                .px(font, 1024.0)
                .is_some_and(|v| v <= -OFFSCREEN_PX || v >= 5000.0)
        {
            return Some(FindingKind::Offscreen);
        }
        if spec.clip_path == Some(true) {
            return Some(FindingKind::Clipped);
        }
        if spec.clip == Some(true)
            && matches!(spec.position, Some(Position::Absolute | Position::Fixed))
        {
            return Some(FindingKind::Clipped);
        }
        let sized = display != DisplayKind::Inline
            || matches!(spec.position, Some(Position::Absolute | Position::Fixed));
        if sized && spec.transform_zero == Some(true) {
            return Some(FindingKind::Clipped);
        }
        if sized && spec.overflow_hidden == Some(true) {
            let tiny = |v: Option<f32>| v.is_some_and(|v| v <= 1.0);
            if tiny(px(spec.height, f32::NAN))
                || tiny(px(spec.max_height, f32::NAN))
                || tiny(px(spec.width, f32::NAN))
                || tiny(px(spec.max_width, f32::NAN))
            {
                return Some(FindingKind::ZeroSize);
            }
        }
        if !tag.has(tag::SIZE_EXEMPT)
            && (el.width.is_some_and(attr_is_zero) || el.height.is_some_and(attr_is_zero))
        {
            return Some(FindingKind::ZeroSize);
        }
        None
    }

    /// Parsed declarations of an inline `style` attribute, cached by its text.
    fn inline_style(&mut self, s: &'a str) -> Rc<[Decl]> {
        if let Some(d) = self.style_cache.get(s) {
            return Rc::clone(d);
        }
        let decls: Rc<[Decl]> = css::parse_declarations(truncate_bytes(s, MAX_STYLE_ATTR)).into();
        if self.style_cache.len() < MAX_CACHED_STYLES {
            self.style_cache.insert(s, Rc::clone(&decls));
        }
        decls
    }

    /// Presentational attributes, `<style>` rules and the inline `style`, in cascade order.
    fn cascade(
        &mut self,
        a: &Attrs<'a>,
        classes: &[&str],
        id: NodeId,
        name: &str,
        tag: Tag,
    ) -> Specified {
        let mut spec = Specified::default();
        // Presentational hints sit below every author rule.
        if a.hidden {
            spec.display = Some(DisplayKind::None);
        }
        if let Some(bg) = a.bgcolor.and_then(parse_attr_color) {
            spec.bg = Some(bg);
        }
        if a.background.is_some_and(|b| !b.trim().is_empty()) {
            spec.bg_image = Some(true);
        }
        match tag.kind {
            Kind::Font => {
                if let Some(c) = a.color.and_then(parse_attr_color) {
                    spec.color = Some(ColorValue::Rgba(c));
                }
                if let Some(px) = a.size.and_then(font_attr_px) {
                    spec.font_size = Some(Len::Px(px));
                }
            }
            Kind::Body => {
                if let Some(c) = a.text.and_then(parse_attr_color) {
                    spec.color = Some(ColorValue::Rgba(c));
                }
            }
            _ => {}
        }

        let inline = a.style.map(|s| self.inline_style(s));
        let mut matched = std::mem::take(&mut self.matched);
        matched.clear();
        if !self.sheet.is_empty() {
            let mut cand = std::mem::take(&mut self.cand);
            self.sheet.candidates(name, a.id, classes, &mut cand);
            let mut tried = 0;
            for &ri in cand.iter() {
                if tried >= MAX_CANDIDATES {
                    break;
                }
                if self.match_budget == 0 {
                    self.budget_hit = true;
                    break;
                }
                self.match_budget -= 1;
                let Some(rule) = self.sheet.rules.get(ri) else {
                    continue;
                };
                if self.ancestors.as_ref().is_some_and(|f| !f.satisfied(ri)) {
                    self.match_budget += 1; // rejected without running the matcher
                    continue;
                }
                tried += 1;
                self.work += 1;
                if rule.selector.matches(self.doc, id, &self.has_budget) {
                    matched.push((rule.specificity, rule.order, rule.block));
                }
            }
            self.cand = cand;
            matched.sort_unstable();
        }
        for important in [false, true] {
            for &(_, _, block) in &matched {
                if let Some(decls) = self.sheet.blocks.get(block) {
                    for d in decls.iter().filter(|d| d.important == important) {
                        spec.apply(&d.val);
                    }
                }
            }
            if let Some(decls) = &inline {
                for d in decls.iter().filter(|d| d.important == important) {
                    spec.apply(&d.val);
                }
            }
        }
        self.matched = matched;
        spec
    }

    /// `alt`/`title`/`aria-*` text is not rendered; report it when long or instruction-like.
    fn check_attributes(&mut self, el: &Element, tag: Tag, id: NodeId) {
        for a in &el.attrs {
            let (attr, value) = (&*a.name.local, &*a.value);
            let relevant = match a.name.local {
                local_name!("alt")
                | local_name!("title")
                | local_name!("aria-label")
                | local_name!("aria-roledescription")
                | local_name!("placeholder")
                | local_name!("summary") => true,
                local_name!("content") => tag.kind == Kind::Meta,
                // The attributes of ordinary markup, answered without comparing text.
                local_name!("style")
                | local_name!("class")
                | local_name!("id")
                | local_name!("href")
                | local_name!("src")
                | local_name!("width")
                | local_name!("height")
                | local_name!("align")
                | local_name!("border")
                | local_name!("role")
                | local_name!("dir")
                | local_name!("target") => false,
                _ => attr == "aria-description" || (attr.starts_with("data-") && value.len() >= 20),
            };
            if !relevant {
                continue;
            }
            let value = truncate_bytes(value, 64 * 1024);
            if value.trim().is_empty() {
                continue;
            }
            if value.len() >= 80 || risk::scan(value).is_some() {
                self.report_attribute(attr, value, id);
            }
        }
    }

    #[cold]
    #[inline(never)]
    fn report_attribute(&mut self, attr: &str, value: &str, id: NodeId) {
        let loc = self.path(id);
        self.acc.removed(
            FindingKind::NonRenderedAttribute,
            &format!("{attr}=\"{value}\""),
            &loc,
        );
    }

    fn exit(&mut self, info: ExitInfo<'a>) {
        if let Some(f) = &mut self.ancestors {
            f.leave(info.keys_from);
        }
        if let Some((start, in_reply, href, id)) = info.link {
            self.finish_link(start, in_reply, href, id);
        }
        if info.newlines > 0 {
            self.emit(true, |t| t.newline(info.newlines));
        }
    }

    fn finish_link(&mut self, start: usize, in_reply: bool, href: &str, id: NodeId) {
        let shown = self.text.out.get(start..).unwrap_or("").trim();
        if shown.is_empty() || href.is_empty() || href.starts_with('#') {
            return;
        }
        let shown = truncate_bytes(shown, 1000).to_string();
        let doc = self.doc;
        let mismatch = links::check_link(&shown, href, || path_of(doc, id), self.acc);
        let showable = ["http://", "https://", "mailto:", "tel:", "ftp://"]
            .iter()
            .any(|s| links::starts_with_ci(href, s));
        if showable && !same_url(&shown, href) {
            // Built in a reused buffer: `format!` here was a few percent of a newsletter's walk.
            let mut marker = std::mem::take(&mut self.marker_buf);
            marker.clear();
            marker.push('<');
            marker.push_str(href);
            marker.push('>');
            self.emit(in_reply && !self.reply_cut, |t| {
                t.space();
                t.marker(&marker);
            });
            self.marker_buf = marker;
        }
        if self.links.len() < 1000 {
            self.links.push(Link {
                text: shown,
                href: href.to_string(),
                mismatch,
            });
        }
    }

    fn hidden_reason(&self, st: &Computed) -> Option<(FindingKind, NodeId)> {
        if let Some(h) = st.hidden {
            return Some(h);
        }
        if let Some(src) = st.vis_hidden {
            return Some((FindingKind::HiddenCss, src));
        }
        if st.font_px < MIN_FONT_PX {
            return Some((FindingKind::TinyText, st.font_src));
        }
        if st.low_contrast && !st.bg_unknown {
            // Anchor on whichever of colour/background was set deeper (later in the tree).
            let anchor = if st.color_depth >= st.bg_depth {
                st.color_src
            } else {
                st.bg_src
            };
            return Some((FindingKind::LowContrast, anchor));
        }
        None
    }

    fn on_text(&mut self, text: &str, st: &Computed, parent: Option<NodeId>) {
        // Text directly inside a closed `<details>` is hidden by it before anything else.
        let reason = if st.closed_details {
            Some((
                FindingKind::NonRenderedElement,
                parent.unwrap_or(st.font_src),
            ))
        } else {
            self.hidden_reason(st)
        };
        if let Some((kind, anchor)) = reason {
            self.hide_text(kind, anchor, text);
            return;
        }
        if self.hidden.is_some() && !text.trim().is_empty() {
            self.flush_hidden();
        }
        let cleaned = if unicode::needs_cleaning(text) {
            self.clean_text(text, parent)
        } else {
            std::borrow::Cow::Borrowed(text)
        };
        let to_reply = self.reply_active(st);
        self.emit(to_reply, |t| t.text(&cleaned, st.pre));
    }

    /// Text with invisible or control characters: cleaned, with findings.
    #[cold]
    #[inline(never)]
    fn clean_text<'t>(
        &mut self,
        text: &'t str,
        parent: Option<NodeId>,
    ) -> std::borrow::Cow<'t, str> {
        let loc = parent.map(|p| self.path(p)).unwrap_or_default();
        unicode::clean(text, &loc, self.acc)
    }

    /// Hidden text: buffered, so that adjacent pieces hidden by the same element make one
    /// finding. Kept out of the walk's hot path (most text is visible).
    #[cold]
    #[inline(never)]
    fn hide_text(&mut self, kind: FindingKind, anchor: NodeId, text: &str) {
        if text.trim().is_empty() {
            return;
        }
        match &mut self.hidden {
            Some(h) if h.anchor == anchor && h.kind == kind => {
                if h.text.len() < 64 * 1024 {
                    h.text.push(' ');
                    h.text.push_str(truncate_bytes(text, 64 * 1024));
                }
            }
            _ => {
                self.flush_hidden();
                self.hidden = Some(HiddenBuf {
                    kind,
                    anchor,
                    text: truncate_bytes(text, 64 * 1024).to_string(),
                });
            }
        }
    }

    #[inline(never)]
    fn on_comment(&mut self, comment: &str, parent: Option<NodeId>) {
        let body = comment.trim();
        if body.is_empty() {
            return;
        }
        let conditional =
            body.starts_with("[if") || body.contains("<![endif]") || body.starts_with("[endif");
        let mut text = String::new();
        crate::text::strip_tags_into(body, &mut text, 64 * 1024);
        let text = text.trim();
        let text = if conditional {
            text.trim_start_matches(|c: char| c != ']')
                .trim_start_matches(']')
                .trim_end_matches("<![endif]")
                .trim()
        } else {
            text
        };
        if text.is_empty() || (conditional && !text.chars().any(char::is_alphabetic)) {
            return;
        }
        let kind = if conditional {
            FindingKind::ConditionalComment
        } else {
            FindingKind::Comment
        };
        let loc = parent.map(|p| self.path(p)).unwrap_or_default();
        self.acc.removed(kind, text, &loc);
    }

    #[inline(never)]
    fn flush_hidden(&mut self) {
        if let Some(h) = self.hidden.take() {
            let loc = self.path(h.anchor);
            self.acc.removed(h.kind, h.text.trim(), &loc);
        }
    }

    /// A short CSS-like path to an element, e.g. `body>div.preheader>span`.
    fn path(&self, id: NodeId) -> String {
        path_of(self.doc, id)
    }
}

/// A short CSS-like path to an element, e.g. `body>div.preheader>span`.
fn path_of(doc: &Dom, id: NodeId) -> String {
    let mut parts = Vec::new();
    let mut cur = doc.get(id);
    while let Some(node) = cur {
        if parts.len() >= 4 {
            parts.push("…".to_string());
            break;
        }
        if let Some(el) = node.as_element() {
            let name = el.name();
            if name == "html" {
                break;
            }
            let mut s = name.to_string();
            if let Some(i) = el.id() {
                s.push('#');
                s.push_str(truncate_bytes(i, 32));
            } else if let Some(c) = first_class(el) {
                s.push('.');
                s.push_str(truncate_bytes(c, 32));
            }
            parts.push(s);
        }
        cur = node.parent().and_then(|p| doc.get(p));
    }
    parts.reverse();
    if parts.is_empty() {
        "document".to_string()
    } else {
        parts.join(">")
    }
}

/// The alphabetically first class (what scraper's sorted `classes()` listed first).
fn first_class(el: &Element) -> Option<&str> {
    el.attrs()
        .filter(|(k, _)| *k == "class")
        .flat_map(|(_, v)| v.split_ascii_whitespace())
        .min()
}

/// True when the link text already shows the target.
fn same_url(shown: &str, href: &str) -> bool {
    if !shown.contains(['.', ':', '@']) {
        return false;
    }
    // ASCII lowercasing keeps byte positions, so stripping the lowercase prefixes from the
    // lowercased text is stripping them ASCII case-insensitively from the original.
    fn strip_all<'s>(mut s: &'s str, prefix: &str) -> &'s str {
        while links::starts_with_ci(s, prefix) {
            s = s.get(prefix.len()..).unwrap_or("");
        }
        s
    }
    fn norm(s: &str) -> &str {
        let mut s = s.trim();
        for p in ["https://", "http://", "mailto:", "tel:", "www."] {
            s = strip_all(s, p);
        }
        s.trim_end_matches('/')
    }
    norm(shown).eq_ignore_ascii_case(norm(href))
}
