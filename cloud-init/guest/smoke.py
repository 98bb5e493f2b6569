#!/usr/bin/env python3
"""imgbuild smoke runner: runs in the booted artifact (from the smoke seed's runcmd), checks
what the definition asks plus imgbuild's built-in checks, and reports each result on the serial
console as one `IMGBUILD-SMOKE-RESULT {json}` line, then `IMGBUILD-SMOKE-DONE`."""
import glob, json, os, re, stat, subprocess, time

CHECKS = "/run/imgbuild-smoke/checks.json"
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
    left = [p for p in ("/usr/local/lib/imgbuild/provision", "/usr/local/lib/imgbuild/steps",
                        "/etc/systemd/system/imgbuild-hygiene.service",
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


BUILTIN = {
    "cloud-init-no-errors": builtin_cloud_init,
    "fresh-ssh-host-keys": builtin_host_keys,
    "fresh-machine-id": builtin_machine_id,
    "fresh-cloud-init-state": builtin_instance,
    "no-build-leftovers": builtin_no_build_leftovers,
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


def run_check(c):
    if c.get("builtin"):
        return BUILTIN[c["builtin"]](c)
    if c.get("command") is not None:
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
    if c.get("unit"):
        def active():
            s = subprocess.run(["systemctl", "is-active", c["unit"]], capture_output=True, text=True).stdout.strip()
            return s == "active", f"{c['unit']} is {s}"
        return retry(active)
    if c.get("port") is not None:
        def listening():
            ls = listeners(int(c["port"]))
            if not ls:
                return False, f"nothing listens on port {c['port']}"
            if c.get("address") and any(a != c["address"] for a in ls):
                return False, f"port {c['port']} listens on {ls}, expected only {c['address']}"
            return True, f"port {c['port']} listens on {ls}"
        return retry(listening)
    if c.get("file"):
        p = c["file"]
        if not os.path.exists(p):
            return False, f"{p} does not exist"
        if c.get("mode"):
            mode = stat.S_IMODE(os.stat(p).st_mode)
            if mode != int(c["mode"], 8):
                return False, f"{p} has mode {mode:04o}, expected {c['mode']}"
        return True, f"{p} exists"
    return False, "unknown check"


def main():
    checks = json.load(open(CHECKS))
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
