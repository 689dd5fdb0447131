//! The document tree and the html5ever `TreeSink` that builds it.
//!
//! Why hand-written: the safe view only needs a read-only tree it walks once (names,
//! attributes, parent/child/sibling links) plus selector matching against it. scraper
//! (ego_tree) gives a general tree whose per-element setup (attribute conversion, id and
//! class interning), teardown and `selectors`-crate matching cost more than all our
//! visibility analysis on a typical newsletter, and no crate offers a lighter tree together
//! with the cascade we need. So the tree is a flat arena of nodes linked by `u32` indices,
//! built with exactly scraper's tree-construction semantics (sorted attributes, merged text
//! nodes, a fragment child under `<template>`, detached nodes kept in the arena), so the
//! rendered output is unchanged.
//!
//! The sink also counts the nodes it creates, so parsing can be bounded by a deterministic
//! work budget instead of a clock.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};

use html5ever::tendril::StrTendril;
use html5ever::tree_builder::{ElementFlags, NodeOrText, QuirksMode, TreeSink};
use html5ever::{Attribute, ExpandedName, LocalName, Namespace, QualName, local_name, ns};

/// Index of a node in [`Dom::nodes`].
pub(crate) type NodeId = u32;

/// "No node" in the link fields.
const NONE: NodeId = NodeId::MAX;

/// One element: its namespace, local name (the tree builder gives elements no prefix) and
/// attributes (sorted by name, as scraper kept them, so that attribute findings come out in
/// the same order). Without the prefix a node fills one 64-byte cache line.
pub(crate) struct Element {
    pub ns: Namespace,
    pub local: LocalName,
    pub attrs: Vec<Attribute>,
}

impl Element {
    /// Local name (lowercase for HTML elements).
    pub fn name(&self) -> &str {
        &self.local
    }

    pub fn is_html(&self) -> bool {
        self.ns == ns!(html)
    }

    /// `(local name, value)` of every attribute.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|a| (&*a.name.local, &*a.value))
    }

    /// The first attribute named `id` (in any namespace, as scraper did).
    pub fn id(&self) -> Option<&str> {
        self.attrs
            .iter()
            .find(|a| a.name.local == local_name!("id"))
            .map(|a| &*a.value)
    }
}

pub(crate) enum Data {
    Document,
    /// Contents of a `<template>` (its first child).
    Fragment,
    Doctype,
    Text(StrTendril),
    Comment(StrTendril),
    ProcessingInstruction,
    Element(Element),
}

pub(crate) struct Node {
    parent: NodeId,
    first_child: NodeId,
    last_child: NodeId,
    prev: NodeId,
    next: NodeId,
    pub data: Data,
}

fn link(id: NodeId) -> Option<NodeId> {
    (id != NONE).then_some(id)
}

impl Node {
    pub fn parent(&self) -> Option<NodeId> {
        link(self.parent)
    }
    pub fn first_child(&self) -> Option<NodeId> {
        link(self.first_child)
    }
    pub fn last_child(&self) -> Option<NodeId> {
        link(self.last_child)
    }
    pub fn prev_sibling(&self) -> Option<NodeId> {
        link(self.prev)
    }
    pub fn next_sibling(&self) -> Option<NodeId> {
        link(self.next)
    }
    pub fn as_element(&self) -> Option<&Element> {
        match &self.data {
            Data::Element(e) => Some(e),
            _ => None,
        }
    }
}

/// A parsed document: node 0 is the document; nodes are in creation order, and nodes
/// html5ever removed from the tree stay in the arena, detached.
pub(crate) struct Dom {
    nodes: Vec<Node>,
}

impl Dom {
    fn new(capacity: usize) -> Self {
        let mut d = Dom {
            nodes: Vec::with_capacity(capacity),
        };
        d.push(Data::Document);
        d
    }

    pub const ROOT: NodeId = 0;

    pub fn get(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    /// Every node, attached or not, in creation order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &Node)> {
        self.nodes.iter().enumerate().map(|(i, n)| (i as NodeId, n))
    }

    pub fn element(&self, id: NodeId) -> Option<&Element> {
        self.get(id).and_then(Node::as_element)
    }

    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        self.get(id).and_then(Node::parent)
    }

    /// Children of `id`, first to last.
    pub fn children(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let first = self.get(id).and_then(Node::first_child);
        std::iter::successors(first, move |&c| self.get(c).and_then(Node::next_sibling))
    }

    /// Children of `id`, last to first.
    pub fn children_rev(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        let last = self.get(id).and_then(Node::last_child);
        std::iter::successors(last, move |&c| self.get(c).and_then(Node::prev_sibling))
    }

    fn push(&mut self, data: Data) -> NodeId {
        // The parse budget stops far below 4 billion nodes; saturate rather than wrap.
        let id = NodeId::try_from(self.nodes.len()).unwrap_or(NONE - 1);
        self.nodes.push(Node {
            parent: NONE,
            first_child: NONE,
            last_child: NONE,
            prev: NONE,
            next: NONE,
            data,
        });
        id
    }

    fn node_mut(&mut self, id: NodeId) -> Option<&mut Node> {
        self.nodes.get_mut(id as usize)
    }

    fn detach(&mut self, id: NodeId) {
        let Some(n) = self.get(id) else { return };
        let (parent, prev, next) = (n.parent, n.prev, n.next);
        if parent == NONE {
            return;
        }
        if let Some(p) = self.node_mut(prev) {
            p.next = next;
        } else if let Some(par) = self.node_mut(parent) {
            par.first_child = next;
        }
        if let Some(nx) = self.node_mut(next) {
            nx.prev = prev;
        } else if let Some(par) = self.node_mut(parent) {
            par.last_child = prev;
        }
        if let Some(n) = self.node_mut(id) {
            n.parent = NONE;
            n.prev = NONE;
            n.next = NONE;
        }
    }

    fn append(&mut self, parent: NodeId, child: NodeId) {
        if parent == child || self.get(parent).is_none() || self.get(child).is_none() {
            return;
        }
        self.detach(child);
        let last = self.nodes[parent as usize].last_child;
        if let Some(l) = self.node_mut(last) {
            l.next = child;
        } else {
            self.nodes[parent as usize].first_child = child;
        }
        self.nodes[parent as usize].last_child = child;
        let c = &mut self.nodes[child as usize];
        c.parent = parent;
        c.prev = last;
        c.next = NONE;
    }

    fn insert_before(&mut self, sibling: NodeId, new: NodeId) {
        if sibling == new || self.get(new).is_none() {
            return;
        }
        self.detach(new);
        let Some(s) = self.get(sibling) else { return };
        let (parent, prev) = (s.parent, s.prev);
        if parent == NONE {
            return;
        }
        if let Some(p) = self.node_mut(prev) {
            p.next = new;
        } else {
            self.nodes[parent as usize].first_child = new;
        }
        self.nodes[sibling as usize].prev = new;
        let n = &mut self.nodes[new as usize];
        n.parent = parent;
        n.prev = prev;
        n.next = sibling;
    }

    /// Appends `text` to the text node `id` if it is one.
    fn concat_text(&mut self, id: NodeId, text: &StrTendril) -> bool {
        match self.node_mut(id).map(|n| &mut n.data) {
            Some(Data::Text(t)) => {
                t.push_tendril(text);
                true
            }
            _ => false,
        }
    }
}

/// A node id plus, for elements, the element's expanded name: html5ever asks for the names
/// of the open elements constantly, and answering from the handle avoids a `RefCell`
/// borrow and an arena lookup per query.
#[derive(Clone)]
pub(crate) struct Handle {
    id: NodeId,
    ns: Namespace,
    local: LocalName,
}

pub(crate) struct Sink {
    dom: RefCell<Dom>,
    /// Elements, comments and text appends so far (text appends may merge into one node).
    nodes: Cell<usize>,
}

impl Sink {
    /// A sink for `input_len` bytes of HTML. The arena is sized up front from the input
    /// (mail averages well over 16 bytes per node), so it rarely grows and copies itself.
    pub fn new(input_len: usize) -> Self {
        Sink {
            dom: RefCell::new(Dom::new((input_len / 16).clamp(64, 1 << 18))),
            nodes: Cell::new(0),
        }
    }

    /// Tree nodes created so far (a measure of parse work besides the input bytes).
    pub fn nodes(&self) -> usize {
        self.nodes.get()
    }

    fn count(&self) {
        self.nodes.set(self.nodes.get().saturating_add(1));
    }

    /// A handle for a node that is not an element (its name is never asked for).
    fn other(id: NodeId) -> Handle {
        Handle {
            id,
            ns: ns!(),
            local: local_name!(""),
        }
    }

    fn append_id(&self, parent: NodeId, child: NodeOrText<Handle>) {
        let mut dom = self.dom.borrow_mut();
        match child {
            NodeOrText::AppendNode(h) => dom.append(parent, h.id),
            NodeOrText::AppendText(text) => {
                self.count();
                let last = dom.get(parent).map_or(NONE, |p| p.last_child);
                if !dom.concat_text(last, &text) && dom.get(parent).is_some() {
                    let t = dom.push(Data::Text(text));
                    dom.append(parent, t);
                }
            }
        }
    }
}

impl TreeSink for Sink {
    type Handle = Handle;
    type Output = Dom;
    type ElemName<'a> = ExpandedName<'a>;

    fn finish(self) -> Dom {
        self.dom.into_inner()
    }

    fn parse_error(&self, _msg: Cow<'static, str>) {}

    fn get_document(&self) -> Handle {
        Self::other(Dom::ROOT)
    }

    fn elem_name<'a>(&'a self, target: &'a Handle) -> ExpandedName<'a> {
        ExpandedName {
            ns: &target.ns,
            local: &target.local,
        }
    }

    fn create_element(
        &self,
        name: QualName,
        mut attrs: Vec<Attribute>,
        _flags: ElementFlags,
    ) -> Handle {
        self.count();
        let QualName { ns, local, .. } = name;
        let template = ns == ns!(html) && local == local_name!("template");
        attrs.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        let mut dom = self.dom.borrow_mut();
        let id = dom.push(Data::Element(Element {
            ns: ns.clone(),
            local: local.clone(),
            attrs,
        }));
        if template {
            let contents = dom.push(Data::Fragment);
            dom.append(id, contents);
        }
        Handle { id, ns, local }
    }

    fn create_comment(&self, text: StrTendril) -> Handle {
        self.count();
        Self::other(self.dom.borrow_mut().push(Data::Comment(text)))
    }

    fn create_pi(&self, _target: StrTendril, _data: StrTendril) -> Handle {
        Self::other(self.dom.borrow_mut().push(Data::ProcessingInstruction))
    }

    fn append(&self, parent: &Handle, child: NodeOrText<Handle>) {
        self.append_id(parent.id, child);
    }

    fn append_based_on_parent_node(
        &self,
        element: &Handle,
        prev_element: &Handle,
        child: NodeOrText<Handle>,
    ) {
        let has_parent = self.dom.borrow().parent(element.id).is_some();
        if has_parent {
            self.append_before_sibling(element, child);
        } else {
            self.append_id(prev_element.id, child);
        }
    }

    fn append_doctype_to_document(&self, _name: StrTendril, _public: StrTendril, _sys: StrTendril) {
        let mut dom = self.dom.borrow_mut();
        let d = dom.push(Data::Doctype);
        dom.append(Dom::ROOT, d);
    }

    fn get_template_contents(&self, target: &Handle) -> Handle {
        let first = self.dom.borrow().get(target.id).and_then(Node::first_child);
        // html5ever only asks for templates, which always have their fragment child.
        Self::other(first.unwrap_or(target.id))
    }

    fn same_node(&self, x: &Handle, y: &Handle) -> bool {
        x.id == y.id
    }

    fn set_quirks_mode(&self, _mode: QuirksMode) {}

    fn append_before_sibling(&self, sibling: &Handle, new_node: NodeOrText<Handle>) {
        let mut dom = self.dom.borrow_mut();
        if let NodeOrText::AppendNode(h) = &new_node {
            dom.detach(h.id);
        }
        if dom.parent(sibling.id).is_none() {
            if matches!(new_node, NodeOrText::AppendText(_)) {
                self.count();
            }
            return;
        }
        match new_node {
            NodeOrText::AppendNode(h) => dom.insert_before(sibling.id, h.id),
            NodeOrText::AppendText(text) => {
                self.count();
                let prev = dom.get(sibling.id).map_or(NONE, |s| s.prev);
                if !dom.concat_text(prev, &text) {
                    let t = dom.push(Data::Text(text));
                    dom.insert_before(sibling.id, t);
                }
            }
        }
    }

    fn add_attrs_if_missing(&self, target: &Handle, attrs: Vec<Attribute>) {
        let mut dom = self.dom.borrow_mut();
        let Some(Node {
            data: Data::Element(el),
            ..
        }) = dom.node_mut(target.id)
        else {
            return;
        };
        for attr in attrs {
            if let Err(i) = el.attrs.binary_search_by(|a| a.name.cmp(&attr.name)) {
                el.attrs.insert(i, attr);
            }
        }
    }

    fn remove_from_parent(&self, target: &Handle) {
        self.dom.borrow_mut().detach(target.id);
    }

    fn reparent_children(&self, node: &Handle, new_parent: &Handle) {
        if node.id == new_parent.id {
            return;
        }
        let mut dom = self.dom.borrow_mut();
        while let Some(c) = dom.get(node.id).and_then(Node::first_child) {
            dom.append(new_parent.id, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_fills_one_cache_line() {
        assert!(
            std::mem::size_of::<Node>() <= 64,
            "{}",
            std::mem::size_of::<Node>()
        );
    }
}
