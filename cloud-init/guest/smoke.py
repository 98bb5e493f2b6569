#!/usr/bin/env python3
"""imgbuild smoke runner: runs in the booted artifact (from the smoke seed's runcmd), checks
what the definition asks plus imgbuild's built-in checks, and reports each result on the serial
console as one `IMGBUILD-SMOKE-RESULT {json}` line, then `IMGBUILD-SMOKE-DONE`."""
import glob, json, os, re, stat, subprocess, time

CHECKS_FILE = "/run/imgbuild-smoke/checks.json"
INSTANCE = os.environ.get("IMGBUILD_SMOKE_INSTANCE", "")


def say(line):
    for dev in ("/dev/console",):
        try:
            with open(dev, "w") as f:
                f.write(line + "\n")
        except OSError:
            pass
    print(line, flush=True)


def btime():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime "):
                return int(line.split()[1])
    return 0


def builtin_cloud_init(_):
    st = json.load(open("/run/cloud-init/status.json"))["v1"]
    errs = []
    for stage, v in st.items():
        if isinstance(v, dict):
            errs += [f"{stage}: {e}" for e in (v.get("errors") or [])]
    return (not errs, "; ".join(errs) or "no errors in init-local, init, modules-config, modules-final")


def builtin_host_keys(_):
    keys = glob.glob("/etc/ssh/ssh_host_*_key")
    if not keys:
        return False, "no SSH host keys"
    bt = btime()
    old = [k for k in keys if os.stat(k).st_mtime < bt - 2]
    return (not old, f"made before this boot (baked into the image): {old}" if old else f"{len(keys)} host keys made at this boot")


def builtin_machine_id(_):
    mid = open("/etc/machine-id").read().strip()
    if not re.fullmatch(r"[0-9a-f]{32}", mid):
        return False, f"machine-id is {mid!r}"
    return True, "machine-id generated at first boot"


def builtin_instance(_):
    inst = sorted(os.listdir("/var/lib/cloud/instances")) if os.path.isdir("/var/lib/cloud/instances") else []
    stale = [i for i in inst if i != INSTANCE]
    return (not stale, f"cloud-init state from the build left behind: {stale}" if stale else "only this instance's cloud-init state")


def builtin_no_build_leftovers(_):
    left = [p for p in ("/usr/local/lib/imgbuild/provision", "/usr/local/lib/imgbuild/steps", "/usr/local/lib/imgbuild/prepull",
                        "/etc/systemd/system/imgbuild-hygiene.service",
                        "/etc/apt/apt.conf.d/00imgbuild-keep-debs",
                        "/etc/systemd/system/poweroff.target.wants/imgbuild-hygiene.service",
                        "/root/.bash_history") if os.path.lexists(p)]
    lists = [f for f in os.listdir("/var/lib/apt/lists") if f not in ("lock", "partial", "auxfiles")] if os.path.isdir("/var/lib/apt/lists") else []
    # No account may have a usable password: images are entered with keys given at launch.
    passwords = []
    try:
        for line in open("/etc/shadow"):
            f = line.split(":")
            if len(f) > 1 and f[1] and not f[1].startswith(("!", "*")):
                passwords.append(f[0])
    except OSError as e:
        return False, f"cannot read /etc/shadow: {e}"
    if left or lists or passwords:
        return False, f"build leftovers: {left} apt lists: {lists[:3]} accounts with a password: {passwords}"
    return True, "no provisioning machinery, no apt lists, no account with a password"


def builtin_launch_user(c):
    """The user named in the launch-time user-data exists with the given key and groups."""
    import pwd, grp
    try:
        u = pwd.getpwnam(c["user"])
    except KeyError:
        return False, f"user {c['user']} does not exist"
    keys = os.path.join(u.pw_dir, ".ssh", "authorized_keys")
    try:
        lines = [l.strip() for l in open(keys)]
    except OSError as e:
        return False, f"{keys}: {e}"
    if c["ssh_key"].strip() not in lines:
        return False, f"{keys} does not hold the key given at launch"
    missing = [g for g in c.get("groups", []) if c["user"] not in grp.getgrnam(g).gr_mem]
    if missing:
        return False, f"{c['user']} is not in {missing}"
    vnc = os.path.join(u.pw_dir, ".config", "tigervnc", "passwd")
    if c.get("vnc_display") is not None:
        if not os.path.exists(vnc):
            return False, f"{vnc} missing"
        st = os.stat(vnc)
        if st.st_uid != u.pw_uid or stat.S_IMODE(st.st_mode) & 0o077:
            return False, f"{vnc} is not private to {c['user']} (mode {stat.S_IMODE(st.st_mode):04o})"
        if os.path.exists("/run/imgbuild/vnc-password"):
            return False, "the clear-text VNC password is still in /run/imgbuild"
    return True, f"{c['user']} with the launch key, groups {c.get('groups', [])}" + (", VNC password set" if c.get("vnc_display") is not None else "")


def builtin_desktop_session(c):
    """The user's TigerVNC session runs XFCE on the network port, ready to be viewed."""
    unit = f"tigervncserver@:{c['vnc_display']}.service"
    port = 5900 + int(c["vnc_display"])

    def up():
        state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True).stdout.strip()
        if state != "active":
            return False, f"{unit} is {state}"
        ls = listeners(port)
        if not any(a not in ("127.0.0.1", "::1") for a in ls):
            return False, f"VNC port {port} listens on {ls or 'nothing'}, not on the network"
        procs = subprocess.run(["pgrep", "-u", c["user"], "-l", "-f", "xfce4-panel|xfdesktop|xfwm4"], capture_output=True, text=True).stdout
        need = [p for p in ("xfce4-panel", "xfdesktop", "xfwm4") if p not in procs]
        if need:
            return False, f"{unit} active on {ls}, but the XFCE session lacks {need}"
        return True, f"{unit} active, VNC on {ls}, XFCE (panel, desktop, window manager) running as {c['user']}"
    ok, detail = retry(up, seconds=int(c.get("wait", 600)))
    if ok:
        time.sleep(int(c.get("settle", 20)))  # let the panel and desktop finish drawing
    elif os.path.exists(f"/home/{c['user']}/.vnc"):
        for log in glob.glob(f"/home/{c['user']}/.vnc/*.log"):
            detail += f"\n{log}: " + open(log, errors="replace").read()[-600:]
    return ok, detail


def builtin_stack_ports_loopback(c):
    """No published port of the compose stack listens on a non-loopback address."""
    bad = {}
    for port in c.get("ports", []):
        ls = [a for a in listeners(int(port)) if a not in ("127.0.0.1", "::1")]
        if ls:
            bad[port] = ls
    if bad:
        return False, f"stack ports listening beyond the loopback: {bad}"
    return True, f"none of the stack's {len(c.get('ports', []))} published ports listens beyond the loopback"


BUILTIN = {
    "cloud-init-no-errors": builtin_cloud_init,
    "fresh-ssh-host-keys": builtin_host_keys,
    "fresh-machine-id": builtin_machine_id,
    "fresh-cloud-init-state": builtin_instance,
    "no-build-leftovers": builtin_no_build_leftovers,
    "launch-user": builtin_launch_user,
    "desktop-session": builtin_desktop_session,
    "stack-ports-loopback-only": builtin_stack_ports_loopback,
}


def listeners(port):
    found = []
    for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            addr, st = parts[1], parts[3]
            host, p = addr.rsplit(":", 1)
            if st != "0A" or int(p, 16) != port:
                continue
            if v6:
                b = bytes.fromhex(host)
                words = [b[i:i + 4][::-1] for i in range(0, 16, 4)]
                raw = b"".join(words)
                import ipaddress
                ip = ipaddress.IPv6Address(raw)
                found.append(str(ip.ipv4_mapped or ip))
            else:
                found.append(".".join(str(x) for x in bytes.fromhex(host)[::-1]))
    return found


def retry(fn, seconds=90):
    end = time.time() + seconds
    while True:
        ok, detail = fn()
        if ok or time.time() > end:
            return ok, detail
        time.sleep(2)


def check_builtin(c):
    return BUILTIN[c["builtin"]](c)


def check_command(c):
    try:
        p = subprocess.run(["bash", "-c", c["command"]], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return False, "timed out after 300 s"
    out = (p.stdout + p.stderr)[-1500:]
    want = c.get("expect_exit", 0) if c.get("expect_exit") is not None else 0
    if p.returncode != want:
        return False, f"exit {p.returncode}, expected {want}: {out}"
    pat = c.get("expect_output")
    if pat and not re.search(pat, p.stdout + p.stderr):
        return False, f"output does not match /{pat}/: {out}"
    return True, out.strip()[-300:]


def check_unit(c):
    def active():
        s = subprocess.run(["systemctl", "is-active", c["unit"]], capture_output=True, text=True).stdout.strip()
        return s == "active", f"{c['unit']} is {s}"
    return retry(active)


def check_port(c):
    def listening():
        ls = listeners(int(c["port"]))
        if not ls:
            return False, f"nothing listens on port {c['port']}"
        if c.get("address") and any(a != c["address"] for a in ls):
            return False, f"port {c['port']} listens on {ls}, expected only {c['address']}"
        return True, f"port {c['port']} listens on {ls}"
    return retry(listening)


def check_file(c):
    p = c["file"]
    if not os.path.exists(p):
        return False, f"{p} does not exist"
    if c.get("mode"):
        mode = stat.S_IMODE(os.stat(p).st_mode)
        if mode != int(c["mode"], 8):
            return False, f"{p} has mode {mode:04o}, expected {c['mode']}"
    return True, f"{p} exists"


# The check kinds, keyed by the `kind` of each entry in checks.json: the same names as
# imgbuild's CheckKind (tests/smoke_kinds.rs fails when the two differ).
KINDS = {
    "builtin": check_builtin,
    "command": check_command,
    "unit": check_unit,
    "port": check_port,
    "file": check_file,
}


def run_check(c):
    run = KINDS.get(c.get("kind"))
    if run is None:
        return False, f"unknown check kind {c.get('kind')!r}"
    return run(c)


def main():
    checks = json.load(open(CHECKS_FILE))
    say("IMGBUILD-SMOKE-START")
    for c in checks:
        t0 = time.time()
        try:
            ok, detail = run_check(c)
        except Exception as e:  # a broken check is a failed check, not a stuck smoke run
            ok, detail = False, f"{type(e).__name__}: {e}"
        say("IMGBUILD-SMOKE-RESULT " + json.dumps({"name": c["name"], "kind": c["kind"], "passed": bool(ok), "detail": str(detail)[-800:], "seconds": round(time.time() - t0, 2)}))
    say("IMGBUILD-SMOKE-DONE")


main()
