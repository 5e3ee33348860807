//! A radix tree over path bytes mapping literal prefixes and exact paths to
//! the (ascending) indices of the routes that use them. Walking a request
//! path visits every node whose key is a prefix of the path, so the routes
//! whose `prefix` matches are found in O(path length), whatever the number
//! of routes; the node the walk ends on also yields the `path` (exact)
//! routes. A case-insensitive tree stores lowercase keys and folds the
//! request path while walking.

#[derive(Debug)]
struct Edge {
    label: Box<[u8]>,
    child: u32,
}

#[derive(Debug, Default)]
struct Node {
    /// The first byte of each edge's label, sorted (distinct); kept apart
    /// from the edges so the search reads one small contiguous array.
    firsts: Vec<u8>,
    /// In the order of `firsts`.
    edges: Vec<Edge>,
    /// Routes whose prefix is this node's key, ascending.
    prefix_routes: Vec<u32>,
    /// Routes whose exact path is this node's key, ascending.
    exact_routes: Vec<u32>,
}

#[derive(Debug)]
pub(crate) struct PathIndex {
    nodes: Vec<Node>,
    fold_case: bool,
}

impl PathIndex {
    pub(crate) fn new(fold_case: bool) -> Self {
        Self {
            nodes: vec![Node::default()],
            fold_case,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        let root = &self.nodes[0];
        root.firsts.is_empty() && root.prefix_routes.is_empty() && root.exact_routes.is_empty()
    }

    /// Adds a route; routes must be added in ascending index order.
    pub(crate) fn insert(&mut self, key: &str, exact: bool, route: u32) {
        let key: Vec<u8> = if self.fold_case {
            key.bytes().map(|b| b.to_ascii_lowercase()).collect()
        } else {
            key.as_bytes().to_vec()
        };
        let mut node = 0usize;
        let mut rest: &[u8] = &key;
        while let Some(&first) = rest.first() {
            match self.nodes[node].firsts.binary_search(&first) {
                Err(pos) => {
                    let child = self.nodes.len() as u32;
                    self.nodes.push(Node::default());
                    self.nodes[node].firsts.insert(pos, first);
                    self.nodes[node].edges.insert(
                        pos,
                        Edge {
                            label: rest.into(),
                            child,
                        },
                    );
                    node = child as usize;
                    rest = &[];
                }
                Ok(pos) => {
                    let label = &self.nodes[node].edges[pos].label;
                    let common = label.iter().zip(rest).take_while(|(a, b)| a == b).count();
                    if common < label.len() {
                        // Split the edge at `common`.
                        let mid = self.nodes.len() as u32;
                        let edge = &mut self.nodes[node].edges[pos];
                        let tail: Box<[u8]> = edge.label[common..].into();
                        let old_child = edge.child;
                        edge.label = edge.label[..common].into();
                        edge.child = mid;
                        self.nodes.push(Node {
                            firsts: vec![tail[0]],
                            edges: vec![Edge {
                                label: tail,
                                child: old_child,
                            }],
                            ..Node::default()
                        });
                    }
                    node = self.nodes[node].edges[pos].child as usize;
                    rest = &rest[common..];
                }
            }
        }
        let n = &mut self.nodes[node];
        if exact {
            n.exact_routes.push(route);
        } else {
            n.prefix_routes.push(route);
        }
    }

    /// Calls `visit` with every candidate list for `path`: the prefix routes
    /// of each node along the path, then the exact routes of the path's own
    /// node. Each list is ascending. Allocation-free.
    #[inline]
    pub(crate) fn walk(&self, path: &[u8], mut visit: impl FnMut(&[u32])) {
        let mut node = &self.nodes[0];
        let mut pos = 0usize;
        loop {
            if !node.prefix_routes.is_empty() {
                visit(&node.prefix_routes);
            }
            let Some(&b) = path.get(pos) else {
                if !node.exact_routes.is_empty() {
                    visit(&node.exact_routes);
                }
                return;
            };
            let b = if self.fold_case {
                b.to_ascii_lowercase()
            } else {
                b
            };
            let firsts = &node.firsts;
            let found = if firsts.len() <= 8 {
                firsts.iter().position(|&f| f == b)
            } else {
                firsts.binary_search(&b).ok()
            };
            let Some(i) = found else {
                return;
            };
            let edge = &node.edges[i];
            let Some(seg) = path.get(pos..pos + edge.label.len()) else {
                return;
            };
            // Labels are mostly short, where a byte loop beats a `memcmp`
            // call.
            let same = if self.fold_case {
                seg.iter()
                    .zip(edge.label.iter())
                    .all(|(a, l)| a.to_ascii_lowercase() == *l)
            } else if seg.len() <= 16 {
                seg.iter().zip(edge.label.iter()).all(|(a, l)| a == l)
            } else {
                seg == &*edge.label
            };
            if !same {
                return;
            }
            pos += edge.label.len();
            node = &self.nodes[edge.child as usize];
        }
    }

    /// Number of nodes (for tests and diagnostics).
    #[allow(dead_code)]
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }
}
