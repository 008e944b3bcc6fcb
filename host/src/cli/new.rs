//! `hotsock new`: a handler project that builds to a component with one
//! command and runs under `hotsock serve` unchanged. The templates live in
//! `host/templates/` and are compiled into the binary, with the contract
//! (`wit/plugin.wit`) this hotsock speaks.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

use crate::config::Lang;

/// The componentize-py release the Python template is built and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

const PLUGIN_WIT: &str = include_str!("../../wit/plugin.wit");

/// A template file: its path in the project, and its text with `{{name}}`,
/// `{{crate}}` and `{{componentize_py}}` placeholders.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    (
        ".cargo/config.toml",
        include_str!("../templates/rust/.cargo/config.toml"),
    ),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/gitignore")),
    ("wit/plugin.wit", PLUGIN_WIT),
];

const PYTHON: &[Template] = &[
    ("app.py", include_str!("../templates/python/app.py")),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/gitignore")),
    ("wit/plugin.wit", PLUGIN_WIT),
];

/// Creates the project `name` in a new directory of that name under `parent`,
/// and returns the directory.
pub fn create(parent: &Path, name: &str, lang: Lang) -> Result<PathBuf> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        bail!(
            "`{name}` cannot name a handler: use letters, digits, `-` and `_`, starting with a letter"
        );
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name, or remove it first",
            dir.display()
        );
    }
    // What the build produces: cargo and Python both want `my_handler`, not `my-handler`.
    let crate_name = name.replace('-', "_");
    let templates = match lang {
        Lang::Rust => RUST,
        Lang::Python => PYTHON,
    };
    for (path, text) in templates {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name)
            .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// The one command that builds the project `name`, for the message after `new`.
pub fn build_command(name: &str, lang: Lang) -> String {
    match lang {
        Lang::Rust => "cargo build --release".to_string(),
        Lang::Python => format!(
            "componentize-py -d wit -w plugin componentize app -o {}.wasm",
            name.replace('-', "_")
        ),
    }
}
