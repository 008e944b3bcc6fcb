//! `hotsock new`: a handler project that builds to a component with one
//! command and runs under `hotsock serve` unchanged. The templates live in
//! `host/templates/` and are compiled into the binary, with the contract
//! (`wit/plugin.wit`, and the `wasi:keyvalue` files it imports from
//! `wit/deps/`) this hotsock speaks.

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
    /// A JavaScript module built with componentize-js, through npm.
    Js,
    /// A TypeScript module type-checked against the contract and compiled
    /// with tsc, then built with componentize-js, through npm.
    Ts,
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

/// The componentize-js release the JavaScript and TypeScript templates pin,
/// and `handlers/js-echo` is built with (the Makefile reads it from here).
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// The WASI shim componentize-js 0.23.0 imports without declaring it as a
/// dependency (npm ci would leave it out), pinned beside it. The TypeScript
/// template also holds jco to it: from 0.26 the shim preopens no directory by
/// default, and `jco guest-types` (jco-transpile 0.15) then cannot read wit/.
pub const PREVIEW2_SHIM_VERSION: &str = "0.25.0";

/// The jco release whose `guest-types` writes the TypeScript template's
/// types for the contract (the one componentize-js 0.23.0 resolves to).
pub const JCO_VERSION: &str = "1.35.0";

/// The TypeScript compiler the TypeScript template type-checks with (the one
/// jco 1.35.0 depends on).
pub const TYPESCRIPT_VERSION: &str = "7.0.2";

/// The contract, as every project gets it: `wit/plugin.wit` and the WIT
/// packages it imports, under `wit/deps/` where wit-bindgen and
/// componentize-py look for them.
const CONTRACT: &[Template] = &[
    ("wit/plugin.wit", include_str!("../../../wit/plugin.wit")),
    (
        "wit/deps/keyvalue/atomic.wit",
        include_str!("../../../wit/deps/keyvalue/atomic.wit"),
    ),
    (
        "wit/deps/keyvalue/batch.wit",
        include_str!("../../../wit/deps/keyvalue/batch.wit"),
    ),
    (
        "wit/deps/keyvalue/store.wit",
        include_str!("../../../wit/deps/keyvalue/store.wit"),
    ),
    (
        "wit/deps/keyvalue/watch.wit",
        include_str!("../../../wit/deps/keyvalue/watch.wit"),
    ),
    (
        "wit/deps/keyvalue/world.wit",
        include_str!("../../../wit/deps/keyvalue/world.wit"),
    ),
];

/// A template file: its path in the project, and its text with `{{name}}`,
/// `{{crate}}` and version placeholders (see [`create`]). Every project also gets
/// the [`CONTRACT`] files, as they are.
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
    ("tests/echo.transcript", ECHO_TRANSCRIPT),
];

/// A hand-written transcript of the template's echo, for `hotsock test`.
const ECHO_TRANSCRIPT: &str = include_str!("../../templates/shared-echo.transcript");

const PYTHON: &[Template] = &[
    ("app.py", include_str!("../../templates/python/app.py")),
    ("tests/echo.transcript", ECHO_TRANSCRIPT),
    (
        "README.md",
        include_str!("../../templates/python/README.md"),
    ),
    (
        ".gitignore",
        include_str!("../../templates/python/gitignore"),
    ),
];

const JS: &[Template] = &[
    (
        "package.json",
        include_str!("../../templates/js/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../templates/js/package-lock.json"),
    ),
    ("app.js", include_str!("../../templates/js/app.js")),
    ("tests/echo.transcript", ECHO_TRANSCRIPT),
    ("README.md", include_str!("../../templates/js/README.md")),
    (".gitignore", include_str!("../../templates/js/gitignore")),
];

const TS: &[Template] = &[
    (
        "package.json",
        include_str!("../../templates/ts/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../templates/ts/package-lock.json"),
    ),
    (
        "tsconfig.json",
        include_str!("../../templates/ts/tsconfig.json"),
    ),
    ("app.ts", include_str!("../../templates/ts/app.ts")),
    ("tests/echo.transcript", ECHO_TRANSCRIPT),
    ("README.md", include_str!("../../templates/ts/README.md")),
    (".gitignore", include_str!("../../templates/ts/gitignore")),
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
    // npm refuses a package name with capitals, and the build names the
    // component after the package.
    if matches!(lang, Lang::Js | Lang::Ts) && name.chars().any(|c| c.is_ascii_uppercase()) {
        bail!(
            "`{name}` cannot name a JavaScript handler: npm package names are lower case, e.g. `{}`",
            name.to_ascii_lowercase()
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
        Lang::Js => JS,
        Lang::Ts => TS,
    };
    let files = templates
        .iter()
        .map(|&(path, text)| {
            let text = text
                .replace("{{name}}", name)
                .replace("{{crate}}", &crate_name)
                .replace("{{componentize_py}}", COMPONENTIZE_PY_VERSION)
                .replace("{{componentize_js}}", COMPONENTIZE_JS_VERSION)
                .replace("{{preview2_shim}}", PREVIEW2_SHIM_VERSION)
                .replace("{{jco}}", JCO_VERSION)
                .replace("{{typescript}}", TYPESCRIPT_VERSION);
            (path, text)
        })
        .chain(
            CONTRACT
                .iter()
                .map(|&(path, text)| (path, text.to_string())),
        );
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
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
        Lang::Js | Lang::Ts => "npm install && npm run build".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_project_gets_the_whole_contract_as_the_repository_has_it() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let parent = tempfile::tempdir().unwrap();
        for (name, lang) in [
            ("rusty", Lang::Rust),
            ("snaky", Lang::Python),
            ("jsy", Lang::Js),
            ("tsy", Lang::Ts),
        ] {
            let dir = create(parent.path(), name, lang).unwrap();
            // plugin.wit imports wasi:keyvalue: without its files no
            // project builds.
            for file in [
                "plugin.wit",
                "deps/keyvalue/atomic.wit",
                "deps/keyvalue/batch.wit",
                "deps/keyvalue/store.wit",
                "deps/keyvalue/watch.wit",
                "deps/keyvalue/world.wit",
            ] {
                let written = fs::read_to_string(dir.join("wit").join(file)).unwrap();
                let original = fs::read_to_string(repo.join("wit").join(file)).unwrap();
                assert_eq!(written, original, "{name}: wit/{file}");
            }
        }
        let lib = fs::read_to_string(parent.path().join("rusty/src/lib.rs")).unwrap();
        assert!(lib.contains("generate_all"), "{lib}");
    }

    /// A scaffold's package.json pins every package exactly (no `^` or `~`),
    /// at the versions named here, and every placeholder is filled in.
    #[test]
    fn js_and_ts_projects_pin_exact_versions() {
        let parent = tempfile::tempdir().unwrap();
        for (name, lang) in [("my-js", Lang::Js), ("my-ts", Lang::Ts)] {
            let dir = create(parent.path(), name, lang).unwrap();
            let text = fs::read_to_string(dir.join("package.json")).unwrap();
            assert!(!text.contains("{{"), "{text}");
            let package: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(package["name"], name);
            let script = package["scripts"]["build"].as_str().unwrap();
            assert!(script.contains(&format!("-o {name}.wasm")), "{script}");
            assert!(script.contains("-d http fetch-event"), "{script}");
            let test = package["scripts"]["test"].as_str().unwrap();
            assert_eq!(
                test,
                format!("hotsock test {name}.wasm tests/echo.transcript")
            );
            let pins = package["devDependencies"].as_object().unwrap();
            assert_eq!(
                pins["@bytecodealliance/componentize-js"],
                COMPONENTIZE_JS_VERSION
            );
            for (package, version) in pins {
                let version = version.as_str().unwrap();
                assert!(
                    version.chars().all(|c| c.is_ascii_digit() || c == '.'),
                    "{name}: {package} {version} is not an exact version"
                );
            }
            // The lock file pins everything beneath, so that a fresh
            // `npm install` gets what was tested; it must lock these pins.
            let text = fs::read_to_string(dir.join("package-lock.json")).unwrap();
            assert!(
                !text.contains("{{"),
                "{name}: the lock file keeps a placeholder"
            );
            let lock: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(lock["name"], name);
            let root = &lock["packages"][""];
            assert_eq!(root["name"], name);
            assert_eq!(
                &root["devDependencies"], &package["devDependencies"],
                "{name}: the lock file is out of date: regenerate it with `npm install` in a \
                 fresh project and put {{{{name}}}} back for the name"
            );
            for (package, version) in pins {
                let locked = &lock["packages"][format!("node_modules/{package}")]["version"];
                assert_eq!(locked, version, "{name}: {package} in the lock file");
            }
        }
    }

    /// npm takes no capitals in a package name, which names the component.
    #[test]
    fn a_js_or_ts_handler_name_is_lower_case() {
        let parent = tempfile::tempdir().unwrap();
        for lang in [Lang::Js, Lang::Ts] {
            let e = create(parent.path(), "My-Handler", lang).unwrap_err();
            assert!(e.to_string().contains("e.g. `my-handler`"), "{e}");
        }
        assert!(!parent.path().join("My-Handler").exists());
        create(parent.path(), "My-Handler", Lang::Rust).unwrap();
    }

    /// handlers/js-echo is built with the componentize-js (and WASI shim)
    /// the templates pin: one version to bump, checked here.
    #[test]
    fn handlers_js_echo_pins_what_the_templates_pin() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let text = fs::read_to_string(repo.join("handlers/js-echo/package.json")).unwrap();
        let package: serde_json::Value = serde_json::from_str(&text).unwrap();
        let pins = &package["devDependencies"];
        assert_eq!(
            pins["@bytecodealliance/componentize-js"],
            COMPONENTIZE_JS_VERSION
        );
        assert_eq!(
            pins["@bytecodealliance/preview2-shim"],
            PREVIEW2_SHIM_VERSION
        );
    }
}
