//! Which tag/class/id keys the open elements carry, for rejecting candidate rules whose
//! ancestor requirements (`Rule::ancestors`) cannot be met without running the matcher.
//!
//! Only keys that some rule asks about are counted: a newsletter's sheet asks about two or
//! three classes, so most elements push nothing, where a map of every key of every open
//! element cost a hash-map insert and remove per key (about 3 % of a newsletter's time).

use crate::css::{Sheet, key_hash};

pub(crate) struct AncestorFilter {
    /// Keys some rule requires of an ancestor, sorted, each with its slot in `counts`.
    keys: Vec<(u64, u32)>,
    /// Open elements carrying each key.
    counts: Vec<u32>,
    /// Per rule: its range in `rule_slots`.
    rule_ranges: Vec<(u32, u32)>,
    rule_slots: Vec<u32>,
    /// Which kinds of key any rule asks about (the others are never hashed).
    want_tag: bool,
    want_id: bool,
    want_class: bool,
    /// Slots pushed by the open elements, in order.
    stack: Vec<u32>,
}

impl AncestorFilter {
    /// `None` when no rule has ancestor requirements.
    pub fn new(sheet: &Sheet) -> Option<Self> {
        let mut all: Vec<u64> = sheet
            .rules
            .iter()
            .flat_map(|r| r.ancestors.iter().copied())
            .collect();
        if all.is_empty() {
            return None;
        }
        all.sort_unstable();
        all.dedup();
        let keys: Vec<(u64, u32)> = all.iter().zip(0u32..).map(|(&k, i)| (k, i)).collect();
        let slot = |k: u64| {
            keys.binary_search_by_key(&k, |&(key, _)| key)
                .map_or(0, |i| keys[i].1)
        };
        let mut rule_ranges = Vec::with_capacity(sheet.rules.len());
        let mut rule_slots = Vec::new();
        for r in &sheet.rules {
            let from = rule_slots.len() as u32;
            rule_slots.extend(r.ancestors.iter().map(|&k| slot(k)));
            rule_ranges.push((from, rule_slots.len() as u32));
        }
        // A key's kind is not recoverable from its hash, so ask `css` which kinds occur.
        let (want_tag, want_id, want_class) = sheet.ancestor_kinds();
        Some(AncestorFilter {
            counts: vec![0; keys.len()],
            keys,
            rule_ranges,
            rule_slots,
            want_tag,
            want_id,
            want_class,
            stack: Vec::new(),
        })
    }

    #[inline(never)]
    fn push_key(&mut self, key: u64) {
        if let Ok(i) = self.keys.binary_search_by_key(&key, |&(k, _)| k) {
            let slot = self.keys[i].1;
            self.counts[slot as usize] += 1;
            self.stack.push(slot);
        }
    }

    /// Records an element being entered; returns the mark to pass to [`Self::leave`].
    #[inline]
    pub fn enter(&mut self, name: &str, id: Option<&str>, classes: &[&str]) -> u32 {
        let mark = self.stack.len() as u32;
        if self.want_tag {
            self.push_key(key_hash(b't', name));
        }
        if self.want_id
            && let Some(i) = id
        {
            self.push_key(key_hash(b'i', i));
        }
        if self.want_class {
            for c in classes {
                self.push_key(key_hash(b'c', c));
            }
        }
        mark
    }

    /// Forgets the keys of the element that [`Self::enter`] returned `mark` for.
    #[inline]
    pub fn leave(&mut self, mark: u32) {
        let from = (mark as usize).min(self.stack.len());
        for &s in &self.stack[from..] {
            if let Some(n) = self.counts.get_mut(s as usize) {
                *n = n.saturating_sub(1);
            }
        }
        self.stack.truncate(from);
    }

    /// True when every ancestor key rule `ri` requires is carried by an open element.
    pub fn satisfied(&self, ri: usize) -> bool {
        let Some(&(from, to)) = self.rule_ranges.get(ri) else {
            return true;
        };
        self.rule_slots[from as usize..to as usize]
            .iter()
            .all(|&s| self.counts.get(s as usize).is_some_and(|&n| n > 0))
    }
}
