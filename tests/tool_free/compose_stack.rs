//! The compose stacks as images carry them: every profile of every catalog image fits the
//! image's `min_ram` beside what the VM keeps for itself (computed here from the rendered
//! compose.yaml, not from imgbuild's own sum), every service has a healthcheck, a profile that
//! does not fit is a clear error, and the guest's health wait judges `docker compose ps` as it
//! should.

use crate::common;
use common::*;
use serde_json::{json, Value};

/// Bytes of a compose byte value as Docker reads it (binary units).
fn bytes(v: &Value) -> u64 {
    if let Some(n) = v.as_u64() {
        return n;
    }
    let s = v.as_str().unwrap().to_ascii_lowercase();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let n: f64 = num.parse().unwrap();
    let m = match unit {
        "" | "b" => 1u64,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        u => panic!("unit {u}"),
    };
    (n * m as f64) as u64
}

/// The images with a compose stack, each rendered: (image, min_ram MiB, desktop?, compose).
fn rendered_stacks() -> Vec<(String, u64, bool, Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(repo().join("images")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        let o = imgbuild(&repo(), &["show", &name, "--json"]);
        assert!(o.status.success(), "{name}: {}", text(&o).1);
        let d: Value = serde_json::from_slice(&o.stdout).unwrap();
        let d = d.get("definition").unwrap_or(&d).clone();
        if d["features"]["compose_stack"].is_null() {
            continue;
        }
        let t = tempfile::tempdir().unwrap();
        let o = imgbuild(
            &repo(),
            &["render", &name, "-o", t.path().to_str().unwrap()],
        );
        assert!(o.status.success(), "{name}: {}", text(&o).1);
        let arch = d["arch"][0].as_str().unwrap().to_string();
        let compose = walkdir::WalkDir::new(t.path().join(&arch).join("compose"))
            .into_iter()
            .flatten()
            .find(|e| e.file_name() == "compose.yaml")
            .unwrap_or_else(|| panic!("{name}: no rendered compose.yaml"));
        out.push((
            name,
            d["publish"]["min_ram"]
                .as_u64()
                .expect("an image with a stack states min_ram"),
            !d["features"]["desktop"].is_null(),
            python_yaml(compose.path()),
        ));
    }
    out
}

#[test]
fn every_profile_of_every_image_fits_its_min_ram_and_every_service_has_a_healthcheck() {
    let stacks = rendered_stacks();
    assert!(
        stacks.iter().any(|s| s.0 == "desktop-ai")
            && stacks.iter().any(|s| s.0 == "debian12-desktop-ai"),
        "{:?}",
        stacks.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    for (image, min_ram, desktop, compose) in &stacks {
        let services = compose["services"].as_object().unwrap();
        let mut profiles: Vec<&str> = services
            .values()
            .flat_map(|s| s["profiles"].as_array().into_iter().flatten())
            .map(|p| p.as_str().unwrap())
            .collect();
        profiles.sort();
        profiles.dedup();
        let reserve = imgbuild::render::compose::SYSTEM_RESERVE_MIB
            + if *desktop {
                imgbuild::render::compose::DESKTOP_RESERVE_MIB
            } else {
                0
            };
        for p in &profiles {
            let mut sum = 0u64;
            for (name, s) in services {
                let runs = match s["profiles"].as_array() {
                    None => true,
                    Some(ps) => ps.iter().any(|x| x == p),
                };
                if runs {
                    let limit = s
                        .get("mem_limit")
                        .unwrap_or_else(|| panic!("{image}: {name} has no mem_limit"));
                    sum += bytes(limit);
                }
            }
            let mib = sum.div_ceil(1 << 20);
            assert!(
                mib + reserve <= *min_ram,
                "{image}: profile {p} needs {mib} MiB + {reserve} MiB reserve > min_ram {min_ram}"
            );
        }
        // One-shot jobs (a migration another service waits for with
        // `service_completed_successfully`) have no healthcheck: they are done when they exit 0.
        let jobs: Vec<&String> = services
            .values()
            .filter_map(|s| s["depends_on"].as_object())
            .flat_map(|d| d.iter())
            .filter(|(_, c)| c["condition"] == "service_completed_successfully")
            .map(|(n, _)| n)
            .collect();
        for (name, s) in services {
            if jobs.contains(&name) {
                assert_eq!(s["restart"], "no", "{image}: job {name} must not restart");
                continue;
            }
            let test = &s["healthcheck"]["test"];
            assert!(
                !test.is_null() && test[0] != "NONE" && s["healthcheck"]["disable"] != true,
                "{image}: service {name} has no healthcheck"
            );
        }
    }
    // The flagship's default profile is `ai` and it carries Ollama and Open WebUI.
    let (_, _, _, flagship) = stacks.iter().find(|s| s.0 == "desktop-ai").unwrap();
    for s in ["ollama", "open-webui", "qdrant"] {
        assert_eq!(flagship["services"][s]["profiles"], json!(["ai"]), "{s}");
    }
    // AFFiNE's migration runs as upstream's one-shot job before the server.
    assert_eq!(
        flagship["services"]["affine"]["depends_on"]["affine-migration"]["condition"],
        "service_completed_successfully"
    );
    // Langfuse is a group of its own: one failed pull there cannot hold Ollama back.
    assert_eq!(
        flagship["services"]["langfuse-web"]["profiles"],
        json!(["langfuse"])
    );
}

const STACK: &str = "features:\n  docker: {source: distro}\n  compose_stack:\n    project: ../proj\n    profiles: [small]\n";

fn stack_catalog(compose: &str, min_ram: u32) -> tempfile::TempDir {
    let dir = catalog(&[(
        "stack",
        &format!("{MINIMAL}{STACK}publish:\n  min_ram: {min_ram}\n"),
    )]);
    let proj = dir.path().join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    std::fs::write(proj.join("compose.yaml"), compose).unwrap();
    dir
}

const TWO_PROFILES: &str = concat!(
    "services:\n",
    "  a:\n    image: busybox:1.36\n    profiles: [small]\n    mem_limit: 256m\n",
    "    healthcheck: {test: [CMD, 'true']}\n",
    "  b:\n    image: busybox:1.36\n    profiles: [big]\n    mem_limit: 1.5g\n",
    "    healthcheck: {test: [CMD, 'true']}\n",
);

#[test]
fn a_profile_that_does_not_fit_min_ram_is_refused_naming_it() {
    // 2048 MiB - 768 reserve = 1280 MiB: `small` fits, `big` (1536 MiB) does not.
    let dir = stack_catalog(TWO_PROFILES, 2048);
    let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("stack.yaml")
            && err.contains("publish.min_ram")
            && err.contains("profile `big`")
            && err.contains("b 1536 MiB")
            && err.contains("1280 MiB"),
        "{err}"
    );
    let dir = stack_catalog(TWO_PROFILES, 2560);
    let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
    assert!(o.status.success(), "{}", text(&o).1);
}

#[test]
fn a_service_without_healthcheck_or_memory_limit_is_refused() {
    for (compose, needle) in [
        (
            "services:\n  a:\n    image: busybox:1.36\n    profiles: [small]\n    mem_limit: 64m\n",
            "services.a.healthcheck",
        ),
        (
            "services:\n  a:\n    image: busybox:1.36\n    profiles: [small]\n    mem_limit: 64m\n    healthcheck: {test: [NONE]}\n",
            "services.a.healthcheck",
        ),
        (
            "services:\n  a:\n    image: busybox:1.36\n    profiles: [small]\n    healthcheck: {test: [CMD, 'true']}\n",
            "services.a.mem_limit",
        ),
        (
            "services:\n  a:\n    image: busybox:1.36\n    profiles: [small]\n    mem_limit: lots\n    healthcheck: {test: [CMD, 'true']}\n",
            "not a byte value",
        ),
    ] {
        let dir = stack_catalog(compose, 4096);
        let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{compose}: {err}");
        assert!(err.contains("compose.yaml") && err.contains(needle), "{compose}: {err}");
    }
}

#[test]
fn the_health_wait_passes_on_healthy_services_and_names_the_sick_one() {
    // Both of Compose's `ps --format json` shapes: an array (before 2.21) and one object a line.
    let v = smoke_py(
        "ndjson = '{\"Service\":\"a\",\"State\":\"running\",\"Health\":\"healthy\",\"ExitCode\":0}\\n{\"Service\":\"b\",\"State\":\"running\",\"Health\":\"starting\"}\\n'\n\
         arr = '[{\"Service\":\"a\",\"State\":\"running\",\"Health\":\"healthy\"},{\"Service\":\"b\",\"State\":\"exited\",\"Health\":\"\",\"ExitCode\":3}]'\n\
         print(json.dumps([m.compose_ps_states(ndjson), m.compose_ps_states(arr), m.compose_ps_states('')]))",
    );
    assert_eq!(
        v[0],
        json!({"a": ["running", "healthy", 0], "b": ["running", "starting", 0]})
    );
    assert_eq!(v[1]["b"], json!(["exited", "", 3]));
    assert_eq!(v[2], json!({}));
    let v = smoke_py(
        "h = ('running', 'healthy', 0)\n\
         print(json.dumps([\n\
           m.stack_verdict({'a': h, 'b': h}, ['a', 'b']),\n\
           m.stack_verdict({'a': h, 'b': ('running', 'starting', 0)}, ['a', 'b']),\n\
           m.stack_verdict({'a': h}, ['a', 'b']),\n\
           m.stack_verdict({'a': h, 'b': ('running', 'unhealthy', 0)}, ['a', 'b']),\n\
           m.stack_verdict({'a': h, 'b': ('exited', '', 0)}, ['a', 'b']),\n\
           m.stack_verdict({'a': h, 'b': ('running', '', 0)}, ['a', 'b']),\n\
           m.stack_verdict({'a': h, 'j': ('exited', '', 0)}, ['a', 'j'], ['j']),\n\
           m.stack_verdict({'a': h, 'j': ('running', '', 0)}, ['a', 'j'], ['j']),\n\
           m.stack_verdict({'a': h, 'j': ('exited', '', 1)}, ['a', 'j'], ['j']),\n\
         ]))",
    );
    assert_eq!(v[0], json!([true, true, []]));
    assert_eq!(v[1], json!([false, false, ["b: running, starting"]]));
    assert_eq!(v[2], json!([false, false, ["b: not created"]]));
    assert_eq!(v[3], json!([true, false, ["b: running, unhealthy"]]));
    assert_eq!(v[4], json!([true, false, ["b: exited"]]));
    // Running without a health status never counts as healthy.
    assert_eq!(v[5][1], false);
    // A one-shot job (a migration) is done when it exited 0, waited for while it runs, and
    // fails the wait when it exited otherwise.
    assert_eq!(v[6], json!([true, true, []]));
    assert_eq!(v[7], json!([false, false, ["j: running"]]));
    assert_eq!(v[8], json!([true, false, ["j: exited with code 1"]]));
}

/// The flagship's start page list and its page generator, from the rendered user-data.
fn flagship_start_page() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let o = imgbuild(
        &repo(),
        &["render", "desktop-ai", "-o", t.path().to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o).1);
    let ud = python_yaml(&t.path().join("amd64/seed/user-data"));
    let file = |p: &str| write_file(&ud, p).to_string();
    let services = t.path().join("services.json");
    std::fs::write(&services, file("/opt/imgbuild/ai-stack/services.json")).unwrap();
    let script = t.path().join("start-page");
    std::fs::write(&script, file("/usr/local/lib/imgbuild/start-page")).unwrap();
    // The stack unit writes the page before each start; Firefox opens it.
    let unit = file("/etc/systemd/system/imgbuild-stack-ai-stack.service");
    assert!(unit.contains("ExecStartPre=-/usr/local/lib/imgbuild/start-page page /opt/imgbuild/ai-stack/services.json /var/lib/imgbuild/ai-stack/start.html"), "{unit}");
    let policy: Value = serde_json::from_str(&file("/etc/firefox/policies/policies.json")).unwrap();
    assert_eq!(
        policy["policies"]["Homepage"]["URL"],
        "file:///var/lib/imgbuild/ai-stack/start.html"
    );
    (t, services, script)
}

fn run_page(
    script: &std::path::Path,
    services: &std::path::Path,
    profiles: &str,
    host: Option<&str>,
) -> String {
    let out = services.with_file_name(format!("start-{profiles}.html"));
    let mut c = std::process::Command::new("python3");
    c.arg(script)
        .arg("page")
        .arg(services)
        .arg(&out)
        .env("COMPOSE_PROFILES", profiles);
    match host {
        Some(h) => c.env("STACK_HOST", h),
        None => c.env_remove("STACK_HOST"),
    };
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(out).unwrap()
}

fn listed(page: &str) -> Vec<String> {
    page.split("<tr data-service=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn the_start_page_lists_exactly_the_enabled_services_on_the_stacks_host() {
    let (_t, services, script) = flagship_start_page();
    let page = run_page(&script, &services, "ai", None);
    assert_eq!(listed(&page), ["ollama", "qdrant", "open-webui", "searxng"]);
    assert!(page.contains("http://localhost:3000/"), "{page}");
    assert!(page.contains("http://localhost:6333/dashboard"), "{page}");
    let page = run_page(&script, &services, "ai,gitlab", Some("ws7.lab.example"));
    assert_eq!(
        listed(&page),
        ["ollama", "qdrant", "open-webui", "searxng", "gitlab"]
    );
    assert!(page.contains("http://ws7.lab.example:8929/"), "{page}");
    assert!(!page.contains("localhost:"), "{page}");
    // Where a password is, never the password: GitLab's root password is named, with its file.
    assert!(page.contains("<code>GITLAB_ROOT_PASSWORD</code> in <code>~/.config/imgbuild/ai-stack-credentials.env</code>"), "{page}");
    assert!(listed(&run_page(&script, &services, "", None)).is_empty());
}

#[test]
fn the_launch_user_gets_a_private_copy_of_the_first_login_passwords() {
    let (t, services, script) = flagship_start_page();
    let secrets = t.path().join("secrets.env");
    std::fs::write(&secrets, "GITLAB_ROOT_PASSWORD=g1\nFLOWISE_PASSWORD=f1\nN8N_ENCRYPTION_KEY=n1\nQDRANT_API_KEY=q1\nOPENPROJECT_ADMIN_PASSWORD=o1\n").unwrap();
    let home = t.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // The current user stands in for the launch user; the script finds the home in the
    // password database, so a wrapper points only pw_dir at a temporary folder.
    let me = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let me = String::from_utf8_lossy(&me.stdout).trim().to_string();
    let wrapper = format!(
        "import pwd, runpy, sys\nreal = pwd.getpwnam\n\
         def fake(n):\n    p = real(n)\n    return type('P', (), {{'pw_dir': {home:?}, 'pw_uid': p.pw_uid, 'pw_gid': p.pw_gid}})()\n\
         pwd.getpwnam = fake\nsys.argv = [{script:?}, 'credentials', {services:?}, {secrets:?}, {me:?}]\n\
         runpy.run_path({script:?}, run_name='__main__')\n",
        home = home.to_str().unwrap(),
        script = script.to_str().unwrap(),
        services = services.to_str().unwrap(),
        secrets = secrets.to_str().unwrap(),
    );
    let o = std::process::Command::new("python3")
        .args(["-c", &wrapper])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        !said.contains("g1") && said.contains("GITLAB_ROOT_PASSWORD"),
        "{said}"
    );
    let cred = home.join(".config/imgbuild/ai-stack-credentials.env");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cred).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(home.join(".config/imgbuild"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let body = std::fs::read_to_string(&cred).unwrap();
    for line in [
        "QDRANT_API_KEY=q1",
        "FLOWISE_PASSWORD=f1",
        "OPENPROJECT_ADMIN_PASSWORD=o1",
        "GITLAB_ROOT_PASSWORD=g1",
    ] {
        assert!(body.lines().any(|l| l == line), "{line}: {body}");
    }
    // Only first-login passwords: no other secret of the stack.
    assert!(!body.contains("N8N_ENCRYPTION_KEY"), "{body}");
}

#[test]
fn a_start_page_entry_must_name_a_known_secret_and_a_published_port() {
    for (svc, needle) in [
        (
            "  a:\n    image: busybox:1.36\n    profiles: [small]\n    ports: [\"127.0.0.1:8080:80\"]\n    x-imgbuild: {title: A, login: {user: u, secret: NOPE}}\n",
            "x-imgbuild.login.secret: `NOPE` is not in secrets.yaml",
        ),
        (
            "  a:\n    image: busybox:1.36\n    profiles: [small]\n    x-imgbuild: {title: A, login: none}\n",
            "publishes no port",
        ),
        (
            "  a:\n    image: busybox:1.36\n    profiles: [small]\n    ports: [\"127.0.0.1:8080:80\"]\n    x-imgbuild: {title: A, login: {user: u}}\n",
            "x-imgbuild.login: a sentence",
        ),
    ] {
        let compose = format!(
            "services:\n{}    mem_limit: 64m\n    healthcheck: {{test: [CMD, 'true']}}\n",
            svc
        );
        let dir = stack_catalog(&compose, 4096);
        let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

/// A registry on 127.0.0.1 that speaks the distribution API's manifest GET behind the token
/// flow (401 with a Bearer challenge, an anonymous token for the pull scope); it knows
/// `team/app:1` only, and refuses a token asked for another scope.
const FAKE_REGISTRY: &str = r#"
import http.server, json, sys, urllib.parse
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        u = urllib.parse.urlparse(self.path)
        port = self.server.server_address[1]
        if u.path == "/token":
            q = urllib.parse.parse_qs(u.query)
            if q.get("service") != ["fake"] or q.get("scope") != ["repository:team/app:pull"]:
                self.send_response(403); self.end_headers(); return
            body = json.dumps({"token": "t-pull"}).encode()
            self.send_response(200); self.send_header("Content-Type", "application/json"); self.end_headers(); self.wfile.write(body); return
        if not u.path.startswith("/v2/team/app/manifests/"):
            self.send_response(404); self.end_headers(); return
        if self.headers.get("Authorization") != "Bearer t-pull":
            self.send_response(401)
            self.send_header("WWW-Authenticate", f'Bearer realm="http://127.0.0.1:{port}/token",service="fake",scope="repository:team/app:pull"')
            self.end_headers(); return
        if "manifest" not in (self.headers.get("Accept") or ""):
            self.send_response(406); self.end_headers(); return
        if u.path.endswith("/1"):
            self.send_response(200); self.send_header("Docker-Content-Digest", "sha256:" + "a" * 64); self.end_headers(); self.wfile.write(b"{}")
        else:
            self.send_response(404); self.end_headers(); self.wfile.write(b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn validate_online_asks_each_registry_and_says_not_run_when_it_cannot() {
    use std::io::BufRead;
    let mut server = std::process::Command::new("python3")
        .args(["-c", FAKE_REGISTRY])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let port = port.trim().to_string();
    // A port nothing listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let svc = |name: &str, image: &str| {
        format!("  {name}:\n    image: {image}\n    profiles: [small]\n    mem_limit: 64m\n    healthcheck: {{test: [CMD, 'true']}}\n")
    };
    let compose = format!(
        "services:\n{}{}{}{}",
        svc("a", &format!("127.0.0.1:{port}/team/app:1")),
        svc("b", &format!("127.0.0.1:{port}/team/app:2")),
        svc("c", &format!("127.0.0.1:{closed}/x/y:1")),
        svc("d", "localhost/made-here:1"),
    );
    let dir = stack_catalog(&compose, 4096);
    let o = imgbuild(dir.path(), &["--json", "validate", "stack", "--online"]);
    server.kill().ok();
    server.wait().ok();
    let (out, err) = text(&o);
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|_| panic!("{out}\n{err}"));
    let reg: Vec<&Value> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["validator"] == "registry")
        .collect();
    let status = |img: &str| {
        reg.iter()
            .find(|r| r["file"] == img)
            .unwrap_or_else(|| panic!("{img}: {reg:?}"))
    };
    assert_eq!(
        status(&format!("127.0.0.1:{port}/team/app:1"))["status"],
        "passed"
    );
    let missing = status(&format!("127.0.0.1:{port}/team/app:2"));
    assert_eq!(missing["status"], "failed", "{missing}");
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("has no team/app:2"),
        "{missing}"
    );
    let down = status(&format!("127.0.0.1:{closed}/x/y:1"));
    assert_eq!(down["status"], "not-run", "{down}");
    assert!(
        down["detail"].as_str().unwrap().contains("unreachable"),
        "{down}"
    );
    assert_eq!(status("localhost/made-here:1")["status"], "not-run");
    // A missing tag fails the run.
    assert_eq!(o.status.code(), Some(1), "{err}");
}

#[test]
fn files_a_service_mounts_from_the_project_travel_with_it_and_must_exist() {
    let compose = "services:\n  a:\n    image: busybox:1.36\n    profiles: [small]\n    mem_limit: 64m\n    healthcheck: {test: [CMD, 'true']}\n    volumes: ['./conf/app.conf:/etc/app.conf:ro', 'data:/data']\nvolumes:\n  data: {}\n";
    let dir = stack_catalog(compose, 4096);
    let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "services.a.volumes: `./conf/app.conf` is not a file in the project's subfolders"
        ),
        "{err}"
    );
    std::fs::create_dir_all(dir.path().join("proj/conf")).unwrap();
    std::fs::write(dir.path().join("proj/conf/app.conf"), "listen 80\n").unwrap();
    let o = imgbuild(dir.path(), &["render", "stack", "-o", "out"]);
    assert!(o.status.success(), "{}", text(&o).1);
    let ud = python_yaml(&dir.path().join("out/amd64/seed/user-data"));
    let shipped = ud["write_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/opt/imgbuild/proj/conf/app.conf")
        .unwrap_or_else(|| panic!("not shipped: {ud}"));
    assert_eq!(shipped["content"], "listen 80\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out/amd64/compose/proj/conf/app.conf")).unwrap(),
        "listen 80\n"
    );
}

#[test]
fn a_stack_that_no_longer_renders_fails_the_smoke_instead_of_dropping_its_checks() {
    let dir = stack_catalog(TWO_PROFILES, 4096);
    let r = imgbuild::definition::Catalog::new(dir.path().join("images"))
        .load_checked("stack")
        .unwrap();
    let names = |checks: &[Value]| -> Vec<String> {
        checks
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };
    let ok = imgbuild::pipeline::smoke::checks(&r, None);
    assert!(names(&ok).contains(&"stack-ports-loopback-only".to_string()));
    assert!(!names(&ok).contains(&"stack-renders".to_string()));
    // The project changed under the definition (a service lost its healthcheck).
    std::fs::write(
        dir.path().join("proj/compose.yaml"),
        "services:\n  a:\n    image: busybox:1.36\n    profiles: [small]\n    mem_limit: 64m\n",
    )
    .unwrap();
    let broken = imgbuild::pipeline::smoke::checks(&r, None);
    let c = broken
        .iter()
        .find(|c| c["name"] == "stack-renders")
        .expect("a failing check");
    let v = smoke_py(&format!(
        "print(json.dumps(m.BUILTIN['stack-renders'](json.loads({:?}))))",
        serde_json::to_string(c).unwrap()
    ));
    assert_eq!(v[0], false);
    assert!(
        v[1].as_str().unwrap().contains("services.a.healthcheck"),
        "{v}"
    );
}
