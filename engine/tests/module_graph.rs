//! The engine's module graph, read from its sources: every `crate::<module>` path in a
//! top-level module's files is an arrow. The arrows must form no cycle, so that the layers
//! stay what docs/architecture.md says they are (server → data → storage, crypto).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

fn module_graph() -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph = Graph::new();
    let mut pending = vec![root.clone()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap();
            let top = relative.components().next().unwrap().as_os_str().to_str().unwrap();
            let top = top.strip_suffix(".rs").unwrap_or(top);
            // The crate root and the binary (src/bin) see everything by design.
            if top == "lib" || top == "bin" || path.extension().is_none_or(|extension| extension != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let arrows = graph.entry(top.to_owned()).or_default();
            for (at, _) in text.match_indices("crate::") {
                let name: String = text[at + "crate::".len()..]
                    .chars()
                    .take_while(|character| character.is_ascii_lowercase() || *character == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    arrows.insert(name);
                }
            }
        }
    }
    graph
}

/// A cycle through `from`, if there is one.
fn cycle(graph: &Graph, from: &str) -> Option<Vec<String>> {
    fn visit(
        graph: &Graph,
        node: &str,
        start: &str,
        path: &mut Vec<String>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        for next in graph.get(node).into_iter().flatten() {
            if next == start {
                return true;
            }
            if seen.insert(next.clone()) {
                path.push(next.clone());
                if visit(graph, next, start, path, seen) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_owned()];
    visit(graph, from, from, &mut path, &mut BTreeSet::new()).then_some(path)
}

#[test]
fn the_modules_form_no_cycle() {
    let graph = module_graph();
    for (module, arrows) in &graph {
        println!("{module} -> {}", arrows.iter().cloned().collect::<Vec<_>>().join(", "));
    }
    for module in graph.keys() {
        if let Some(cycle) = cycle(&graph, module) {
            panic!("module cycle: {} -> {module}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_layers_point_one_way() {
    let graph = module_graph();
    let forbidden = [
        ("data", ["server", "config", "audit"].as_slice()),
        ("storage", ["server", "config", "data", "crypto", "auth"].as_slice()),
        ("crypto", ["server", "config", "data", "storage"].as_slice()),
    ];
    for (module, below) in forbidden {
        let arrows = &graph[module];
        for name in below {
            assert!(!arrows.contains(*name), "{module} must not use crate::{name}");
        }
    }
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let mut graph = Graph::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&graph, "a"), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(cycle(&graph, "a"), Some(vec!["a".into(), "b".into(), "c".into()]));
}
