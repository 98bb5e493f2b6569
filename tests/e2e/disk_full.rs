//! A build whose cache fills up: the cache lives on a small size-limited tmpfs (mounted in a
//! private mount namespace with `unshare`, so nothing outlives the test), the first layer's
//! boot fills it, QEMU pauses the guest on the full disk, and the build ends at once with exit
//! 1, naming the folder and the space, with no cache entry, no partial folder, no work folder,
//! no QEMU and nothing in dist. (The output folder filling up is tests/pipeline_fake.rs.)

use crate::common;
use common::{e2e_cache, entries, qemu_processes, repo, text};

#[test]
fn a_full_cache_ends_the_build_with_the_folder_and_space_named_and_nothing_left() {
    let _vm = crate::one_vm();
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(e2e_cache().join("bootstrap")).unwrap();
    // In the namespace: the tmpfs over the cache folder, the shared bootstrap base linked in
    // (bases are not what fills up here), the build, then what the cache holds afterwards.
    let script = r#"
set -u
mount -t tmpfs -o size=48m imgbuild-full "$CACHE" || exit 99
ln -s "$BASES" "$CACHE/bootstrap"
"$IMGBUILD" --images-dir "$IMAGES" build e2e --no-smoke --version full --out "$OUT"
rc=$?
echo "== layers:"; ls -A "$CACHE/layers" 2>/dev/null
echo "== work:"; ls -A "$CACHE/work" 2>/dev/null
echo "== end"
exit $rc
"#;
    let o = common::in_mount_namespace(script)
        .env("CACHE", &cache)
        .env("OUT", &out)
        .env("BASES", e2e_cache().join("bootstrap"))
        .env("IMAGES", repo().join("tests/fixtures/images"))
        .env("IMGBUILD", common::bin())
        .env("IMGBUILD_CACHE_DIR", &cache)
        .env("IMGBUILD_VENV", repo().join(".venv"))
        .output()
        .expect("unshare runs");
    let (stdout, stderr) = text(&o);
    eprintln!("{stderr}");
    assert_ne!(
        o.status.code(),
        Some(99),
        "could not mount a tmpfs: {stderr}"
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.contains("no space left in"))
        .unwrap_or_else(|| panic!("no no-space error in:\n{stderr}"));
    assert!(
        line.contains(&format!(
            "no space left in {} (the cache folder)",
            cache.display()
        )),
        "{line}"
    );
    assert!(
        line.contains("MiB free now") && line.contains("MiB that were free there when it started"),
        "{line}"
    );
    // What the cache held when the build had ended: lock files at most (KEY.lock, KEY.use,
    // KEY.build), no entry, no partial folder.
    let section = |name: &str| -> Vec<String> {
        stdout
            .split(&format!("== {name}:\n"))
            .nth(1)
            .and_then(|s| s.split("== ").next())
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    };
    let layers = section("layers");
    assert!(
        layers
            .iter()
            .all(|n| [".lock", ".use", ".build"].iter().any(|x| n.ends_with(x))),
        "a cache entry or partial folder is left: {layers:?}"
    );
    assert!(
        section("work").is_empty(),
        "work folders left: {:?}",
        section("work")
    );
    assert!(qemu_processes(&cache.display().to_string()).is_empty());
    assert!(
        entries(&out.join("e2e")).is_empty(),
        "dist holds {:?}",
        entries(&out.join("e2e"))
    );
}
