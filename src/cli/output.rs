//! What each command prints on stdout: the report as JSON with `--json`, else plain lines.

use imgbuild::check::{self, CheckResult, Status};
use imgbuild::commands::validate;
use imgbuild::commands::{build, cache, checksum, ci, lima, list, publish, render, show, userdata};
use imgbuild::digest::{self, Algo};
use imgbuild::doctor;
use imgbuild::error::Result;
use imgbuild::pipeline::bom::Diff;
use imgbuild::pipeline::manifest::Manifest;
use imgbuild::pipeline::smoke::SmokeReport;
use std::path::Path;

pub struct Output {
    pub json: bool,
}

fn print_json(v: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / 1048576.0)
}

fn short(key: &str) -> &str {
    &key[..key.len().min(16)]
}

impl Output {
    pub fn list(&self, rows: &[list::ImageRow]) -> Result<()> {
        if self.json {
            return print_json(&rows);
        }
        let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(0);
        for r in rows {
            let arch: Vec<&str> = r.arch.iter().map(|a| a.as_str()).collect();
            println!(
                "{:width$}  {:13}  {}",
                r.name,
                arch.join(","),
                r.description
            );
        }
        Ok(())
    }

    pub fn show(&self, image: &str, s: &show::Shown) -> Result<()> {
        if self.json {
            return print_json(&s.definition);
        }
        print!(
            "# {image} (resolved: {})\n{}",
            s.chain,
            imgbuild::yaml::to_string(&serde_json::to_value(&s.definition)?)
        );
        Ok(())
    }

    pub fn render(&self, out: &[render::RenderedArch]) -> Result<()> {
        if self.json {
            return print_json(&out);
        }
        for r in out {
            println!(
                "{} {}: {} ({} files)",
                r.image,
                r.arch,
                r.dir.display(),
                r.files.len()
            );
        }
        Ok(())
    }

    /// One validator's result as it comes (a definition that did not load: `None`).
    pub fn validate_line(&self, name: &str, res: Option<&CheckResult>, strict: bool) {
        if self.json {
            return;
        }
        let Some(res) = res else {
            println!("FAIL {name}: definition");
            return;
        };
        let (word, detail) = match &res.status {
            Status::Passed => ("ok  ", String::new()),
            Status::Failed(d) => ("FAIL", format!("\n{}", check::indent(d))),
            Status::NotRun(d) if strict => ("FAIL", format!(" (not run: {d})")),
            Status::NotRun(d) => ("skip", format!(" (not run: {d})")),
        };
        println!(
            "{word} {name} {} {}: {}{detail}",
            res.arch, res.validator, res.file
        );
    }

    pub fn validate(&self, report: &validate::Report) -> Result<()> {
        if self.json {
            return print_json(report);
        }
        println!(
            "{} passed, {} failed, {} not run",
            report.passed(),
            report.failed,
            report.not_run
        );
        Ok(())
    }

    pub fn built(&self, out: &Path, m: &Manifest) -> Result<()> {
        if self.json {
            return print_json(m);
        }
        built_lines(out, m);
        Ok(())
    }

    pub fn built_several(&self, out: &Path, outcomes: &[build::Outcome]) -> Result<()> {
        if self.json {
            return print_json(&outcomes);
        }
        for o in outcomes {
            match (&o.manifest, o.first_error_line()) {
                (Some(m), _) => built_lines(out, m),
                (None, first) => println!(
                    "{} {} {}: FAILED: {}",
                    o.image,
                    o.version.as_deref().unwrap_or("-"),
                    o.arch,
                    first.unwrap_or_default()
                ),
            }
        }
        for l in build::shared_layers(outcomes) {
            println!(
                "shared layer {} {}: {} ({})",
                l.name,
                &l.key[..12.min(l.key.len())],
                l.builds.join(", "),
                match &l.built_by {
                    Some(b) => format!("built once, by {b}"),
                    None => "reused from the cache by each".into(),
                }
            );
        }
        Ok(())
    }

    pub fn smoke(&self, report: &SmokeReport, out: &Path) -> Result<()> {
        if self.json {
            return print_json(report);
        }
        for c in &report.checks {
            println!(
                "{} {}: {}",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.detail
            );
        }
        if let Some(e) = &report.error {
            println!("error: {e}");
        }
        println!("report: {}", out.join("report.json").display());
        Ok(())
    }

    pub fn hashed(&self, files: &[checksum::Hashed], algo: Algo) -> Result<()> {
        if self.json {
            return print_json(&files);
        }
        for f in files {
            print!(
                "{}",
                digest::sum_line(f.get(algo), &f.file.to_string_lossy())
            );
        }
        Ok(())
    }

    pub fn verified(&self, results: &[checksum::Verified]) -> Result<()> {
        if self.json {
            return print_json(&results);
        }
        for r in results {
            if r.ok {
                println!("{}: OK", r.file);
            } else {
                println!(
                    "{}: FAILED\n  expected {:?}: {}\n  actual:   {}",
                    r.file, r.algo, r.expected, r.actual
                );
            }
        }
        Ok(())
    }

    pub fn doctor(&self, report: &doctor::Report) -> Result<()> {
        if self.json {
            return print_json(report);
        }
        print!("{}", report.text());
        Ok(())
    }

    pub fn userdata(&self, r: &userdata::Report) -> Result<()> {
        self.written(r, r.file.is_some(), &r.text)
    }

    pub fn lima(&self, r: &lima::Report) -> Result<()> {
        self.written(r, r.file.is_some(), &r.text)
    }

    pub fn ci(&self, r: &ci::Report) -> Result<()> {
        self.written(r, r.file.is_some(), &r.text)
    }

    pub fn lab(&self, r: &lima::LabReport) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        for b in &r.builds {
            println!(
                "{} {} {}: {}",
                r.image,
                b.version,
                b.arch,
                b.artifact.display()
            );
        }
        for f in &r.files {
            println!("wrote {}", f.display());
        }
        Ok(())
    }

    /// A generated file: its text on stdout, or (written to a file) nothing but the report
    /// with --json.
    fn written(&self, report: &impl serde::Serialize, to_file: bool, text: &str) -> Result<()> {
        match (to_file, self.json) {
            (true, true) => print_json(report),
            (true, false) => Ok(()),
            (false, _) => {
                print!("{text}");
                Ok(())
            }
        }
    }

    pub fn published(&self, r: &publish::Report) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        match r {
            publish::Report::DryRun {
                plan,
                existing,
                size,
                ..
            } => match existing.first() {
                Some(id) => println!(
                    "unchanged: {} is already image {}",
                    plan.name,
                    id.as_str().unwrap_or_default()
                ),
                None => {
                    println!(
                        "create: {} ({}, {size} bytes, {})",
                        plan.name, plan.disk_format, plan.visibility
                    );
                    for (k, v) in &plan.properties {
                        println!("  {k} = {v}");
                    }
                    println!("  tags: {}", plan.tags.join(", "));
                }
            },
            publish::Report::Done {
                published: res,
                retention: kept,
            } => {
                println!(
                    "{} {} {} {} ({})",
                    res.action,
                    res.id,
                    res.name,
                    res.status,
                    if res.method.is_empty() {
                        "existing"
                    } else {
                        &res.method
                    }
                );
                println!(
                    "checksum {} os_hash_value {}",
                    res.checksum, res.os_hash_value
                );
                for h in &kept.hidden {
                    println!("hidden {h}");
                }
                for d in &kept.deleted {
                    println!("deleted {d}");
                }
            }
        }
        Ok(())
    }

    pub fn diff(&self, d: &Diff) -> Result<()> {
        if self.json {
            return print_json(d);
        }
        print!("{}", d.text());
        Ok(())
    }

    pub fn cache_ls(&self, rows: &[imgbuild::cache::EntryInfo], root: &Path) -> Result<()> {
        if self.json {
            return print_json(&rows);
        }
        for e in rows {
            println!(
                "{:<7} {:<16} {:<14} {:>10}  used {}{}{}{}",
                e.kind,
                short(&e.key),
                e.name,
                mib(e.size),
                e.last_used,
                e.image
                    .as_ref()
                    .map(|i| format!("  (built for {i})"))
                    .unwrap_or_default(),
                if e.in_use { "  IN USE" } else { "" },
                if e.broken { "  BROKEN" } else { "" },
            );
        }
        let total: u64 = rows.iter().map(|e| e.size).sum();
        println!(
            "{} entries, {} in {}",
            rows.len(),
            mib(total),
            root.display()
        );
        Ok(())
    }

    pub fn pruned(&self, r: &cache::Pruned) -> Result<()> {
        if self.json {
            return print_json(r);
        }
        let verb = if r.dry_run { "would remove" } else { "removed" };
        for e in &r.removed {
            println!(
                "{verb} {} {} {} ({})",
                e.kind,
                short(&e.key),
                e.name,
                mib(e.size)
            );
        }
        for e in &r.in_use {
            println!(
                "kept {} {} {}: in use by a running build",
                e.kind,
                short(&e.key),
                e.name
            );
        }
        println!("{verb} {} entries, {}", r.removed.len(), mib(r.freed));
        Ok(())
    }
}

/// The plain lines of a finished build.
fn built_lines(out: &Path, m: &Manifest) {
    let dir = out.join(&m.image).join(&m.version);
    println!("{}", dir.join(&m.artifact.file).display());
    println!("sha256 {}", m.digests.sha256);
    println!(
        "{} {} {}: built in {:.0} s ({}, {}), smoke {}",
        m.image,
        m.version,
        m.arch,
        m.build.duration_seconds,
        m.backend,
        m.accel,
        match &m.smoke {
            Some(s) => format!("passed ({} checks)", s.checks),
            None => "skipped".into(),
        }
    );
}
