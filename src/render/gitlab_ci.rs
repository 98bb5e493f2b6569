//! A GitLab CI child pipeline for a catalog (`imgbuild ci gitlab`): per image and arch a
//! build, a smoke and a publish job, ordered by `extends` with `needs:`, the smoke's JUnit
//! report as `artifacts:reports:junit`, publishing serialized per image with
//! `resource_group`, on runners with the given tags (KVM). Pure: a plan in, YAML out.

use crate::definition::Arch;
use crate::yaml;
use serde_json::{json, Map, Value};

/// One image of the pipeline.
#[derive(Clone, Debug)]
pub struct CiImage {
    pub name: String,
    pub arches: Vec<Arch>,
    /// The nearest image up its `extends` chain that the pipeline also builds (its layers are
    /// this image's lower layers: build it first).
    pub parent: Option<String>,
    /// The artifact's file extension (`qcow2` or `raw`).
    pub format: String,
}

#[derive(Clone, Debug)]
pub struct CiOptions {
    /// Runner tags every job asks for (runners that can run QEMU, with KVM).
    pub runner_tags: Vec<String>,
    /// How jobs call imgbuild.
    pub imgbuild: String,
    /// The remote layer cache of the build jobs (IMGBUILD_CACHE_REMOTE).
    pub cache_remote: Option<String>,
}

/// The build job's first line with a remote cache: a ref that is not protected (a branch
/// anyone with push rights makes, a merge request) only reads from the remote, so that
/// nothing it built can land in what the default branch's builds fetch.
pub const READ_ONLY_UNLESS_PROTECTED: &str =
    "if [ \"$CI_COMMIT_REF_PROTECTED\" != \"true\" ]; then export IMGBUILD_CACHE_REMOTE_READ_ONLY=true; fi";

pub const STAGES: [&str; 3] = ["build", "smoke", "publish"];

pub fn job_name(stage: &str, image: &str, arch: Arch) -> String {
    format!("{stage}:{image}:{arch}")
}

/// The version a job builds: the pipeline's, with the arch appended when the image has
/// several (as `imgbuild build --arch all` names them).
fn version(img: &CiImage, arch: Arch) -> String {
    if img.arches.len() > 1 {
        format!("${{IMGBUILD_VERSION}}-{arch}")
    } else {
        "${IMGBUILD_VERSION}".into()
    }
}

pub fn render(images: &[CiImage], o: &CiOptions) -> String {
    let mut doc = Map::new();
    doc.insert("stages".into(), json!(STAGES));
    let mut variables = json!({
        // Valid for `imgbuild build --version`: letters, digits, `.`, `_`, `+`, `-`.
        "IMGBUILD_VERSION": "${CI_PIPELINE_IID}.${CI_COMMIT_SHORT_SHA}",
    });
    if let Some(url) = &o.cache_remote {
        variables["IMGBUILD_CACHE_REMOTE"] = url.clone().into();
    }
    doc.insert("variables".into(), variables);
    let tags = json!(o.runner_tags);
    let ib = &o.imgbuild;
    for img in images {
        for &arch in &img.arches {
            let v = version(img, arch);
            let dist = format!("dist/{}/{v}/", img.name);
            let build = job_name("build", &img.name, arch);
            let smoke = job_name("smoke", &img.name, arch);
            let mut needs = Vec::new();
            if let Some(p) = &img.parent {
                // Only the order: the parent's layers come from the layer cache, not from
                // its job's artifacts.
                needs.push(json!({"job": job_name("build", p, arch), "artifacts": false}));
            }
            let mut script = Vec::new();
            if o.cache_remote.is_some() {
                script.push(READ_ONLY_UNLESS_PROTECTED.to_string());
            }
            script.push(format!(
                "{ib} build {} --arch {arch} --version \"{v}\" --no-smoke --out dist",
                img.name
            ));
            doc.insert(
                build.clone(),
                json!({
                    "stage": "build",
                    "tags": tags,
                    "needs": needs,
                    "script": script,
                    "artifacts": {"paths": [dist], "expire_in": "1 week"},
                }),
            );
            let report = format!("smoke/{}-{arch}", img.name);
            doc.insert(
                smoke.clone(),
                json!({
                    "stage": "smoke",
                    "tags": tags,
                    "needs": [{"job": build, "artifacts": true}],
                    "script": [format!(
                        "{ib} smoke \"{dist}{}-{v}-{arch}.{}\" --image {} --arch {arch} -o {report}",
                        img.name, img.format, img.name
                    )],
                    "artifacts": {
                        "when": "always",
                        "paths": [format!("{report}/")],
                        "reports": {"junit": format!("{report}/junit.xml")},
                    },
                }),
            );
            doc.insert(
                job_name("publish", &img.name, arch),
                json!({
                    "stage": "publish",
                    "tags": tags,
                    "needs": [
                        {"job": build, "artifacts": true},
                        {"job": smoke, "artifacts": false},
                    ],
                    // One publish of an image at a time: retention (`keep`) sees every
                    // version that is in Glance.
                    "resource_group": format!("publish-{}", img.name),
                    "rules": [{"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"}],
                    "script": [format!(
                        "{ib} publish {} --version \"{v}\" --dist dist",
                        img.name
                    )],
                }),
            );
        }
    }
    "# GitLab CI child pipeline written by `imgbuild ci gitlab`: build -> smoke -> publish per\n# image and arch, ordered by `extends`.\n"
        .to_string()
        + &yaml::to_string(&Value::Object(doc))
}
