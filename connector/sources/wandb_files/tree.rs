//! Config and summary as a tree of keyed values, updated and pruned in log order.

use indexmap::IndexMap;

use crate::columns::{flatten, push_segment};
use crate::value::Value;

/// A node: a whole value, or a branch reached by nested keys.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    Leaf(Value),
    Branch(Tree),
}

/// Keys keep the order they were first set in.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    children: IndexMap<String, Node>,
}

impl Tree {
    /// Sets the value at `path`, replacing whatever was there. A leaf object
    /// met on the way is opened into a branch; any other leaf is replaced.
    pub fn set(&mut self, path: &[&str], value: Value) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut tree = self;
        for seg in parents {
            let node = tree
                .children
                .entry((*seg).to_string())
                .or_insert_with(|| Node::Branch(Tree::default()));
            if let Node::Leaf(v) = node {
                *node = match std::mem::replace(v, Value::Null) {
                    Value::Object(fields) if !fields.iter().any(|(k, _)| k == "_type") => {
                        Node::Branch(Tree::from_fields(fields))
                    }
                    _ => Node::Branch(Tree::default()),
                };
            }
            let Node::Branch(next) = node else {
                unreachable!("invariant: node was just made a branch")
            };
            tree = next;
        }
        tree.children.insert((*last).to_string(), Node::Leaf(value));
    }

    /// Removes the subtree at `path`; nothing happens when it is absent.
    pub fn remove(&mut self, path: &[&str]) {
        let Some((last, parents)) = path.split_last() else {
            return;
        };
        let mut tree = self;
        for seg in parents {
            match tree.children.get_mut(*seg) {
                Some(Node::Branch(next)) => tree = next,
                Some(node @ Node::Leaf(_)) => {
                    // Removing inside a whole object: open it first.
                    if let Node::Leaf(Value::Object(fields)) = node {
                        let fields = std::mem::take(fields);
                        *node = Node::Branch(Tree::from_fields(fields));
                        let Node::Branch(next) = node else {
                            unreachable!("invariant: just made a branch")
                        };
                        tree = next;
                    } else {
                        return;
                    }
                }
                None => return,
            }
        }
        tree.children.shift_remove(*last);
    }

    fn from_fields(fields: Vec<(String, Value)>) -> Tree {
        let mut t = Tree::default();
        for (k, v) in fields {
            t.children.insert(k, Node::Leaf(v));
        }
        t
    }

    /// Every leaf as `(encoded path, value)`, skipping the top-level keys in
    /// `skip`; `keep(path)` filters by encoded path. Empty branches are
    /// written as `{}` leaves.
    pub fn flatten_into(
        &self,
        skip: &[&str],
        keep: &mut impl FnMut(&str) -> bool,
        out: &mut Vec<(String, Value)>,
    ) {
        for (k, node) in &self.children {
            if skip.contains(&k.as_str()) {
                continue;
            }
            let mut path = String::new();
            push_segment(&mut path, true, k);
            node.flatten_into(&path, keep, out);
        }
    }
}

impl Node {
    fn flatten_into(
        &self,
        prefix: &str,
        keep: &mut impl FnMut(&str) -> bool,
        out: &mut Vec<(String, Value)>,
    ) {
        match self {
            Node::Leaf(v) => flatten(prefix, v, &mut |p, leaf| {
                if keep(p) {
                    out.push((p.to_string(), leaf.clone()));
                }
            }),
            Node::Branch(t) if t.children.is_empty() => {
                if keep(prefix) {
                    out.push((prefix.to_string(), Value::Object(Vec::new())));
                }
            }
            Node::Branch(t) => {
                for (k, child) in &t.children {
                    let mut path = prefix.to_string();
                    push_segment(&mut path, false, k);
                    child.flatten_into(&path, keep, out);
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
        t.flatten_into(&["_wandb"], &mut |_| true, &mut out);
        out.into_iter().map(|(p, v)| (p, v.to_json())).collect()
    }

    #[test]
    fn updates_replace_and_nested_keys_open_objects() {
        let mut t = Tree::default();
        t.set(&["_wandb"], Value::parse("{}").unwrap());
        t.set(
            &["opt"],
            Value::parse(r#"{"lr": 0.1, "mom": 0.9}"#).unwrap(),
        );
        t.set(&["a.b"], Value::Int(3));
        t.set(&["opt", "lr"], Value::Float(0.2));
        t.set(&["x", "y"], Value::Int(1));
        assert_eq!(
            flat(&t),
            [
                ("opt.lr", "0.2"),
                ("opt.mom", "0.9"),
                ("a\\.b", "3"),
                ("x.y", "1")
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // A whole-value update replaces the subtree.
        t.set(&["opt"], Value::Int(7));
        assert_eq!(flat(&t)[0], ("opt".to_string(), "7".to_string()));
    }

    #[test]
    fn removals_delete_subtrees() {
        let mut t = Tree::default();
        t.set(&["acc"], Value::Int(1));
        t.set(&["nest", "x"], Value::Int(1));
        t.set(&["nest", "y"], Value::Int(2));
        t.set(&["obj"], Value::parse(r#"{"p": 1, "q": 2}"#).unwrap());
        t.remove(&["acc"]);
        t.remove(&["nest", "x"]);
        t.remove(&["obj", "q"]);
        t.remove(&["missing", "deep"]);
        assert_eq!(
            flat(&t),
            [("nest.y", "2"), ("obj.p", "1")].map(|(a, b)| (a.to_string(), b.to_string()))
        );
        t.remove(&["nest", "y"]);
        assert_eq!(flat(&t)[0], ("nest".to_string(), "{}".to_string()));
    }
}
