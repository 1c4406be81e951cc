//! `riteraft new NAME`: writes a buildable store project with a test, in Rust, Python or
//! JavaScript, from the templates in `cli/templates/` (embedded in the binary, so the command
//! works anywhere), with the contract `proto/store.wit` beside it.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The languages a project can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

/// One file of a template: its path in the project, and its text with `{{name}}` (the
/// project's name) and `{{crate}}` (the name with `_` for `-`, as the built module is named).
type TemplateFile = (&'static str, &'static str);

/// The contract every project builds against, the same file the host is built with.
const STORE_WIT: TemplateFile = ("wit/store.wit", include_str!("../../proto/store.wit"));

const RUST: &[TemplateFile] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
    (
        "src/store.rs",
        include_str!("../templates/rust/src/store.rs"),
    ),
    ("README.md", include_str!("../templates/rust/README.md")),
    (".gitignore", include_str!("../templates/rust/.gitignore")),
];

const PYTHON: &[TemplateFile] = &[
    ("store.py", include_str!("../templates/python/store.py")),
    ("app.py", include_str!("../templates/python/app.py")),
    (
        "test_store.py",
        include_str!("../templates/python/test_store.py"),
    ),
    (
        "requirements.txt",
        include_str!("../templates/python/requirements.txt"),
    ),
    ("README.md", include_str!("../templates/python/README.md")),
    (".gitignore", include_str!("../templates/python/.gitignore")),
];

const JS: &[TemplateFile] = &[
    ("store.js", include_str!("../templates/js/store.js")),
    (
        "store.test.js",
        include_str!("../templates/js/store.test.js"),
    ),
    ("package.json", include_str!("../templates/js/package.json")),
    ("README.md", include_str!("../templates/js/README.md")),
    (".gitignore", include_str!("../templates/js/.gitignore")),
];

/// The longest project name: it becomes a crate or package name and a file name.
const MAX_NAME_LEN: usize = 64;

/// What `riteraft new` wrote.
#[derive(Debug)]
pub struct NewProject {
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The commands that test and build it, for the user to run next.
    pub next: &'static str,
}

/// Checks `name`: a crate, PyPI and npm name alike (lowercase letters, digits, `-` and `_`,
/// starting with a letter).
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_".contains(c));
    anyhow::ensure!(
        starts_with_letter && rest_ok && name.len() <= MAX_NAME_LEN,
        "{name:?} cannot name a store: use lowercase letters, digits, - and _, starting with a \
         letter, at most {MAX_NAME_LEN} characters"
    );
    Ok(())
}

/// Writes project `name` in `lang` into `dir`, which must not exist or be empty: a project is
/// never written over files someone has.
pub fn write(name: &str, lang: Lang, dir: &Path) -> anyhow::Result<NewProject> {
    check_name(name)?;
    let occupied = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    anyhow::ensure!(
        !occupied,
        "{} is not empty: choose another name or --dir",
        dir.display()
    );
    let (template, next) = match lang {
        Lang::Rust => (
            RUST,
            "cargo test && cargo build --release --target wasm32-wasip2",
        ),
        Lang::Python => (PYTHON, "python3 -m unittest (the build is in README.md)"),
        Lang::Js => (JS, "node --test && npm install && npm run build"),
    };
    let crate_name = name.replace('-', "_");
    let mut files = Vec::new();
    for (path, text) in template.iter().chain([&STORE_WIT]) {
        let path = dir.join(path);
        let text = text
            .replace("{{name}}", name)
            .replace("{{crate}}", &crate_name);
        let parent = path.parent().expect("a file in the project has a parent");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot make {}", parent.display()))?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        files.push(path);
    }
    Ok(NewProject {
        dir: dir.to_path_buf(),
        files,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_suit_every_toolchain() {
        for good in ["kv", "my-store", "store_2"] {
            check_name(good).unwrap();
        }
        for bad in ["", "2kv", "My", "a b", "../x", "é", "a".repeat(65).as_str()] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_project_is_written_with_its_name_and_never_over_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("my-store");
        let project = write("my-store", Lang::Js, &dir).unwrap();
        assert_eq!(project.files.len(), JS.len() + 1);
        let package = std::fs::read_to_string(dir.join("package.json")).unwrap();
        assert!(package.contains(r#""name": "my-store""#), "{package}");
        assert!(package.contains("--out my_store.wasm"), "{package}");
        assert!(dir.join("wit/store.wit").is_file());
        for (path, _) in JS {
            let text = std::fs::read_to_string(dir.join(path)).unwrap();
            assert!(
                !text.contains("{{"),
                "{path} has a placeholder left: {text}"
            );
        }
        let again = write("my-store", Lang::Rust, &dir).unwrap_err();
        assert!(again.to_string().contains("is not empty"), "{again}");
    }
}
