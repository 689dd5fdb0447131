//! CSS selector parsing and matching against [`Dom`].
//!
//! Hand-written because the tree is (see `sink.rs`); it accepts what scraper's
//! `Selector::parse` (the `selectors` crate, no namespaces, no non-tree-structural
//! pseudo-classes) accepted, and matches with the same semantics: type, `*`, `#id` and
//! `.class` (case-sensitive, as in no-quirks mode), attribute selectors with every operator and
//! the `i`/`s` flags (HTML's case-insensitive attribute list included), the descendant,
//! child, `+` and `~` combinators, `:first-child`/`:last-child`/`:only-child`, the `-of-type`
//! variants, `:nth-child()` and friends (`an+b`), `:root`, `:empty`, `:scope`, `:not()`,
//! `:is()`/`:where()` (forgiving lists) and `:has()`.
//!
//! Complex selectors are matched right to left with the `selectors` crate's early-exit
//! rules (restart from the closest sibling/descendant combinator or fail globally), so a
//! long chain of descendant combinators costs time linear in the tree depth rather than
//! exponential.

use std::cell::Cell;

use cssparser::{ParseError, Parser, Token};
use html5ever::{LocalName, local_name};

use crate::sink::{Data, Dom, Element, NodeId};

/// Nesting of `:not()`/`:is()`/`:where()`/`:has()` accepted (keeps recursion shallow).
const MAX_NESTING: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Comb {
    Descendant,
    Child,
    Next,
    Subsequent,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Equal,
    Includes,
    Dash,
    Prefix,
    Suffix,
    Substring,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Case {
    Sensitive,
    Insensitive,
    /// Insensitive on HTML elements (attributes HTML lists as case-insensitive).
    HtmlInsensitive,
}

#[derive(Debug)]
enum Simple {
    /// Type selector: as written, and ASCII-lowercased (compared on HTML elements); interned,
    /// so matching compares atoms instead of strings.
    Tag(LocalName, LocalName),
    Id(String),
    Class(String),
    Attr {
        name: String,
        lower: String,
        op: Option<(Op, String, Case)>,
    },
    Nth {
        a: i32,
        b: i32,
        of_type: bool,
        from_end: bool,
    },
    Root,
    Empty,
    Scope,
    Not(Vec<Complex>),
    Is(Vec<Complex>),
    Has(Vec<Complex>),
}

/// A complex selector stored right to left: `parts[0]` is the subject's compound, and
/// `parts[i].1` is the combinator between `parts[i]` and `parts[i + 1]`.
#[derive(Debug)]
struct Complex {
    parts: Vec<(Vec<Simple>, Comb)>,
    /// For `:has()` arguments: how the leftmost compound relates to the anchor element.
    leading: Option<Comb>,
}

/// A parsed selector list.
#[derive(Debug)]
pub(crate) struct Selector(Vec<Complex>);

type PResult<T> = Result<T, ParseError<()>>;

fn fail<T>(_input: &Parser) -> PResult<T> {
    Err(ParseError::custom(()))
}

impl Selector {
    /// Parses a selector list; `None` when it is invalid or uses something unsupported.
    pub fn parse(text: &str) -> Option<Selector> {
        let mut input = Parser::new(text);
        let list = input.parse_entirely(|i| parse_list(i, 0, false)).ok()?;
        Some(Selector(list))
    }

    /// True if element `el` of `dom` matches. `has_budget` bounds the nodes `:has()` may
    /// visit in this document; once spent, `:has()` stops matching.
    pub fn matches(&self, dom: &Dom, el: NodeId, has_budget: &Cell<usize>) -> bool {
        let cx = Cx { dom, has_budget };
        self.0.iter().any(|c| cx.complex(c, el, None))
    }
}

fn parse_list<'i>(input: &mut Parser<'i>, depth: usize, relative: bool) -> PResult<Vec<Complex>> {
    input.parse_comma_separated(|i| parse_complex(i, depth, relative))
}

/// A forgiving list (`:is()`/`:where()`): invalid entries are dropped.
fn parse_forgiving<'i>(input: &mut Parser<'i>, depth: usize) -> PResult<Vec<Complex>> {
    let mut out = Vec::new();
    loop {
        let r = input.parse_until_before(cssparser::Delimiter::Comma, |i| {
            i.parse_entirely(|i| parse_complex(i, depth, false))
        });
        if let Ok(c) = r {
            out.push(c);
        }
        match input.next() {
            Ok(Token::Comma) => continue,
            Ok(_) => return fail(input),
            Err(_) => return Ok(out),
        }
    }
}

fn parse_complex<'i>(input: &mut Parser<'i>, depth: usize, relative: bool) -> PResult<Complex> {
    input.skip_whitespace();
    let leading = if relative {
        let state = input.state();
        Some(match input.next() {
            Ok(Token::Delim('>')) => Comb::Child,
            Ok(Token::Delim('+')) => Comb::Next,
            Ok(Token::Delim('~')) => Comb::Subsequent,
            _ => {
                input.reset(&state);
                Comb::Descendant
            }
        })
    } else {
        None
    };
    // Parsed left to right, reversed at the end.
    let mut parts: Vec<(Vec<Simple>, Comb)> = Vec::new();
    loop {
        input.skip_whitespace();
        let compound = parse_compound(input, depth)?;
        let mut comb = None;
        let mut saw_space = false;
        loop {
            let state = input.state();
            match input.next_including_whitespace() {
                Err(_) => break,
                Ok(Token::WhiteSpace(_)) => saw_space = true,
                Ok(Token::Delim('>')) => {
                    comb = Some(Comb::Child);
                    break;
                }
                Ok(Token::Delim('+')) => {
                    comb = Some(Comb::Next);
                    break;
                }
                Ok(Token::Delim('~')) => {
                    comb = Some(Comb::Subsequent);
                    break;
                }
                Ok(_) => {
                    input.reset(&state);
                    if saw_space {
                        comb = Some(Comb::Descendant);
                        break;
                    }
                    return fail(input);
                }
            }
        }
        match comb {
            // The combinator belongs between this compound and the next (to its right);
            // stored on the left compound for now and shifted when reversing.
            Some(c) => parts.push((compound, c)),
            None => {
                parts.push((compound, Comb::Descendant));
                break;
            }
        }
    }
    // Reverse so the subject comes first, and move each combinator to the compound on its
    // right (the one matched before following it leftwards).
    let combs: Vec<Comb> = parts.iter().map(|p| p.1).collect();
    parts.reverse();
    let n = parts.len();
    for (i, p) in parts.iter_mut().enumerate() {
        // parts[i] (right to left) was originally at n-1-i; the combinator to its left was
        // stored on the original n-2-i.
        p.1 = if i + 1 < n {
            combs[n - 2 - i]
        } else {
            Comb::Descendant
        };
    }
    Ok(Complex { parts, leading })
}

fn parse_compound<'i>(input: &mut Parser<'i>, depth: usize) -> PResult<Vec<Simple>> {
    let mut out = Vec::new();
    let mut first = true;
    let mut universal = false;
    loop {
        let state = input.state();
        let tok = match input.next_including_whitespace() {
            Ok(t) => t.clone(),
            Err(_) => break,
        };
        match tok {
            Token::Ident(name) if first => out.push(Simple::Tag(
                LocalName::from(name.as_ref()),
                LocalName::from(name.to_ascii_lowercase()),
            )),
            Token::Delim('*') if first => universal = true,
            Token::Delim('|') => return fail(input), // namespaces are not supported
            Token::IDHash(id) => out.push(Simple::Id(id.to_string())),
            Token::Delim('.') => match input.next_including_whitespace() {
                Ok(Token::Ident(c)) => out.push(Simple::Class(c.to_string())),
                _ => return fail(input),
            },
            Token::SquareBracketBlock => {
                let a = input.parse_nested_block(parse_attr)?;
                out.push(a);
            }
            Token::Colon => {
                let next = input.next_including_whitespace()?.clone();
                match next {
                    Token::Ident(name) => out.push(pseudo_class(input, &name)?),
                    Token::Function(name) => {
                        if depth >= MAX_NESTING {
                            return fail(input);
                        }
                        let name = name.to_ascii_lowercase();
                        let s =
                            input.parse_nested_block(|i| pseudo_function(i, &name, depth + 1))?;
                        out.push(s);
                    }
                    _ => return fail(input), // pseudo-elements and the rest
                }
            }
            _ => {
                input.reset(&state);
                break;
            }
        }
        first = false;
    }
    if out.is_empty() && !universal {
        return fail(input);
    }
    // A `|` right after the type selector would be a namespace prefix.
    let state = input.state();
    if let Ok(Token::Delim('|')) = input.next_including_whitespace() {
        return fail(input);
    }
    input.reset(&state);
    Ok(out)
}

fn pseudo_class<'i>(input: &Parser<'i>, name: &str) -> PResult<Simple> {
    let nth = |a, b, of_type, from_end| Simple::Nth {
        a,
        b,
        of_type,
        from_end,
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "first-child" => nth(0, 1, false, false),
        "last-child" => nth(0, 1, false, true),
        "only-child" => Simple::Is(vec![only(false)]),
        "first-of-type" => nth(0, 1, true, false),
        "last-of-type" => nth(0, 1, true, true),
        "only-of-type" => Simple::Is(vec![only(true)]),
        "root" => Simple::Root,
        "empty" => Simple::Empty,
        "scope" => Simple::Scope,
        _ => return fail(input),
    })
}

/// `:only-child` / `:only-of-type` as "first and last".
fn only(of_type: bool) -> Complex {
    let nth = |from_end| Simple::Nth {
        a: 0,
        b: 1,
        of_type,
        from_end,
    };
    Complex {
        parts: vec![(vec![nth(false), nth(true)], Comb::Descendant)],
        leading: None,
    }
}

fn pseudo_function<'i>(input: &mut Parser<'i>, name: &str, depth: usize) -> PResult<Simple> {
    let (of_type, from_end) = match name {
        "nth-child" => (false, false),
        "nth-last-child" => (false, true),
        "nth-of-type" => (true, false),
        "nth-last-of-type" => (true, true),
        "not" => return Ok(Simple::Not(parse_list(input, depth, false)?)),
        "is" | "where" => return Ok(Simple::Is(parse_forgiving(input, depth)?)),
        "has" => {
            let list = parse_list(input, depth, true)?;
            if list.iter().any(contains_has) {
                return fail(input); // `:has()` does not nest
            }
            return Ok(Simple::Has(list));
        }
        _ => return fail(input),
    };
    let (a, b) = cssparser::parse_nth(input)?;
    input.expect_exhausted()?;
    Ok(Simple::Nth {
        a,
        b,
        of_type,
        from_end,
    })
}

fn contains_has(c: &Complex) -> bool {
    c.parts.iter().flat_map(|p| p.0.iter()).any(|s| match s {
        Simple::Has(_) => true,
        Simple::Not(l) | Simple::Is(l) => l.iter().any(contains_has),
        _ => false,
    })
}

fn parse_attr<'i>(input: &mut Parser<'i>) -> PResult<Simple> {
    input.skip_whitespace();
    let name = match input.next()? {
        Token::Ident(n) => n.to_string(),
        _ => return fail(input),
    };
    // `[ns|attr]`: namespaces are not supported.
    let state = input.state();
    if let Ok(Token::Delim('|')) = input.next_including_whitespace() {
        return fail(input);
    }
    input.reset(&state);
    let lower = name.to_ascii_lowercase();
    let op = match input.next() {
        Err(_) => {
            return Ok(Simple::Attr {
                name,
                lower,
                op: None,
            });
        }
        Ok(Token::Delim('=')) => Op::Equal,
        Ok(Token::IncludeMatch) => Op::Includes,
        Ok(Token::DashMatch) => Op::Dash,
        Ok(Token::PrefixMatch) => Op::Prefix,
        Ok(Token::SuffixMatch) => Op::Suffix,
        Ok(Token::SubstringMatch) => Op::Substring,
        Ok(_) => return fail(input),
    };
    let value = input.expect_ident_or_string()?.to_string();
    let case = match input.next() {
        Err(_) => {
            if is_case_insensitive_attr(&lower) {
                Case::HtmlInsensitive
            } else {
                Case::Sensitive
            }
        }
        Ok(Token::Ident(f)) if f.eq_ignore_ascii_case("i") => Case::Insensitive,
        Ok(Token::Ident(f)) if f.eq_ignore_ascii_case("s") => Case::Sensitive,
        Ok(_) => return fail(input),
    };
    input.expect_exhausted()?;
    Ok(Simple::Attr {
        name,
        lower,
        op: Some((op, value, case)),
    })
}

/// Attributes whose values HTML matches ASCII-case-insensitively in selectors.
fn is_case_insensitive_attr(name: &str) -> bool {
    matches!(
        name,
        "accept"
            | "accept-charset"
            | "align"
            | "alink"
            | "axis"
            | "bgcolor"
            | "charset"
            | "checked"
            | "clear"
            | "codetype"
            | "color"
            | "compact"
            | "declare"
            | "defer"
            | "dir"
            | "direction"
            | "disabled"
            | "enctype"
            | "face"
            | "frame"
            | "hreflang"
            | "http-equiv"
            | "lang"
            | "language"
            | "link"
            | "media"
            | "method"
            | "multiple"
            | "nohref"
            | "noresize"
            | "noshade"
            | "nowrap"
            | "readonly"
            | "rel"
            | "rev"
            | "rules"
            | "scope"
            | "scrolling"
            | "selected"
            | "shape"
            | "target"
            | "text"
            | "type"
            | "valign"
            | "valuetype"
            | "vlink"
    )
}

/// Outcome of matching a complex selector from one element (the `selectors` crate's
/// `SelectorMatchingResult`), which lets the caller skip hopeless retries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Res {
    Matched,
    RestartFromLaterSibling,
    RestartFromDescendant,
    NotMatchedGlobally,
}

struct Cx<'d> {
    dom: &'d Dom,
    has_budget: &'d Cell<usize>,
}

fn eq(case: bool, a: &str, b: &str) -> bool {
    if case {
        a.eq_ignore_ascii_case(b)
    } else {
        a == b
    }
}

impl Cx<'_> {
    fn parent_element(&self, id: NodeId) -> Option<NodeId> {
        let p = self.dom.parent(id)?;
        self.dom.element(p).map(|_| p)
    }

    fn prev_element(&self, id: NodeId) -> Option<NodeId> {
        let mut cur = self.dom.get(id)?.prev_sibling();
        while let Some(c) = cur {
            if self.dom.element(c).is_some() {
                return Some(c);
            }
            cur = self.dom.get(c)?.prev_sibling();
        }
        None
    }

    fn next_element(&self, id: NodeId) -> Option<NodeId> {
        let mut cur = self.dom.get(id)?.next_sibling();
        while let Some(c) = cur {
            if self.dom.element(c).is_some() {
                return Some(c);
            }
            cur = self.dom.get(c)?.next_sibling();
        }
        None
    }

    fn step(&self, id: NodeId, comb: Comb) -> Option<NodeId> {
        match comb {
            Comb::Descendant | Comb::Child => self.parent_element(id),
            Comb::Next | Comb::Subsequent => self.prev_element(id),
        }
    }

    fn complex(&self, c: &Complex, el: NodeId, anchor: Option<NodeId>) -> bool {
        self.from(c, 0, el, anchor) == Res::Matched
    }

    fn from(&self, c: &Complex, i: usize, el: NodeId, anchor: Option<NodeId>) -> Res {
        let Some((compound, comb)) = c.parts.get(i) else {
            return Res::NotMatchedGlobally;
        };
        if !compound.iter().all(|s| self.simple(s, el)) {
            return Res::RestartFromLaterSibling;
        }
        let last = i + 1 == c.parts.len();
        let comb = match (last, c.leading, anchor) {
            (false, _, _) => *comb,
            (true, None, _) => return Res::Matched,
            (true, Some(lead), Some(a)) => {
                // `:has()`: the leftmost compound must stand in `lead` relation to the anchor.
                let mut cur = self.step(el, lead);
                while let Some(x) = cur {
                    if x == a {
                        return Res::Matched;
                    }
                    if matches!(lead, Comb::Child | Comb::Next) {
                        break;
                    }
                    cur = self.step(x, lead);
                }
                return Res::RestartFromLaterSibling;
            }
            (true, Some(_), None) => return Res::NotMatchedGlobally,
        };
        let not_found = match comb {
            Comb::Next | Comb::Subsequent => Res::RestartFromDescendant,
            Comb::Child | Comb::Descendant => Res::NotMatchedGlobally,
        };
        let mut next = self.step(el, comb);
        loop {
            let Some(x) = next else { return not_found };
            let r = self.from(c, i + 1, x, anchor);
            match (r, comb) {
                (Res::Matched, _) | (Res::NotMatchedGlobally, _) | (_, Comb::Next) => return r,
                (_, Comb::Child) => return Res::RestartFromDescendant,
                (Res::RestartFromDescendant, Comb::Subsequent) => return r,
                _ => {}
            }
            next = self.step(x, comb);
        }
    }

    fn simple(&self, s: &Simple, id: NodeId) -> bool {
        let Some(el) = self.dom.element(id) else {
            return false;
        };
        match s {
            Simple::Tag(name, lower) => el.local == *if el.is_html() { lower } else { name },
            Simple::Id(want) => el.id() == Some(want.as_str()),
            Simple::Class(want) => el
                .attrs
                .iter()
                .filter(|a| a.name.local == local_name!("class"))
                .any(|a| a.value.split_ascii_whitespace().any(|c| c == want)),
            Simple::Attr { name, lower, op } => attr_matches(el, name, lower, op.as_ref()),
            Simple::Nth {
                a,
                b,
                of_type,
                from_end,
            } => self.nth(id, el, *a, *b, *of_type, *from_end),
            Simple::Root | Simple::Scope => self
                .dom
                .parent(id)
                .and_then(|p| self.dom.get(p))
                .is_some_and(|p| matches!(p.data, Data::Document)),
            Simple::Empty => !self.dom.children(id).any(|c| {
                self.dom
                    .get(c)
                    .is_some_and(|n| matches!(n.data, Data::Element(_) | Data::Text(_)))
            }),
            Simple::Not(list) => !list.iter().any(|c| self.complex(c, id, None)),
            Simple::Is(list) => list.iter().any(|c| self.complex(c, id, None)),
            Simple::Has(list) => self.has(list, id),
        }
    }

    fn nth(&self, id: NodeId, el: &Element, a: i32, b: i32, of_type: bool, from_end: bool) -> bool {
        // Pseudo-classes that count siblings never match an element without a parent element
        // or document (`selectors` needs a parent node).
        if self.dom.parent(id).is_none() {
            return false;
        }
        let same = |x: NodeId| {
            !of_type
                || self
                    .dom
                    .element(x)
                    .is_some_and(|o| o.local == el.local && o.ns == el.ns)
        };
        let mut index: i64 = 1;
        let mut cur = if from_end {
            self.next_element(id)
        } else {
            self.prev_element(id)
        };
        while let Some(x) = cur {
            if same(x) {
                index += 1;
            }
            cur = if from_end {
                self.next_element(x)
            } else {
                self.prev_element(x)
            };
        }
        let (a, b) = (i64::from(a), i64::from(b));
        if a == 0 {
            index == b
        } else {
            let d = index - b;
            d % a == 0 && d / a >= 0
        }
    }

    fn has(&self, list: &[Complex], anchor: NodeId) -> bool {
        for c in list {
            let siblings = matches!(c.leading, Some(Comb::Next | Comb::Subsequent));
            // Search area: descendants of the anchor, or its later siblings and their subtrees.
            let mut roots: Vec<NodeId> = Vec::new();
            if siblings {
                let mut s = self.next_element(anchor);
                while let Some(x) = s {
                    roots.push(x);
                    s = self.next_element(x);
                }
            } else {
                roots.extend(self.dom.children(anchor));
            }
            let mut stack: Vec<NodeId> = roots.into_iter().rev().collect();
            while let Some(x) = stack.pop() {
                let left = self.has_budget.get();
                if left == 0 {
                    return false;
                }
                self.has_budget.set(left - 1);
                if self.dom.element(x).is_none() {
                    continue;
                }
                if self.complex(c, x, Some(anchor)) {
                    return true;
                }
                let before = stack.len();
                stack.extend(self.dom.children(x));
                stack[before..].reverse();
            }
        }
        false
    }
}

fn attr_matches(el: &Element, name: &str, lower: &str, op: Option<&(Op, String, Case)>) -> bool {
    let html = el.is_html();
    let want = if html { lower } else { name };
    el.attrs.iter().any(|a| {
        if &*a.name.local != want || a.name.ns != html5ever::ns!() {
            return false;
        }
        let Some((op, s, case)) = op else {
            return true;
        };
        let ci = match case {
            Case::Sensitive => false,
            Case::Insensitive => true,
            Case::HtmlInsensitive => html,
        };
        let e: &str = &a.value;
        let (eb, sb) = (e.as_bytes(), s.as_bytes());
        let beq = |x: &[u8], y: &[u8]| {
            if ci {
                x.eq_ignore_ascii_case(y)
            } else {
                x == y
            }
        };
        match op {
            Op::Equal => beq(eb, sb),
            Op::Prefix => !sb.is_empty() && eb.len() >= sb.len() && beq(&eb[..sb.len()], sb),
            Op::Suffix => {
                !sb.is_empty() && eb.len() >= sb.len() && beq(&eb[eb.len() - sb.len()..], sb)
            }
            Op::Substring => {
                !sb.is_empty()
                    && if ci {
                        eb.windows(sb.len()).any(|w| w.eq_ignore_ascii_case(sb))
                    } else {
                        e.contains(s.as_str())
                    }
            }
            Op::Includes => {
                !sb.is_empty()
                    && e.split([' ', '\t', '\n', '\r', '\x0C'])
                        .any(|part| eq(ci, part, s))
            }
            Op::Dash => {
                beq(eb, sb) || (eb.get(sb.len()) == Some(&b'-') && beq(&eb[..sb.len()], sb))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(html: &str) -> Dom {
        use html5ever::tendril::TendrilSink;
        html5ever::driver::parse_document(crate::sink::Sink::new(html.len()), Default::default())
            .one(html)
    }

    fn find(dom: &Dom, id_attr: &str) -> NodeId {
        dom.nodes()
            .find(|(_, n)| n.as_element().is_some_and(|e| e.id() == Some(id_attr)))
            .map(|(i, _)| i)
            .unwrap_or(0)
    }

    fn m(sel: &str, html: &str, target: &str) -> bool {
        let dom = doc(html);
        let s = Selector::parse(sel).unwrap_or_else(|| panic!("parse {sel}"));
        s.matches(&dom, find(&dom, target), &Cell::new(10_000))
    }

    const HTML: &str = r#"<div id=a class="x Y"><p id=b lang=EN-us>one</p><p id=c></p><span id=d data-k="foo bar"></span><p id=e>t</p></div>"#;

    #[test]
    fn simple_and_compound() {
        assert!(m("div", HTML, "a"));
        assert!(m("DIV", HTML, "a"));
        assert!(m("div.x.Y", HTML, "a"));
        assert!(!m(".y", HTML, "a"));
        assert!(m("#b", HTML, "b"));
        assert!(!m("#B", HTML, "b"));
        assert!(m("*", HTML, "b"));
        assert!(m("[lang|=en]", HTML, "b"));
        assert!(m("[data-k~=bar]", HTML, "d"));
        assert!(!m("[data-k~=BAR]", HTML, "d"));
        assert!(m("[data-k~=BAR i]", HTML, "d"));
        assert!(m("[data-k^=fo][data-k$=ar][data-k*='o b']", HTML, "d"));
        assert!(!m("[data-k^='']", HTML, "d"));
    }

    #[test]
    fn combinators_and_pseudo() {
        assert!(m("div > p", HTML, "b"));
        assert!(m("body p", HTML, "b"));
        assert!(m("p + p", HTML, "c"));
        assert!(m("#b ~ p", HTML, "e"));
        assert!(!m("#e ~ p", HTML, "b"));
        assert!(m("p:first-child", HTML, "b"));
        assert!(m("p:last-child", HTML, "e"));
        assert!(m("span:only-of-type", HTML, "d"));
        assert!(!m("p:nth-child(2n+1)", HTML, "c"));
        assert!(m("p:nth-child(even)", HTML, "c"));
        assert!(m("p:nth-of-type(2)", HTML, "c"));
        assert!(m("p:nth-last-of-type(1)", HTML, "e"));
        assert!(m("p:empty", HTML, "c"));
        assert!(!m("p:empty", HTML, "b"));
        assert!(!m(":root", HTML, "a"));
        assert!(m("p:not(#b, #c)", HTML, "e"));
        assert!(m(":is(span, #zz, !!bad)", HTML, "d"));
        assert!(m("div:has(> span)", HTML, "a"));
        assert!(m("p:has(+ p)", HTML, "b"));
        assert!(!m("div:has(> em)", HTML, "a"));
    }

    #[test]
    fn rejects_unsupported() {
        for s in [
            "a:hover",
            "p::first-line",
            "svg|a",
            "[x|y]",
            "a >",
            "> a",
            "a..b",
            ":has(:has(a))",
            ":nth-child(2n of p)",
        ] {
            assert!(Selector::parse(s).is_none(), "{s}");
        }
    }

    #[test]
    fn long_descendant_chain_is_fast() {
        let html = format!("{}<p id=t>x</p>", "<div>".repeat(400));
        let sel = format!("{} span", "div ".repeat(300));
        let t = std::time::Instant::now();
        assert!(!m(&sel, &html, "t"));
        assert!(t.elapsed().as_secs() < 2);
    }
}
