//! What the walk needs to know about an element name, worked out once per element.
//!
//! Element names are interned atoms, so a `match` on `local_name!` constants is a handful of
//! integer compares, where the string lists below cost a length switch and a `memcmp` each,
//! and the walk asked about a dozen of them per element. Names without a static atom (custom
//! and prefixed tags) take the string path, so both always agree (unit-tested).

use html5ever::{LocalName, local_name};

/// Displayed as a block by default.
pub(crate) const BLOCK: u16 = 1;
/// Content a mail client does not render as text.
pub(crate) const NON_RENDERED: u16 = 2;
/// Surrounded by a blank line (two line breaks) rather than one.
pub(crate) const PARAGRAPH: u16 = 4;
/// Keeps white space (`white-space: pre` by default).
pub(crate) const PRE: u16 = 8;
/// Inline-block by default (cells, images, buttons).
pub(crate) const INLINE_BLOCK: u16 = 16;
/// `width`/`height` of 0 does not hide text (replaced or non-text elements).
pub(crate) const SIZE_EXEMPT: u16 = 32;

/// Elements the walk treats specially by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Other,
    Style,
    Font,
    Body,
    Blockquote,
    Summary,
    Dialog,
    Input,
    Details,
    Meta,
    Br,
    Li,
    /// `td` or `th`.
    Cell,
    A,
    Html,
}

/// Flags and kind of an element name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    pub flags: u16,
    pub kind: Kind,
}

impl Tag {
    pub fn has(self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Line breaks around the element (0 for inline elements).
    pub fn breaks(self) -> u8 {
        if self.has(PARAGRAPH) {
            2
        } else {
            u8::from(self.has(BLOCK))
        }
    }
}

const fn t(flags: u16, kind: Kind) -> Tag {
    Tag { flags, kind }
}

/// The tag information of a local name (case-sensitive, any namespace).
pub(crate) fn of(name: &LocalName) -> Tag {
    use Kind::*;
    const B: u16 = BLOCK;
    const BP: u16 = BLOCK | PARAGRAPH;
    const N: u16 = NON_RENDERED;
    match *name {
        local_name!("div")
        | local_name!("address")
        | local_name!("article")
        | local_name!("aside")
        | local_name!("center")
        | local_name!("dd")
        | local_name!("dt")
        | local_name!("fieldset")
        | local_name!("figcaption")
        | local_name!("figure")
        | local_name!("footer")
        | local_name!("form")
        | local_name!("header")
        | local_name!("main")
        | local_name!("nav")
        | local_name!("section")
        | local_name!("tbody")
        | local_name!("thead")
        | local_name!("tfoot")
        | local_name!("tr")
        | local_name!("caption")
        | local_name!("menu")
        | local_name!("legend") => t(B, Other),
        local_name!("p")
        | local_name!("h1")
        | local_name!("h2")
        | local_name!("h3")
        | local_name!("h4")
        | local_name!("h5")
        | local_name!("h6")
        | local_name!("ul")
        | local_name!("ol")
        | local_name!("dl")
        | local_name!("table") => t(BP, Other),
        local_name!("blockquote") => t(BP, Blockquote),
        local_name!("pre") => t(BP | PRE, Other),
        local_name!("hr") => t(BP | SIZE_EXEMPT, Other),
        local_name!("listing") | local_name!("plaintext") | local_name!("xmp") => t(B | PRE, Other),
        local_name!("col") | local_name!("colgroup") => t(B | SIZE_EXEMPT, Other),
        local_name!("details") => t(B, Details),
        local_name!("dialog") => t(B, Dialog),
        local_name!("summary") => t(B, Summary),
        local_name!("li") => t(B, Li),
        local_name!("body") => t(B, Body),
        local_name!("html") => t(B, Html),
        local_name!("head")
        | local_name!("script")
        | local_name!("template")
        | local_name!("noscript")
        | local_name!("title")
        | local_name!("link")
        | local_name!("base")
        | local_name!("iframe")
        | local_name!("object")
        | local_name!("embed")
        | local_name!("frame")
        | local_name!("frameset")
        | local_name!("noembed")
        | local_name!("noframes")
        | local_name!("datalist")
        | local_name!("param")
        | local_name!("source")
        | local_name!("track")
        | local_name!("audio")
        | local_name!("desc")
        | local_name!("applet") => t(N, Other),
        local_name!("meta") => t(N, Meta),
        local_name!("video") | local_name!("canvas") => t(N | SIZE_EXEMPT, Other),
        local_name!("td") | local_name!("th") => t(INLINE_BLOCK, Cell),
        local_name!("img") => t(INLINE_BLOCK | SIZE_EXEMPT, Other),
        local_name!("button") => t(INLINE_BLOCK, Other),
        local_name!("textarea") => t(PRE, Other),
        local_name!("style") => t(0, Style),
        local_name!("font") => t(0, Font),
        local_name!("input") => t(0, Input),
        local_name!("br") => t(0, Br),
        local_name!("a") => t(0, A),
        local_name!("span")
        | local_name!("b")
        | local_name!("i")
        | local_name!("u")
        | local_name!("em")
        | local_name!("strong")
        | local_name!("small")
        | local_name!("sup")
        | local_name!("sub") => t(0, Other),
        _ => of_str(name),
    }
}

/// The same as [`of`], from the name's text (for names without a static atom).
#[cold]
#[inline(never)]
fn of_str(name: &str) -> Tag {
    let mut flags = 0;
    if is_block(name) {
        flags |= BLOCK;
    }
    if is_non_rendered(name) {
        flags |= NON_RENDERED;
    }
    if matches!(
        name,
        "p" | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "blockquote"
            | "ul"
            | "ol"
            | "pre"
            | "hr"
            | "dl"
            | "table"
    ) {
        flags |= PARAGRAPH;
    }
    if matches!(name, "pre" | "textarea" | "listing" | "plaintext" | "xmp") {
        flags |= PRE;
    }
    if matches!(name, "td" | "th" | "img" | "button") {
        flags |= INLINE_BLOCK;
    }
    if matches!(name, "img" | "hr" | "col" | "colgroup" | "video" | "canvas") {
        flags |= SIZE_EXEMPT;
    }
    let kind = match name {
        "style" => Kind::Style,
        "font" => Kind::Font,
        "body" => Kind::Body,
        "blockquote" => Kind::Blockquote,
        "summary" => Kind::Summary,
        "dialog" => Kind::Dialog,
        "input" => Kind::Input,
        "details" => Kind::Details,
        "meta" => Kind::Meta,
        "br" => Kind::Br,
        "li" => Kind::Li,
        "td" | "th" => Kind::Cell,
        "a" => Kind::A,
        "html" => Kind::Html,
        _ => Kind::Other,
    };
    Tag { flags, kind }
}

fn is_block(name: &str) -> bool {
    matches!(
        name,
        "address"
            | "article"
            | "aside"
            | "blockquote"
            | "center"
            | "dd"
            | "details"
            | "dialog"
            | "div"
            | "dl"
            | "dt"
            | "fieldset"
            | "figcaption"
            | "figure"
            | "footer"
            | "form"
            | "h1"
            | "h2"
            | "h3"
            | "h4"
            | "h5"
            | "h6"
            | "header"
            | "hr"
            | "li"
            | "main"
            | "nav"
            | "ol"
            | "p"
            | "pre"
            | "section"
            | "summary"
            | "table"
            | "tbody"
            | "thead"
            | "tfoot"
            | "tr"
            | "ul"
            | "caption"
            | "body"
            | "html"
            | "menu"
            | "listing"
            | "plaintext"
            | "xmp"
            | "legend"
            | "col"
            | "colgroup"
    )
}

/// Elements whose content a mail client does not render as text.
fn is_non_rendered(name: &str) -> bool {
    matches!(
        name,
        "head"
            | "script"
            | "template"
            | "noscript"
            | "title"
            | "meta"
            | "link"
            | "base"
            | "iframe"
            | "object"
            | "embed"
            | "frame"
            | "frameset"
            | "noembed"
            | "noframes"
            | "datalist"
            | "param"
            | "source"
            | "track"
            | "audio"
            | "video"
            | "canvas"
            | "desc"
            | "xml"
            | "applet"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atoms_agree_with_the_name_lists() {
        let names = [
            "address",
            "article",
            "aside",
            "blockquote",
            "center",
            "dd",
            "details",
            "dialog",
            "div",
            "dl",
            "dt",
            "fieldset",
            "figcaption",
            "figure",
            "footer",
            "form",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "header",
            "hr",
            "li",
            "main",
            "nav",
            "ol",
            "p",
            "pre",
            "section",
            "summary",
            "table",
            "tbody",
            "thead",
            "tfoot",
            "tr",
            "ul",
            "caption",
            "body",
            "html",
            "menu",
            "listing",
            "plaintext",
            "xmp",
            "legend",
            "col",
            "colgroup",
            "head",
            "script",
            "template",
            "noscript",
            "title",
            "meta",
            "link",
            "base",
            "iframe",
            "object",
            "embed",
            "frame",
            "frameset",
            "noembed",
            "noframes",
            "datalist",
            "param",
            "source",
            "track",
            "audio",
            "video",
            "canvas",
            "desc",
            "xml",
            "applet",
            "td",
            "th",
            "img",
            "button",
            "textarea",
            "style",
            "font",
            "input",
            "br",
            "a",
            "span",
            "b",
            "i",
            "u",
            "em",
            "strong",
            "small",
            "sup",
            "sub",
            "o:p",
            "svg",
            "math",
            "foreignObject",
            "DIV",
            "Div",
            "x-custom",
            "",
            "tablex",
            "abbr",
            "label",
            "select",
            "option",
        ];
        for n in names {
            assert_eq!(of(&LocalName::from(n)), of_str(n), "{n}");
        }
    }
}
