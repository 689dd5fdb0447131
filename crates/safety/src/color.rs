//! CSS colour values and WCAG contrast (hand-written: cssparser 0.38 no longer ships a colour parser, only hash/named helpers).

use cssparser::{Parser, Token};

/// An sRGB colour with alpha in 0..=1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rgba {
    pub r: f32,
    pub g: f32,
    pub b: f32,
    pub a: f32,
}

impl Rgba {
    pub const BLACK: Rgba = Rgba::opaque(0, 0, 0);
    pub const WHITE: Rgba = Rgba::opaque(255, 255, 255);
    pub const TRANSPARENT: Rgba = Rgba {
        r: 0.0,
        g: 0.0,
        b: 0.0,
        a: 0.0,
    };

    pub const fn opaque(r: u8, g: u8, b: u8) -> Self {
        Rgba {
            r: r as f32,
            g: g as f32,
            b: b as f32,
            a: 1.0,
        }
    }

    /// `self` painted over an opaque `under`.
    pub fn over(self, under: Rgba) -> Rgba {
        let a = self.a.clamp(0.0, 1.0);
        Rgba {
            r: self.r * a + under.r * (1.0 - a),
            g: self.g * a + under.g * (1.0 - a),
            b: self.b * a + under.b * (1.0 - a),
            a: 1.0,
        }
    }

    /// WCAG 2 relative luminance.
    fn luminance(self) -> f32 {
        0.2126 * lin(self.r) + 0.7152 * lin(self.g) + 0.0722 * lin(self.b)
    }
}

/// sRGB channel (0..=255) to linear light.
fn lin_exact(v: f32) -> f32 {
    let c = (v / 255.0).clamp(0.0, 1.0);
    if c <= 0.03928 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// `lin_exact` of every integer channel value (nearly all colours in mail are integral).
static LIN_TABLE: std::sync::LazyLock<[f32; 256]> =
    std::sync::LazyLock::new(|| std::array::from_fn(|i| lin_exact(i as f32)));

fn lin(v: f32) -> f32 {
    if (0.0..=255.0).contains(&v) && v.fract() == 0.0 {
        LIN_TABLE
            .get(v as usize)
            .copied()
            .unwrap_or_else(|| lin_exact(v))
    } else {
        lin_exact(v)
    }
}

/// WCAG contrast ratio (1..=21) of `fg` painted over the opaque `bg`.
pub(crate) fn contrast(fg: Rgba, bg: Rgba) -> f32 {
    let fg = fg.over(bg);
    let (l1, l2) = (fg.luminance(), bg.luminance());
    let (hi, lo) = if l1 > l2 { (l1, l2) } else { (l2, l1) };
    (hi + 0.05) / (lo + 0.05)
}

/// Remembers the last few [`contrast`] results: mail repeats a handful of colour pairs on
/// every element that sets a colour, and each ratio costs six channel conversions.
#[derive(Default)]
pub(crate) struct ContrastCache {
    entries: [Option<(Rgba, Rgba, f32)>; 4],
    next: usize,
}

impl ContrastCache {
    /// `contrast(fg, bg)`, from the cache when the same (bitwise) pair was seen recently.
    pub fn get(&mut self, fg: Rgba, bg: Rgba) -> f32 {
        let same = |a: Rgba, b: Rgba| {
            [a.r, a.g, a.b, a.a]
                .iter()
                .zip([b.r, b.g, b.b, b.a])
                .all(|(x, y)| x.to_bits() == y.to_bits())
        };
        for (f, b, ratio) in self.entries.iter().flatten() {
            if same(*f, fg) && same(*b, bg) {
                return *ratio;
            }
        }
        let ratio = contrast(fg, bg);
        if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = Some((fg, bg, ratio));
        }
        self.next = (self.next + 1) % self.entries.len();
        ratio
    }
}

/// A parsed colour value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ColorValue {
    Rgba(Rgba),
    CurrentColor,
    Inherit,
}

/// Parses a CSS colour (`#rgb`, `#rrggbb(aa)`, names, `rgb[a]()`, `hsl[a]()`, `transparent`).
pub(crate) fn parse_color(value: &str) -> Option<ColorValue> {
    let mut p = Parser::new(value);
    parse_color_from(&mut p)
}

pub(crate) fn parse_color_from(p: &mut Parser) -> Option<ColorValue> {
    let tok = p.next().ok()?.clone();
    match tok {
        Token::Hash(h) | Token::IDHash(h) => cssparser::color::parse_hash_color(h.as_bytes())
            .ok()
            .map(|(r, g, b, a)| {
                ColorValue::Rgba(Rgba {
                    a,
                    ..Rgba::opaque(r, g, b)
                })
            }),
        Token::Ident(name) => {
            let name = name.to_ascii_lowercase();
            match name.as_str() {
                "transparent" => Some(ColorValue::Rgba(Rgba::TRANSPARENT)),
                "currentcolor" => Some(ColorValue::CurrentColor),
                "inherit" | "unset" => Some(ColorValue::Inherit),
                // Legacy system colours used by Outlook: assume the light defaults.
                "windowtext" | "buttontext" => Some(ColorValue::Rgba(Rgba::BLACK)),
                "window" | "buttonface" => Some(ColorValue::Rgba(Rgba::WHITE)),
                n => cssparser::color::parse_named_color(n)
                    .ok()
                    .map(|(r, g, b)| ColorValue::Rgba(Rgba::opaque(r, g, b))),
            }
        }
        Token::Function(name) => {
            let name = name.to_ascii_lowercase();
            p.parse_nested_block(|p| {
                let mut nums: Vec<(f32, bool)> = Vec::with_capacity(4);
                while let Ok(t) = p.next() {
                    match t {
                        Token::Number { value, .. } => nums.push((*value, false)),
                        Token::Percentage { unit_value, .. } => nums.push((*unit_value, true)),
                        Token::Dimension { value, .. } => nums.push((*value, false)),
                        Token::Ident(i) if i.eq_ignore_ascii_case("none") => {
                            nums.push((0.0, false))
                        }
                        _ => {}
                    }
                    if nums.len() > 4 {
                        break;
                    }
                }
                Ok::<_, cssparser::ParseError<()>>(color_fn(&name, &nums))
            })
            .ok()
            .flatten()
        }
        _ => None,
    }
}

fn color_fn(name: &str, nums: &[(f32, bool)]) -> Option<ColorValue> {
    if nums.len() < 3 {
        return None;
    }
    let alpha = nums.get(3).map(|&(v, _)| v).unwrap_or(1.0).clamp(0.0, 1.0);
    let rgba = match name {
        "rgb" | "rgba" => {
            let ch = |(v, pct): (f32, bool)| if pct { v * 255.0 } else { v }.clamp(0.0, 255.0);
            Rgba {
                r: ch(nums[0]),
                g: ch(nums[1]),
                b: ch(nums[2]),
                a: alpha,
            }
        }
        "hsl" | "hsla" => {
            let h = nums[0].0.rem_euclid(360.0) / 360.0;
            let frac = |(v, pct): (f32, bool)| if pct { v } else { v / 100.0 }.clamp(0.0, 1.0);
            let (s, l) = (frac(nums[1]), frac(nums[2]));
            let (r, g, b) = hsl_to_rgb(h, s, l);
            Rgba {
                r: r * 255.0,
                g: g * 255.0,
                b: b * 255.0,
                a: alpha,
            }
        }
        _ => return None,
    };
    Some(ColorValue::Rgba(rgba))
}

fn hsl_to_rgb(h: f32, s: f32, l: f32) -> (f32, f32, f32) {
    let q = if l < 0.5 {
        l * (1.0 + s)
    } else {
        l + s - l * s
    };
    let p = 2.0 * l - q;
    let hue = |mut t: f32| {
        if t < 0.0 {
            t += 1.0;
        }
        if t > 1.0 {
            t -= 1.0;
        }
        if t < 1.0 / 6.0 {
            p + (q - p) * 6.0 * t
        } else if t < 0.5 {
            q
        } else if t < 2.0 / 3.0 {
            p + (q - p) * (2.0 / 3.0 - t) * 6.0
        } else {
            p
        }
    };
    (hue(h + 1.0 / 3.0), hue(h), hue(h - 1.0 / 3.0))
}

/// Parses a legacy HTML colour attribute (`bgcolor="ffffff"`, `color=red`).
pub(crate) fn parse_attr_color(value: &str) -> Option<Rgba> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Some(ColorValue::Rgba(c)) = parse_color(v) {
        return Some(c);
    }
    // Browsers accept hex without the leading '#'.
    let hex = v.trim_start_matches('#');
    if (hex.len() == 6 || hex.len() == 3) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return cssparser::color::parse_hash_color(hex.as_bytes())
            .ok()
            .map(|(r, g, b, a)| Rgba {
                a,
                ..Rgba::opaque(r, g, b)
            });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contrast_cache_returns_contrast() {
        let mut cache = ContrastCache::default();
        let colours = [
            Rgba::BLACK,
            Rgba::WHITE,
            Rgba::opaque(0x88, 0x88, 0x88),
            Rgba::opaque(0x33, 0x33, 0x33),
            Rgba {
                a: 0.5,
                ..Rgba::opaque(10, 200, 30)
            },
            Rgba::TRANSPARENT,
            Rgba {
                r: 12.5,
                ..Rgba::WHITE
            },
        ];
        for _ in 0..3 {
            for &fg in &colours {
                for &bg in &colours {
                    assert_eq!(cache.get(fg, bg).to_bits(), contrast(fg, bg).to_bits());
                }
            }
        }
    }

    #[test]
    fn contrast_matches_wcag() {
        let c = contrast(Rgba::BLACK, Rgba::WHITE);
        assert!((c - 21.0).abs() < 0.1);
        let grey = Rgba::opaque(0x99, 0x99, 0x99);
        assert!(contrast(grey, Rgba::WHITE) > 2.5);
        let near = Rgba::opaque(0xfe, 0xfe, 0xfe);
        assert!(contrast(near, Rgba::WHITE) < 1.05);
    }

    #[test]
    fn parses_colours() {
        assert_eq!(parse_color("#fff"), Some(ColorValue::Rgba(Rgba::WHITE)));
        assert_eq!(
            parse_color("rgb(255, 255, 255)"),
            Some(ColorValue::Rgba(Rgba::WHITE))
        );
        assert_eq!(parse_color("White"), Some(ColorValue::Rgba(Rgba::WHITE)));
        match parse_color("rgba(0,0,0,0)") {
            Some(ColorValue::Rgba(c)) => assert!(c.a < 0.01),
            other => panic!("{other:?}"),
        }
        match parse_color("hsl(0, 0%, 100%)") {
            Some(ColorValue::Rgba(c)) => assert!(c.r > 254.0 && c.b > 254.0),
            other => panic!("{other:?}"),
        }
        assert_eq!(parse_attr_color("ffffff"), Some(Rgba::WHITE));
    }
}
