//! A tree sink that builds scraper's `Html` but answers html5ever's element-name queries
//! from the handle itself.
//!
//! html5ever asks for the name of the elements on its stack of open elements constantly
//! (every "has an element in scope" check walks the stack). scraper's own sink answers each
//! query by borrowing a `RefCell` and looking the node up in the tree; here the handle
//! carries the (cheaply cloned, interned) namespace and local name, and every tree
//! operation is delegated to scraper's sink unchanged, so the resulting tree is identical.
//!
//! The sink also counts the nodes it creates, so parsing can be bounded by a deterministic
//! work budget instead of a clock.

use std::borrow::Cow;
use std::cell::Cell;

use ego_tree::NodeId;
use html5ever::tendril::StrTendril;
use html5ever::tree_builder::{ElementFlags, NodeOrText, QuirksMode, TreeSink};
use html5ever::{Attribute, ExpandedName, LocalName, Namespace, QualName, local_name, ns};
use scraper::{Html, HtmlTreeSink};

/// A node id plus, for elements, the element's expanded name.
#[derive(Clone)]
pub(crate) struct Handle {
    id: NodeId,
    ns: Namespace,
    local: LocalName,
}

pub(crate) struct Sink {
    inner: HtmlTreeSink,
    /// Elements, comments and text appends so far (text appends may merge into one node).
    nodes: Cell<usize>,
}

impl Sink {
    pub fn new() -> Self {
        Sink {
            inner: HtmlTreeSink::new(Html::new_document()),
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

    fn count_child(&self, child: &NodeOrText<Handle>) {
        if matches!(child, NodeOrText::AppendText(_)) {
            self.count();
        }
    }

    /// A handle for a node that is not an element (its name is never asked for).
    fn other(id: NodeId) -> Handle {
        Handle {
            id,
            ns: ns!(),
            local: local_name!(""),
        }
    }
}

fn ids(child: NodeOrText<Handle>) -> NodeOrText<NodeId> {
    match child {
        NodeOrText::AppendNode(h) => NodeOrText::AppendNode(h.id),
        NodeOrText::AppendText(t) => NodeOrText::AppendText(t),
    }
}

impl TreeSink for Sink {
    type Handle = Handle;
    type Output = Html;
    type ElemName<'a> = ExpandedName<'a>;

    fn finish(self) -> Html {
        self.inner.finish()
    }

    fn parse_error(&self, msg: Cow<'static, str>) {
        self.inner.parse_error(msg);
    }

    fn get_document(&self) -> Handle {
        Self::other(self.inner.get_document())
    }

    fn elem_name<'a>(&'a self, target: &'a Handle) -> ExpandedName<'a> {
        ExpandedName {
            ns: &target.ns,
            local: &target.local,
        }
    }

    fn create_element(&self, name: QualName, attrs: Vec<Attribute>, flags: ElementFlags) -> Handle {
        self.count();
        let (ns, local) = (name.ns.clone(), name.local.clone());
        let id = self.inner.create_element(name, attrs, flags);
        Handle { id, ns, local }
    }

    fn create_comment(&self, text: StrTendril) -> Handle {
        self.count();
        Self::other(self.inner.create_comment(text))
    }

    fn create_pi(&self, target: StrTendril, data: StrTendril) -> Handle {
        Self::other(self.inner.create_pi(target, data))
    }

    fn append(&self, parent: &Handle, child: NodeOrText<Handle>) {
        self.count_child(&child);
        self.inner.append(&parent.id, ids(child));
    }

    fn append_based_on_parent_node(
        &self,
        element: &Handle,
        prev_element: &Handle,
        child: NodeOrText<Handle>,
    ) {
        self.count_child(&child);
        self.inner
            .append_based_on_parent_node(&element.id, &prev_element.id, ids(child));
    }

    fn append_doctype_to_document(
        &self,
        name: StrTendril,
        public_id: StrTendril,
        system_id: StrTendril,
    ) {
        self.inner
            .append_doctype_to_document(name, public_id, system_id);
    }

    fn mark_script_already_started(&self, node: &Handle) {
        self.inner.mark_script_already_started(&node.id);
    }

    fn pop(&self, node: &Handle) {
        self.inner.pop(&node.id);
    }

    fn get_template_contents(&self, target: &Handle) -> Handle {
        Self::other(self.inner.get_template_contents(&target.id))
    }

    fn same_node(&self, x: &Handle, y: &Handle) -> bool {
        self.inner.same_node(&x.id, &y.id)
    }

    fn set_quirks_mode(&self, mode: QuirksMode) {
        self.inner.set_quirks_mode(mode);
    }

    fn append_before_sibling(&self, sibling: &Handle, new_node: NodeOrText<Handle>) {
        self.count_child(&new_node);
        self.inner.append_before_sibling(&sibling.id, ids(new_node));
    }

    fn add_attrs_if_missing(&self, target: &Handle, attrs: Vec<Attribute>) {
        self.inner.add_attrs_if_missing(&target.id, attrs);
    }

    fn associate_with_form(
        &self,
        target: &Handle,
        form: &Handle,
        nodes: (&Handle, Option<&Handle>),
    ) {
        self.inner
            .associate_with_form(&target.id, &form.id, (&nodes.0.id, nodes.1.map(|h| &h.id)));
    }

    fn remove_from_parent(&self, target: &Handle) {
        self.inner.remove_from_parent(&target.id);
    }

    fn reparent_children(&self, node: &Handle, new_parent: &Handle) {
        self.inner.reparent_children(&node.id, &new_parent.id);
    }

    fn is_mathml_annotation_xml_integration_point(&self, handle: &Handle) -> bool {
        self.inner
            .is_mathml_annotation_xml_integration_point(&handle.id)
    }

    fn set_current_line(&self, line_number: u64) {
        self.inner.set_current_line(line_number);
    }

    fn allow_declarative_shadow_roots(&self, intended_parent: &Handle) -> bool {
        self.inner
            .allow_declarative_shadow_roots(&intended_parent.id)
    }

    fn attach_declarative_shadow(
        &self,
        location: &Handle,
        template: &Handle,
        attrs: &[Attribute],
    ) -> bool {
        self.inner
            .attach_declarative_shadow(&location.id, &template.id, attrs)
    }

    fn maybe_clone_an_option_into_selectedcontent(&self, option: &Handle) {
        self.inner
            .maybe_clone_an_option_into_selectedcontent(&option.id);
    }
}
