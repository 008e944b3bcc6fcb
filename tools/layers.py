#!/usr/bin/env python3
"""Keep hotsock's host crate layered one way and free of import cycles.

hotsock reads top to bottom, `cli -> server -> runtime -> leaves`, with
nothing pointing back up, so that each layer can be read, tested and changed
knowing only the ones below it, and a new capability has one obvious room (a
flag is cli, a listener option is server, a WIT interface is runtime). Rust
lets the modules of a crate use each other freely, so only a check keeps it
that way. `make lint` runs this script over `host/src`, which holds two crate
roots: `lib.rs` (the library, `hotsock`) and `main.rs` (the binary, which
refers to the library as `hotsock::...`).

It finds every module file by following `mod name;` from both roots, and every
reference from a file to another module: `use` trees (grouped, nested, `pub`,
renamed), plain code paths (`crate::cache::default_dir()`, also inside macro
calls such as `bindgen!`), `self::`/`super::` paths, `hotsock::` in the
binary, and 2018 paths that start with a child module's name. Comments and
string literals are skipped by a small tokenizer. Each path becomes an edge to
the file of the longest prefix that is a module. Then it checks:

1. no cycles between files (each strongly connected component is a cycle);
2. every top-level library module is in one of the LAYERS below, and every
   edge goes down a layer, stays within one top-level module, or joins two
   leaves;
3. no file but lib.rs refers to the crate root: refer to the module itself,
   not to a re-export at the root.

Usage: tools/layers.py [host/src]   |   tools/layers.py --self-test
Exit 0 when clean, 1 with every problem listed, 2 on a usage error.
Test modules (`#[cfg(test)] mod tests`) are not part of the layering and are
skipped. Not understood: `#[path]` attributes, modules made by macros,
`::hotsock::` with a leading `::`, and names brought in by a glob import.
"""

import argparse
import re
import sys
import tempfile
from pathlib import Path

# Top to bottom: (layer, its top-level modules). The binary, main.rs and every
# module it declares (cli/...), counts as one top-level module, BINARY. The
# others are the library's top-level modules: when you add one, put it in a
# layer here and give it a line in lib.rs's crate map.
LAYERS = [
    ("cli", ("cli",)),  # the command line, turned into the library's settings
    ("server", ("server",)),  # TCP: accept, admission, workers, registry, admin
    ("runtime", ("runtime",)),  # WebAssembly only: engine, linker, store, limits
    ("leaves", ("watchdog", "sys", "units", "wire")),  # depend on nothing above them
]
BINARY = "cli"
LEAVES = "leaves"  # leaves may use each other; a cycle among them is still caught
LIB, BIN = "hotsock", "main"  # the two crates; the binary calls the library LIB

# How a raw string starts: r"..", r#".."#, br"..", cr"..". (b"..", b'.' are an
# identifier `b` before an ordinary literal, which reads the same.)
RAW = re.compile(r"(?:br|cr|r)(#*)\"")


class UsageError(Exception):
    """A problem with the input rather than with the layering: exit 2."""


def tokenize(text):
    """Return the tokens of Rust source as (kind, text, line), kind in
    'id', 'lit', 'p'. Comments vanish; string and char literals become one
    'lit' token, so a path inside them is never seen; `'a` lifetimes are not
    taken for chars. `::` is one token, other punctuation one char each."""
    toks, i, n, line = [], 0, len(text), 1
    while i < n:
        c, start = text[i], i
        raw = RAW.match(text, i) if c in "bcr" else None
        if c.isspace():
            i += 1
        elif text.startswith("//", i):
            i = text.find("\n", i)
            i = n if i < 0 else i
            continue
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif raw:  # no escapes; ends at a quote and as many hashes
            end = '"' + raw.group(1)
            i = text.find(end, raw.end())
            i = n if i < 0 else i + len(end)
            toks.append(("lit", "", line))
        elif c == '"':  # escapes; ends at the next unescaped quote
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            toks.append(("lit", "", line))
        elif c == "'":  # a char literal, or the quote of a lifetime / label
            if text.startswith("\\'", i + 1):  # '\''
                i += 4
            elif text.startswith("\\", i + 1):  # '\n', '\u{..}'
                i = text.find("'", i + 2)
                i = n if i < 0 else i + 1
            elif text.startswith("'", i + 2):  # 'x'
                i += 3
            else:  # 'a, 'static, 'outer: the name follows as an identifier
                i += 1
                continue
            toks.append(("lit", "", line))
        elif c.isalnum() or c == "_":
            if text.startswith("r#", i) and i + 2 < n and (text[i + 2].isalpha() or text[i + 2] == "_"):
                i += 2  # raw identifier r#name
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            toks.append(("id", text[i:j], line))
            i = j
        else:
            p = "::" if text.startswith("::", i) else c
            toks.append(("p", p, line))
            i += len(p)
        line += text.count("\n", start, i)
    return toks


def closing(toks, i, open_, close):
    """Index just past the bracket that closes the one at toks[i]."""
    depth = 0
    for j in range(i, len(toks)):
        if toks[j][1] == open_ and toks[j][0] == "p":
            depth += 1
        elif toks[j][1] == close and toks[j][0] == "p":
            depth -= 1
            if depth == 0:
                return j + 1
    return len(toks)


def use_tree(toks, i, prefix, out):
    """Parse one use tree at toks[i] under `prefix`, appending each full path
    as (line, segments) to `out`; return the index after the tree."""
    segs, line = list(prefix), None
    while i < len(toks):
        kind, text, _ = toks[i]
        if kind == "id" and text != "as":
            segs.append(text)
            line = toks[i][2]
            i += 1
            if i < len(toks) and toks[i][1] == "::":
                i += 1
                continue
        elif text == "::":  # a leading ::
            i += 1
            continue
        elif text == "*":
            segs.append("*")  # shown, never a module
            i += 1
        elif text == "{":
            i += 1
            while i < len(toks) and toks[i][1] != "}":
                j = use_tree(toks, i, segs, out)
                if j == i:  # not a use tree (a macro's `$x`): give up on this group
                    break
                i = j
                if i < len(toks) and toks[i][1] == ",":
                    i += 1
            return i + 1
        break
    if i + 1 < len(toks) and toks[i][1] == "as":
        i += 2
    if len(segs) > 1 and segs[-1] == "self":
        segs.pop()
    if segs and line is not None:
        out.append((line, segs))
    return i


def scan(toks):
    """Read one file's tokens. Return (mods, refs): mods are out-of-line
    `mod name;` declarations as (inline path, name, line); refs are paths as
    (inline path, line, segments), where the inline path names the inline
    `mod x { }` blocks the reference sits in. Test modules are skipped."""
    mods, refs, inline, depth, test = [], [], [], 0, False
    i = 0
    while i < len(toks):
        kind, text, line = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "#" and kind == "p" and nxt in ("[", "!"):  # an attribute
            j = i + (2 if nxt == "!" else 1)
            end = closing(toks, j, "[", "]")
            test = test or (nxt == "[" and "".join(t[1] for t in toks[j + 1:end - 1]) == "cfg(test)")
            i = end
            continue
        if text == "pub" and kind == "id":  # pub(crate), pub(in path): no reference
            i = closing(toks, i + 1, "(", ")") if nxt == "(" else i + 1
            continue
        if text == "mod" and kind == "id" and i + 2 < len(toks) and toks[i + 1][0] == "id":
            after = toks[i + 2][1]
            if after == "{" and test:
                i = closing(toks, i + 2, "{", "}")
            elif after == "{":
                inline.append((depth, nxt))
                depth, i = depth + 1, i + 3
            else:
                if not test:
                    mods.append((tuple(n for _, n in inline), nxt, line))
                i += 3
            test = False
            continue
        test = False
        here = tuple(n for _, n in inline)
        if text == "use" and kind == "id":
            found = []
            i = use_tree(toks, i + 1, (), found)
            refs += [(here, ln, segs) for ln, segs in found]
            continue
        if text == "{":
            depth += 1
        elif text == "}":
            depth -= 1
            if inline and inline[-1][0] == depth:
                inline.pop()
        elif kind == "id" and nxt == "::" and (i == 0 or toks[i - 1][1] not in ("::", ".")):
            segs, j = [text], i + 1
            while j + 1 < len(toks) and toks[j][1] == "::" and toks[j + 1][0] == "id":
                segs.append(toks[j + 1][1])
                j += 2
            if len(segs) > 1:
                refs.append((here, toks[j - 1][2], segs))
            i = j
            continue
        i += 1
    return mods, refs


def discover(src):
    """Follow `mod name;` from lib.rs and main.rs. Return {(crate, module
    path): file} and {file: (crate, module path, refs as scan() gives them)}."""
    modules, files = {}, {}
    todo = [(LIB, (), src / "lib.rs"), (BIN, (), src / "main.rs")]
    todo = [t for t in todo if t[2].exists()]
    if not todo:
        raise UsageError(f"{src}: neither lib.rs nor main.rs is there")
    while todo:
        crate, path, file = todo.pop()
        modules[(crate, path)] = file
        mods, refs = scan(tokenize(file.read_text(encoding="utf-8")))
        files.setdefault(file, (crate, path, refs))
        own = file.parent if file.name in ("lib.rs", "main.rs", "mod.rs") else file.with_suffix("")
        for inline, name, line in mods:
            d = own.joinpath(*inline)
            found = [f for f in (d / f"{name}.rs", d / name / "mod.rs") if f.exists()]
            if len(found) != 1:
                a, b = (f.relative_to(src).as_posix() for f in (d / f"{name}.rs", d / name / "mod.rs"))
                what = f"neither {a} nor {b} exists" if not found else f"both {a} and {b} exist"
                raise UsageError(f"{file.relative_to(src)}:{line}: `mod {name};` but {what}")
            todo.append((crate, path + inline + (name,), found[0]))
    return modules, files


def resolve(segs, crate, here, modules):
    """The (crate, module path) a path refers to: its longest prefix that is
    a known module, or None when the path leaves the crate (std::, anyhow::)."""
    first, rest = segs[0], list(segs[1:])
    if first == LIB and crate == BIN:
        crate, first = LIB, "crate"
    if (crate, ()) not in modules:
        return None
    if first == "crate":
        base = ()
    elif first == "self":
        base = here
    elif first == "super":
        base = here[:-1] if here else None
        while base is not None and rest and rest[0] == "super":
            base, rest = (base[:-1] if base else None), rest[1:]
        if base is None:
            return None
    elif (crate, here + (first,)) in modules:
        base, rest = here, list(segs)
    else:
        return None
    while (crate, base) not in modules:  # inside an inline module
        base = base[:-1]
    for seg in rest:
        if (crate, base + (seg,)) not in modules:
            break
        base += (seg,)
    return crate, base


def tarjan(graph):
    """Strongly connected components of {node: set(nodes)}, iteratively."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    comps.append(sorted(comp))
    return comps


def top_module(crate, path):
    """The top-level module a file is in: BINARY for the binary, None for lib.rs."""
    if crate == BIN:
        return BINARY
    return path[0] if path else None


def check(src):
    """Check the crate directory `src`. Return (files, edges, problems):
    edges map (from, to) file names to their [(line, path)] sites."""
    if not src.is_dir():
        raise UsageError(f"{src}: no such directory")
    modules, files = discover(src)
    name = {f: f.relative_to(src).as_posix() for f in files}
    top_of = {name[f]: top_module(crate, path) for f, (crate, path, _) in files.items()}
    edges = {}
    for file, (crate, path, refs) in files.items():
        for inline, line, segs in refs:
            target = resolve(segs, crate, path + inline, modules)
            if target and modules[target] != file:
                sites = edges.setdefault((name[file], name[modules[target]]), [])
                if line not in (ln for ln, _ in sites):  # one path per line is enough to find it
                    sites.append((line, "::".join(segs)))
    graph = {n: set() for n in name.values()}
    for a, b in edges:
        if top_of[b] is not None:  # an edge into lib.rs is reported on its own, below
            graph[a].add(b)
    problems = []
    for comp in tarjan(graph):
        if len(comp) > 1:
            lines = [f"cycle between {len(comp)} files: {', '.join(comp)}"]
            for (a, b), sites in sorted(edges.items()):
                if a in comp and b in comp:
                    lines.append(f"  {a} -> {b}")
                    lines += [f"    {a}:{ln}: {p}" for ln, p in sites]
            problems.append("\n".join(lines))
    layer = {m: k for k, (_, ms) in enumerate(LAYERS) for m in ms}
    leaf = [n for n, _ in LAYERS].index(LEAVES)
    order = " -> ".join(n for n, _ in LAYERS)
    for m in sorted({t for t in top_of.values() if t and t not in layer}):
        problems.append(f"module `{m}` is in no layer: add it to LAYERS in tools/layers.py "
                        f"(and to the crate map in lib.rs)")
    up = []
    for (a, b), sites in sorted(edges.items()):
        ta, tb = top_of[a], top_of[b]
        if tb is None:
            problems += [f"{a}:{ln}: {p} names the crate root: refer to the module, "
                         f"not a re-export at the crate root" for ln, p in sites]
        elif ta is None or ta == tb or ta not in layer or tb not in layer:
            continue
        elif layer[tb] <= layer[ta] and not layer[ta] == layer[tb] == leaf:
            up += [f"  {ta} -> {tb} ({a}:{ln}: {p})" for ln, p in sites]
    if up:
        problems.append(f"edges pointing up the layers ({order}):\n" + "\n".join(up))
    return files, edges, problems


def main(argv=None):
    """Command line: check a crate directory, or run the self-test."""
    default = Path(__file__).resolve().parent.parent / "host" / "src"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", nargs="?", type=Path, default=default, help=f"crate directory (default {default})")
    ap.add_argument("--self-test", action="store_true", help="check this script on synthetic crates")
    args = ap.parse_args(argv)
    if args.self_test:
        return self_test()
    try:
        files, edges, problems = check(args.src)
    except UsageError as e:
        print(f"layers: {e}", file=sys.stderr)
        return 2
    if problems:
        print("\n".join(problems))
        print(f"layers: {len(problems)} problem(s) in {args.src}")
        return 1
    print(f"layers: {len(files)} files, {len(edges)} edges, no cycles, layers one way")
    return 0


CLEAN = {  # a small crate laid out as hotsock should be: 10 files, 16 edges
    "lib.rs": "//! [`crate::server`]\npub mod server;\n#[allow(missing_docs)]\npub mod runtime;\n"
              "pub mod watchdog;\npub mod units;\npub use runtime::Runtime;\n",
    "main.rs": "mod cli;\nuse hotsock::server::{self, run as serve};\nfn main() { cli::go(); }\n",
    "cli/mod.rs": "pub mod serve;\npub fn go() { serve::now(hotsock::runtime::engine::new()) }\n",
    "cli/serve.rs": "use hotsock::{server::Server, units::{Bytes, Secs}};\n",
    "server/mod.rs": "mod accept;\nuse crate::runtime::{Runtime, engine};\nuse accept::Acceptor;\n",
    "server/accept.rs": "use crate::watchdog::Watchdog;\n",
    "runtime/mod.rs": "pub mod engine;\npub use engine::Runtime;\n"
                      "mod imp { use super::super::units::Bytes; }\n",
    "runtime/engine.rs": "pub(crate) use crate::units::Bytes;\n"
                         "fn f<'a>(s: &'a str) -> char { let _ = r#\"x\"#; '\"' }\n"
                         "fn g() { crate::watchdog::start(); }\npub(in crate::runtime) fn k() {}\n",
    "watchdog.rs": "use crate::units::Secs;\n"
                   "#[cfg(test)]\nmod tests { use super::*; use crate::server::Server; }\n",
    "units.rs": "pub struct Bytes;\n",
}

# Paths that only look like references; misreading any literal exposes one of
# them, or hides the one real reference (watchdog -> units) on the last line.
TRICKY = r"""//! crate::server
/// [`crate::server::S`]
// crate::server
/* a /* b */ crate::server */
const A: &str = "crate::server\" crate::server";
const B: &str = r#"say "crate::server" now"#;
const C: &str = r"C:\"; const D: &str = "crate::server";
const E: [char; 2] = ['\'','"']; const F: &str = "crate::server";
const G: &[u8] = br"\"; const H: u8 = b'"'; const I: &str = "crate::server";
fn f<'a>(x: &'a str) -> &'a str { 'outer: loop { break 'outer x; } }
fn g() -> [char; 3] { ['\u{1F600}','"', '\\'] }
fn h() { let _ = crate::units::Secs; }
"""

# (name, files that differ from CLEAN, exit code, what the output must say;
# a leading ! means it must not say that)
CASES = [
    ("clean", {}, 0, ["10 files, 16 edges"]),
    ("grouped use cycle", {
        "runtime/mod.rs": "pub mod engine;\npub mod pool;\n",
        "runtime/pool.rs": "use crate::runtime::{engine::{self, E}, Other};\n",
        "runtime/engine.rs": "use crate::{units::B, runtime::pool::Pool as P};\n",
    }, 1, ["cycle between 2 files: runtime/engine.rs, runtime/pool.rs",
           "runtime/engine.rs:1: crate::runtime::pool::Pool", "runtime/pool.rs:1: crate::runtime::engine"]),
    ("upward code path", {
        "runtime/mod.rs": CLEAN["runtime/mod.rs"] + "mod pool;\n",
        "runtime/pool.rs": "fn f() {\n    let x = vec![crate::server::Server::new()];\n}\n",
    }, 1, ["!cycle", "runtime -> server (runtime/pool.rs:2: crate::server::Server::new)"]),
    ("super cycle", {
        "runtime/mod.rs": "pub mod engine;\npub struct Runtime(engine::pool::Pool);\n",
        "runtime/engine.rs": "pub mod pool;\n",
        "runtime/engine/pool.rs": "use super::super::Runtime;\n",
    }, 1, ["runtime/engine/pool.rs:1: super::super::Runtime", "runtime/mod.rs:2: engine::pool::Pool"]),
    ("comments and strings", {"watchdog.rs": TRICKY}, 0, ["10 files, 16 edges"]),
    ("uniform child path", {
        "runtime/mod.rs": "mod engine;\npub use engine::Runtime;\n",
        "runtime/engine.rs": "pub struct Runtime(crate::runtime::Config);\n",
    }, 1, ["runtime/mod.rs:2: engine::Runtime", "runtime/engine.rs:1: crate::runtime::Config"]),
    ("crate root and unlisted", {
        "lib.rs": CLEAN["lib.rs"] + "pub mod extra;\n",
        "extra.rs": "",
        "units.rs": "use crate::Runtime;\n",
        "main.rs": "fn main() { hotsock::Runtime::new(); }\n",
    }, 1, ["units.rs:1: crate::Runtime names the crate root", "main.rs:1: hotsock::Runtime::new names",
           "module `extra` is in no layer", "!cycle"]),
    ("missing module file", {"units.rs": "mod gone;\n"},
     2, ["units.rs:1: `mod gone;` but neither units/gone.rs nor units/gone/mod.rs exists"]),
]


def self_test():
    """Run check() on each of CASES, written out in a temporary directory,
    and assert its exit code and output."""
    for name, changes, verdict, wanted in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp)
            for rel, text in {**CLEAN, **changes}.items():
                (src / rel).parent.mkdir(parents=True, exist_ok=True)
                (src / rel).write_text(text)
            try:
                files, edges, problems = check(src)
                got = 1 if problems else 0
                out = "\n".join(problems) or f"{len(files)} files, {len(edges)} edges"
            except UsageError as e:
                got, out = 2, str(e)
        wrong = [w for w in wanted if (w[1:] in out if w.startswith("!") else w not in out)]
        assert got == verdict and not wrong, f"self-test {name!r}: exit {got}, wanted {verdict}; " \
                                             f"expected otherwise {wrong} in:\n{out}"
    print("layers self-test: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
