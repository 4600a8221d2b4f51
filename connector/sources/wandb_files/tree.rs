//! Config and summary as a tree of keyed values, updated and pruned in log order.
//!
//! Values are kept as the writer's JSON text and parsed once, when the tree is
//! flattened: the SDK rewrites most summary keys at every step, and only the
//! last value of each matters.

use indexmap::IndexMap;

use crate::columns::{flatten_at, push_segment};
use crate::value::Value;

/// A node: a whole value (parsed or still JSON text), or a branch reached by nested keys.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf(Value),
    /// JSON text as written, checked to be UTF-8 only when parsed.
    Raw(Vec<u8>),
    Branch(Tree),
}

/// Keys keep the order they were first set in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    children: IndexMap<String, Node>,
}

impl Tree {
    /// Sets the JSON text at `path`, replacing whatever was there. Returns
    /// the key's index among the top-level keys when `path` has one segment
    /// (see [`Tree::set_raw_at`]).
    pub fn set_raw(&mut self, path: &[&str], json: impl AsRef<[u8]>) -> Option<usize> {
        let json = json.as_ref();
        let (last, parents) = path.split_last()?;
        let tree = self.branch_at(parents);
        let index = match tree.children.get_index_of(*last) {
            Some(i) => {
                set_node_raw(&mut tree.children[i], json);
                i
            }
            None => tree.children.insert_full((*last).to_string(), Node::Raw(json.to_vec())).0,
        };
        parents.is_empty().then_some(index)
    }

    /// Sets the JSON text of the top-level key at `index`, as `set_raw` of
    /// that key would. Indices stay valid until a key is removed; `false`
    /// when there is no such index.
    pub fn set_raw_at(&mut self, index: usize, json: &[u8]) -> bool {
        match self.children.get_index_mut(index) {
            Some((_, node)) => {
                set_node_raw(node, json);
                true
            }
            None => false,
        }
    }

    /// The top-level key at `index`.
    pub fn key_at(&self, index: usize) -> Option<&str> {
        self.children.get_index(index).map(|(k, _)| k.as_str())
    }

    /// Sets a parsed value at `path`, replacing whatever was there.
    pub fn set(&mut self, path: &[&str], value: Value) {
        if let Some((last, parents)) = path.split_last() {
            self.branch_at(parents).children.insert((*last).to_string(), Node::Leaf(value));
        }
    }

    /// The branch at `path`, created as needed. A whole object met on the way
    /// is opened into a branch; any other value there is replaced.
    fn branch_at(&mut self, path: &[&str]) -> &mut Tree {
        let mut tree = self;
        for seg in path {
            let idx = match tree.children.get_index_of(*seg) {
                Some(i) => i,
                None => tree.children.insert_full((*seg).to_string(), Node::Branch(Tree::default())).0,
            };
            let node = &mut tree.children[idx];
            if !matches!(node, Node::Branch(_)) {
                let opened = match std::mem::replace(node, Node::Leaf(Value::Null)) {
                    Node::Leaf(v) => Tree::from_value(v),
                    Node::Raw(s) => Value::parse_bytes(&s).map(Tree::from_value).unwrap_or_default(),
                    // (media objects are replaced, not opened: see from_value)
                    Node::Branch(_) => unreachable!("invariant: checked above"),
                };
                *node = Node::Branch(opened);
            }
            let Node::Branch(next) = node else { unreachable!("invariant: node was just made a branch") };
            tree = next;
        }
        tree
    }

    /// Removes the subtree at `path`; nothing happens when it is absent.
    pub fn remove(&mut self, path: &[&str]) {
        let Some((last, parents)) = path.split_last() else { return };
        let mut tree = self;
        for seg in parents {
            // Walk existing branches only; a whole object on the way is opened.
            let openable = match tree.children.get(*seg) {
                None => false,
                Some(Node::Branch(_)) | Some(Node::Leaf(Value::Object(_))) => true,
                Some(Node::Raw(s)) => s.trim_ascii_start().starts_with(b"{"),
                Some(Node::Leaf(_)) => false,
            };
            if !openable {
                return;
            }
            tree = tree.branch_at(std::slice::from_ref(seg));
        }
        tree.children.shift_remove(*last);
    }

    /// A plain object opened into a branch; anything else (media objects
    /// included) gives an empty branch.
    fn from_value(v: Value) -> Tree {
        let mut t = Tree::default();
        if v.is_opaque_object() {
            return t;
        }
        if let Value::Object(fields) = v {
            for (k, v) in fields {
                t.children.insert(k, Node::Leaf(v));
            }
        }
        t
    }

    /// Every leaf as `(encoded path, value)`, skipping the top-level keys in
    /// `skip`; `keep(path)` filters by encoded path. A branch emptied by
    /// removals yields nothing (an empty object that was set is `{}`); a branch holding `_type` (W&B media, which the SDK
    /// writes key by key) is written whole, as one object. JSON text that does
    /// not parse is kept as a string and reported through `warn`.
    pub fn flatten_into(
        &self,
        skip: &[&str],
        keep: &mut impl FnMut(&str) -> bool,
        warn: &mut impl FnMut(String),
        out: &mut Vec<(String, Value)>,
    ) {
        let mut path = String::new();
        for (k, node) in &self.children {
            if skip.contains(&k.as_str()) {
                continue;
            }
            path.clear();
            push_segment(&mut path, true, k);
            node.flatten_into(&mut path, keep, warn, out);
        }
    }

    /// The tree as one object value; `path` (the tree's own, restored on
    /// return) names values in warnings.
    pub fn to_value(&self, warn: &mut impl FnMut(String), path: &mut String) -> Value {
        Value::Object(
            self.children
                .iter()
                .map(|(k, n)| {
                    let len = path.len();
                    push_segment(path, false, k);
                    let v = n.to_value(warn, path);
                    path.truncate(len);
                    (k.clone(), v)
                })
                .collect(),
        )
    }
}

/// Replaces a node by JSON text, reusing its buffer when it already held text.
fn set_node_raw(node: &mut Node, json: &[u8]) {
    match node {
        Node::Raw(s) => {
            s.clear();
            s.extend_from_slice(json);
        }
        other => *other = Node::Raw(json.to_vec()),
    }
}

/// Parses JSON text written by the SDK; text that does not parse (or is not
/// UTF-8) is kept as a string, and `path()` names it in the warning.
pub fn parse_or_keep(json: &[u8], path: impl FnOnce() -> String, warn: &mut impl FnMut(String)) -> Value {
    Value::parse_bytes(json).unwrap_or_else(|e| {
        warn(format!("value at {} is not valid JSON ({e}); kept as text", path()));
        Value::Str(String::from_utf8_lossy(json).into_owned())
    })
}

impl Node {
    fn to_value(&self, warn: &mut impl FnMut(String), path: &mut String) -> Value {
        match self {
            Node::Leaf(v) => v.clone(),
            Node::Raw(s) => parse_or_keep(s, || path.clone(), warn),
            Node::Branch(t) => t.to_value(warn, path),
        }
    }

    /// `path` is this node's encoded path; it is grown for the children and
    /// cut back, so building the paths is linear however deep the keys are.
    fn flatten_into(
        &self,
        path: &mut String,
        keep: &mut impl FnMut(&str) -> bool,
        warn: &mut impl FnMut(String),
        out: &mut Vec<(String, Value)>,
    ) {
        match self {
            Node::Leaf(_) | Node::Raw(_) => {
                let v = self.to_value(warn, path);
                flatten_at(path, &v, &mut |p, leaf| {
                    if keep(p) {
                        out.push((p.to_string(), leaf.clone()));
                    }
                });
            }
            // A branch emptied by removals holds nothing.
            Node::Branch(t) if t.children.is_empty() => {}
            Node::Branch(t) if t.children.contains_key("_type") => {
                if keep(path) {
                    let v = t.to_value(warn, path);
                    out.push((path.clone(), v));
                }
            }
            Node::Branch(t) => {
                for (k, child) in &t.children {
                    let len = path.len();
                    push_segment(path, false, k);
                    child.flatten_into(path, keep, warn, out);
                    path.truncate(len);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(t: &Tree) -> Vec<(String, String)> {
        let mut out = Vec::new();
        t.flatten_into(&["_wandb"], &mut |_| true, &mut |w| panic!("unexpected warning {w}"), &mut out);
        out.into_iter().map(|(p, v)| (p, v.to_json())).collect()
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn updates_replace_and_nested_keys_open_objects() {
        let mut t = Tree::default();
        t.set_raw(&["_wandb"], "{}");
        t.set_raw(&["opt"], r#"{"lr": 0.1, "mom": 0.9}"#);
        t.set_raw(&["a.b"], "3");
        t.set_raw(&["opt", "lr"], "0.2");
        t.set_raw(&["x", "y"], "1");
        t.set_raw(&["x", "y"], "2");
        assert_eq!(flat(&t), pairs(&[("opt.lr", "0.2"), ("opt.mom", "0.9"), ("a\\.b", "3"), ("x.y", "2")]));
        // A whole-value update replaces the subtree.
        t.set_raw(&["opt"], "7");
        assert_eq!(flat(&t)[0], ("opt".to_string(), "7".to_string()));
    }

    #[test]
    fn removals_delete_subtrees() {
        let mut t = Tree::default();
        t.set_raw(&["acc"], "1");
        t.set_raw(&["nest", "x"], "1");
        t.set_raw(&["nest", "y"], "2");
        t.set_raw(&["obj"], r#"{"p": 1, "q": 2}"#);
        t.remove(&["acc"]);
        t.remove(&["nest", "x"]);
        t.remove(&["obj", "q"]);
        t.remove(&["missing", "deep"]);
        assert_eq!(flat(&t), pairs(&[("nest.y", "2"), ("obj.p", "1")]));
        t.remove(&["nest", "y"]);
        assert_eq!(flat(&t), pairs(&[("obj.p", "1")]));
        t.set_raw(&["e"], "{}");
        assert_eq!(flat(&t)[1], ("e".to_string(), "{}".to_string()));
    }

    #[test]
    fn media_written_key_by_key_is_one_object() {
        let mut t = Tree::default();
        t.set_raw(&["img", "_type"], "\"image-file\"");
        t.set_raw(&["img", "path"], "\"media/a.png\"");
        t.set_raw(&["loss"], "NaN");
        assert_eq!(flat(&t), pairs(&[("img", r#"{"_type":"image-file","path":"media/a.png"}"#), ("loss", "\"NaN\"")]));
    }

    #[test]
    fn bad_json_is_kept_as_text_with_a_warning() {
        let mut t = Tree::default();
        t.set_raw(&["x"], "{oops");
        let mut warnings = Vec::new();
        let mut out = Vec::new();
        t.flatten_into(&[], &mut |_| true, &mut |w| warnings.push(w), &mut out);
        assert_eq!(out, vec![("x".to_string(), Value::Str("{oops".into()))]);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("value at x"), "{warnings:?}");
    }
}
