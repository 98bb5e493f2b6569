#!/usr/bin/env python3
"""imgbuild smoke runner: runs in the booted artifact (from the smoke seed's runcmd), checks
what the definition asks plus imgbuild's built-in checks, and reports each result on the serial
console as one `IMGBUILD-SMOKE-RESULT {json}` line, then `IMGBUILD-SMOKE-DONE`."""
import glob, json, os, pwd, re, stat, subprocess, time

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
                        "/etc/dpkg/dpkg.cfg.d/99imgbuild-unsafe-io",
                        "/etc/systemd/system/poweroff.target.wants/imgbuild-hygiene.service",
                        "/root/.bash_history") if os.path.lexists(p)]
    lists = [f for f in os.listdir("/var/lib/apt/lists") if f not in ("lock", "partial", "auxfiles")] if os.path.isdir("/var/lib/apt/lists") else []
    # The build's persistent journal: the hygiene removes it whole (truncating it under a
    # running journald corrupts it); this boot's journal lives under this machine-id only.
    mid = open("/etc/machine-id").read().strip() if os.path.exists("/etc/machine-id") else ""
    journals = [d for d in os.listdir("/var/log/journal") if d != mid] if os.path.isdir("/var/log/journal") else []
    if left or lists or journals:
        return False, f"build leftovers: {left} apt lists: {lists[:3]} journals of other machines: {journals}"
    return True, "no provisioning machinery, no apt lists, no journal but this boot's"


def sudo_rule_users(text):
    """The users a sudoers file grants rules to by name (not %groups, aliases or Defaults)."""
    users = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "%", "@", "Defaults", "Cmnd_Alias", "User_Alias", "Host_Alias", "Runas_Alias")):
            continue
        users.append(line.split()[0].rstrip(","))
    return users


def builtin_accounts(c):
    """Only the declared accounts: no home, login UID or sudo rule but the definition's users',
    the launch user's and those made at this boot (launch-time accounts); no usable password
    but the launch user's given at launch. So the build-time default user (`ubuntu`) and its
    NOPASSWD rule are gone, and no build step leaves a user behind."""
    allowed = set(c.get("users", [])) | {"root"}
    # Accounts made at this boot are launch-time accounts, not baked ones: cloud-init makes
    # the distribution's default user (`ubuntu`, `debian`) with the cloud's key pair at every
    # first boot whose user-data names no users, as Ubuntu's and Debian's cloud images do.
    bt = btime()

    def made_now(path):
        try:
            return os.stat(path).st_ctime >= bt - 2
        except OSError:
            return False
    launched = {p.pw_name for p in pwd.getpwall() if 1000 <= p.pw_uid < 60000 and p.pw_name not in allowed and made_now(p.pw_dir)}
    allowed |= launched
    bad = []
    homes = sorted(os.listdir("/home")) if os.path.isdir("/home") else []
    bad += [f"home /home/{h}" for h in homes if h not in allowed and h != "lost+found"]
    # Login accounts: UIDs from UID_MIN (1000) up to the system's nobody range.
    bad += [f"user {p.pw_name} (uid {p.pw_uid})" for p in pwd.getpwall() if 1000 <= p.pw_uid < 60000 and p.pw_name not in allowed]
    files = ["/etc/sudoers"] + sorted(glob.glob("/etc/sudoers.d/*"))
    for f in files:
        try:
            text = open(f, errors="replace").read()
        except OSError as e:
            return False, f"cannot read {f}: {e}"
        bad += [f"sudo rule for {u} in {f}" for u in sudo_rule_users(text) if u not in allowed]
    try:
        for line in open("/etc/shadow"):
            f = line.split(":")
            if len(f) > 1 and f[1] and not f[1].startswith(("!", "*")) and f[0] != c.get("password"):
                bad.append(f"password of {f[0]}")
    except OSError as e:
        return False, f"cannot read /etc/shadow: {e}"
    if bad:
        return False, "undeclared accounts or rights: " + "; ".join(bad)
    who = ", ".join(sorted(allowed - {"root"} - launched)) or "none"
    now = f"; made at this boot: {', '.join(sorted(launched))}" if launched else ""
    return True, f"accounts as declared (users: {who}{now}); no other home, login user, sudo rule or password"


def builtin_launch_user(c):
    """The user named in the launch-time user-data exists with the given key and groups."""
    import grp
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
        if os.path.exists("/run/imgbuild/vnc-passwd"):
            return False, "the VNC password file is still in /run/imgbuild"
    said = ""
    if c.get("password"):
        ok, why = password_matches(c["user"], c["password"])
        if not ok:
            return False, why
        said = ", the account unlocked with the launch's desktop password (RDP)"
    return True, f"{c['user']} with the launch key, groups {c.get('groups', [])}" + (", VNC password set" if c.get("vnc_display") is not None else "") + said


def password_matches(user, password):
    """The user's /etc/shadow entry is unlocked and is the crypt hash of `password` (computed
    again with OpenSSL's crypt and the entry's own salt)."""
    entry = next((l.split(":") for l in open("/etc/shadow") if l.split(":")[0] == user), None)
    if entry is None or len(entry) < 2:
        return False, f"{user} has no /etc/shadow entry"
    h = entry[1]
    if not h or h.startswith(("!", "*")):
        return False, f"{user}'s password is locked or unset: RDP cannot log in"
    m = re.fullmatch(r"\$6\$(?:rounds=\d+\$)?([^$]+)\$[./0-9A-Za-z]+", h)
    if not m:
        return False, f"{user}'s password hash is not SHA-512 crypt"
    again = subprocess.run(["openssl", "passwd", "-6", "-salt", m.group(1), "-stdin"], input=password + "\n",
                           capture_output=True, text=True).stdout.strip()
    if again != h:
        return False, f"{user}'s password is not the desktop password given at launch"
    return True, ""


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


# cloud-init's seed volumes: the NoCloud seed and OpenStack's config drive, by file system label.
SEED_LABELS = ("cidata", "CIDATA", "config-2", "CONFIG-2")


def seed_devices():
    """The block devices carrying a cloud-init seed: [(device, label)]."""
    found = []
    for label in SEED_LABELS:
        p = subprocess.run(["blkid", "-o", "device", "-t", f"LABEL={label}"], capture_output=True, text=True)
        found += [(d, label) for d in p.stdout.split() if (d, label) not in found]
    return found


def seed_volumes_listed(gio_mount_list):
    """The seed volumes or mounts in `gio mount -l` output (the volume monitor's list, which
    xfdesktop draws as desktop icons): lines like "Volume(0): cidata"."""
    out = []
    for line in gio_mount_list.splitlines():
        m = re.match(r"\s*(Volume|Mount)\(\d+\):\s*(.*?)(?:\s+->.*)?$", line)
        if m and m.group(2).strip() in SEED_LABELS:
            out.append(f"{m.group(1).lower()} {m.group(2).strip()}")
    return out


def tree_windows(xwininfo_tree):
    """Every window in `xwininfo -root -tree` output with its name and WM_CLASS, as
    (id, name, instance, class): the session's windows whether or not a window manager
    lists them (an iconified vncconfig, a dialog)."""
    out = []
    for line in xwininfo_tree.splitlines():
        m = re.match(r'\s*(0x[0-9a-fA-F]+) (?:"(.*)"|\(has no name\)): \((?:"([^"]*)" "([^"]*)")?\)', line)
        if m:
            out.append((m.group(1), m.group(2) or "", m.group(3) or "", m.group(4) or ""))
    return out


def unwanted_kind(name, inst, cls):
    """What a window is if a workspace user should never find it at login: vncconfig's, or a
    polkit agent's password prompt (a session that asks for an administrator's password at
    login is broken)."""
    if cls.lower() == "vncconfig" or inst.lower().endswith("vncconfig") or name == "VNC config":
        return "vncconfig"
    if name == "Authenticate" or ("polkit" in (inst + cls).lower() and name not in ("", inst)):
        return f"polkit password prompt: {name}"
    return None


def unwanted_windows(windows, managed):
    """Of `windows` (tree_windows), those of an unwanted kind that the window manager manages
    (`managed`: ids with a WM_STATE, Normal or Iconic: what the task list shows). Windows
    never mapped, such as `vncconfig -nowin`'s selection window or the polkit agent's group
    leader, are no one's to see."""
    bad = []
    for w, name, inst, cls in windows:
        kind = unwanted_kind(name, inst, cls)
        if kind and w in managed:
            bad.append(f"{w} ({kind})")
    return bad


def session_env(user, display):
    """The environment of the user's running XFCE session: its display, X authority and D-Bus
    session bus, read from xfdesktop's own environment."""
    home = pwd.getpwnam(user).pw_dir
    env = {"DISPLAY": f":{display}", "XAUTHORITY": f"{home}/.Xauthority", "HOME": home}
    pids = subprocess.run(["pgrep", "-u", user, "-x", "xfdesktop"], capture_output=True, text=True).stdout.split()
    for pid in pids[:1]:
        try:
            for kv in open(f"/proc/{pid}/environ", "rb").read().split(b"\0"):
                k, _, v = kv.decode(errors="replace").partition("=")
                if k in ("DBUS_SESSION_BUS_ADDRESS", "XAUTHORITY", "DISPLAY"):
                    env[k] = v
        except OSError:
            pass
    return env


def as_user(user, env, argv, timeout=300):
    """argv as `user` in their session's environment; a command that outlives `timeout` (a
    give-up limit: a TCG guest on a loaded host is slow) is a failed one, exit 124."""
    cmd = ["runuser", "-u", user, "--", "env"] + [f"{k}={v}" for k, v in env.items()] + argv
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{argv[0]} did not end in {timeout} s")


def builtin_desktop_clean(c):
    """The user's desktop shows what is theirs: no cloud-init seed volume (udev marks it
    UDISKS_IGNORE, so the volume monitor behind xfdesktop's icons leaves it out), and neither
    a vncconfig window nor a polkit password prompt in the session's window list (the task
    bar's source)."""
    user, display = c["user"], int(c["vnc_display"])
    seeds = seed_devices()
    if not seeds:
        return False, "no cloud-init seed volume found (the smoke boots with one): nothing was proven"
    unhidden = []
    for dev, label in seeds:
        props = subprocess.run(["udevadm", "info", "--query=property", f"--name={dev}"], capture_output=True, text=True).stdout
        if "UDISKS_IGNORE=1" not in props.splitlines():
            unhidden.append(f"{dev} ({label})")
    if unhidden:
        return False, f"seed volumes not marked UDISKS_IGNORE=1 by udev: {', '.join(unhidden)}"
    env = session_env(user, display)
    if "DBUS_SESSION_BUS_ADDRESS" not in env:
        return False, f"no XFCE session of {user} (xfdesktop) to ask for its volumes"
    vols = as_user(user, env, ["gio", "mount", "-l"])
    if vols.returncode != 0:
        return False, f"gio mount -l failed in {user}'s session: {vols.stderr.strip()[-300:]}"
    listed = seed_volumes_listed(vols.stdout)
    if listed:
        return False, f"the desktop lists cloud-init seed volumes: {', '.join(listed)}"
    # The session's windows, once XFCE's panel and desktop are among them (so that what is
    # looked at is the session as the user sees it, not one still starting).
    def session_windows():
        t = as_user(user, env, ["xwininfo", "-root", "-tree"])
        wins = tree_windows(t.stdout) if t.returncode == 0 else []
        classes = " ".join(f"{i} {c}" for _, _, i, c in wins).lower()
        if "xfce4-panel" in classes and "xfdesktop" in classes:
            return True, wins
        return False, f"XFCE's panel and desktop are not among the windows of :{display} ({t.stderr.strip()[-200:] or len(wins)})"
    ok, wins = retry(session_windows, seconds=int(c.get("wait", 180)))
    if not ok:
        return False, wins
    managed = set()
    for w, name, inst, cls in wins:
        if unwanted_kind(name, inst, cls):
            st = as_user(user, env, ["xprop", "-id", w, "WM_STATE"]).stdout
            if re.search(r"window state: (Normal|Iconic)", st):
                managed.add(w)
    bad = unwanted_windows(wins, managed)
    if bad:
        return False, f"unwanted windows in the session: {', '.join(bad)}"
    names = ", ".join(d for d, _ in seeds)
    return True, f"seed volumes {names} hidden (UDISKS_IGNORE=1, not in {user}'s volume list); no vncconfig or password prompt among the session's {len(wins)} windows (panel and desktop up)"


def builtin_drbd_module(c):
    """The DRBD kernel module is the major version LINSTOR needs (9): the in-tree module is
    8.4, and `drbdadm --version` passes with the userland alone. Loaded, it must have its
    usermode helper disabled."""
    try:
        p = subprocess.run(["modinfo", "-F", "version", "drbd"], capture_output=True, text=True)
    except OSError as e:
        return False, f"modinfo: {e}"
    version = p.stdout.strip()
    if p.returncode != 0 or not version:
        return False, f"no drbd kernel module: {(p.stderr or p.stdout).strip()[-300:]}"
    major = version.split(".")[0]
    if not major.isdigit() or int(major) != int(c.get("major", 9)):
        return False, f"the drbd kernel module is {version}, not {c.get('major', 9)}.x"
    helper = "/sys/module/drbd/parameters/usermode_helper"
    if os.path.exists(helper):
        h = open(helper).read().strip()
        if h != "disabled":
            return False, f"drbd {version} is loaded with usermode_helper={h}, not disabled"
    return True, f"drbd kernel module {version}"


BUILD_ONLY = ("dkms", "nvidia-kernel-dkms", "linux-headers-*", "linux-kbuild-*")
TOOLCHAIN = ("gcc", "g++", "make", "build-essential")


def installed(patterns):
    p = subprocess.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Package}\n", *patterns],
                       capture_output=True, text=True)
    return sorted(l.split()[1] for l in p.stdout.splitlines() if l[1:2] == "i" and len(l.split()) == 2)


def dkms_left_behind(kver):
    """Debian's DKMS-built module kept, its builders gone (the nvidia step packages the module
    as imgbuild-nvidia-kernel and purges DKMS, the headers and what only they pulled in)."""
    p = subprocess.run(["modinfo", "-k", kver, "-F", "filename", "nvidia-current"], capture_output=True, text=True)
    path = p.stdout.strip()
    owner = subprocess.run(["dpkg", "-S", path], capture_output=True, text=True).stdout.split(":")[0]
    if owner != "imgbuild-nvidia-kernel":
        return False, f"the module {path or 'nvidia-current'} is not the packaged one (owner: {owner or 'none'})"
    left = installed(BUILD_ONLY)
    if left:
        return False, f"build-only packages left in the image: {', '.join(left)}"
    if os.path.exists("/var/lib/dkms"):
        return False, "/var/lib/dkms is still there"
    sim = subprocess.run(["apt-get", "-s", "autoremove"], capture_output=True, text=True,
                         env={**os.environ, "LC_ALL": "C"})
    orphans = [l.split()[1] for l in sim.stdout.splitlines() if l.startswith("Remv ")]
    if sim.returncode != 0 or orphans:
        return False, f"packages nothing needs any more: {', '.join(orphans) or sim.stderr.strip()[-200:]}"
    kept = installed(TOOLCHAIN)
    return True, (f"packaged by imgbuild-nvidia-kernel, no DKMS, headers or orphans"
                  + (f" (toolchain a declared package still needs: {', '.join(kept)})" if kept else ", no toolchain"))


def builtin_nvidia_driver(c):
    """The NVIDIA driver as far as a VM without a GPU can prove it: a kernel module for the
    running kernel (`nvidia`, Debian's `nvidia-current`), nouveau not loaded, and with the
    container toolkit its CLI. Loading the module and nvidia-smi need a GPU: not checked."""
    kver = os.uname().release
    found = None
    for name in ("nvidia", "nvidia-current"):
        try:
            p = subprocess.run(["modinfo", "-k", kver, "-F", "version", name], capture_output=True, text=True)
        except OSError as e:
            return False, f"modinfo: {e}"
        if p.returncode == 0 and p.stdout.strip():
            found = f"{name} {p.stdout.strip()}"
            break
    if not found:
        return False, f"no NVIDIA kernel module for the running kernel {kver}"
    if os.path.exists("/sys/module/nouveau"):
        return False, "nouveau is loaded (the blacklist did not take)"
    said = f"module {found} for {kver}, nouveau not loaded"
    if c.get("dkms_free"):
        ok, why = dkms_left_behind(kver)
        if not ok:
            return False, why
        said += f", {why}"
    if c.get("toolkit"):
        p = subprocess.run(["nvidia-ctk", "--version"], capture_output=True, text=True)
        if p.returncode != 0:
            return False, f"nvidia-ctk does not run: {(p.stderr or p.stdout).strip()[-200:]}"
        said += f", {p.stdout.strip().splitlines()[0] if p.stdout.strip() else 'nvidia-ctk'}"
    return True, said + " (no GPU here: loading the driver and nvidia-smi are not checked)"


SESMAN_LOG = "/var/log/xrdp-sesman.log"


def rdp_attempts(log_text, user):
    """What xrdp's session manager logged for `user`: (refused, granted). Refused: "AUTHFAIL:
    user=U ip=..." (Debian 12's xrdp 0.9.21, seen in the twin's smoke) or "Username or
    password error for user: U" (its older sesman/scp_v0.c); granted: "++ created session
    (access granted): username U" (or "reconnected")."""
    refused = re.search(rf"(?:Username or password error for user: {re.escape(user)}\s*$|AUTHFAIL: user={re.escape(user)} )", log_text, re.M) is not None
    granted = re.search(rf"\+\+ (?:created|reconnected) session \(access granted\): username {re.escape(user)}\b", log_text) is not None
    return refused, granted


def builtin_rdp_login(c):
    """RDP logs the launch user in with the launch's desktop password and refuses a wrong one:
    the host tries both over RDP (FreeRDP) when this check says it is ready, and xrdp's
    session manager log must show the refusal and the grant."""
    user = c["user"]
    start = os.path.getsize(SESMAN_LOG) if os.path.exists(SESMAN_LOG) else 0
    say("IMGBUILD-SMOKE-RDP-READY")
    told = []

    def seen():
        try:
            with open(SESMAN_LOG, errors="replace") as f:
                f.seek(start)
                text = f.read()
        except OSError as e:
            return False, f"{SESMAN_LOG}: {e}"
        refused, granted = rdp_attempts(text, user)
        if refused and not told:
            # The host holds the refused connection until told, then tries the launch's password.
            say("IMGBUILD-SMOKE-RDP-REFUSED")
            told.append(True)
        if refused and granted:
            return True, f"xrdp refused a wrong password for {user} and granted the launch's desktop password"
        lines = [l for l in text.splitlines() if user in l or "pam" in l.lower()][-6:]
        return False, (f"xrdp {'refused' if refused else 'did not refuse'} the wrong password and "
                       f"{'granted' if granted else 'did not grant'} the launch's: " + " | ".join(lines))
    return retry(seen, seconds=int(c.get("wait", 300)))


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


def compose_ps_states(text):
    """`docker compose ps --all --format json`: one JSON object per line (Compose >= 2.21) or
    one array (older) -> {service: (state, health, exit code)}."""
    text = text.strip()
    if not text:
        return {}
    rows = json.loads(text) if text.startswith("[") else [json.loads(l) for l in text.splitlines() if l.strip()]
    return {r.get("Service", r.get("Name", "?")): ((r.get("State") or "").lower(), (r.get("Health") or "").lower(),
                                                   r.get("ExitCode", 0))
            for r in rows}


def stack_verdict(states, services, jobs=()):
    """(done, ok, detail): a service that is unhealthy or has exited fails at once; the wait is
    over when every service is running and healthy, and every one-shot job has exited 0."""
    bad, waiting = [], []
    for s in services:
        state, health, code = states.get(s, ("not created", "", 0))
        if s in jobs:
            if state in ("exited", "dead") and code != 0:
                bad.append(f"{s}: {state} with code {code}")
            elif state != "exited":
                waiting.append(f"{s}: {state}")
            continue
        if health == "unhealthy" or state in ("exited", "dead"):
            bad.append(f"{s}: {state}{', ' + health if health else ''}")
        elif state != "running" or health != "healthy":
            waiting.append(f"{s}: {state}{', ' + health if health else ''}")
    if bad:
        return True, False, bad
    if waiting:
        return False, False, waiting
    return True, True, []


def builtin_stack_healthy(c):
    """Every service of the stack that runs at this boot with a baked-in image becomes healthy
    (its own healthcheck), or the check names it with its last log lines."""
    import shlex
    argv = shlex.split(c["compose"])
    services = c["services"]
    deadline = time.time() + int(c.get("timeout", 900))
    while True:
        p = subprocess.run(argv + ["ps", "--all", "--format", "json"], capture_output=True, text=True)
        try:
            states = compose_ps_states(p.stdout) if p.returncode == 0 else {}
        except ValueError:
            states = {}
        done, ok, detail = stack_verdict(states, services, c.get("jobs", []))
        if ok:
            return True, f"{len(services)} services healthy: {', '.join(services)}"
        if done or time.time() > deadline:
            break
        time.sleep(5)
    if not done:
        detail = [f"{d} after {int(c.get('timeout', 900))} s" for d in detail]
    logs = []
    for d in detail:
        svc = d.split(":", 1)[0]
        lp = subprocess.run(argv + ["logs", "--no-color", "--tail", "5", svc], capture_output=True, text=True)
        tail = " | ".join(l.strip() for l in (lp.stdout + lp.stderr).strip().splitlines()[-5:])
        logs.append(f"{d} (last log lines: {tail or 'none'})")
    return False, "not healthy: " + "; ".join(logs)


def start_page_services(text):
    return re.findall(r'<tr data-service="([^"]+)">', text)


def builtin_stack_start_page(c):
    """The stack's start page lists exactly the booted profiles' services on the stack's host;
    the launch user reads their own 0600 copy of the first-login passwords without sudo."""
    page = c["page"]
    for _ in range(60):
        if os.path.exists(page):
            break
        time.sleep(2)
    else:
        return False, f"no start page at {page} (the stack unit's ExecStartPre writes it)"
    text = open(page).read()
    listed = start_page_services(text)
    if sorted(listed) != sorted(c["expect"]):
        return False, f"the page lists {sorted(listed)}, the booted profiles run {sorted(c['expect'])}"
    if c["expect"] and f"http://{c['host']}:" not in text:
        return False, f"the page's links are not on {c['host']}"
    user, cred = c["user"], c["credentials"]
    try:
        st = os.stat(cred)
    except FileNotFoundError:
        return False, f"{user} has no {cred}"
    owner = pwd.getpwuid(st.st_uid).pw_name
    if owner != user or stat.S_IMODE(st.st_mode) != 0o600:
        return False, f"{cred} is {owner}'s with mode {stat.S_IMODE(st.st_mode):o}, not {user}'s 0600"
    p = subprocess.run(["runuser", "-u", user, "--", "cat", cred], capture_output=True, text=True)
    if p.returncode != 0:
        return False, f"{user} cannot read {cred}: {p.stderr.strip()[-200:]}"
    theirs = dict(l.split("=", 1) for l in p.stdout.splitlines() if l and not l.startswith("#") and "=" in l)
    instance = dict(l.split("=", 1) for l in open(c["secrets_env"]).read().splitlines() if l and not l.startswith("#") and "=" in l)
    wrong = [n for n in c["secrets"] if not theirs.get(n) or theirs.get(n) != instance.get(n)]
    if wrong:
        return False, f"{cred} lacks or differs from the instance's {', '.join(wrong)}"
    if any(v and v in text for v in instance.values()):
        return False, "a secret value is on the start page"
    return True, (f"{len(listed)} services on the page ({', '.join(listed)}); {user} reads "
                  f"{len(c['secrets'])} first-login passwords from {cred} (0600)")


# --- Exposure: every socket listening beyond the loopback must be declared. ---

def _addr(hexaddr, v6):
    """An address of /proc/net/{tcp,udp}[6] ("0100007F:0016") as (ip, port)."""
    import ipaddress
    host, p = hexaddr.rsplit(":", 1)
    b = bytes.fromhex(host)
    if v6:
        ip = ipaddress.IPv6Address(b"".join(b[i:i + 4][::-1] for i in range(0, 16, 4)))
        ip = ip.ipv4_mapped or ip
    else:
        ip = ipaddress.IPv4Address(b[::-1])
    return ip, int(p, 16)


def parse_proc_net(text, proto, v6):
    """The listening sockets in one /proc/net table: TCP in state LISTEN (0A); UDP sockets
    bound but not connected (remote address and port zero). Returns dicts with protocol,
    address, port, inode."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10:
            continue
        local, remote, st, inode = parts[1], parts[2], parts[3], parts[9]
        if proto == "tcp" and st != "0A":
            continue
        if proto == "udp" and _addr(remote, v6)[1] != 0:
            continue
        ip, port = _addr(local, v6)
        out.append({"protocol": proto, "address": str(ip), "port": port, "inode": inode, "loopback": ip.is_loopback})
    return out


def socket_owners(proc="/proc"):
    """socket inode -> the names (comm) of the processes holding it."""
    owners = {}
    for pid in os.listdir(proc):
        if not pid.isdigit():
            continue
        try:
            comm = open(f"{proc}/{pid}/comm").read().strip()
            fds = os.listdir(f"{proc}/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"{proc}/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                owners.setdefault(link[8:-1], set()).add(comm)
    return owners


def exposed_listeners(proc="/proc"):
    found = []
    for name, proto, v6 in (("tcp", "tcp", False), ("tcp6", "tcp", True), ("udp", "udp", False), ("udp6", "udp", True)):
        try:
            text = open(f"{proc}/net/{name}").read()
        except OSError:
            continue
        found += [s for s in parse_proc_net(text, proto, v6) if not s["loopback"]]
    owners = socket_owners(proc)
    for s in found:
        # No owner: a kernel socket (flannel's VXLAN, NFS's lockd) or one already closed.
        s["processes"] = sorted(owners.get(s["inode"], ())) or ["kernel"]
    return found


def undeclared(listening, allow):
    """The listening sockets no entry of `allow` ({port, protocol, process?}) declares."""
    def declared(s):
        return any(a["port"] == s["port"] and a["protocol"] == s["protocol"]
                   and (not a.get("process") or a["process"] in s["processes"]) for a in allow)
    return [s for s in listening if not declared(s)]


def builtin_exposure(c):
    bad = undeclared(exposed_listeners(), c.get("allow", []))
    if bad:
        seen = sorted({f"{s['port']}/{s['protocol']} on {s['address']} by {','.join(s['processes'])}" for s in bad})
        return False, "undeclared listeners (declare them in smoke.listen or a feature): " + "; ".join(seen)
    allow = sorted({f"{a['port']}/{a['protocol']}" for a in c.get("allow", [])})
    return True, f"every non-loopback listener is declared ({', '.join(allow)})"


# --- Secrets and identities: nothing private baked into the image. ---

# Not the image's files: kernel and boot-time file systems; and the container layer stores,
# which hold the container images' own trees (registry content, tens of thousands of files,
# minutes to read under TCG), not files the build wrote.
SCAN_SKIP = ("/proc", "/sys", "/dev", "/run", "/var/lib/docker/overlay2", "/var/lib/docker/image",
             "/var/lib/containerd", "/var/lib/rancher/k3s/agent/containerd", "/snap")
SCAN_MAX_BYTES = 1 << 20   # key and credential files are small
SCAN_HEAD = 16384          # a private key block starts near the head of the files that hold one
# A whole block: the BEGIN line, base64 (PEM headers such as Proc-Type allowed), the matching
# END line. Programs that handle keys hold the BEGIN line alone as a constant (cloud-init's and
# cryptography's compiled modules do); that is no key.
PRIVATE_KEY = re.compile(rb"-----BEGIN ((?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?)-----\r?\n"
                         rb"(?:[A-Za-z0-9-]+: [^\n]*\r?\n)*\r?\n?[A-Za-z0-9+/=\r\n]{64,}-----END \1-----"
                         rb"|^PuTTY-User-Key-File-\d+: .*\n(?:.*\n)*?Private-Lines: \d+", re.M)
# What every match above contains: a substring test (a fast search in C) passes over most
# files before the regex, which tries each byte of a head in turn (seconds per thousand files
# under TCG).
KEY_HINTS = (b"PRIVATE KEY", b"PuTTY-User-Key-File-")
# Per-instance identities: when present they must be made at this boot, never baked.
IDENTITIES = (
    re.compile(r"/etc/ssh/ssh_host_.*_key"),
    re.compile(r"/var/lib/docker/engine-id"),
    re.compile(r"(/root|/home/[^/]+|/usr/share/ollama)/\.ollama/id_ed25519"),
    re.compile(r"/var/lib/dkms/mok\.(key|pub)"),
    re.compile(r"/var/lib/shim-signed/mok/MOK\.(priv|der|pem)"),
    re.compile(r"/etc/xrdp/(rsakeys\.ini|key\.pem|cert\.pem)"),
    re.compile(r"/etc/ssl/private/ssl-cert-snakeoil\.key"),
    re.compile(r"/etc/ssl/certs/ssl-cert-snakeoil\.pem"),
)
# The identities as one pattern: one match per file instead of one per identity.
IDENTITY = re.compile("|".join(f"(?:{p.pattern})" for p in IDENTITIES))
CREDENTIAL_NAMES = {".git-credentials", ".netrc", "_netrc", ".pgpass", ".s3cfg", ".boto"}
# The last components CREDENTIAL_PATHS can end with (but gcloud's legacy_credentials/*): only
# files so named are matched against it.
CREDENTIAL_LAST = {"credentials", "credentials.db", "application_default_credentials.json",
                   "accessTokens.json", "msal_token_cache.json", "msal_token_cache.bin",
                   "config.json", "config", "clouds.yaml", "rclone.conf"}
CREDENTIAL_PATHS = re.compile(r".*/(\.aws/credentials|\.config/gcloud/(credentials\.db|application_default_credentials\.json|legacy_credentials/.*)"
                              r"|\.azure/(accessTokens\.json|msal_token_cache\.(json|bin))|\.docker/config\.json|\.kube/config"
                              r"|(\.config/)?openstack/clouds\.yaml|\.config/rclone/rclone\.conf)$")


def dpkg_owned(root):
    """Paths the distribution's packages ship: the same in every installation, so not this
    image's secrets (test keys in documentation, for one)."""
    owned = set()
    for f in glob.glob(os.path.join(root, "var/lib/dpkg/info/*.list")):
        try:
            owned.update(l.rstrip("\n") for l in open(f, errors="replace"))
        except OSError:
            pass
    return owned


def _credential(guest, full):
    name = os.path.basename(guest)
    if name in CREDENTIAL_NAMES:
        return True
    if name not in CREDENTIAL_LAST and "/legacy_credentials/" not in guest:
        return False
    if not CREDENTIAL_PATHS.match(guest):
        return False
    if name == "config.json":  # Docker's: only with registry credentials in `auths`
        try:
            auths = json.load(open(full)).get("auths") or {}
        except (OSError, ValueError, AttributeError):
            return False
        return any(isinstance(v, dict) and (v.get("auth") or v.get("identitytoken") or v.get("password")) for v in auths.values())
    if name == "clouds.yaml":
        try:
            return re.search(r"^\s*(password|application_credential_secret|token)\s*:", open(full, errors="replace").read(SCAN_HEAD), re.M) is not None
        except OSError:
            return False
    return True


def scan_tree(root="/", boot_time=None):
    """Walk the image's tree: (private keys, credential files, identities made before this
    boot), each a sorted list of guest paths. Reads only the heads of small regular files and
    keeps no content."""
    bt = btime() if boot_time is None else boot_time
    owned = dpkg_owned(root)
    root = os.path.abspath(root)
    keys, creds, stale = [], [], []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            it = list(os.scandir(d))
        except OSError:
            continue
        for e in it:
            full = e.path
            guest = "/" + os.path.relpath(full, root) if root != "/" else full
            if guest in SCAN_SKIP:
                continue
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append(full)
                    continue
                if not e.is_file(follow_symlinks=False):
                    continue
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            fresh = st.st_mtime >= bt - 2
            if IDENTITY.fullmatch(guest):
                if not fresh:
                    stale.append(guest)
                continue
            if fresh or guest in owned:
                continue
            if _credential(guest, full):
                creds.append(guest)
                continue
            if 0 < st.st_size <= SCAN_MAX_BYTES:
                try:
                    with open(full, "rb") as f:
                        head = f.read(SCAN_HEAD)
                except OSError:
                    continue
                if any(h in head for h in KEY_HINTS) and PRIVATE_KEY.search(head):
                    keys.append(guest)
    return sorted(keys), sorted(creds), sorted(stale)


_SCAN = []


def scanned():
    if not _SCAN:
        _SCAN.append(scan_tree())
    return _SCAN[0]


def _names(paths):
    return ", ".join(paths[:20]) + (f" and {len(paths) - 20} more" if len(paths) > 20 else "")


def builtin_no_private_keys(_):
    keys = scanned()[0]
    if keys:
        return False, f"private key material baked into the image (contents not shown): {_names(keys)}"
    return True, "no private key in the image's files but those made at this boot"


def builtin_no_credential_files(_):
    creds = scanned()[1]
    if creds:
        return False, f"credential files baked into the image (contents not shown): {_names(creds)}"
    return True, "no .git-credentials, .netrc, cloud credentials or Docker auths"


def builtin_identities(_):
    stale = scanned()[2]
    if stale:
        return False, f"per-instance identities baked into the image, not made at this boot: {_names(stale)}"
    return True, "every per-instance identity present was made at this boot"


BUILTIN = {
    "cloud-init-no-errors": builtin_cloud_init,
    "fresh-ssh-host-keys": builtin_host_keys,
    "fresh-machine-id": builtin_machine_id,
    "fresh-cloud-init-state": builtin_instance,
    "no-build-leftovers": builtin_no_build_leftovers,
    "launch-user": builtin_launch_user,
    "desktop-session": builtin_desktop_session,
    "desktop-clean": builtin_desktop_clean,
    "rdp-login": builtin_rdp_login,
    "drbd-9-module": builtin_drbd_module,
    "nvidia-driver-installed": builtin_nvidia_driver,
    "stack-ports-loopback-only": builtin_stack_ports_loopback,
    "stack-healthy": builtin_stack_healthy,
    "stack-renders": lambda c: (False, f"the stack's checks could not be planned: {c['error']}"),
    "stack-start-page": builtin_stack_start_page,
    "accounts-as-declared": builtin_accounts,
    "no-private-keys": builtin_no_private_keys,
    "no-credential-files": builtin_no_credential_files,
    "identities-made-at-first-boot": builtin_identities,
    "exposure-allowlist": builtin_exposure,
}


def listeners(port):
    """The addresses a TCP socket listens on at `port`."""
    found = []
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            text = open(f"/proc/net/{name}").read()
        except OSError:
            continue
        found += [s["address"] for s in parse_proc_net(text, "tcp", v6) if s["port"] == port]
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


if __name__ == "__main__":
    main()
