//! CSS that decides visibility: declaration parsing (cssparser), `<style>` sheets indexed by key, and typed values.
//!
//! Only the properties that can hide text are kept. Selector matching is in `select.rs`;
//! what is here is the rule index
//! (rules keyed by the id/class/tag of their rightmost compound, as browsers do),
//! specificity, and the caps that keep matching bounded on hostile input.

use std::borrow::Cow;

/// Fast, randomly seeded hasher (keys come from untrusted CSS and HTML).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use crate::select::Selector;
use cssparser::{
    AtRuleParser, CowRcStr, DeclarationParser, ParseError, Parser, ParserState,
    QualifiedRuleParser, RuleBodyItemParser, RuleBodyParser, StyleSheetParser, Token,
};

use crate::color::{ColorValue, Rgba, parse_color, parse_color_from};

/// Selectors kept from all `<style>` blocks together.
pub(crate) const MAX_RULES: usize = 4000;
/// Rules without an id/class/tag key (checked against every element).
const MAX_UNIVERSAL_RULES: usize = 64;
/// Rules filed under one id/class/tag key.
const MAX_BUCKET: usize = 200;
/// Nesting of `@media`/`@supports` blocks that is followed.
const MAX_AT_RULE_DEPTH: usize = 3;
/// Declarations kept from one block.
const MAX_DECLS_PER_BLOCK: usize = 128;
/// Bytes of one value that are parsed.
const MAX_VALUE_BYTES: usize = 2048;

/// A CSS length before resolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Len {
    Px(f32),
    Em(f32),
    Rem(f32),
    Percent(f32),
    Auto,
    Unknown,
}

impl Len {
    /// Resolves to pixels; percentages against `base`.
    pub fn px(self, font_px: f32, base: f32) -> Option<f32> {
        match self {
            Len::Px(v) => Some(v),
            Len::Em(v) => Some(v * font_px),
            Len::Rem(v) => Some(v * 16.0),
            Len::Percent(v) => Some(v / 100.0 * base),
            Len::Auto | Len::Unknown => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DisplayKind {
    None,
    Inline,
    /// Sized like a block but laid out inline (`inline-block`, table cells): no line breaks.
    InlineBlock,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    Static,
    Relative,
    Absolute,
    Fixed,
}

/// A typed value of one of the properties that matter for visibility.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Display(DisplayKind),
    /// `Some(true)` hidden, `Some(false)` visible.
    Visibility(bool),
    Opacity(f32),
    FontSize(Len),
    Color(ColorValue),
    TextFill(ColorValue),
    /// Background colour (if any) and whether an image paints it.
    Background(Option<Rgba>, bool),
    BackgroundColor(Rgba),
    BackgroundImage(bool),
    Position(Position),
    Left(Len),
    Top(Len),
    Right(Len),
    MarginLeft(Len),
    MarginTop(Len),
    TextIndent(Len),
    ClipZero(bool),
    ClipPathZero(bool),
    Height(Len),
    MaxHeight(Len),
    Width(Len),
    MaxWidth(Len),
    OverflowHidden(bool),
    TransformZero(bool),
    MsoHide(bool),
    WhiteSpacePre(bool),
    Content(String),
}

/// One declaration.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decl {
    pub val: Val,
    pub important: bool,
}

/// Parses a declaration list (`style` attribute or rule body).
pub(crate) fn parse_declarations(text: &str) -> Vec<Decl> {
    let mut parser = Parser::new(text);
    parse_decls_from(&mut parser)
}

fn parse_decls_from<'i>(parser: &mut Parser<'i>) -> Vec<Decl> {
    let mut out = Vec::new();
    let mut dp = DeclParser;
    for item in RuleBodyParser::new(parser, &mut dp) {
        if let Ok(Some(decls)) = item {
            out.extend(decls);
            if out.len() >= MAX_DECLS_PER_BLOCK {
                break;
            }
        }
    }
    out
}

struct DeclParser;

impl<'i> DeclarationParser<'i> for DeclParser {
    type Declaration = Option<Vec<Decl>>;
    type Error = ();

    fn parse_value(
        &mut self,
        name: CowRcStr<'i>,
        input: &mut Parser<'i>,
        _start: &ParserState,
    ) -> Result<Self::Declaration, ParseError<()>> {
        let name = name.to_ascii_lowercase();
        if !is_relevant_property(&name) {
            // The body parser skips to the next `;` itself.
            return Err(ParseError::custom(()));
        }
        let start = input.position();
        while input.next().is_ok() {}
        let raw = input.slice_from(start);
        let raw = crate::findings::truncate_bytes(raw, MAX_VALUE_BYTES);
        let (value, important) = split_important(raw);
        Ok(parse_property(&name, value).map(|vals| {
            vals.into_iter()
                .map(|val| Decl { val, important })
                .collect()
        }))
    }
}

impl<'i> AtRuleParser<'i> for DeclParser {
    type Prelude = ();
    type AtRule = Option<Vec<Decl>>;
    type Error = ();
}

impl<'i> QualifiedRuleParser<'i> for DeclParser {
    type Prelude = ();
    type QualifiedRule = Option<Vec<Decl>>;
    type Error = ();
}

impl<'i> RuleBodyItemParser<'i, Option<Vec<Decl>>, ()> for DeclParser {
    fn parse_declarations(&self) -> bool {
        true
    }
    fn parse_qualified(&self) -> bool {
        false
    }
}

fn split_important(raw: &str) -> (&str, bool) {
    let t = raw.trim_end();
    let lower_tail = t.len() >= 9 && t.is_char_boundary(t.len() - 9);
    if lower_tail && t[t.len() - 9..].eq_ignore_ascii_case("important") {
        let rest = t[..t.len() - 9].trim_end();
        if let Some(v) = rest.strip_suffix('!') {
            return (v, true);
        }
    }
    (raw, false)
}

fn is_relevant_property(name: &str) -> bool {
    matches!(
        name,
        "display"
            | "visibility"
            | "opacity"
            | "filter"
            | "font-size"
            | "font"
            | "color"
            | "-webkit-text-fill-color"
            | "background"
            | "background-color"
            | "background-image"
            | "position"
            | "left"
            | "top"
            | "right"
            | "margin-left"
            | "margin-top"
            | "margin"
            | "text-indent"
            | "clip"
            | "clip-path"
            | "height"
            | "max-height"
            | "width"
            | "max-width"
            | "overflow"
            | "overflow-x"
            | "overflow-y"
            | "transform"
            | "mso-hide"
            | "white-space"
            | "content"
    )
}

/// Maps one property to typed values; `None` for properties that cannot hide text.
fn parse_property(name: &str, value: &str) -> Option<Vec<Val>> {
    let one = |v: Option<Val>| v.map(|v| vec![v]);
    match name {
        "display" => one(first_ident(value).map(|i| {
            Val::Display(match i.as_str() {
                "none" => DisplayKind::None,
                "inline" | "contents" => DisplayKind::Inline,
                "inline-block" | "inline-table" | "inline-flex" | "inline-grid" | "table-cell" => {
                    DisplayKind::InlineBlock
                }
                _ => DisplayKind::Block,
            })
        })),
        "visibility" => one(first_ident(value).and_then(|i| match i.as_str() {
            "hidden" | "collapse" => Some(Val::Visibility(true)),
            "visible" => Some(Val::Visibility(false)),
            _ => None,
        })),
        "opacity" => one(parse_number_or_pct(value).map(Val::Opacity)),
        "filter" => one(parse_filter_opacity(value).map(Val::Opacity)),
        "font-size" => one(parse_font_size(value).map(Val::FontSize)),
        "font" => one(parse_font_shorthand(value).map(Val::FontSize)),
        "color" => one(parse_color(value).map(Val::Color)),
        "-webkit-text-fill-color" => one(parse_color(value).map(Val::TextFill)),
        "background" => one(Some(parse_background(value))),
        "background-color" => one(match parse_color(value) {
            Some(ColorValue::Rgba(c)) => Some(Val::BackgroundColor(c)),
            _ => None,
        }),
        "background-image" => one(Some(Val::BackgroundImage(
            first_ident(value).as_deref() != Some("none"),
        ))),
        "position" => one(first_ident(value).and_then(|i| {
            Some(Val::Position(match i.as_str() {
                "static" => Position::Static,
                "relative" | "sticky" => Position::Relative,
                "absolute" => Position::Absolute,
                "fixed" => Position::Fixed,
                _ => return None,
            }))
        })),
        "left" => one(Some(Val::Left(parse_len(value)))),
        "top" => one(Some(Val::Top(parse_len(value)))),
        "right" => one(Some(Val::Right(parse_len(value)))),
        "margin-left" => one(Some(Val::MarginLeft(parse_len(value)))),
        "margin-top" => one(Some(Val::MarginTop(parse_len(value)))),
        "margin" => {
            let lens = parse_lens(value);
            let top = lens.first().copied()?;
            let left = lens.get(3).or(lens.get(1)).copied().unwrap_or(top);
            Some(vec![Val::MarginTop(top), Val::MarginLeft(left)])
        }
        "text-indent" => one(Some(Val::TextIndent(parse_len(value)))),
        "clip" => one(Some(Val::ClipZero(parse_clip_zero(value)))),
        "clip-path" => one(Some(Val::ClipPathZero(parse_clip_path_zero(value)))),
        "height" => one(Some(Val::Height(parse_len(value)))),
        "max-height" => one(Some(Val::MaxHeight(parse_len(value)))),
        "width" => one(Some(Val::Width(parse_len(value)))),
        "max-width" => one(Some(Val::MaxWidth(parse_len(value)))),
        "overflow" | "overflow-x" | "overflow-y" => {
            let hidden = idents(value).iter().any(|i| i == "hidden" || i == "clip");
            one(Some(Val::OverflowHidden(hidden)))
        }
        "transform" => one(Some(Val::TransformZero(parse_transform_zero(value)))),
        "mso-hide" => one(Some(Val::MsoHide(
            first_ident(value).as_deref() == Some("all"),
        ))),
        "white-space" => one(first_ident(value).map(|i| {
            Val::WhiteSpacePre(matches!(
                i.as_str(),
                "pre" | "pre-wrap" | "pre-line" | "break-spaces"
            ))
        })),
        "content" => one(parse_content(value).map(Val::Content)),
        _ => None,
    }
}

fn with_parser<T>(value: &str, f: impl FnOnce(&mut Parser) -> T) -> T {
    let mut p = Parser::new(value);
    f(&mut p)
}

fn first_ident(value: &str) -> Option<String> {
    with_parser(value, |p| match p.next() {
        Ok(Token::Ident(i)) => Some(i.to_ascii_lowercase()),
        _ => None,
    })
}

fn idents(value: &str) -> Vec<String> {
    with_parser(value, |p| {
        let mut out = Vec::new();
        while let Ok(t) = p.next() {
            if let Token::Ident(i) = t {
                out.push(i.to_ascii_lowercase());
            }
            if out.len() > 8 {
                break;
            }
        }
        out
    })
}

fn parse_number_or_pct(value: &str) -> Option<f32> {
    with_parser(value, |p| match p.next() {
        Ok(Token::Number { value, .. }) => Some(value.clamp(0.0, 1.0)),
        Ok(Token::Percentage { unit_value, .. }) => Some(unit_value.clamp(0.0, 1.0)),
        _ => None,
    })
}

fn parse_filter_opacity(value: &str) -> Option<f32> {
    with_parser(value, |p| {
        while let Ok(t) = p.next() {
            if let Token::Function(name) = t
                && name.eq_ignore_ascii_case("opacity")
            {
                return p
                    .parse_nested_block(|p| {
                        Ok::<_, ParseError<()>>(match p.next() {
                            Ok(Token::Number { value, .. }) => Some(value.clamp(0.0, 1.0)),
                            Ok(Token::Percentage { unit_value, .. }) => {
                                Some(unit_value.clamp(0.0, 1.0))
                            }
                            _ => None,
                        })
                    })
                    .ok()
                    .flatten();
            }
        }
        None
    })
}

fn len_from_token(t: &Token) -> Option<Len> {
    Some(match t {
        Token::Number { value, .. } => Len::Px(*value),
        Token::Percentage { unit_value, .. } => Len::Percent(unit_value * 100.0),
        Token::Dimension { value, unit, .. } => {
            let v = *value;
            match unit.to_ascii_lowercase().as_str() {
                "px" => Len::Px(v),
                "pt" => Len::Px(v * 4.0 / 3.0),
                "pc" => Len::Px(v * 16.0),
                "in" => Len::Px(v * 96.0),
                "cm" => Len::Px(v * 96.0 / 2.54),
                "mm" => Len::Px(v * 96.0 / 25.4),
                "q" => Len::Px(v * 96.0 / 101.6),
                "em" => Len::Em(v),
                "ex" | "ch" => Len::Em(v * 0.5),
                "rem" => Len::Rem(v),
                "vw" => Len::Px(v * 10.24),
                "vh" | "vmin" => Len::Px(v * 7.68),
                "vmax" => Len::Px(v * 10.24),
                _ => Len::Unknown,
            }
        }
        Token::Ident(i) if i.eq_ignore_ascii_case("auto") => Len::Auto,
        _ => return None,
    })
}

pub(crate) fn parse_len(value: &str) -> Len {
    with_parser(value, |p| {
        p.next()
            .ok()
            .and_then(len_from_token)
            .unwrap_or(Len::Unknown)
    })
}

fn parse_lens(value: &str) -> Vec<Len> {
    with_parser(value, |p| {
        let mut out = Vec::new();
        while let Ok(t) = p.next() {
            out.push(len_from_token(t).unwrap_or(Len::Unknown));
            if out.len() >= 4 {
                break;
            }
        }
        out
    })
}

fn font_size_keyword(i: &str) -> Option<Len> {
    Some(match i {
        "xx-small" => Len::Px(9.0),
        "x-small" => Len::Px(10.0),
        "small" => Len::Px(13.0),
        "medium" => Len::Px(16.0),
        "large" => Len::Px(18.0),
        "x-large" => Len::Px(24.0),
        "xx-large" => Len::Px(32.0),
        "xxx-large" => Len::Px(48.0),
        "smaller" => Len::Em(0.83),
        "larger" => Len::Em(1.2),
        _ => return None,
    })
}

fn parse_font_size(value: &str) -> Option<Len> {
    with_parser(value, |p| match p.next() {
        Ok(Token::Ident(i)) => font_size_keyword(&i.to_ascii_lowercase()),
        Ok(t) => len_from_token(t).filter(|l| !matches!(l, Len::Auto | Len::Unknown)),
        Err(_) => None,
    })
}

/// `font: [style] [weight] SIZE[/line-height] family` — the first length is the size.
fn parse_font_shorthand(value: &str) -> Option<Len> {
    with_parser(value, |p| {
        let mut n = 0;
        while let Ok(t) = p.next() {
            n += 1;
            if n > 8 {
                break;
            }
            match t {
                Token::Ident(i) => {
                    if let Some(l) = font_size_keyword(&i.to_ascii_lowercase()) {
                        return Some(l);
                    }
                }
                // A bare number is a weight (`bold` = 700) unless it is 0.
                Token::Number { value, .. } if *value != 0.0 => {}
                Token::Delim('/') | Token::Comma => return None,
                t => {
                    if let Some(l) = len_from_token(t) {
                        return Some(l);
                    }
                }
            }
        }
        None
    })
}

fn parse_background(value: &str) -> Val {
    with_parser(value, |p| {
        let mut color = None;
        let mut image = false;
        let mut n = 0;
        loop {
            n += 1;
            if n > 32 {
                break;
            }
            let state = p.state();
            let Ok(t) = p.next() else { break };
            match t {
                Token::UnquotedUrl(_) => image = true,
                Token::Function(name) => {
                    let name = name.to_ascii_lowercase();
                    if name == "url" || name.contains("gradient") || name == "image-set" {
                        image = true;
                    } else if matches!(name.as_str(), "rgb" | "rgba" | "hsl" | "hsla") {
                        p.reset(&state);
                        if let Some(ColorValue::Rgba(c)) = parse_color_from(p) {
                            color = Some(c);
                        }
                    }
                }
                Token::Hash(_) | Token::IDHash(_) | Token::Ident(_) => {
                    p.reset(&state);
                    if let Some(ColorValue::Rgba(c)) = parse_color_from(p) {
                        color = Some(c);
                    }
                }
                _ => {}
            }
        }
        Val::Background(color, image)
    })
}

/// `clip: rect(t, r, b, l)` that leaves (almost) no area.
fn parse_clip_zero(value: &str) -> bool {
    with_parser(value, |p| {
        let Ok(Token::Function(name)) = p.next() else {
            return false;
        };
        if !name.eq_ignore_ascii_case("rect") {
            return false;
        }
        p.parse_nested_block(|p| {
            let mut v = Vec::new();
            while let Ok(t) = p.next() {
                if let Some(l) = len_from_token(t) {
                    v.push(l.px(16.0, 0.0).unwrap_or(f32::NAN));
                }
                if v.len() >= 4 {
                    break;
                }
            }
            let zero = v.len() == 4 && (v[2] - v[0] <= 1.0 || v[1] - v[3] <= 1.0);
            Ok::<_, ParseError<()>>(zero)
        })
        .unwrap_or(false)
    })
}

/// `clip-path: inset(50%)`, `circle(0)`, `polygon(0 0)` and the like.
fn parse_clip_path_zero(value: &str) -> bool {
    with_parser(value, |p| {
        let Ok(Token::Function(name)) = p.next() else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        p.parse_nested_block(|p| {
            let mut nums = Vec::new();
            while let Ok(t) = p.next() {
                match t {
                    Token::Percentage { unit_value, .. } => nums.push(unit_value * 100.0),
                    Token::Number { value, .. } => nums.push(*value),
                    Token::Dimension { value, .. } => nums.push(*value * 1000.0),
                    _ => {}
                }
                if nums.len() > 16 {
                    break;
                }
            }
            let zero = match name.as_str() {
                "inset" => nums.first().is_some_and(|&v| v >= 50.0),
                "circle" | "ellipse" => nums.first().is_some_and(|&v| v <= 0.0),
                "polygon" => nums.len() <= 2 || nums.iter().all(|&v| v == 0.0),
                _ => false,
            };
            Ok::<_, ParseError<()>>(zero)
        })
        .unwrap_or(false)
    })
}

/// `transform: scale(0)` and friends collapse the box to nothing.
fn parse_transform_zero(value: &str) -> bool {
    with_parser(value, |p| {
        let mut n = 0;
        while let Ok(t) = p.next() {
            n += 1;
            if n > 16 {
                break;
            }
            let Token::Function(name) = t else { continue };
            let name = name.to_ascii_lowercase();
            if !name.starts_with("scale") && name != "matrix" {
                continue;
            }
            let zero = p
                .parse_nested_block(|p| {
                    let mut nums = Vec::new();
                    while let Ok(t) = p.next() {
                        match t {
                            Token::Number { value, .. } => nums.push(*value),
                            Token::Percentage { unit_value, .. } => nums.push(*unit_value),
                            _ => {}
                        }
                        if nums.len() > 16 {
                            break;
                        }
                    }
                    let z = |v: f32| v.abs() < 0.01;
                    let zero = if name == "matrix" {
                        nums.len() >= 4 && z(nums[0]) && z(nums[3])
                            || nums.len() >= 4 && z(nums[0]) && z(nums[1])
                            || nums.len() >= 4 && z(nums[2]) && z(nums[3])
                    } else {
                        nums.iter().any(|&v| z(v))
                    };
                    Ok::<_, ParseError<()>>(zero)
                })
                .unwrap_or(false);
            if zero {
                return true;
            }
        }
        false
    })
}

fn parse_content(value: &str) -> Option<String> {
    with_parser(value, |p| {
        let mut out = String::new();
        while let Ok(t) = p.next() {
            match t {
                Token::QuotedString(s) => out.push_str(s),
                Token::Function(f) if f.eq_ignore_ascii_case("attr") => out.push_str("[attr]"),
                _ => {}
            }
            if out.len() > 4096 {
                break;
            }
        }
        (!out.trim().is_empty()).then_some(out)
    })
}

/// One selector of a `<style>` rule.
pub(crate) struct Rule {
    pub selector: Selector,
    pub specificity: u32,
    pub order: u32,
    /// Index into [`Sheet::blocks`].
    pub block: usize,
    /// Keys (see [`key_hash`]) that some ancestor must carry for the rule to match; lets the
    /// walker reject most candidates without running the matcher (browsers use a bloom filter).
    pub ancestors: Vec<u64>,
}

/// Hash of a tag (`b't'`), class (`b'c'`) or id (`b'i'`) name, ASCII-lowercased.
pub(crate) fn key_hash(kind: u8, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(kind);
    for b in name.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Ancestor requirements of a selector with only descendant/child combinators.
/// `kinds` records which kinds of key (tag, id, class) were produced.
fn ancestor_keys(sel: &str, kinds: &mut [bool; 3]) -> Vec<u64> {
    let mut compounds: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut depth = 0i32;
    for c in sel.chars() {
        match c {
            '(' | '[' => {
                depth += 1;
                continue;
            }
            ')' | ']' => {
                depth -= 1;
                continue;
            }
            _ if depth > 0 => continue,
            '+' | '~' => return Vec::new(),
            ' ' | '>' | '\t' | '\n' => {
                if !cur.is_empty() {
                    compounds.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    let mut keys = Vec::new();
    // The last compound is the element itself; the others must be ancestors.
    for comp in compounds.iter() {
        let tag = ident_at(comp);
        if !tag.is_empty() {
            keys.push(key_hash(b't', tag));
            kinds[0] = true;
        }
        for (i, ch) in comp.char_indices() {
            let (kind, k) = match ch {
                '#' => (b'i', 1),
                '.' => (b'c', 2),
                _ => continue,
            };
            let name = ident_at(&comp[i + ch.len_utf8()..]);
            if !name.is_empty() {
                keys.push(key_hash(kind, name));
                kinds[k] = true;
            }
        }
        if keys.len() >= 6 {
            break;
        }
    }
    keys
}

/// Where a rule is filed: by the rightmost compound's id, else class, else tag.
enum Key {
    Id(String),
    Class(String),
    Tag(String),
    Universal,
}

/// ASCII-lowercased, borrowed when already lowercase (the usual case).
fn lower(s: &str) -> Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(s.to_ascii_lowercase())
    } else {
        Cow::Borrowed(s)
    }
}

/// Rule buckets by key: a short list searched by comparing strings while there are at most
/// [`SMALL_BUCKETS`] keys (sheets file rules under a handful of tag names, and every element
/// looks its own up: comparing a few short strings beats hashing), a hash map past that.
#[derive(Default)]
struct SmallBuckets {
    small: Vec<(String, Vec<usize>)>,
    large: HashMap<String, Vec<usize>>,
}

const SMALL_BUCKETS: usize = 16;

impl SmallBuckets {
    fn is_empty(&self) -> bool {
        self.small.is_empty() && self.large.is_empty()
    }

    fn get(&self, key: &str) -> Option<&Vec<usize>> {
        if self.large.is_empty() {
            self.small.iter().find(|(k, _)| k == key).map(|(_, v)| v)
        } else {
            self.large.get(key)
        }
    }

    fn entry(&mut self, key: String) -> &mut Vec<usize> {
        if self.large.is_empty() {
            if let Some(i) = self.small.iter().position(|(k, _)| *k == key) {
                return &mut self.small[i].1;
            }
            if self.small.len() < SMALL_BUCKETS {
                self.small.push((key, Vec::new()));
                let last = self.small.len() - 1;
                return &mut self.small[last].1;
            }
            self.large.extend(self.small.drain(..));
        }
        self.large.entry(key).or_default()
    }
}

/// All `<style>` rules of a document, indexed for bounded matching.
#[derive(Default)]
pub(crate) struct Sheet {
    pub rules: Vec<Rule>,
    pub blocks: Vec<Vec<Decl>>,
    by_id: HashMap<String, Vec<usize>>,
    by_class: HashMap<String, Vec<usize>>,
    by_tag: SmallBuckets,
    universal: Vec<usize>,
    /// `content:` strings of `::before`/`::after` rules, with their selector.
    pub generated: Vec<(String, String)>,
    /// Rules dropped because a cap was hit.
    pub dropped: usize,
    /// Selectors that did not parse (unsupported pseudo-classes etc.).
    pub unsupported: usize,
    /// Whether some rule's ancestor keys include tag, id, class keys (in that order).
    ancestor_kinds: [bool; 3],
}

impl Sheet {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether some rule requires an ancestor tag, id, class key (see [`key_hash`]).
    pub fn ancestor_kinds(&self) -> (bool, bool, bool) {
        let [t, i, c] = self.ancestor_kinds;
        (t, i, c)
    }

    /// Adds every rule of one `<style>` block.
    pub fn add_stylesheet(&mut self, css: &str) {
        let mut parser = Parser::new(css);
        parse_rules(&mut parser, self, 0);
    }

    /// Candidate rules for an element (a superset of the matching ones).
    pub fn candidates(&self, tag: &str, id: Option<&str>, classes: &[&str], out: &mut Vec<usize>) {
        out.clear();
        // Buckets that contributed: with one, the list is already sorted and distinct.
        let mut sources = 0;
        if let Some(id) = id
            && !self.by_id.is_empty()
            && let Some(v) = self.by_id.get(lower(id).as_ref())
        {
            out.extend_from_slice(v);
            sources += 1;
        }
        if !self.by_class.is_empty() {
            for c in classes.iter().take(16) {
                if let Some(v) = self.by_class.get(lower(c).as_ref()) {
                    out.extend_from_slice(v);
                    sources += 1;
                }
            }
        }
        if !self.by_tag.is_empty()
            && let Some(v) = self.by_tag.get(tag)
        {
            out.extend_from_slice(v);
            sources += 1;
        }
        if !self.universal.is_empty() {
            out.extend_from_slice(&self.universal);
            sources += 1;
        }
        if sources > 1 {
            out.sort_unstable();
            out.dedup();
        }
    }

    fn add_rule(&mut self, prelude: &str, decls: Vec<Decl>) {
        let block = self.blocks.len();
        let mut used = false;
        for sel in split_top_level(prelude, ',') {
            let sel = sel.trim();
            if sel.is_empty() {
                continue;
            }
            if let Some(base) = strip_pseudo_element(sel) {
                for d in &decls {
                    if let Val::Content(c) = &d.val
                        && self.generated.len() < 256
                    {
                        self.generated.push((sel.to_string(), c.clone()));
                    }
                }
                let _ = base;
                continue;
            }
            if self.rules.len() >= MAX_RULES {
                self.dropped += 1;
                continue;
            }
            let Some(selector) = Selector::parse(sel) else {
                self.unsupported += 1;
                continue;
            };
            let key = rule_key(sel);
            let idx = self.rules.len();
            let (bucket, cap) = match key {
                Key::Id(k) => (self.by_id.entry(k).or_default(), MAX_BUCKET),
                Key::Class(k) => (self.by_class.entry(k).or_default(), MAX_BUCKET),
                Key::Tag(k) => (self.by_tag.entry(k), MAX_BUCKET),
                Key::Universal => (&mut self.universal, MAX_UNIVERSAL_RULES),
            };
            if bucket.len() >= cap {
                self.dropped += 1;
                continue;
            }
            bucket.push(idx);
            self.rules.push(Rule {
                selector,
                specificity: specificity(sel),
                order: idx as u32,
                block,
                ancestors: ancestor_keys(sel, &mut self.ancestor_kinds),
            });
            used = true;
        }
        if used {
            self.blocks.push(decls);
        }
    }
}

fn parse_rules<'i>(parser: &mut Parser<'i>, sheet: &mut Sheet, depth: usize) {
    let mut rp = RuleParser { sheet, depth };
    let iter = StyleSheetParser::new(parser, &mut rp);
    for _ in iter {}
}

struct RuleParser<'s> {
    sheet: &'s mut Sheet,
    depth: usize,
}

enum AtPrelude {
    Nested,
}

impl<'i> AtRuleParser<'i> for RuleParser<'_> {
    type Prelude = AtPrelude;
    type AtRule = ();
    type Error = ();

    fn parse_prelude(
        &mut self,
        name: CowRcStr<'i>,
        input: &mut Parser<'i>,
    ) -> Result<AtPrelude, ParseError<()>> {
        let start = input.position();
        while input.next().is_ok() {}
        let prelude = input.slice_from(start);
        let name = name.to_ascii_lowercase();
        let applies = match name.as_str() {
            "media" => media_applies(prelude),
            "supports" | "document" | "-moz-document" | "layer" | "container" => true,
            _ => false,
        };
        if applies && self.depth < MAX_AT_RULE_DEPTH {
            Ok(AtPrelude::Nested)
        } else {
            Err(ParseError::custom(()))
        }
    }

    fn parse_block(
        &mut self,
        _prelude: AtPrelude,
        _start: &ParserState,
        input: &mut Parser<'i>,
    ) -> Result<(), ParseError<()>> {
        parse_rules(input, self.sheet, self.depth + 1);
        Ok(())
    }
}

impl<'i> QualifiedRuleParser<'i> for RuleParser<'_> {
    type Prelude = String;
    type QualifiedRule = ();
    type Error = ();

    fn parse_prelude(&mut self, input: &mut Parser<'i>) -> Result<String, ParseError<()>> {
        let start = input.position();
        while input.next().is_ok() {}
        let text = input.slice_from(start);
        if text.len() > 4096 {
            return Err(ParseError::custom(()));
        }
        Ok(text.to_string())
    }

    fn parse_block(
        &mut self,
        prelude: String,
        _start: &ParserState,
        input: &mut Parser<'i>,
    ) -> Result<(), ParseError<()>> {
        if self.sheet.rules.len() >= MAX_RULES {
            self.sheet.dropped += 1;
            return Ok(());
        }
        let decls = parse_decls_from(input);
        if !decls.is_empty() {
            self.sheet.add_rule(&prelude, decls);
        }
        Ok(())
    }
}

/// Evaluates a media query list for a desktop client in light mode (1024px wide).
/// Unknown features count as matching: a rule that hides text must not be ignored
/// just because we do not understand its condition.
pub(crate) fn media_applies(prelude: &str) -> bool {
    let lower = prelude.to_ascii_lowercase();
    if lower.trim().is_empty() {
        return true;
    }
    split_top_level(&lower, ',').iter().any(|q| {
        let q = q.trim();
        let (negated, q) = match q.strip_prefix("not ") {
            Some(rest) => (true, rest),
            None => (false, q),
        };
        let media_type_ok = {
            let head = q.split('(').next().unwrap_or("");
            let words: Vec<&str> = head
                .split_whitespace()
                .filter(|w| *w != "only" && *w != "and")
                .collect();
            words.iter().all(|w| matches!(*w, "screen" | "all" | "and"))
        };
        let features_ok = q.split('(').skip(1).all(|f| {
            let f = f.split(')').next().unwrap_or("");
            let mut kv = f.splitn(2, ':');
            let k = kv.next().unwrap_or("").trim();
            let v = kv.next().unwrap_or("").trim();
            let px = || match parse_len(v) {
                Len::Px(p) => Some(p),
                Len::Em(e) | Len::Rem(e) => Some(e * 16.0),
                _ => None,
            };
            match k {
                "max-width" | "max-device-width" => px().is_none_or(|p| 1024.0 <= p),
                "min-width" | "min-device-width" => px().is_none_or(|p| 1024.0 >= p),
                "prefers-color-scheme" => v != "dark",
                "orientation" => v != "portrait",
                _ => true,
            }
        });
        (media_type_ok && features_ok) != negated
    })
}

/// Splits on `sep` outside brackets, parentheses and quotes.
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut quote: Option<char> = None;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                c if c == sep && depth <= 0 => {
                    out.push(&s[start..i]);
                    start = i + c.len_utf8();
                }
                _ => {}
            },
        }
    }
    out.push(&s[start..]);
    out
}

/// If `sel` targets `::before`/`::after` (or another pseudo-element), the part before it.
fn strip_pseudo_element(sel: &str) -> Option<&str> {
    let lower = sel.to_ascii_lowercase();
    for pat in [
        "::before",
        "::after",
        ":before",
        ":after",
        "::marker",
        "::placeholder",
    ] {
        if let Some(pos) = lower.find(pat) {
            return Some(&sel[..pos]);
        }
    }
    None
}

/// The rightmost compound selector (after the last combinator).
fn rightmost_compound(sel: &str) -> &str {
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in sel.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ' ' | '>' | '+' | '~' | '\t' | '\n' if depth <= 0 => start = i + 1,
            _ => {}
        }
    }
    &sel[start..]
}

fn ident_at(s: &str) -> &str {
    let end = s
        .char_indices()
        .find(|&(_, c)| !(c.is_alphanumeric() || c == '-' || c == '_' || !c.is_ascii()))
        .map(|(i, _)| i)
        .unwrap_or(s.len());
    &s[..end]
}

fn rule_key(sel: &str) -> Key {
    let comp = rightmost_compound(sel);
    // Ignore anything inside brackets/parentheses when looking for keys.
    let mut plain = String::with_capacity(comp.len());
    let mut depth = 0i32;
    for c in comp.chars() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            c if depth <= 0 => plain.push(c),
            _ => {}
        }
    }
    if let Some(pos) = plain.find('#') {
        let id = ident_at(&plain[pos + 1..]);
        if !id.is_empty() {
            return Key::Id(id.to_ascii_lowercase());
        }
    }
    if let Some(pos) = plain.find('.') {
        let class = ident_at(&plain[pos + 1..]);
        if !class.is_empty() {
            return Key::Class(class.to_ascii_lowercase());
        }
    }
    let tag = ident_at(&plain);
    if !tag.is_empty() {
        return Key::Tag(tag.to_ascii_lowercase());
    }
    Key::Universal
}

/// Specificity as `ids*10000 + classes*100 + types`, counted on the selector text.
fn specificity(sel: &str) -> u32 {
    let (mut a, mut b, mut c) = (0u32, 0u32, 0u32);
    let bytes = sel.as_bytes();
    let mut i = 0;
    let mut at_compound_start = true;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                a += 1;
                at_compound_start = false;
            }
            b'.' => {
                b += 1;
                at_compound_start = false;
            }
            b'[' => {
                b += 1;
                while i < bytes.len() && bytes[i] != b']' {
                    i += 1;
                }
                at_compound_start = false;
            }
            b':' => {
                if bytes.get(i + 1) == Some(&b':') {
                    c += 1;
                    i += 1;
                } else {
                    b += 1;
                }
                at_compound_start = false;
            }
            b' ' | b'>' | b'+' | b'~' => at_compound_start = true,
            b'(' | b')' | b'*' | b',' => at_compound_start = false,
            ch if at_compound_start && (ch.is_ascii_alphabetic()) => {
                c += 1;
                at_compound_start = false;
            }
            _ => {}
        }
        // Skip the rest of an identifier so its letters are not re-counted.
        if i < bytes.len() && matches!(bytes[i], b'#' | b'.' | b':') {
            i += 1;
            while i < bytes.len()
                && (bytes[i].is_ascii_alphanumeric() || matches!(bytes[i], b'-' | b'_'))
            {
                i += 1;
            }
            continue;
        }
        i += 1;
    }
    a.min(99) * 10000 + b.min(99) * 100 + c.min(99)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_buckets_keep_their_rules_past_the_switch_to_a_map() {
        let mut b = SmallBuckets::default();
        for i in 0..3 * SMALL_BUCKETS {
            b.entry(format!("t{}", i % (2 * SMALL_BUCKETS))).push(i);
        }
        for k in 0..2 * SMALL_BUCKETS {
            let want: Vec<usize> = (0..3 * SMALL_BUCKETS)
                .filter(|i| i % (2 * SMALL_BUCKETS) == k)
                .collect();
            assert_eq!(b.get(&format!("t{k}")), Some(&want));
        }
        assert_eq!(b.get("t99"), None);
    }

    #[test]
    fn declarations_with_important() {
        let d = parse_declarations("display: none !important; color: #FFF; foo: bar");
        assert_eq!(d.len(), 2);
        assert_eq!(d[0].val, Val::Display(DisplayKind::None));
        assert!(d[0].important);
        assert!(!d[1].important);
    }

    #[test]
    fn media_queries() {
        assert!(media_applies("screen"));
        assert!(!media_applies("only screen and (max-width: 600px)"));
        assert!(media_applies("screen and (min-width: 600px)"));
        assert!(!media_applies("(prefers-color-scheme: dark)"));
        assert!(!media_applies("print"));
    }

    #[test]
    fn keys_and_specificity() {
        assert!(matches!(rule_key("div .a > span.b"), Key::Class(c) if c == "b"));
        assert!(matches!(rule_key("#x"), Key::Id(c) if c == "x"));
        assert!(matches!(rule_key("p"), Key::Tag(c) if c == "p"));
        assert!(matches!(rule_key("[hidden]"), Key::Universal));
        assert_eq!(specificity("#a .b p"), 10101);
        assert_eq!(specificity("div.x"), 101);
    }

    #[test]
    fn sheet_parses_media_and_pseudo() {
        let mut s = Sheet::default();
        s.add_stylesheet(
            ".a{display:none} @media screen { .b{color:red} } @media print { .c{color:red} } p::after{content:'ignore all'}",
        );
        assert_eq!(s.rules.len(), 2);
        assert_eq!(s.generated.len(), 1);
    }

    #[test]
    fn values() {
        assert!(parse_clip_zero("rect(0 0 0 0)"));
        assert!(parse_clip_zero("rect(1px, 1px, 1px, 1px)"));
        assert!(!parse_clip_zero("auto"));
        assert!(parse_clip_path_zero("inset(50%)"));
        assert!(parse_transform_zero("scale(0)"));
        assert!(!parse_transform_zero("scale(1.1)"));
        assert_eq!(parse_font_shorthand("0/0 a"), Some(Len::Px(0.0)));
        assert_eq!(parse_font_shorthand("bold 12px Arial"), Some(Len::Px(12.0)));
    }
}
