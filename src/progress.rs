//! Progress on stderr: one spinner or bar per stage with elapsed time on a terminal, plain
//! timestamped lines otherwise (CI logs). stdout stays free for results and `--json`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    tty: bool,
    quiet: bool,
    started: Instant,
    stage: Option<(String, Instant)>,
    bar: Option<ProgressBar>,
    last_plain: Option<Instant>,
    /// `[IMAGE/ARCH] ` when several builds share stderr; empty otherwise.
    prefix: String,
}

impl Progress {
    /// `quiet`: nothing but failures. A terminal gets spinners, anything else plain lines.
    pub fn new(quiet: bool) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal() && !quiet,
            quiet,
            started: Instant::now(),
            stage: None,
            bar: None,
            last_plain: None,
            prefix: String::new(),
        }
    }

    /// Starts every line with `[label] `, for several builds writing to one stderr.
    pub fn with_prefix(mut self, label: &str) -> Progress {
        self.prefix = format!("[{label}] ");
        self
    }

    /// Plain lines only (for tests and pipes).
    pub fn plain(quiet: bool) -> Progress {
        let mut p = Progress::new(quiet);
        p.tty = false;
        p
    }

    fn stamp(&self) -> String {
        format!(
            "{}[{:>7.1}s]",
            self.prefix,
            self.started.elapsed().as_secs_f64()
        )
    }

    /// Prints a line (above the spinner on a terminal).
    pub fn line(&self, msg: &str) {
        if self.quiet {
            return;
        }
        match &self.bar {
            Some(b) => b.println(format!("{} {msg}", self.stamp())),
            None => eprintln!("{} {msg}", self.stamp()),
        }
    }

    /// Starts a stage; an unfinished previous one is closed as done.
    pub fn stage(&mut self, name: &str) {
        if self.stage.is_some() {
            self.done("");
        }
        self.stage = Some((name.to_string(), Instant::now()));
        self.last_plain = None;
        if self.tty {
            let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            b.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} [{elapsed}] {wide_msg}")
                    .expect("template"),
            );
            b.set_prefix(name.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(b);
        } else {
            self.line(&format!("{name} ..."));
        }
    }

    /// A status update within the stage. Plain output prints it, at most every 10 s unless
    /// `important`.
    pub fn status(&mut self, msg: &str, important: bool) {
        if let Some(b) = &self.bar {
            b.set_message(msg.to_string());
            return;
        }
        let due = self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
        if important || due {
            if let Some((name, _)) = &self.stage {
                self.line(&format!("{name}: {msg}"));
            }
            self.last_plain = Some(Instant::now());
        }
    }

    /// Byte progress (downloads): turns the spinner into a bar when the total is known.
    pub fn bytes(&mut self, done: u64, total: Option<u64>) {
        if let Some(b) = &self.bar {
            if let Some(t) = total {
                if b.length() != Some(t) {
                    b.set_length(t);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{prefix:.bold} [{elapsed}] {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .expect("template"),
                    );
                }
            }
            b.set_position(done);
        } else {
            let msg = match total {
                Some(t) => format!("{} of {} MiB", done >> 20, t >> 20),
                None => format!("{} MiB", done >> 20),
            };
            self.status(&msg, false);
        }
    }

    fn finish(&mut self, mark: &str, summary: &str) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if let Some((name, t)) = self.stage.take() {
            let s = if summary.is_empty() {
                String::new()
            } else {
                format!(": {summary}")
            };
            let text = format!("{mark} {name} ({:.1} s){s}", t.elapsed().as_secs_f64());
            if mark == "FAIL" {
                eprintln!("{} {text}", self.stamp());
            } else {
                self.line(&text);
            }
        }
    }

    /// Closes the current stage as done, with a short summary.
    pub fn done(&mut self, summary: &str) {
        self.finish("ok  ", summary);
    }

    /// Closes the current stage as failed.
    pub fn fail(&mut self) {
        self.finish("FAIL", "");
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
