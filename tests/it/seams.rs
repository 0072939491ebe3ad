//! The shape of the code: no two modules of a crate import each other, directly or through
//! a longer loop (a module is named by what it defines; comments and doc links do not
//! count), so each crate's modules can be read bottom-up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The modules of the crate at `src` (one per `.rs` file, a folder's `mod.rs` by the
/// folder's name) and their source with the comment lines taken out.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let (name, file) = if path.is_dir() {
            (
                path.file_name().unwrap().to_string_lossy().to_string(),
                path.join("mod.rs"),
            )
        } else if path.extension().is_some_and(|e| e == "rs") {
            (
                path.file_stem().unwrap().to_string_lossy().to_string(),
                path.clone(),
            )
        } else {
            continue;
        };
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let code: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect();
        out.insert(name, code.join("\n"));
    }
    out
}

/// The identifiers after `crate::` and inside `use crate::{…}` groups.
fn references(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + 7..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(|c: char| !(c.is_alphanumeric() || c == '_')) {
                if !part.is_empty() {
                    out.insert(part.to_string());
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// The public (or crate-public) items a module defines.
fn definitions(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in code.lines() {
        let l = line.trim_start();
        let Some(rest) = l
            .strip_prefix("pub(crate) ")
            .or_else(|| l.strip_prefix("pub "))
        else {
            continue;
        };
        for kind in [
            "struct ", "enum ", "fn ", "trait ", "type ", "const ", "static ", "mod ",
        ] {
            if let Some(name) = rest.strip_prefix(kind) {
                let name: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
        }
    }
    out
}

/// A loop of imports among `modules`, if there is one.
fn a_loop(modules: &BTreeMap<String, String>) -> Option<Vec<String>> {
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    for (m, code) in modules {
        if m != "lib" && m != "main" {
            for d in definitions(code) {
                owner.entry(d).or_insert_with(|| m.clone());
            }
        }
    }
    let edges: BTreeMap<&str, BTreeSet<&str>> = modules
        .iter()
        .map(|(m, code)| {
            let to = references(code)
                .into_iter()
                .filter_map(|r| {
                    let target = if modules.contains_key(&r) {
                        modules.get_key_value(&r).map(|(k, _)| k.as_str())
                    } else {
                        owner.get(&r).map(String::as_str)
                    }?;
                    (target != m && target != "lib" && target != "main").then_some(target)
                })
                .collect();
            (m.as_str(), to)
        })
        .collect();
    // Depth-first search for a back edge.
    fn visit<'a>(
        m: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| *p == m) {
            let mut l: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            l.push(m.to_string());
            return Some(l);
        }
        if !done.insert(m) {
            return None;
        }
        path.push(m);
        for next in edges.get(m).into_iter().flatten() {
            if let Some(l) = visit(next, edges, path, done) {
                return Some(l);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        if let Some(l) = visit(m, &edges, &mut Vec::new(), &mut done) {
            return Some(l);
        }
    }
    None
}

#[test]
fn no_crate_has_an_import_loop_among_its_modules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut loops = Vec::new();
    let mut crates = 0;
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        if let Some(l) = a_loop(&modules(&src)) {
            loops.push(format!("{}: {}", src.display(), l.join(" -> ")));
        }
    }
    assert!(crates >= 10, "found only {crates} crates");
    assert!(loops.is_empty(), "import loops:\n{}", loops.join("\n"));
}

#[test]
fn the_loop_finder_finds_a_loop() {
    let mods: BTreeMap<String, String> = [
        ("lib", "mod a; mod b; mod c;"),
        ("a", "use crate::b::Thing;\npub fn f() {}"),
        ("b", "pub struct Thing;\nfn g() { crate::c::h() }"),
        (
            "c",
            "// crate::a::f in a comment does not count\npub fn h() { crate::f() }",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let l = a_loop(&mods).expect("a -> b -> c -> a");
    assert_eq!(l.first(), l.last());
    assert_eq!(l.len(), 4, "{l:?}");
    let mut without = mods.clone();
    without.insert("c".into(), "pub fn h() {}".into());
    assert_eq!(a_loop(&without), None);
}

/// The workspace crates a crate depends on for building (its `[dependencies]`, not its
/// dev- or build-dependencies), directly or not, from the manifests.
fn closure(root: &Path, krate: &str) -> BTreeSet<String> {
    let direct = |name: &str| -> Vec<String> {
        let manifest = std::fs::read_to_string(root.join("crates").join(name).join("Cargo.toml"))
            .unwrap_or_default();
        direct_dependencies(&manifest)
            .into_iter()
            .map(|d| d.trim_end_matches('?').to_string())
            .collect()
    };
    let mut seen = BTreeSet::new();
    let mut todo = vec![krate.to_string()];
    while let Some(c) = todo.pop() {
        for d in direct(&c) {
            if seen.insert(d.clone()) {
                todo.push(d);
            }
        }
    }
    seen
}

/// Decoding a picture compiles no part of the render stack: nst-io needs the pixels in
/// memory (nst-image), the tensors and the network's input convention, nothing of autodiff,
/// the losses, the optimizers, the linear algebra or the render; and the network itself does
/// not need autodiff.
#[test]
fn the_io_and_the_network_do_not_pull_in_the_render_stack() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let io = closure(root, "nst-io");
    assert!(
        io.contains("nst-image") && io.contains("nst-tensor"),
        "{io:?}"
    );
    for heavy in [
        "nst-style",
        "nst-autodiff",
        "nst-loss",
        "nst-optim",
        "nst-linalg",
    ] {
        assert!(!io.contains(heavy), "nst-io depends on {heavy}: {io:?}");
    }
    let vgg = closure(root, "nst-vgg");
    assert!(!vgg.contains("nst-autodiff"), "{vgg:?}");
    // The reader sees a dependency when there is one.
    assert!(closure(root, "nst-style").contains("nst-autodiff"));
}

/// The handles a program keeps own what they use: `Send` and `Sync` (with the CPU backend,
/// and with any backend, since every backend is), `'static`, storable in a struct.
#[test]
fn the_handles_are_owned_send_and_sync() {
    fn owned<T: Send + Sync + 'static>() {}
    fn sendable<T: Send + 'static>() {}
    fn any_backend<B: nst_tensor::Backend>() {
        owned::<nst_vgg::Vgg<B>>();
        owned::<nst_features::FeatureExtractor<B>>();
        owned::<nst_style::Objective<B>>();
        sendable::<nst_style::RenderSession<B>>();
    }
    any_backend::<nst_cpu::Cpu>();
    any_backend::<nst_cpu::Cpu64>();
    // A handle is a clone of an `Arc`: the weights are shared, not copied.
    let cpu = nst_cpu::Cpu::new(1);
    let vgg = nst_vgg::Vgg::random_narrow_for_tests(&cpu, nst_vgg::Arch::Vgg19, 8, 1).unwrap();
    let other = vgg.clone();
    let (a, b) = (
        &vgg.conv_params(0).unwrap().0,
        &other.conv_params(0).unwrap().0,
    );
    assert!(a.same_buffer(b));
}

/// The workspace crates a manifest names in `[dependencies]` (its dev- and
/// build-dependencies aside), an optional one marked `?`.
fn direct_dependencies(manifest: &str) -> BTreeSet<String> {
    let mut section = String::new();
    let mut out = BTreeSet::new();
    for line in manifest.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            section = l.to_string();
        } else if section == "[dependencies]" && l.starts_with("nst-") {
            let name = l.split(['.', ' ', '=']).next().unwrap_or("").to_string();
            let optional = l.contains("optional = true");
            out.insert(if optional { format!("{name}?") } else { name });
        }
    }
    out
}

/// docs/architecture.md's crate graph is the manifests' (every crate, the facade and xtask):
/// the block under "## Crate graph" lists each package and the workspace crates it depends
/// on, and this test reads both.
#[test]
fn the_documented_crate_graph_is_the_manifests() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut manifests: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut add = |name: &str, path: &Path| {
        let text = std::fs::read_to_string(path).unwrap();
        manifests.insert(name.to_string(), direct_dependencies(&text));
    };
    add("nst", &root.join("Cargo.toml"));
    add("xtask", &root.join("xtask").join("Cargo.toml"));
    for entry in std::fs::read_dir(root.join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        add(&name, &dir.join("Cargo.toml"));
    }
    let doc = std::fs::read_to_string(root.join("docs").join("architecture.md")).unwrap();
    let block: Vec<&str> = doc
        .lines()
        .skip_while(|l| *l != "## Crate graph")
        .skip_while(|l| *l != "```text")
        .skip(1)
        .take_while(|l| *l != "```")
        .collect();
    let documented: BTreeMap<String, BTreeSet<String>> = block
        .iter()
        .map(|l| {
            let (name, deps) = l.split_once("->").expect("`name -> deps` lines");
            let deps = deps
                .split(',')
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(String::from)
                .collect();
            (name.trim().to_string(), deps)
        })
        .collect();
    assert!(
        !documented.is_empty(),
        "no crate graph in docs/architecture.md"
    );
    for (name, deps) in &manifests {
        assert_eq!(
            documented.get(name),
            Some(deps),
            "docs/architecture.md's crate graph: {name} -> {deps:?}"
        );
    }
    assert_eq!(documented.len(), manifests.len(), "{documented:?}");
}
