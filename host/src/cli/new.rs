//! `hotsock new`: a handler project that builds to a component with one
//! command and runs under `hotsock serve` unchanged. The templates live in
//! `host/templates/` and are compiled into the binary, with the contract
//! (`wit/plugin.wit`) this hotsock speaks.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;

/// The languages `hotsock new` can scaffold a handler in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate built with cargo and wit-bindgen.
    Rust,
    /// A Python module built with componentize-py.
    Python,
}

/// Options of `hotsock new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The handler's name; the project is created in a directory of that name.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// The language to write the handler in.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    pub lang: Lang,
}

/// The componentize-py release the Python template is built and tested with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";

const PLUGIN_WIT: &str = include_str!("../../../wit/plugin.wit");

/// A template file: its path in the project, and its text with `{{name}}`,
/// `{{crate}}` and `{{componentize_py}}` placeholders.
type Template = (&'static str, &'static str);

const RUST: &[Template] = &[
    (
        "Cargo.toml",
        include_str!("../../templates/rust/Cargo.toml"),
    ),
    (
        ".cargo/config.toml",
        include_str!("../../templates/rust/.cargo/config.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../templates/rust/src/lib.rs"),
    ),
    ("README.md", include_str!("../../templates/rust/README.md")),
    (".gitignore", include_str!("../../templates/rust/gitignore")),
    ("wit/plugin.wit", PLUGIN_WIT),
];

const PYTHON: &[Template] = &[
    ("app.py", include_str!("../../templates/python/app.py")),
    (
        "README.md",
        include_str!("../../templates/python/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/python/gitignore"),
    ),
    ("wit/plugin.wit", PLUGIN_WIT),
];

/// Creates the project and says how to build it.
pub fn run(args: &NewArgs) -> Result<()> {
    let dir = create(Path::new("."), &args.name, args.lang)?;
    println!("created {}; build it with:", dir.display());
    println!(
        "  cd {} && {}",
        dir.display(),
        build_command(&args.name, args.lang)
    );
    println!("and see its README.md for serving and swapping it");
    Ok(())
}

/// Creates the project `name` in a new directory of that name under `parent`,
/// and returns the directory.
fn create(parent: &Path, name: &str, lang: Lang) -> Result<PathBuf> {
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
fn build_command(name: &str, lang: Lang) -> String {
    match lang {
        Lang::Rust => "cargo build --release".to_string(),
        Lang::Python => format!(
            "componentize-py -d wit -w plugin componentize app -o {}.wasm",
            name.replace('-', "_")
        ),
    }
}
