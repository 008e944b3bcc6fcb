//! A guest's backtrace in the words a plugin author needs: the handler's own
//! frames, with `file:line` when the component carries DWARF, and std's panic
//! machinery, wit-bindgen's glue or the Python runtime folded into a line each.
//!
//! `outcome` decides whether a backtrace can help (a fault, not an exit);
//! this module only turns wasmtime's frames into lines.

use wasmtime::WasmBacktrace;

/// The guest's backtrace of a failure, innermost frame first, if wasmtime
/// captured one: what a plugin author reads to find the line that failed.
pub fn guest_backtrace(error: &wasmtime::Error) -> Option<String> {
    let backtrace = error.downcast_ref::<WasmBacktrace>()?;
    let complete = backtrace.frames().len() < MAX_BACKTRACE_FRAMES;
    Some(render(&frames(backtrace), complete))
}

/// Most wasm frames a backtrace keeps, innermost first: room for the dozen
/// frames of std's panic machinery and twenty of the handler's own under
/// them. Capturing walks the whole stack anyway; this bounds the frames
/// looked up, which costs about a millisecond each when the component
/// carries DWARF (wasmtime reads it afresh for every frame).
pub const MAX_BACKTRACE_FRAMES: usize = 32;

/// The lines of a backtrace, one frame each, `file:line` under it when the
/// component carries DWARF. Runs of frames that are not the handler's own
/// (std's panic machinery, wit-bindgen's glue, the Python runtime) are folded
/// into one line each, and so are runs of the same frame (runaway recursion).
/// `complete` says whether wasmtime kept every frame.
fn render(frames: &[Frame], complete: bool) -> String {
    let python = frames.iter().any(|f| f.kind == Kind::Python);
    // Folding every frame of a Rust handler would leave nothing to read.
    let keep_all = !python && frames.iter().all(|f| f.kind != Kind::Handler);
    let folded = |f: &Frame| !keep_all && f.kind != Kind::Handler;
    let mut lines = Vec::new();
    let mut index = 0;
    while index < frames.len() {
        let frame = &frames[index];
        let rest = frames[index..].iter();
        if folded(frame) {
            let run = rest
                .take_while(|f| folded(f) && f.kind == frame.kind)
                .count();
            lines.push(format!(
                "      ... {} of {}",
                count(run),
                frame.kind.label()
            ));
            index += run;
        } else {
            let run = rest.take_while(|f| *f == frame).count();
            lines.push(frame.render(index));
            if run > 1 {
                lines.push(format!(
                    "      ... and the same frame {} more time(s)",
                    run - 1
                ));
            }
            index += run;
        }
    }
    if !complete {
        lines.push(format!(
            "      ... and maybe more: only the innermost {MAX_BACKTRACE_FRAMES} wasm frames are kept"
        ));
    }
    if !python && frames.iter().all(|f| f.location.is_none()) {
        lines.push(
            "      (no file:line: the component has no debug info; for a Rust handler, set \
             `debug = \"line-tables-only\"` under `[profile.release]`)"
                .into(),
        );
    }
    lines.join("\n")
}

/// `1 frame`, `9 frames`.
fn count(frames: usize) -> String {
    match frames {
        1 => "1 frame".into(),
        n => format!("{n} frames"),
    }
}

/// One function in a guest backtrace: a wasm frame, or a function inlined
/// into one.
#[derive(Debug, PartialEq)]
struct Frame {
    /// Demangled, without Rust's hashes.
    name: String,
    /// `file:line:column`, from the component's DWARF.
    location: Option<String>,
    kind: Kind,
}

/// Whose code a frame is, which decides whether it is folded away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The handler's own code (or code nothing is known of): always shown.
    Handler,
    /// The standard library, libc, and the panic machinery under a panic.
    Std,
    /// The bindings wit-bindgen generated between the component's exports
    /// and the handler's functions.
    Glue,
    /// componentize-py's runtime and the Python interpreter: a Python
    /// handler's own frames are Python's, not wasm's.
    Python,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Handler => "the handler",
            Kind::Std => "std and panic plumbing",
            Kind::Glue => "wit-bindgen glue",
            Kind::Python => {
                "the Python runtime (componentize-py); a Python exception's traceback is in \
                 the handler's stderr above"
            }
        }
    }
}

impl Frame {
    /// `  11: name` and, with a location, `            at file:line:column`.
    fn render(&self, index: usize) -> String {
        match &self.location {
            None => format!("  {index:>4}: {}", self.name),
            Some(location) => format!("  {index:>4}: {}\n            at {location}", self.name),
        }
    }
}

/// The backtrace's frames, innermost first, inlined functions included.
fn frames(backtrace: &WasmBacktrace) -> Vec<Frame> {
    // A Python handler's wasm frames are all the interpreter's.
    let python = backtrace.frames().iter().any(|f| {
        let module = f.module().name().unwrap_or("");
        module.starts_with("componentize_py_runtime") || module.starts_with("libpython")
    });
    let mut frames = Vec::new();
    for info in backtrace.frames() {
        let raw = || match info.func_name() {
            Some(name) => demangle(name),
            None => format!(
                "{}!<wasm function {}>",
                info.module().name().unwrap_or("<unknown>"),
                info.func_index()
            ),
        };
        let symbols = info.symbols();
        if symbols.is_empty() {
            let name = raw();
            frames.push(Frame {
                kind: kind_of(&name, None, python),
                name,
                location: None,
            });
        }
        // Innermost first: the functions inlined, then the one compiled,
        // which the name section names with its whole path (DWARF's line
        // tables alone have only `handle`).
        for (i, symbol) in symbols.iter().enumerate() {
            let name = match symbol.name() {
                _ if i + 1 == symbols.len() && info.func_name().is_some() => raw(),
                Some(name) => demangle(name),
                None if i + 1 == symbols.len() => raw(),
                None => "<inlined function>".into(),
            };
            let location = symbol
                .file()
                .map(|file| match (symbol.line(), symbol.column()) {
                    (Some(line), Some(column)) if column > 0 => format!("{file}:{line}:{column}"),
                    (Some(line), _) => format!("{file}:{line}"),
                    _ => file.to_string(),
                });
            frames.push(Frame {
                kind: kind_of(&name, symbol.file(), python),
                name,
                location,
            });
        }
    }
    frames
}

/// A Rust symbol demangled without its hashes (`std::process::abort`, not
/// `std[d123b7a1a2ed1472]::process::abort`); any other name as it is.
fn demangle(name: &str) -> String {
    match rustc_demangle::try_demangle(name) {
        Ok(demangled) => format!("{demangled:#}"),
        Err(_) => name.to_string(),
    }
}

/// Whose code the function `name`, from source `file`, is.
fn kind_of(name: &str, file: Option<&str>, python: bool) -> Kind {
    /// std and the crates it is built from, and its panic entry points.
    const STD: [&str; 12] = [
        "std::",
        "core::",
        "alloc::",
        "panic_abort::",
        "panic_unwind::",
        "compiler_builtins::",
        "wasi::",
        "__rustc::",
        "__rust_",
        "rust_panic",
        "rust_begin_unwind",
        "__wasi",
    ];
    /// The C library's functions std calls on the way out.
    const LIBC: [&str; 4] = ["abort", "exit", "_Exit", "__wasm_call_dtors"];
    if python {
        return Kind::Python;
    }
    // `<alloc::string::String as core::fmt::Write>::write_str` is std's;
    // `<probe::Probe as ...::Guest>::handle` is the handler's.
    let subject = name.trim_start_matches(['<', '&', '*']);
    let subject = ["mut ", "const ", "dyn "]
        .iter()
        .fold(subject, |s, prefix| s.strip_prefix(prefix).unwrap_or(s));
    // `probe::exports::hotsock::plugin::handler::_export_handle_cabi::<T>`.
    let last = name.split('<').next().unwrap_or(name).rsplit("::").next();
    let is_glue = name.starts_with("wit_bindgen")
        || name.starts_with("cabi_")
        || last.is_some_and(|f| f.starts_with("_export_") || f.starts_with("__post_return_"))
        // An export's name in the component, `hotsock:plugin/handler@0.1.0#handle`
        // (a closure is `{closure#0}`, within a path).
        || (name.contains('#') && !name.contains("::"));
    if is_glue || file.is_some_and(|f| f.contains("/wit-bindgen")) {
        Kind::Glue
    } else if STD.iter().any(|p| subject.starts_with(p))
        || LIBC.contains(&name)
        // std's sources, as rustc records them.
        || file.is_some_and(|f| f.starts_with("/rustc/"))
    {
        Kind::Std
    } else {
        Kind::Handler
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(name: &str, location: Option<&str>) -> Frame {
        let file = location.map(|l| l.split(':').next().unwrap());
        Frame {
            name: name.into(),
            location: location.map(String::from),
            kind: kind_of(name, file, false),
        }
    }

    #[test]
    fn std_glue_and_the_handler_are_told_apart() {
        for std in [
            "std::process::abort",
            "core::panicking::panic_fmt",
            "__rustc::rust_begin_unwind",
            "__rust_start_panic",
            "rust_panic",
            "abort",
            "std::panicking::panic_handler::{closure#0}",
            "<alloc::string::String as core::fmt::Write>::write_str",
            "<&mut core::fmt::Formatter as core::fmt::Write>::write_char",
        ] {
            assert_eq!(kind_of(std, None, false), Kind::Std, "{std}");
        }
        // Line tables alone name functions without their paths.
        let inlined = Some("/rustc/0123abcd/library/core/src/panicking.rs");
        assert_eq!(kind_of("panic_fmt", inlined, false), Kind::Std);
        for glue in [
            "probe::exports::hotsock::plugin::handler::_export_handle_cabi",
            "_export_handle_cabi<probe::Probe>",
            "hotsock:plugin/handler@0.1.0#handle",
            "cabi_realloc",
            "wit_bindgen::rt::run_ctors_once",
        ] {
            assert_eq!(kind_of(glue, None, false), Kind::Glue, "{glue}");
        }
        for handler in [
            "<probe::Probe as probe::exports::hotsock::plugin::handler::Guest>::handle",
            "probe::recurse",
            "probe::parse::{closure#0}",
            "<&probe::Reply as core::fmt::Display>::fmt",
            "probe.wasm!<wasm function 12>",
        ] {
            assert_eq!(kind_of(handler, None, false), Kind::Handler, "{handler}");
        }
        assert_eq!(kind_of("probe::recurse", None, true), Kind::Python);
    }

    #[test]
    fn a_panic_shows_the_handlers_frames_and_folds_the_rest() {
        let mut frames: Vec<Frame> = (0..9)
            .map(|i| frame(&format!("std::panicking::f{i}"), None))
            .collect();
        frames.push(frame("core::panicking::panic_fmt", None));
        frames.push(frame("probe::parse", Some("/src/probe/src/lib.rs:12:5")));
        frames.push(frame("probe::handle", Some("/src/probe/src/lib.rs:30:9")));
        frames.push(frame("_export_handle_cabi<probe::Probe>", None));
        frames.push(frame("hotsock:plugin/handler@0.1.0#handle", None));
        let expected = [
            "      ... 10 frames of std and panic plumbing",
            "    10: probe::parse",
            "            at /src/probe/src/lib.rs:12:5",
            "    11: probe::handle",
            "            at /src/probe/src/lib.rs:30:9",
            "      ... 2 frames of wit-bindgen glue",
        ];
        assert_eq!(render(&frames, true), expected.join("\n"));
    }

    #[test]
    fn recursion_is_one_line_and_a_missing_line_table_is_explained() {
        let frames: Vec<Frame> = (0..MAX_BACKTRACE_FRAMES)
            .map(|_| frame("probe::recurse", None))
            .collect();
        let rendered = render(&frames, false);
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[0], "     0: probe::recurse");
        assert_eq!(lines[1], "      ... and the same frame 31 more time(s)");
        assert!(lines[2].contains("only the innermost 32 wasm frames"));
        assert!(lines[3].contains("no debug info"), "{rendered}");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn nothing_but_std_is_shown_rather_than_folded_away() {
        let frames = [frame("std::process::abort", None), frame("abort", None)];
        let rendered = render(&frames, true);
        assert!(rendered.contains("0: std::process::abort"), "{rendered}");
        assert!(!rendered.contains("plumbing"), "{rendered}");
    }
}
